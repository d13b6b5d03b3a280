//! `segflow generate`: a deterministic synthetic order history for scale tests and
//! benchmarks, written as hive-partitioned Parquet in the demo's source schema.
//!
//! It needs neither Python nor DuckDB and runs in bounded memory at any size. The output is
//! `<out>/month=YYYY-MM/part-0.parquet`, one file per month of `created_at` (the month lives
//! only in the folder name), with the column names and types of `fixtures/demo/orders`, so
//! `fixtures/demo/segflow.toml`'s mapping reads it unchanged.
//!
//! Customer `i` (0-based) is `client_id` 100001 + i; its orders are numbered `k` = 0, 1, ..
//! (0 is the first, acquisition order; the others are not in time order) and `order_no` is
//! `SO-<client_id>-<k as 4 digits>`, e.g. `SO-100042-0003`; refund lines keep it.
//!
//! **Randomness.** Every draw is [`unit`]`(seed, a, b, stream)`: splitmix64 mixing of the
//! four numbers, 53 bits, in (0, 1). The keys mirror the Python script: a customer's
//! parameters are `(i, 0, 1..=16)` (its gamma rate `(i, 100 + n, 7)`), order `k`'s are
//! `(i, k, 20..=29 | 90 | 91)`, line `j`'s are `(8 i + j, k, 30..=43)`, a SKU's price is
//! `(u64::MAX - category, sku, 36 | 37)`. Nothing depends on the order of evaluation, so a
//! seed gives byte-identical files for any number of threads.
//!
//! **Streaming.** Nothing is stored per customer. The rate scale that makes the order count
//! match `--lines` is found by bisection, each step recomputing every customer's parameters
//! from the hash. Then the months are written one at a time per worker thread: for month
//! `m` the worker walks all customers and their orders and emits the lines (and refund
//! lines, which can land up to 31 days after their order) whose timestamp falls in `m`, in
//! batches of 64 k rows, through `AsyncArrowWriter` into an object_store `BufWriter` (a
//! multipart upload once a file passes 8 MiB; parquet's `ParquetObjectWriter` is a
//! deprecated wrapper of the same). Memory is a few batches, one row group and a few upload
//! parts per worker, whatever the size of the history (about 100 MB peak RSS measured).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{Datelike, Months, NaiveDate, NaiveTime};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use object_store::buffered::BufWriter;
use object_store::ObjectStoreExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use tokio::runtime::Handle;

use crate::config::S3Settings;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::redact::redact;
use crate::shutdown::Shutdown;
use crate::storage::{retrying, Location};

/// The first customer's `client_id` (as in the demo).
pub const FIRST_CUSTOMER_ID: i64 = 100_001;
/// Default `--customers` = lines / this (800 000 customers for 12.5 M lines).
pub const LINES_PER_CUSTOMER: f64 = 12_500_000.0 / 800_000.0;
/// Default `--lines`.
pub const DEFAULT_LINES: u64 = 12_500_000;
/// Upper bound of `--lines` (keeps every key and id far from overflowing).
pub const MAX_LINES: u64 = 1_000_000_000_000;
/// Default `--months`.
pub const DEFAULT_MONTHS: u32 = 36;
/// Default `--end`, the last day of history.
pub const DEFAULT_END: &str = "2026-11-21";

/// A product category: name, SKU prefix, number of SKUs, unit price range (EUR), weight.
struct Category {
    name: &'static str,
    prefix: &'static str,
    skus: u32,
    min_price: f64,
    max_price: f64,
    weight: f64,
}

const fn cat(
    name: &'static str,
    prefix: &'static str,
    skus: u32,
    min_price: f64,
    max_price: f64,
    weight: f64,
) -> Category {
    Category {
        name,
        prefix,
        skus,
        min_price,
        max_price,
        weight,
    }
}

const CATEGORIES: [Category; 10] = [
    cat("apparel", "APP", 2400, 12.0, 95.0, 22.0),
    cat("beauty", "BEA", 1500, 6.0, 60.0, 15.0),
    cat("shoes", "SHO", 900, 35.0, 170.0, 11.0),
    cat("home", "HOM", 1800, 9.0, 220.0, 11.0),
    cat("electronics", "ELE", 1000, 19.0, 650.0, 8.0),
    cat("sports", "SPO", 1000, 12.0, 160.0, 8.0),
    cat("books", "BOO", 3000, 7.0, 42.0, 8.0),
    cat("toys", "TOY", 800, 7.0, 85.0, 7.0),
    cat("grocery", "GRO", 1200, 2.0, 30.0, 6.0),
    cat("jewelry", "JEW", 600, 25.0, 400.0, 4.0),
];
/// Channel: acquisition mix weight, and the mix of repeat orders not via the usual channel.
const CHANNELS: [(&str, f64, f64); 8] = [
    ("organic", 26.0, 30.0),
    ("paid_search", 22.0, 12.0),
    ("social", 16.0, 8.0),
    ("affiliate", 10.0, 4.0),
    ("referral", 7.0, 4.0),
    ("direct", 7.0, 12.0),
    ("email", 6.0, 28.0),
    ("display", 6.0, 2.0),
];
const COUNTRIES: [(&str, f64); 15] = [
    ("DE", 30.0),
    ("FR", 13.0),
    ("NL", 9.0),
    ("AT", 7.0),
    ("PL", 7.0),
    ("ES", 7.0),
    ("IT", 7.0),
    ("BE", 4.0),
    ("CH", 4.0),
    ("SE", 3.0),
    ("DK", 2.0),
    ("FI", 2.0),
    ("CZ", 2.0),
    ("PT", 2.0),
    ("IE", 1.0),
];
const DEVICES: [(&str, f64); 3] = [("mobile", 55.0), ("desktop", 35.0), ("tablet", 10.0)];
/// Weights of 1..=5 lines per order (mean 2.62).
const LINES_PER_ORDER: [f64; 5] = [22.0, 30.0, 23.0, 14.0, 11.0];
/// Weights of a line's quantity 1..=4.
const QTY: [f64; 4] = [82.0, 12.0, 4.0, 2.0];
/// Weights of the hour of day (evening peak).
const HOUR_WEIGHTS: [f64; 24] = [
    2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 6.0, 7.0, 7.0, 8.0, 9.0, 8.0, 7.0, 7.0, 8.0, 9.0, 11.0,
    13.0, 14.0, 13.0, 9.0, 5.0,
];
/// Discounts of the discounted lines, picked uniformly.
const DISCOUNTS: [f64; 4] = [0.10, 0.15, 0.20, 0.30];
/// Price endings in cents (x.99, x.95, x.49, x.00), picked uniformly per SKU.
const PRICE_ENDINGS: [i64; 4] = [99, 95, 49, 0];

