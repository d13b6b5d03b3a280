//! The synthetic population: customers, their purchase rates and drop-out, orders and
//! lines, all drawn from [`unit`] so that a seed gives the same history on any number of
//! threads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{Datelike, Months, NaiveDate, NaiveTime};

use crate::error::{Error, Result};

use super::*;

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
pub(super) struct Category {
    pub(crate) name: &'static str,
    prefix: &'static str,
    skus: u32,
    min_price: f64,
    pub(crate) max_price: f64,
    weight: f64,
}

pub(super) const fn cat(
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

pub(super) const CATEGORIES: [Category; 10] = [
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
pub(super) const CHANNELS: [(&str, f64, f64); 8] = [
    ("organic", 26.0, 30.0),
    ("paid_search", 22.0, 12.0),
    ("social", 16.0, 8.0),
    ("affiliate", 10.0, 4.0),
    ("referral", 7.0, 4.0),
    ("direct", 7.0, 12.0),
    ("email", 6.0, 28.0),
    ("display", 6.0, 2.0),
];
pub(super) const COUNTRIES: [(&str, f64); 15] = [
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
pub(super) const DEVICES: [(&str, f64); 3] =
    [("mobile", 55.0), ("desktop", 35.0), ("tablet", 10.0)];
/// Weights of 1..=5 lines per order (mean 2.62).
pub(super) const LINES_PER_ORDER: [f64; 5] = [22.0, 30.0, 23.0, 14.0, 11.0];
/// Weights of a line's quantity 1..=4.
pub(super) const QTY: [f64; 4] = [82.0, 12.0, 4.0, 2.0];
/// Weights of the hour of day (evening peak).
pub(super) const HOUR_WEIGHTS: [f64; 24] = [
    2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 6.0, 7.0, 7.0, 8.0, 9.0, 8.0, 7.0, 7.0, 8.0, 9.0, 11.0,
    13.0, 14.0, 13.0, 9.0, 5.0,
];
/// Discounts of the discounted lines, picked uniformly.
pub(super) const DISCOUNTS: [f64; 4] = [0.10, 0.15, 0.20, 0.30];
/// Price endings in cents (x.99, x.95, x.49, x.00), picked uniformly per SKU.
pub(super) const PRICE_ENDINGS: [i64; 4] = [99, 95, 49, 0];

pub(super) const P_NULL_CHANNEL: f64 = 0.01;
pub(super) const P_NULL_CATEGORY: f64 = 0.005;
pub(super) const P_CANCELLED: f64 = 0.03;
/// Of completed orders at least 3 days before the end.
pub(super) const P_RETURNED: f64 = 0.05;
/// Each further line of a returned order is refunded too with this probability.
pub(super) const P_REFUND_EXTRA_LINE: f64 = 0.5;
/// Exact duplicate rows (double-ingested lines of orders that are not cancelled).
pub(super) const P_DUPLICATE: f64 = 0.0002;
/// Never come back after the first order.
pub(super) const P_ONE_TIME: f64 = 0.30;
/// Of the others: drop out after an exponential lifetime.
pub(super) const P_LAPSING: f64 = 0.45;
pub(super) const MEAN_LIFETIME_DAYS: f64 = 330.0;
/// Gamma shape of the purchase rates (a multiple of 0.5).
pub(super) const RATE_SHAPE: f64 = 1.0;
/// Acquired in the Black Friday .. Christmas window (20 Nov + 0..34 days) of some year.
pub(super) const P_XMAS: f64 = 0.12;
pub(super) const XMAS_WINDOW_DAYS: usize = 34;
/// Repeat orders via the customer's usual channel / device.
pub(super) const P_PREFERRED_CHANNEL: f64 = 0.7;
pub(super) const P_PREFERRED_DEVICE: f64 = 0.8;
pub(super) const P_DISCOUNTED: f64 = 0.15;
/// A customer's favourite category share lies in FAV_SHARE_MIN + [0, FAV_SHARE_SPAN).
pub(super) const FAV_SHARE_MIN: f64 = 0.2;
pub(super) const FAV_SHARE_SPAN: f64 = 0.5;
/// Cost of goods = net × (COGS_MIN + COGS_SPAN u).
pub(super) const COGS_MIN: f64 = 0.40;
pub(super) const COGS_SPAN: f64 = 0.30;
/// SKU popularity: sku = floor(n × u^SKU_SKEW) + 1.
pub(super) const SKU_SKEW: f64 = 2.5;
pub(super) const MAX_REPEATS: f64 = 2000.0;
/// Refunds come 3 + 0..28 days (+ up to 8 hours) after their order.
pub(super) const REFUND_MIN_DAYS: i64 = 3;
pub(super) const REFUND_SPREAD_DAYS: usize = 28;
pub(super) const REFUND_SPREAD_MS: f64 = 8.0 * HOUR_MS as f64;
/// A refund is at most this many calendar days after its order's day.
pub(super) const REFUND_MAX_DAYS: i64 = REFUND_MIN_DAYS + REFUND_SPREAD_DAYS as i64;

pub(super) const DAY_MS: i64 = 86_400_000;
pub(super) const HOUR_MS: i64 = 3_600_000;
/// Rows per Arrow batch handed to the Parquet writer.
pub(super) const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group (DuckDB's default, as the Python generator wrote).
pub(super) const ROW_GROUP_ROWS: usize = 122_880;
/// Multipart part size and parts in flight per file: bounds upload memory per worker.
pub(super) const PART_BYTES: usize = 8 * 1024 * 1024;
pub(super) const PARTS_IN_FLIGHT: usize = 2;

// Streams of the draws (see the module doc): customer, order, line, SKU.
pub(super) const S_ACQ_GROWING: u64 = 1;
pub(super) const S_ACQ_X: u64 = 2;
pub(super) const S_XMAS: u64 = 3;
pub(super) const S_XMAS_YEAR: u64 = 4;
pub(super) const S_XMAS_DAY: u64 = 5;
pub(super) const S_ONE_TIME: u64 = 6;
pub(super) const S_RATE: u64 = 7;
pub(super) const S_RATE_NORMAL_ANGLE: u64 = 8;
pub(super) const S_LAPSING: u64 = 9;
pub(super) const S_LIFETIME: u64 = 10;
pub(super) const S_REPEATS: u64 = 11;
pub(super) const S_COUNTRY: u64 = 12;
pub(super) const S_CHANNEL: u64 = 13;
pub(super) const S_DEVICE: u64 = 14;
pub(super) const S_FAV_CATEGORY: u64 = 15;
pub(super) const S_FAV_SHARE: u64 = 16;
pub(super) const S_ORDER_DAY: u64 = 20;
pub(super) const S_NULL_CHANNEL: u64 = 21;
pub(super) const S_KEEP_CHANNEL: u64 = 22;
pub(super) const S_REPEAT_CHANNEL: u64 = 23;
pub(super) const S_KEEP_DEVICE: u64 = 24;
pub(super) const S_OTHER_DEVICE: u64 = 25;
pub(super) const S_CANCELLED: u64 = 26;
pub(super) const S_LINES: u64 = 27;
pub(super) const S_RETURNED: u64 = 28;
pub(super) const S_REFUND_PICK: u64 = 29;
pub(super) const S_HOUR: u64 = 90;
pub(super) const S_MILLISECOND: u64 = 91;
pub(super) const S_FAV_LINE: u64 = 30;
pub(super) const S_CATEGORY: u64 = 31;
pub(super) const S_REFUND_EXTRA: u64 = 32;
pub(super) const S_DUPLICATE: u64 = 33;
pub(super) const S_SKU: u64 = 34;
pub(super) const S_QTY: u64 = 35;
pub(super) const S_PRICE: u64 = 36;
pub(super) const S_PRICE_ENDING: u64 = 37;
pub(super) const S_DISCOUNTED: u64 = 38;
pub(super) const S_DISCOUNT: u64 = 39;
pub(super) const S_COGS: u64 = 40;
pub(super) const S_REFUND_DAYS: u64 = 41;
pub(super) const S_REFUND_MS: u64 = 42;
pub(super) const S_NULL_CATEGORY: u64 = 43;

/// splitmix64's increment and finaliser: a bijection with full avalanche.
pub(super) const fn mix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash of `(seed, a, b)`, from which [`draw`] derives each stream's uniform.
pub(super) fn key(seed: u64, a: u64, b: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ a) ^ b)
}

/// The uniform of `stream` under a [`key`]: 53 bits, strictly inside (0, 1).
pub(super) fn draw(key: u64, stream: u64) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    ((mix64(key ^ stream) >> 11) as f64 + 0.5) * SCALE
}

/// A uniform number in (0, 1), a pure function of `(seed, a, b, stream)`: the only source
/// of randomness of the generator (counter-based, so order and threads do not matter).
pub fn unit(seed: u64, a: u64, b: u64, stream: u64) -> f64 {
    draw(key(seed, a, b), stream)
}

/// `floor(u × n)` for a uniform `u`, kept below `n` (u × n can round up to n).
pub(super) fn index(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n.saturating_sub(1))
}