const P_NULL_CHANNEL: f64 = 0.01;
const P_NULL_CATEGORY: f64 = 0.005;
const P_CANCELLED: f64 = 0.03;
/// Of completed orders at least 3 days before the end.
const P_RETURNED: f64 = 0.05;
/// Each further line of a returned order is refunded too with this probability.
const P_REFUND_EXTRA_LINE: f64 = 0.5;
/// Exact duplicate rows (double-ingested lines of orders that are not cancelled).
const P_DUPLICATE: f64 = 0.0002;
/// Never come back after the first order.
const P_ONE_TIME: f64 = 0.30;
/// Of the others: drop out after an exponential lifetime.
const P_LAPSING: f64 = 0.45;
const MEAN_LIFETIME_DAYS: f64 = 330.0;
/// Gamma shape of the purchase rates (a multiple of 0.5).
const RATE_SHAPE: f64 = 1.0;
/// Acquired in the Black Friday .. Christmas window (20 Nov + 0..34 days) of some year.
const P_XMAS: f64 = 0.12;
const XMAS_WINDOW_DAYS: usize = 34;
/// Repeat orders via the customer's usual channel / device.
const P_PREFERRED_CHANNEL: f64 = 0.7;
const P_PREFERRED_DEVICE: f64 = 0.8;
const P_DISCOUNTED: f64 = 0.15;
/// A customer's favourite category share lies in FAV_SHARE_MIN + [0, FAV_SHARE_SPAN).
const FAV_SHARE_MIN: f64 = 0.2;
const FAV_SHARE_SPAN: f64 = 0.5;
/// Cost of goods = net × (COGS_MIN + COGS_SPAN u).
const COGS_MIN: f64 = 0.40;
const COGS_SPAN: f64 = 0.30;
/// SKU popularity: sku = floor(n × u^SKU_SKEW) + 1.
const SKU_SKEW: f64 = 2.5;
const MAX_REPEATS: f64 = 2000.0;
/// Refunds come 3 + 0..28 days (+ up to 8 hours) after their order.
const REFUND_MIN_DAYS: i64 = 3;
const REFUND_SPREAD_DAYS: usize = 28;
const REFUND_SPREAD_MS: f64 = 8.0 * HOUR_MS as f64;
/// A refund is at most this many calendar days after its order's day.
const REFUND_MAX_DAYS: i64 = REFUND_MIN_DAYS + REFUND_SPREAD_DAYS as i64;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group (DuckDB's default, as the Python generator wrote).
const ROW_GROUP_ROWS: usize = 122_880;
/// Multipart part size and parts in flight per file: bounds upload memory per worker.
const PART_BYTES: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

// Streams of the draws (see the module doc): customer, order, line, SKU.
const S_ACQ_GROWING: u64 = 1;
const S_ACQ_X: u64 = 2;
const S_XMAS: u64 = 3;
const S_XMAS_YEAR: u64 = 4;
const S_XMAS_DAY: u64 = 5;
const S_ONE_TIME: u64 = 6;
const S_RATE: u64 = 7;
const S_RATE_NORMAL_ANGLE: u64 = 8;
const S_LAPSING: u64 = 9;
const S_LIFETIME: u64 = 10;
const S_REPEATS: u64 = 11;
const S_COUNTRY: u64 = 12;
const S_CHANNEL: u64 = 13;
const S_DEVICE: u64 = 14;
const S_FAV_CATEGORY: u64 = 15;
const S_FAV_SHARE: u64 = 16;
const S_ORDER_DAY: u64 = 20;
const S_NULL_CHANNEL: u64 = 21;
const S_KEEP_CHANNEL: u64 = 22;
const S_REPEAT_CHANNEL: u64 = 23;
const S_KEEP_DEVICE: u64 = 24;
const S_OTHER_DEVICE: u64 = 25;
const S_CANCELLED: u64 = 26;
const S_LINES: u64 = 27;
const S_RETURNED: u64 = 28;
const S_REFUND_PICK: u64 = 29;
const S_HOUR: u64 = 90;
const S_MILLISECOND: u64 = 91;
const S_FAV_LINE: u64 = 30;
const S_CATEGORY: u64 = 31;
const S_REFUND_EXTRA: u64 = 32;
const S_DUPLICATE: u64 = 33;
const S_SKU: u64 = 34;
const S_QTY: u64 = 35;
const S_PRICE: u64 = 36;
const S_PRICE_ENDING: u64 = 37;
const S_DISCOUNTED: u64 = 38;
const S_DISCOUNT: u64 = 39;
const S_COGS: u64 = 40;
const S_REFUND_DAYS: u64 = 41;
const S_REFUND_MS: u64 = 42;
const S_NULL_CATEGORY: u64 = 43;

/// splitmix64's increment and finaliser: a bijection with full avalanche.
const fn mix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash of `(seed, a, b)`, from which [`draw`] derives each stream's uniform.
fn key(seed: u64, a: u64, b: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ a) ^ b)
}

/// The uniform of `stream` under a [`key`]: 53 bits, strictly inside (0, 1).
fn draw(key: u64, stream: u64) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    ((mix64(key ^ stream) >> 11) as f64 + 0.5) * SCALE
}

/// A uniform number in (0, 1), a pure function of `(seed, a, b, stream)`: the only source
/// of randomness of the generator (counter-based, so order and threads do not matter).
pub fn unit(seed: u64, a: u64, b: u64, stream: u64) -> f64 {
    draw(key(seed, a, b), stream)
}

/// `floor(u × n)` for a uniform `u`, kept below `n` (u × n can round up to n).
fn index(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n.saturating_sub(1))
}

/// Picks an index by weight for a uniform `u`, like the Python script's CASE expressions.
struct Weights {
    /// Cumulative share after each item but the last.
    thresholds: Vec<f64>,
}

impl Weights {
    fn new(weights: impl IntoIterator<Item = f64>) -> Weights {
        let weights: Vec<f64> = weights.into_iter().collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut thresholds = Vec::with_capacity(weights.len().saturating_sub(1));
        for w in &weights[..weights.len().saturating_sub(1)] {
            acc += w;
            thresholds.push(acc / total);
        }
        Weights { thresholds }
    }

    fn pick(&self, u: f64) -> usize {
        self.thresholds
            .iter()
            .position(|&t| u < t)
            .unwrap_or(self.thresholds.len())
    }
}

/// Expected rows per order: lines, refund lines and duplicates (as in the Python script).
pub fn expected_lines_per_order() -> f64 {
    let total: f64 = LINES_PER_ORDER.iter().sum();
    let e_n: f64 = LINES_PER_ORDER
        .iter()
        .enumerate()
        .map(|(i, w)| (i + 1) as f64 * w)
        .sum::<f64>()
        / total;
    let refunds = (1.0 - P_CANCELLED) * P_RETURNED * (1.0 + P_REFUND_EXTRA_LINE * (e_n - 1.0));
    let dups = (1.0 - P_CANCELLED) * P_DUPLICATE * e_n;
    e_n + refunds + dups
}

/// The Arrow schema of the written files: the demo's source schema.
pub fn orders_schema() -> SchemaRef {
    let utf8 = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("client_id", DataType::Int64, true),
        utf8("order_no"),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        utf8("sku"),
        utf8("product_category"),
        Field::new("qty", DataType::Int32, true),
        Field::new("net_eur", DataType::Decimal128(12, 2), true),
        Field::new("cogs_eur", DataType::Float64, true),
        utf8("utm_source"),
        utf8("country_code"),
        utf8("device_type"),
        utf8("order_status"),
    ]))
}

/// What to generate (the `segflow generate` flags).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Output root: a local path or an s3:// / gs:// / az:// URL; must hold no object.
    pub out: String,
    /// Target number of order lines.
    pub lines: u64,
    /// Customers; default `lines / 15.625`, rounded, at least 1.
    pub customers: Option<u64>,
    /// Months of history, 1..=600, ending with the month of `end`.
    pub months: u32,
    /// Last day of history, `YYYY-MM-DD`.
    pub end: String,
    pub seed: u64,
    /// Worker threads (the files do not depend on it).
    pub threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            out: String::new(),
            lines: DEFAULT_LINES,
            customers: None,
            months: DEFAULT_MONTHS,
            end: DEFAULT_END.to_string(),
            seed: 1,
            threads: 2,
            progress: false,
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub uri: String,
    pub target_lines: u64,
    pub lines: u64,
    pub orders: u64,
    /// Customers with at least one order (every customer orders at least once).
    pub customers: u64,
    /// Month partitions written, and the first and last month.
    pub months: usize,
    pub first_month: String,
    pub last_month: String,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl GenerateSummary {
    /// Deviation of the line count from the target, in percent.
    pub fn deviation_percent(&self) -> f64 {
        (self.lines as f64 - self.target_lines as f64) / self.target_lines as f64 * 100.0
    }
}

/// One calendar month of the history, as day offsets from the first day.
struct Month {
    label: String,
    first_day: i64,
    /// Exclusive; the day after `--end` for the last month.
    end_day: i64,
}

/// Parameters of a customer that decide how many orders it places and when.
struct Core {
    a_day: i64,
    active_days: f64,
    rate: f64,
    /// -ln(u) of the geometric draw of the repeat count.
    neg_ln_u: f64,
}

/// A customer's other parameters (indices into the tables).
struct Profile {
    country: usize,
    channel: usize,
    device: usize,
    fav_category: usize,
    fav_share: f64,
}

struct Order {
    ts: i64,
    channel: Option<usize>,
    device: usize,
    cancelled: bool,
    lines: usize,
    returned: bool,
    refund_pick: usize,
}

/// Everything derived from the options: the period, the tables, the rate scale.
struct Plan {
    seed: u64,
    customers: u64,
    target_lines: u64,
    n_days: i64,
    start_ms: i64,
    /// The last millisecond of `--end`.
    end_ms: i64,
    /// Day offset of 20 November of each year of the period.
    xmas_start: Vec<i64>,
    months: Vec<Month>,
    /// Scale of the purchase rates, calibrated to the target line count.
    scale: f64,
    countries: Weights,
    channels: Weights,
    repeat_channels: Weights,
    devices: Weights,
    categories: Weights,
    lines_per_order: Weights,
    qty: Weights,
    hours: Weights,
    /// `PREFIX-00042` of every SKU, per category.
    skus: Vec<Vec<String>>,
    /// Unit price in cents of every SKU, per category.
    unit_cents: Vec<Vec<i64>>,
}

fn arg(flag: &'static str, message: impl Into<String>) -> Error {
    Error::Argument {
        flag,
        message: message.into(),
    }
}