/// Picks an index by weight for a uniform `u`, like the Python script's CASE expressions.
pub(super) struct Weights {
    /// Cumulative share after each item but the last.
    thresholds: Vec<f64>,
}

impl Weights {
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Weights {
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

    pub(crate) fn pick(&self, u: f64) -> usize {
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

/// One calendar month of the history, as day offsets from the first day.
pub(super) struct Month {
    pub(crate) label: String,
    pub(crate) first_day: i64,
    /// Exclusive; the day after `--end` for the last month.
    pub(crate) end_day: i64,
}

/// Parameters of a customer that decide how many orders it places and when.
pub(super) struct Core {
    a_day: i64,
    active_days: f64,
    rate: f64,
    /// -ln(u) of the geometric draw of the repeat count.
    neg_ln_u: f64,
}

/// A customer's other parameters (indices into the tables).
pub(super) struct Profile {
    country: usize,
    channel: usize,
    device: usize,
    fav_category: usize,
    fav_share: f64,
}

pub(super) struct Order {
    ts: i64,
    channel: Option<usize>,
    device: usize,
    cancelled: bool,
    lines: usize,
    returned: bool,
    refund_pick: usize,
}

/// Everything derived from the options: the period, the tables, the rate scale.
pub(super) struct Plan {
    seed: u64,
    pub(crate) customers: u64,
    target_lines: u64,
    pub(crate) n_days: i64,
    pub(crate) start_ms: i64,
    /// The last millisecond of `--end`.
    pub(crate) end_ms: i64,
    /// Day offset of 20 November of each year of the period.
    xmas_start: Vec<i64>,
    pub(crate) months: Vec<Month>,
    /// Scale of the purchase rates, calibrated to the target line count.
    pub(crate) scale: f64,
    countries: Weights,
    channels: Weights,
    repeat_channels: Weights,
    devices: Weights,
    categories: Weights,
    lines_per_order: Weights,
    qty: Weights,
    hours: Weights,
    /// `PREFIX-00042` of every SKU, per category.
    pub(crate) skus: Vec<Vec<String>>,
    /// Unit price in cents of every SKU, per category.
    pub(crate) unit_cents: Vec<Vec<i64>>,
}

pub(super) fn arg(flag: &'static str, message: impl Into<String>) -> Error {
    Error::Argument {
        flag,
        message: message.into(),
    }
}

impl Plan {
    pub(crate) fn new(o: &GenerateOptions) -> Result<Plan> {
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
    pub(crate) fn total_orders(&self, s: f64, threads: usize, stop: &AtomicBool) -> Option<u64> {
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
    pub(crate) fn calibrate(&self, threads: usize, stop: &AtomicBool) -> Result<Option<f64>> {
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
    pub(crate) fn generate_month(
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