impl Plan {
    fn new(o: &GenerateOptions) -> Result<Plan> {
        let end = NaiveDate::parse_from_str(o.end.trim(), "%Y-%m-%d")
            .map_err(|_| arg("--end", format!("not a date (YYYY-MM-DD): {:?}", o.end)))?;
        if !(1..=600).contains(&o.months) {
            return Err(arg(
                "--months",
                format!("must be in 1..=600, got {}", o.months),
            ));
        }
        if !(1..=MAX_LINES).contains(&o.lines) {
            return Err(arg("--lines", format!("must be in 1..={MAX_LINES}")));
        }
        if o.threads < 1 {
            return Err(arg("--threads", "must be positive"));
        }
        let customers = match o.customers {
            Some(0) => return Err(arg("--customers", "must be positive")),
            Some(c) => c,
            None => ((o.lines as f64 / LINES_PER_CUSTOMER).round() as u64).max(1),
        };
        let min_lines = customers as f64 * expected_lines_per_order() * 1.05;
        if (o.lines as f64) < min_lines {
            return Err(arg(
                "--lines",
                format!(
                    "{} is too few for {customers} customers (every customer orders at least \
                     once; need at least {} lines, or fewer --customers)",
                    o.lines,
                    min_lines.ceil()
                ),
            ));
        }
        let start = end
            .with_day(1)
            .and_then(|d| d.checked_sub_months(Months::new(o.months - 1)))
            .filter(|d| d.year() >= 1000 && end.year() <= 9999)
            .ok_or_else(|| {
                arg(
                    "--end",
                    format!(
                        "{end} with {} months leaves the years 1000..=9999",
                        o.months
                    ),
                )
            })?;
        let n_days = (end - start).num_days() + 1;
        let start_ms = start.and_time(NaiveTime::MIN).and_utc().timestamp_millis();
        let end_ms = start_ms + n_days * DAY_MS - 1;
        let xmas_start = (start.year()..=end.year())
            .filter_map(|y| NaiveDate::from_ymd_opt(y, 11, 20))
            .map(|d| (d - start).num_days())
            .collect();
        let mut months = Vec::with_capacity(o.months as usize);
        for m in 0..o.months {
            let first = start + Months::new(m);
            let next = start + Months::new(m + 1);
            months.push(Month {
                label: format!("{:04}-{:02}", first.year(), first.month()),
                first_day: (first - start).num_days(),
                end_day: (next - start).num_days().min(n_days),
            });
        }
        let skus = CATEGORIES
            .iter()
            .map(|c| {
                (1..=c.skus)
                    .map(|n| format!("{}-{n:05}", c.prefix))
                    .collect()
            })
            .collect();
        let unit_cents = CATEGORIES
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let (lo, hi) = (c.min_price.ln(), c.max_price.ln());
                (1..=c.skus as u64)
                    .map(|n| {
                        let k = key(o.seed, u64::MAX - ci as u64, n);
                        let euros = (lo + draw(k, S_PRICE) * (hi - lo)).exp().floor() as i64;
                        let ending = PRICE_ENDINGS[index(draw(k, S_PRICE_ENDING), 4)];
                        (euros * 100 + ending).max(199)
                    })
                    .collect()
            })
            .collect();
        Ok(Plan {
            seed: o.seed,
            customers,
            target_lines: o.lines,
            n_days,
            start_ms,
            end_ms,
            xmas_start,
            months,
            scale: 0.0,
            countries: Weights::new(COUNTRIES.iter().map(|c| c.1)),
            channels: Weights::new(CHANNELS.iter().map(|c| c.1)),
            repeat_channels: Weights::new(CHANNELS.iter().map(|c| c.2)),
            devices: Weights::new(DEVICES.iter().map(|d| d.1)),
            categories: Weights::new(CATEGORIES.iter().map(|c| c.weight)),
            lines_per_order: Weights::new(LINES_PER_ORDER),
            qty: Weights::new(QTY),
            hours: Weights::new(HOUR_WEIGHTS),
            skus,
            unit_cents,
        })
    }

    /// Customer `i`'s acquisition day, active span, purchase rate and repeat draw.
    fn core(&self, i: u64) -> Core {
        let k = key(self.seed, i, 0);
        // Acquisition: half uniform over the period, half growing (density ~ t).
        let x = if draw(k, S_ACQ_GROWING) < 0.5 {
            draw(k, S_ACQ_X)
        } else {
            draw(k, S_ACQ_X).sqrt()
        };
        let xmas_day = (draw(k, S_XMAS) < P_XMAS)
            .then(|| {
                self.xmas_start[index(draw(k, S_XMAS_YEAR), self.xmas_start.len())]
                    + index(draw(k, S_XMAS_DAY), XMAS_WINDOW_DAYS) as i64
            })
            .filter(|d| (0..self.n_days).contains(d));
        let a_day =
            xmas_day.unwrap_or_else(|| ((x * self.n_days as f64) as i64).min(self.n_days - 1));
        let one_time = draw(k, S_ONE_TIME) < P_ONE_TIME;
        // Gamma(RATE_SHAPE): an exponential per whole unit, Z^2 / 2 for a half.
        let mut rate = 0.0;
        for n in 0..RATE_SHAPE as u64 {
            rate -= draw(key(self.seed, i, 100 + n), S_RATE).ln();
        }
        if RATE_SHAPE.fract() != 0.0 {
            let z = (-2.0 * draw(k, S_RATE).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * draw(k, S_RATE_NORMAL_ANGLE)).cos();
            rate += 0.5 * z * z;
        }
        let lifetime = if draw(k, S_LAPSING) < P_LAPSING {
            -draw(k, S_LIFETIME).ln() * MEAN_LIFETIME_DAYS
        } else {
            1e9
        };
        let active_days = if one_time {
            0.0
        } else {
            lifetime.min((self.n_days - 1 - a_day) as f64)
        };
        Core {
            a_day,
            active_days,
            rate,
            neg_ln_u: -draw(k, S_REPEATS).ln(),
        }
    }

    /// Repeat orders at rate scale `s`: geometric with mean s × rate × active days (a
    /// gamma-mixed count), at most one a day and at most 2000.
    fn repeats(c: &Core, s: f64) -> u64 {
        if c.active_days < 1.0 || c.rate * c.active_days <= 0.0 {
            return 0;
        }
        let mean = s * c.rate * c.active_days;
        let n = (c.neg_ln_u / (1.0 / mean).ln_1p()).floor();
        n.min(c.active_days.floor()).min(MAX_REPEATS) as u64
    }

    fn profile(&self, i: u64) -> Profile {
        let k = key(self.seed, i, 0);
        Profile {
            country: self.countries.pick(draw(k, S_COUNTRY)),
            channel: self.channels.pick(draw(k, S_CHANNEL)),
            device: self.devices.pick(draw(k, S_DEVICE)),
            fav_category: self.categories.pick(draw(k, S_FAV_CATEGORY)),
            fav_share: FAV_SHARE_MIN + FAV_SHARE_SPAN * draw(k, S_FAV_SHARE),
        }
    }

    /// Day of customer `i`'s order `k`: the acquisition day for the first, else uniform
    /// over the active span.
    fn order_day(&self, i: u64, k: u64, c: &Core) -> i64 {
        if k == 0 {
            return c.a_day;
        }
        let span = c.active_days.floor() as usize + 1;
        c.a_day + index(draw(key(self.seed, i, k), S_ORDER_DAY), span) as i64
    }

    fn order(&self, i: u64, k: u64, day: i64, p: &Profile) -> Order {
        let key = key(self.seed, i, k);
        let hour = self.hours.pick(draw(key, S_HOUR)) as i64;
        let ms = index(draw(key, S_MILLISECOND), HOUR_MS as usize) as i64;
        let channel = if draw(key, S_NULL_CHANNEL) < P_NULL_CHANNEL {
            None
        } else if k == 0 || draw(key, S_KEEP_CHANNEL) < P_PREFERRED_CHANNEL {
            Some(p.channel)
        } else {
            Some(self.repeat_channels.pick(draw(key, S_REPEAT_CHANNEL)))
        };
        let device = if draw(key, S_KEEP_DEVICE) < P_PREFERRED_DEVICE {
            p.device
        } else {
            self.devices.pick(draw(key, S_OTHER_DEVICE))
        };
        let cancelled = draw(key, S_CANCELLED) < P_CANCELLED;
        let lines = 1 + self.lines_per_order.pick(draw(key, S_LINES));
        let returned = !cancelled
            && day <= self.n_days - 1 - REFUND_MIN_DAYS
            && draw(key, S_RETURNED) < P_RETURNED;
        Order {
            ts: self.start_ms + day * DAY_MS + hour * HOUR_MS + ms,
            channel,
            device,
            cancelled,
            lines,
            returned,
            refund_pick: index(draw(key, S_REFUND_PICK), lines),
        }
    }

    /// Orders of all customers at rate scale `s` (one first order each plus the repeats),
    /// summed over `threads` threads; `None` when `stop` was raised.
    fn total_orders(&self, s: f64, threads: usize, stop: &AtomicBool) -> Option<u64> {
        let chunk = self.customers.div_ceil(threads as u64);
        std::thread::scope(|scope| {
            let parts: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let from = (t * chunk).min(self.customers);
                    let to = ((t + 1) * chunk).min(self.customers);
                    scope.spawn(move || {
                        let mut total = 0;
                        for i in from..to {
                            if i % 65_536 == 0 && stop.load(Ordering::Relaxed) {
                                return None;
                            }
                            total += 1 + Plan::repeats(&self.core(i), s);
                        }
                        Some(total)
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(None))
                .sum::<Option<u64>>()
        })
    }

    /// Finds the rate scale whose order count matches the target lines (bisection, as the
    /// Python script). `Ok(None)` when `stop` was raised.
    fn calibrate(&self, threads: usize, stop: &AtomicBool) -> Result<Option<f64>> {
        let target = self.target_lines as f64 / expected_lines_per_order();
        let total = |s: f64| self.total_orders(s, threads, stop);
        let (mut lo, mut hi) = (0.0, 0.01);
        let mut at_hi = match total(hi) {
            Some(t) => t,
            None => return Ok(None),
        };
        while (at_hi as f64) < target {
            (lo, hi) = (hi, hi * 2.0);
            if hi > 1e9 {
                return Err(arg(
                    "--lines",
                    format!(
                        "{} lines cannot be reached with {} customers over {} months \
                         (customers order at most once a day): use more --customers or --months",
                        self.target_lines,
                        self.customers,
                        self.months.len()
                    ),
                ));
            }
            at_hi = match total(hi) {
                Some(t) => t,
                None => return Ok(None),
            };
        }
        let tolerance = (target * 1e-6).max(1.0);
        for _ in 0..60 {
            if at_hi as f64 - target < tolerance || hi - lo <= hi * 1e-12 {
                break;
            }
            let mid = (lo + hi) / 2.0;
            match total(mid) {
                None => return Ok(None),
                Some(t) if (t as f64) < target => lo = mid,
                Some(t) => (hi, at_hi) = (mid, t),
            }
        }
        tracing::info!(
            scale = hi,
            orders = at_hi,
            target_orders = target.round(),
            "order rate calibrated"
        );
        Ok(Some(hi))
    }

    /// Emits every row of month `m` into `sink` in batches; `Ok(None)` when `stop` was raised.
    fn generate_month(
        &self,
        m: usize,
        stop: &AtomicBool,
        sink: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<Option<MonthStats>> {
        let month = &self.months[m];
        let month_ms = (
            self.start_ms + month.first_day * DAY_MS,
            self.start_ms + month.end_day * DAY_MS,
        );
        let mut rows = Rows::new();
        let mut stats = MonthStats::default();
        let mut order_no = String::new();
        for i in 0..self.customers {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let core = self.core(i);
            let repeats = Plan::repeats(&core, self.scale);
            let last_day = if repeats == 0 {
                core.a_day
            } else {
                core.a_day + core.active_days.floor() as i64
            };
            if core.a_day >= month.end_day || last_day + REFUND_MAX_DAYS < month.first_day {
                continue;
            }
            let profile = self.profile(i);
            let client_id = FIRST_CUSTOMER_ID + i as i64;
            for k in 0..=repeats {
                let day = self.order_day(i, k, &core);
                if day >= month.end_day || day + REFUND_MAX_DAYS < month.first_day {
                    continue;
                }
                let in_month = day >= month.first_day;
                let order = self.order(i, k, day, &profile);
                if !in_month && !order.returned {
                    continue;
                }
                if in_month {
                    stats.orders += 1;
                    stats.customers += u64::from(k == 0);
                }
                order_no.clear();
                let _ = write!(order_no, "SO-{client_id}-{k:04}");
                let row = Row {
                    client_id,
                    order_no: &order_no,
                    channel: order.channel.map(|c| CHANNELS[c].0),
                    country: COUNTRIES[profile.country].0,
                    device: DEVICES[order.device].0,
                };
                for j in 0..order.lines {
                    self.emit_line(
                        (i, k, j),
                        &order,
                        &profile,
                        &row,
                        in_month,
                        month_ms,
                        &mut rows,
                    );
                    if rows.len >= BATCH_ROWS {
                        stats.lines += rows.len as u64;
                        sink(rows.finish()?)?;
                    }
                }
            }
        }
        if rows.len > 0 {
            stats.lines += rows.len as u64;
            sink(rows.finish()?)?;
        }
        Ok(Some(stats))
    }

    /// Appends line `j` of an order: the line itself and its duplicate when the order is in
    /// the month, its refund when that falls in the month (`month_ms`, end exclusive).
    #[allow(clippy::too_many_arguments)]
    fn emit_line(
        &self,
        (i, k, j): (u64, u64, usize),
        order: &Order,
        p: &Profile,
        row: &Row,
        in_month: bool,
        month_ms: (i64, i64),
        rows: &mut Rows,
    ) {
        let key = key(self.seed, i * 8 + j as u64, k);
        let refunded = order.returned
            && (j == order.refund_pick || draw(key, S_REFUND_EXTRA) < P_REFUND_EXTRA_LINE);
        let refund_ts = refunded.then(|| {
            order.ts
                + (REFUND_MIN_DAYS + index(draw(key, S_REFUND_DAYS), REFUND_SPREAD_DAYS) as i64)
                    * DAY_MS
                + (draw(key, S_REFUND_MS) * REFUND_SPREAD_MS) as i64
        });
        let refund_in_month =
            refund_ts.filter(|&t| t <= self.end_ms && t >= month_ms.0 && t < month_ms.1);
        if !in_month && refund_in_month.is_none() {
            return;
        }
        let ci = if draw(key, S_FAV_LINE) < p.fav_share {
            p.fav_category
        } else {
            self.categories.pick(draw(key, S_CATEGORY))
        };
        let c = &CATEGORIES[ci];
        // Skewed SKU popularity within the category.
        let sku = index(draw(key, S_SKU).powf(SKU_SKEW), c.skus as usize);
        let qty = 1 + self.qty.pick(draw(key, S_QTY)) as i64;
        let gross = self.unit_cents[ci][sku] * qty;
        let cents = if draw(key, S_DISCOUNTED) < P_DISCOUNTED {
            let discount = DISCOUNTS[index(draw(key, S_DISCOUNT), DISCOUNTS.len())];
            (gross as f64 * (1.0 - discount)).round() as i64
        } else {
            gross
        };
        let cogs_ratio = COGS_MIN + COGS_SPAN * draw(key, S_COGS);
        let category = (draw(key, S_NULL_CATEGORY) >= P_NULL_CATEGORY).then_some(c.name);
        let line = Line {
            sku: &self.skus[ci][sku],
            category,
            qty,
            cents,
            cogs_ratio,
        };
        if in_month {
            let status = if order.cancelled {
                "cancelled"
            } else {
                "completed"
            };
            rows.push(row, &line, order.ts, 1, status);
            if !order.cancelled && draw(key, S_DUPLICATE) < P_DUPLICATE {
                rows.push(row, &line, order.ts, 1, status);
            }
        }
        if let Some(ts) = refund_in_month {
            rows.push(row, &line, ts, -1, "returned");
        }
    }
}

/// The order-level values of a row.
struct Row<'a> {
    client_id: i64,
    order_no: &'a str,
    channel: Option<&'static str>,
    country: &'static str,
    device: &'static str,
}

/// The line-level values of a row (refund rows negate qty and money).
struct Line<'a> {
    sku: &'a str,
    category: Option<&'static str>,
    qty: i64,
    cents: i64,
    cogs_ratio: f64,
}

/// Column builders of one batch.
struct Rows {
    client_id: Int64Builder,
    order_no: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    sku: StringBuilder,
    product_category: StringBuilder,
    qty: Int32Builder,
    net_eur: Decimal128Builder,
    cogs_eur: Float64Builder,
    utm_source: StringBuilder,
    country_code: StringBuilder,
    device_type: StringBuilder,
    order_status: StringBuilder,
    len: usize,
}

impl Rows {
    fn new() -> Rows {
        let n = BATCH_ROWS;
        let text = |bytes_per_row: usize| StringBuilder::with_capacity(n, n * bytes_per_row);
        Rows {
            client_id: Int64Builder::with_capacity(n),
            order_no: text(16),
            created_at: TimestampMillisecondBuilder::with_capacity(n),
            sku: text(9),
            product_category: text(8),
            qty: Int32Builder::with_capacity(n),
            net_eur: Decimal128Builder::with_capacity(n)
                .with_data_type(DataType::Decimal128(12, 2)),
            cogs_eur: Float64Builder::with_capacity(n),
            utm_source: text(8),
            country_code: text(2),
            device_type: text(7),
            order_status: text(9),
            len: 0,
        }
    }

    fn push(&mut self, row: &Row, line: &Line, ts: i64, sign: i64, status: &str) {
        let cents = sign * line.cents;
        self.client_id.append_value(row.client_id);
        self.order_no.append_value(row.order_no);
        self.created_at.append_value(ts);
        self.sku.append_value(line.sku);
        self.product_category.append_option(line.category);
        self.qty.append_value((sign * line.qty) as i32);
        self.net_eur.append_value(i128::from(cents));
        self.cogs_eur
            .append_value((cents as f64 * line.cogs_ratio).round() / 100.0);
        self.utm_source.append_option(row.channel);
        self.country_code.append_value(row.country);
        self.device_type.append_value(row.device);
        self.order_status.append_value(status);
        self.len += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.client_id.finish()),
            Arc::new(self.order_no.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.sku.finish()),
            Arc::new(self.product_category.finish()),
            Arc::new(self.qty.finish()),
            Arc::new(self.net_eur.finish()),
            Arc::new(self.cogs_eur.finish()),
            Arc::new(self.utm_source.finish()),
            Arc::new(self.country_code.finish()),
            Arc::new(self.device_type.finish()),
            Arc::new(self.order_status.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(orders_schema(), columns).map_err(|e| Error::Output {
            uri: "generate".into(),
            operation: "build a batch".into(),
            message: e.to_string(),
        })
    }
}

/// Counts of one month's file.
#[derive(Default, Debug, Clone, Copy)]
struct MonthStats {
    lines: u64,
    /// Orders placed in the month.
    orders: u64,
    /// First orders placed in the month.
    customers: u64,
}

/// The Parquet file of one month, opened at its first batch (an empty month has no file).
struct MonthFile<'a> {
    loc: &'a Location,
    rel: String,
    handle: &'a Handle,
    writer: Option<AsyncArrowWriter<BufWriter>>,
}

impl MonthFile<'_> {
    fn err(&self, operation: &str, e: impl std::fmt::Display) -> Error {
        Error::Output {
            uri: self.loc.display(&self.rel),
            operation: operation.into(),
            message: redact(&e.to_string()),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let upload = BufWriter::with_capacity(
                self.loc.store.clone(),
                self.loc.path(&self.rel),
                PART_BYTES,
            )
            .with_max_concurrency(PARTS_IN_FLIGHT);
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .set_statistics_enabled(EnabledStatistics::Page)
                // Nearly unique per row or order: a dictionary only costs time (and 16 %
                // more bytes, measured on 1 M lines); the other columns keep theirs.
                .set_column_dictionary_enabled("order_no".into(), false)
                .set_column_dictionary_enabled("created_at".into(), false)
                .set_column_dictionary_enabled("cogs_eur".into(), false)
                .build();
            let writer = AsyncArrowWriter::try_new(upload, orders_schema(), Some(props))
                .map_err(|e| self.err("open", e))?;
            self.writer = Some(writer);
        }
        let handle = self.handle;
        let result = match self.writer.as_mut() {
            Some(w) => handle.block_on(w.write(batch)),
            None => Ok(()),
        };
        result.map_err(|e| self.err("write", e))
    }

    /// Finishes the file (footer, last part, completes the upload).
    fn close(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => self
                .handle
                .block_on(w.close())
                .map(|_| ())
                .map_err(|e| self.err("close", e)),
            None => Ok(()),
        }
    }

    /// Abandons the file: aborts its multipart upload (nothing becomes visible).
    fn abort(&mut self) {
        if let Some(w) = self.writer.take() {
            let mut upload = w.into_inner();
            if let Err(e) = self.handle.block_on(upload.abort()) {
                tracing::warn!(file = %self.loc.display(&self.rel), error = %redact(&e.to_string()), "cannot abort an upload");
            }
        }
    }
}

/// State the worker threads share.
struct Shared {
    plan: Plan,
    loc: Location,
    stop: AtomicBool,
    next_month: AtomicUsize,
    progress: ProgressBar,
}

/// Writes month `m`: `Ok(None)` when stopped (the file abandoned).
fn write_month(shared: &Shared, handle: &Handle, m: usize) -> Result<Option<MonthStats>> {
    let mut file = MonthFile {
        loc: &shared.loc,
        rel: format!("month={}/part-0.parquet", shared.plan.months[m].label),
        handle,
        writer: None,
    };
    let generated = shared
        .plan
        .generate_month(m, &shared.stop, &mut |batch: RecordBatch| {
            file.write(&batch)?;
            shared.progress.inc(batch.num_rows() as u64);
            Ok(())
        });
    match generated {
        Ok(Some(stats)) => {
            file.close()?;
            handle.block_on(failpoint::hit("generate_file_written"));
            Ok(Some(stats))
        }
        Ok(None) => {
            file.abort();
            Ok(None)
        }
        Err(e) => {
            file.abort();
            Err(e)
        }
    }
}

/// Runs the worker threads until every month is written, one stops, or `stop` is raised.
fn write_all_months(shared: &Shared, handle: &Handle, threads: usize) -> Result<Vec<MonthStats>> {
    let worker = || -> Result<Vec<MonthStats>> {
        let mut done = Vec::new();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let m = shared.next_month.fetch_add(1, Ordering::Relaxed);
            if m >= shared.plan.months.len() {
                return Ok(done);
            }
            match write_month(shared, handle, m) {
                Ok(Some(stats)) => done.push(stats),
                Ok(None) => return Ok(done),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        workers.into_iter().map(|w| w.join()).collect()
    });
    let mut all = Vec::new();
    for r in results {
        match r {
            Ok(Ok(stats)) => all.extend(stats),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Output {
                    uri: shared.loc.uri.clone(),
                    operation: "generate".into(),
                    message: "a worker thread panicked".into(),
                })
            }
        }
    }
    Ok(all)
}

/// Resolves `--out`: a URL as it is, a local path made absolute.
fn resolve_out(out: &str) -> Result<Location> {
    if out.trim().is_empty() {
        return Err(arg("--out", "must not be empty"));
    }
    let uri = if out.contains("://") {
        out.to_string()
    } else {
        let cwd =
            std::env::current_dir().map_err(|e| Error::io("read working directory", ".", e))?;
        crate::config::absolute(std::path::Path::new(out), &cwd)
            .to_string_lossy()
            .into_owned()
    };
    Location::resolve(&uri, &S3Settings::default())
}

/// Refuses an output that already holds anything. Returns whether a local output
/// directory existed before (it is kept when clean-up removes what was written).
async fn ensure_empty(loc: &Location) -> Result<bool> {
    if let Some(dir) = &loc.local {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Output {
                uri: loc.uri.clone(),
                operation: "open".into(),
                message: "exists and is not a directory".into(),
            });
        }
        return match std::fs::read_dir(dir) {
            Ok(mut entries) => match entries.next() {
                None => Ok(true),
                Some(entry) => Err(Error::OutputNotEmpty {
                    uri: loc.uri.clone(),
                    found: entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .unwrap_or_else(|e| e.to_string()),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("list", dir, e)),
        };
    }
    let prefix = loc.path("");
    let first = retrying("list", || async {
        loc.store.list(Some(&prefix)).next().await.transpose()
    })
    .await
    .map_err(|e| Error::Output {
        uri: loc.uri.clone(),
        operation: "list".into(),
        message: redact(&e.to_string()),
    })?;
    match first {
        None => Ok(false),
        Some(meta) => Err(Error::OutputNotEmpty {
            uri: loc.uri.clone(),
            found: loc
                .rel(&meta.location)
                .unwrap_or_else(|| meta.location.to_string()),
        }),
    }
}

/// Removes everything written under the output (which was empty before), keeping a local
/// output directory that existed. Returns a sentence for the error message.
async fn remove_written(loc: &Location, months: &[Month], local_dir_existed: bool) -> String {
    if let Some(dir) = &loc.local {
        let mut failed = Vec::new();
        for m in months {
            let p = dir.join(format!("month={}", m.label));
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}: {e}", p.display())),
            }
        }
        if !local_dir_existed {
            let _ = std::fs::remove_dir(dir);
        }
        return if failed.is_empty() {
            "everything written there was removed".into()
        } else {
            format!(
                "could not remove what was written, remove it by hand: {}",
                failed.join("; ")
            )
        };
    }
    let listed = match retrying("list", || loc.list("")).await {
        Ok(l) => l,
        Err(e) => {
            return format!(
                "could not list what was written, remove it by hand: {}",
                redact(&e.to_string())
            )
        }
    };
    let mut failed = 0usize;
    for meta in listed {
        match retrying("delete", || loc.store.delete(&meta.location)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(_) => failed += 1,
        }
    }
    if failed == 0 {
        "everything written there was removed".into()
    } else {
        format!("could not delete {failed} object(s) written there, remove them by hand")
    }
}

fn progress_bar(show: bool, target: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} lines ({rate}, ETA {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} lines/s", s.per_sec());
    })
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Generates the order history into `o.out`: validates the flags, refuses a non-empty
/// output, calibrates, writes every month. On an error or SIGTERM/SIGINT it removes
/// everything it wrote and returns [`Error::GenerateStopped`].
pub async fn generate(o: &GenerateOptions) -> Result<GenerateSummary> {
    let clock = Instant::now();
    let mut plan = Plan::new(o)?;
    let loc = resolve_out(&o.out)?;
    let local_dir_existed = ensure_empty(&loc).await?;
    let mut shutdown = Shutdown::install()?;
    let stopped = |reason: String, cleanup: &str| Error::GenerateStopped {
        uri: loc.uri.clone(),
        reason,
        cleanup: cleanup.to_string(),
    };
    tracing::info!(
        out = %loc.uri,
        lines = o.lines,
        customers = plan.customers,
        months = plan.months.len(),
        seed = o.seed,
        "generating"
    );

    // Calibrate (CPU only, nothing written yet).
    let stop = Arc::new(AtomicBool::new(false));
    let threads = o.threads;
    let mut calibration = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || plan.calibrate(threads, &stop).map(|s| (plan, s))
    });
    let calibrated = tokio::select! {
        r = &mut calibration => r,
        signal = shutdown.wait() => {
            stop.store(true, Ordering::Relaxed);
            let _ = calibration.await;
            return Err(stopped(format!("interrupted by {signal}"), "nothing was written"));
        }
    };
    match calibrated {
        Ok(Ok((p, Some(scale)))) => {
            plan = p;
            plan.scale = scale;
        }
        Ok(Ok((_, None))) => return Err(stopped("stopped".into(), "nothing was written")),
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(stopped(e.to_string(), "nothing was written")),
    }

    // Write the months.
    let progress = progress_bar(o.progress, o.lines);
    let shared = Arc::new(Shared {
        plan,
        loc: loc.clone(),
        stop: AtomicBool::new(false),
        next_month: AtomicUsize::new(0),
        progress: progress.clone(),
    });
    let threads = o.threads.min(shared.plan.months.len()).max(1);
    let handle = Handle::current();
    let mut writing = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || write_all_months(&shared, &handle, threads)
    });
    let written = tokio::select! {
        r = &mut writing => r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
        signal = shutdown.wait() => {
            progress.suspend(|| tracing::warn!(signal, "stopping: waiting for the workers, then removing what was written"));
            shared.stop.store(true, Ordering::Relaxed);
            let _ = writing.await;
            Err(format!("interrupted by {signal}"))
        }
    };
    progress.finish_and_clear();
    let listed = match written {
        Ok(stats) => retrying("list", || loc.list(""))
            .await
            .map(|l| (stats, l))
            .map_err(|e| format!("list the written files: {}", redact(&e.to_string()))),
        Err(e) => Err(e),
    };
    let (stats, listed) = match listed {
        Ok(x) => x,
        Err(reason) => {
            let cleanup = remove_written(&loc, &shared.plan.months, local_dir_existed).await;
            return Err(stopped(reason, &cleanup));
        }
    };

    let mut months: Vec<String> = listed
        .iter()
        .filter_map(|m| loc.rel(&m.location))
        .filter_map(|rel| {
            rel.strip_prefix("month=")
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .collect();
    months.sort();
    months.dedup();
    Ok(GenerateSummary {
        uri: loc.uri.clone(),
        target_lines: o.lines,
        lines: stats.iter().map(|s| s.lines).sum(),
        orders: stats.iter().map(|s| s.orders).sum(),
        customers: stats.iter().map(|s| s.customers).sum(),
        months: months.len(),
        first_month: months.first().cloned().unwrap_or_default(),
        last_month: months.last().cloned().unwrap_or_default(),
        files: listed.len(),
        bytes: listed.iter().map(|m| m.size).sum(),
        seconds: clock.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(lines: u64) -> GenerateOptions {
        GenerateOptions {
            lines,
            ..Default::default()
        }
    }

    #[test]
    fn unit_draws_lie_in_the_open_interval_and_depend_on_every_key() {
        let base = unit(1, 2, 3, 4);
        assert!(base > 0.0 && base < 1.0);
        assert_eq!(base, unit(1, 2, 3, 4));
        for other in [
            unit(9, 2, 3, 4),
            unit(1, 9, 3, 4),
            unit(1, 2, 9, 4),
            unit(1, 2, 3, 9),
        ] {
            assert_ne!(base, other);
        }
        let n = 200_000;
        let mean = (0..n).map(|i| unit(7, i, 0, 1)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((0..n).all(|i| {
            let u = unit(7, 0, i, 1);
            u > 0.0 && u < 1.0
        }));
    }

    #[test]
    fn weights_pick_in_proportion() {
        let w = Weights::new(LINES_PER_ORDER);
        let n = 100_000;
        let mut counts = [0u32; 5];
        for i in 0..n {
            counts[w.pick(unit(3, i, 0, 0))] += 1;
        }
        for (c, weight) in counts.iter().zip(LINES_PER_ORDER) {
            let share = *c as f64 / n as f64;
            assert!((share - weight / 100.0).abs() < 0.01, "{counts:?}");
        }
        assert_eq!(w.pick(0.9999999), 4);
    }

    #[test]
    fn expected_lines_per_order_is_the_python_value() {
        // 2.62 lines + 0.97 * 0.05 * (1 + 0.5 * 1.62) refunds + 0.97 * 0.0002 * 2.62 dups
        let expected = 2.62 + 0.97 * 0.05 * 1.81 + 0.97 * 0.0002 * 2.62;
        assert!((expected_lines_per_order() - expected).abs() < 1e-12);
    }

    #[test]
    fn written_schema_equals_the_demo_source_schema() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/demo/orders/year=2024/part-0.parquet"
        );
        let file = std::fs::File::open(path).unwrap();
        let demo = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .schema()
            .clone();
        let ours = orders_schema();
        assert_eq!(demo.fields(), ours.fields());
    }

    #[test]
    fn generate_rejects_bad_flags_naming_them() {
        let flag = |o: GenerateOptions| match Plan::new(&o) {
            Err(Error::Argument { flag, .. }) => flag,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            flag(GenerateOptions {
                customers: Some(1000),
                ..options(2000)
            }),
            "--lines"
        );
        assert_eq!(
            flag(GenerateOptions {
                months: 0,
                ..options(2000)
            }),
            "--months"
        );
        assert_eq!(
            flag(GenerateOptions {
                months: 601,
                ..options(2000)
            }),
            "--months"
        );
        assert_eq!(
            flag(GenerateOptions {
                end: "2026-02-30".into(),
                ..options(2000)
            }),
            "--end"
        );
        assert_eq!(flag(options(MAX_LINES + 1)), "--lines");
        assert_eq!(
            flag(GenerateOptions {
                customers: Some(0),
                ..options(2000)
            }),
            "--customers"
        );
    }

    #[test]
    fn months_cover_the_period_up_to_the_end_day() {
        let plan = Plan::new(&GenerateOptions {
            months: 3,
            end: "2026-02-10".into(),
            ..options(2000)
        })
        .unwrap();
        let labels: Vec<_> = plan.months.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["2025-12", "2026-01", "2026-02"]);
        assert_eq!(plan.n_days, 31 + 31 + 10);
        assert_eq!(plan.months[2].first_day, 62);
        assert_eq!(plan.months[2].end_day, 72);
        // 2025-12-01T00:00:00Z .. 2026-02-10T23:59:59.999Z
        assert_eq!(plan.start_ms, 1_764_547_200_000);
        assert_eq!(plan.end_ms, plan.start_ms + 72 * DAY_MS - 1);
    }

    #[test]
    fn calibration_hits_the_target_order_count() {
        let plan = Plan::new(&options(200_000)).unwrap();
        let stop = AtomicBool::new(false);
        let s = plan.calibrate(2, &stop).unwrap().unwrap();
        let target = 200_000.0 / expected_lines_per_order();
        let orders = plan.total_orders(s, 1, &stop).unwrap() as f64;
        assert!(
            (orders - target).abs() / target < 1e-3,
            "{orders} vs {target}"
        );
        // The thread count does not change the sum.
        assert_eq!(
            plan.total_orders(s, 1, &stop),
            plan.total_orders(s, 3, &stop)
        );
    }

    #[test]
    fn skus_and_prices_follow_the_catalogue() {
        let plan = Plan::new(&options(2000)).unwrap();
        assert_eq!(plan.skus[0][41], "APP-00042");
        for (ci, c) in CATEGORIES.iter().enumerate() {
            for &p in &plan.unit_cents[ci] {
                assert!(p >= 199, "{p}");
                assert!(p <= (c.max_price as i64) * 100 + 99, "{} {p}", c.name);
                assert!([99, 95, 49, 0].contains(&(p % 100)) || p == 199);
            }
        }
    }
}
