//! Incremental nightly runs: a run that finds a state it can trust reads only the new lines
//! and publishes exactly what a full run publishes; anything it cannot trust runs in full
//! and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::util::{display_rows, manifest, run_at, segflow, sorted_dump, write_columns};

const DAY_US: i64 = 86_400 * 1_000_000;
/// 2026-01-01, the history's first day, in µs since the epoch.
const FIRST_DAY_US: i64 = 20_454 * DAY_US;

/// One order line of the generated history.
#[derive(Clone)]
struct Line {
    customer: String,
    order: String,
    ts: i64,
    revenue: f64,
    quantity: i64,
    cost: Option<f64>,
    category: Option<String>,
    channel: Option<String>,
    status: &'static str,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A 40-day history, one export file per day. File `d` holds the lines created on day `d`
/// (a few cancelled), and also: late lines of orders of the previous five days (some timed
/// before the order's first line), refunds of earlier orders (status `returned`, negative
/// revenue, dated day `d`), and a line already dated day `d + 1` (an export that ran past
/// midnight: invisible to as_of `d`, read by the next run from this old file).
fn history() -> Vec<Vec<Line>> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let categories = ["books", "garden", "toys", "audio"];
    let channels = ["email", "search", "social"];
    let mut orders: Vec<(usize, Line)> = Vec::new();
    let mut files = Vec::new();
    for d in 0..40usize {
        let day = FIRST_DAY_US + d as i64 * DAY_US;
        let mut file = Vec::new();
        for i in 0..(10 + rng.below(8)) {
            let customer = format!("C{:03}", rng.below(45));
            let order = format!("O{d:02}-{i:02}");
            let ts = day + (rng.below(86_000) as i64) * 1_000_000;
            let channel = (!rng.chance(10)).then(|| channels[rng.below(3) as usize].to_string());
            let cancelled = rng.chance(6);
            for _ in 0..(1 + rng.below(3)) {
                let revenue = (100 + rng.below(9_900)) as f64 / 100.0;
                let line = Line {
                    customer: customer.clone(),
                    order: order.clone(),
                    ts,
                    revenue,
                    quantity: 1 + rng.below(3) as i64,
                    cost: (!rng.chance(20)).then_some((revenue * 0.6 * 100.0).round() / 100.0),
                    category: (!rng.chance(10))
                        .then(|| categories[rng.below(4) as usize].to_string()),
                    channel: channel.clone(),
                    status: if cancelled { "cancelled" } else { "complete" },
                };
                if !cancelled {
                    orders.push((d, line.clone()));
                }
                file.push(line);
            }
        }
        if d >= 2 {
            // Late lines of recent orders, one of them earlier than the order's first line.
            for k in 0..3 {
                let recent: Vec<&(usize, Line)> = orders
                    .iter()
                    .filter(|(od, _)| *od + 5 >= d && *od < d)
                    .collect();
                if recent.is_empty() {
                    break;
                }
                let (_, o) = recent[rng.below(recent.len() as u64) as usize];
                let mut late = o.clone();
                late.revenue = (100 + rng.below(5_000)) as f64 / 100.0;
                late.category = Some(categories[rng.below(4) as usize].to_string());
                if k == 0 {
                    late.ts -= 3_600 * 1_000_000;
                    late.channel = Some("affiliate".into());
                }
                file.push(late);
            }
            // A refund of an earlier order.
            let (_, o) = &orders[rng.below(orders.len() as u64) as usize];
            let mut refund = o.clone();
            refund.revenue = -o.revenue;
            refund.cost = None;
            refund.ts = day + 43_200 * 1_000_000;
            refund.status = "returned";
            file.push(refund);
        }
        if d + 1 < 40 {
            file.push(Line {
                customer: format!("C{:03}", rng.below(45)),
                order: format!("O{d:02}-next"),
                ts: day + DAY_US + 1_800 * 1_000_000,
                revenue: 42.5,
                quantity: 1,
                cost: Some(20.0),
                category: Some("books".into()),
                channel: Some("email".into()),
                status: "complete",
            });
        }
        files.push(file);
    }
    files
}

fn write_lines(path: &Path, lines: &[Line]) {
    let strings = |f: &dyn Fn(&Line) -> Option<String>| -> ArrayRef {
        Arc::new(lines.iter().map(f).collect::<StringArray>())
    };
    write_columns(
        path,
        vec![
            ("customer_id", strings(&|l| Some(l.customer.clone())), false),
            ("order_id", strings(&|l| Some(l.order.clone())), false),
            (
                "order_ts",
                Arc::new(TimestampMicrosecondArray::from(
                    lines.iter().map(|l| l.ts).collect::<Vec<_>>(),
                )),
                false,
            ),
            (
                "revenue",
                Arc::new(Float64Array::from(
                    lines.iter().map(|l| l.revenue).collect::<Vec<_>>(),
                )),
                false,
            ),
            (
                "quantity",
                Arc::new(Int64Array::from(
                    lines.iter().map(|l| l.quantity).collect::<Vec<_>>(),
                )),
                false,
            ),
            (
                "cost",
                Arc::new(Float64Array::from(
                    lines.iter().map(|l| l.cost).collect::<Vec<_>>(),
                )),
                true,
            ),
            ("category", strings(&|l| l.category.clone()), true),
            ("channel", strings(&|l| l.channel.clone()), true),
            ("status", strings(&|l| Some(l.status.to_string())), false),
        ],
    );
}

/// The date of day `d` of the history.
fn date(d: usize) -> String {
    (chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Duration::days(d as i64))
        .to_string()
}

/// A user's own incremental model (lines per category and day) and a published model
/// reading it.
fn write_models(dir: &Path, count: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("category_days.sql"),
        format!(
            r#"/*---
description = "Lines and units per category and day."
grain = ["category", "order_date"]
publish = false
materialized = "incremental"
merge = """
select category, order_date, sum(lines) as lines, sum(units) as units
from (select * from state union all select * from slice) u
group by category, order_date
"""
---*/
select coalesce(category, 'none') as category, order_date,
       {count} as lines, sum(quantity) as units
from orders
group by 1, 2
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("category_daily.sql"),
        "/*---\ndescription = \"Lines per category and day.\"\ngrain = [\"category\", \"order_date\"]\n---*/\nselect * from category_days\n",
    )
    .unwrap();
    // Incremental over an incremental model: each customer's rows are recomputed from all
    // of that customer's kept categories when new lines touch the customer.
    std::fs::write(
        dir.join("category_shares.sql"),
        r#"/*---
description = "Each customer's share of purchase revenue per category."
grain = ["customer_id", "category"]
publish = false
materialized = "incremental"
merge = "select * from slice"
---*/
select customer_id, category, revenue,
       revenue / sum(revenue) over (partition by customer_id) as share,
       count(*) over (partition by customer_id) as categories
from customer_category_spend
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("customer_category_shares.sql"),
        "/*---\ndescription = \"Shares.\"\ngrain = [\"customer_id\", \"category\"]\n---*/\nselect * from category_shares\n",
    )
    .unwrap();
}

fn write_config(dir: &Path, out: &Path) -> PathBuf {
    let config = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &config,
        format!(
            r#"[input.orders]
uri = "{orders}"
drop_status = ["cancelled"]
return_status = ["returned"]

[output]
uri = "{out}"

[models]
paths = ["{models}"]

[datafusion]
"execution.target_partitions" = "2"
"#,
            orders = dir.join("orders").display(),
            out = out.display(),
            models = dir.join("models").display(),
        ),
    )
    .unwrap();
    config
}

/// Every row of a folder of Parquet files (hive partition columns `partitions` read from
/// the folder names), sorted, as display strings.
async fn folder_rows(dir: &Path, partitions: Vec<String>) -> Vec<String> {
    let ctx = SessionContext::new();
    let parts = partitions
        .into_iter()
        .map(|p| (p, DataType::Utf8))
        .collect();
    let df = ctx
        .read_parquet(
            format!("{}/", dir.display()),
            ParquetReadOptions::default().table_partition_cols(parts),
        )
        .await
        .unwrap();
    sorted_dump(&display_rows(&df.collect().await.unwrap()))
}

/// Each published table and each kept state table of snapshot `as_of`, as sorted rows.
async fn snapshot_rows(out: &Path, as_of: &str) -> BTreeMap<String, Vec<String>> {
    let m = manifest(out, as_of);
    let mut tables = BTreeMap::new();
    for (name, entry) in m["tables"].as_object().unwrap() {
        let partitions = match entry["rows"].as_u64() {
            Some(0) => vec![],
            _ => entry["partition_by"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect(),
        };
        let dir = out.join(entry["path"].as_str().unwrap());
        tables.insert(name.clone(), folder_rows(&dir, partitions).await);
    }
    for (name, table) in m["state"]["tables"].as_object().unwrap() {
        tables.insert(format!("_state/{name}"), state_rows(out, table).await);
    }
    tables
}

fn listed(out: &Path, files: &serde_json::Value) -> Vec<String> {
    files
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| out.join(f.as_str().unwrap()).display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The rows a kept state table holds, from the files its manifest entry lists: the base
/// layer's rows of a grain the delta layer does not hold, and the delta's rows.
async fn state_rows(out: &Path, table: &serde_json::Value) -> Vec<String> {
    let ctx = SessionContext::new();
    let base = listed(out, &table["files"]);
    let delta = listed(out, &table["delta"]);
    let read = |files: Vec<String>| {
        let ctx = ctx.clone();
        async move {
            ctx.read_parquet(files, ParquetReadOptions::default())
                .await
                .unwrap()
                .into_view()
        }
    };
    ctx.register_table("base", read(base).await).unwrap();
    let sql = if delta.is_empty() {
        "select * from base".to_string()
    } else {
        ctx.register_table("delta", read(delta).await).unwrap();
        let same = table["grain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| format!("d.{g} = b.{g}", g = g.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" and ");
        format!(
            "select * from base b where not exists (select 1 from delta d where {same}) \
             union all select * from delta"
        )
    };
    let df = ctx.sql(&sql).await.unwrap();
    sorted_dump(&display_rows(&df.collect().await.unwrap()))
}

/// Every file under the output's `_state/`, relative to the output.
fn state_files_on_disk(out: &Path) -> std::collections::BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, found: &mut std::collections::BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, found);
            } else {
                found.insert(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut found = std::collections::BTreeSet::new();
    walk(out, &out.join("_state"), &mut found);
    found
}

/// Every state file the kept manifests list.
fn state_files_listed(out: &Path) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(out.join("_manifest")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("as_of=") && name.ends_with(".json") {
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
            for t in m["state"]["tables"].as_object().into_iter().flatten() {
                for key in ["files", "delta"] {
                    for f in t.1[key].as_array().into_iter().flatten() {
                        found.insert(f.as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    found
}

/// The orders folder, the user's models, and two outputs with their configs: one run
/// incremental where it can be, one with `--full-refresh`.
struct Outputs {
    orders: PathBuf,
    inc: PathBuf,
    full: PathBuf,
    inc_config: PathBuf,
    full_config: PathBuf,
}

fn outputs(dir: &Path) -> Outputs {
    let orders = dir.join("orders");
    std::fs::create_dir_all(&orders).unwrap();
    write_models(&dir.join("models"), "count(*)");
    let (inc, full) = (dir.join("incremental"), dir.join("full"));
    let (inc_config, full_config) = (write_config(dir, &inc), write_config(dir, &full));
    Outputs {
        orders,
        inc,
        full,
        inc_config,
        full_config,
    }
}

/// Snapshot `as_of` of the incremental output holds the same tables and kept state, row
/// for row, as that of the full one (naming the table that differs).
async fn assert_same_snapshot(inc: &Path, full: &Path, as_of: &str) {
    let (a, b) = (
        snapshot_rows(inc, as_of).await,
        snapshot_rows(full, as_of).await,
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{as_of}: tables"
    );
    for (name, rows) in &a {
        assert!(
            rows == &b[name],
            "{as_of}: table {name} differs between the incremental and the full run\nincremental:\n{}\nfull:\n{}",
            rows.join("\n"),
            b[name].join("\n")
        );
    }
}

/// `segflow run --full-refresh` of `config` for `as_of`.
fn full_refresh(config: &Path, as_of: &str) -> crate::util::Run {
    segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        as_of,
        "--full-refresh",
    ])
}

fn run_info(out: &Path, as_of: &str) -> (String, Option<String>) {
    let m = manifest(out, as_of);
    (
        m["run"]["mode"].as_str().unwrap().to_string(),
        m["run"]["full_reason"].as_str().map(str::to_string),
    )
}

/// 30 consecutive nightly runs over a growing 40-day history (refunds, cancellations, late
/// lines of old orders in new files, a line dated after as_of in an old file), each run
/// incremental where it can be, publish the same tables (and keep the same state) as full
/// runs of the same dates over the same files; a re-exported old file and a changed
/// incremental model each make a run full, named in its manifest.
#[tokio::test(flavor = "multi_thread")]
async fn nightly_incremental_runs_publish_the_same_tables_as_full_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Outputs {
        orders,
        inc,
        full,
        inc_config,
        full_config,
    } = outputs(dir);
    let files = history();
    let file_of = |d: usize| orders.join(format!("day-{d:02}.parquet"));
    for (d, lines) in files.iter().enumerate().take(10) {
        write_lines(&file_of(d), lines);
    }
    let (mut modes, mut shared, mut bases) = (Vec::new(), Vec::new(), Vec::new());
    for d in 10..40 {
        write_lines(&file_of(d), &files[d]);
        if d == 25 {
            // An old file re-exported with a corrected line.
            let mut corrected = files[10].clone();
            corrected[0].revenue += 1.0;
            write_lines(&file_of(10), &corrected);
        }
        if d == 31 {
            write_models(&dir.join("models"), "count(order_id)");
        }
        let as_of = date(d);
        let r = run_at(&inc_config, &as_of);
        assert_eq!(
            r.code, 0,
            "incremental run of {as_of} failed:\n{}",
            r.stderr
        );
        let r = full_refresh(&full_config, &as_of);
        assert_eq!(r.code, 0, "full run of {as_of} failed:\n{}", r.stderr);
        assert_eq!(
            run_info(&full, &as_of),
            ("full".to_string(), Some("--full-refresh".to_string()))
        );
        assert_same_snapshot(&inc, &full, &as_of).await;
        modes.push((d, run_info(&inc, &as_of)));
        // Every state file on disk is one a kept manifest lists, and each listed one exists.
        assert_eq!(
            state_files_on_disk(&inc),
            state_files_listed(&inc),
            "{as_of}: state files"
        );
        if d > 10 {
            let (now, before) = (manifest(&inc, &as_of), manifest(&inc, &date(d - 1)));
            let base = |m: &serde_json::Value| m["state"]["tables"]["customer_days"].clone();
            match base(&now)["files"] == base(&before)["files"] {
                true => shared.push(d),
                false => bases.push(d),
            }
        }
    }
    // Most nights share the base layer and write a delta; some fold the delta into a new base.
    assert!(
        shared.len() > 15 && bases.len() >= 3,
        "nights that shared the base: {shared:?}; that wrote one: {bases:?}"
    );
    let reexported = format!("input changed: {}", file_of(10).display());
    for (d, (mode, reason)) in &modes {
        let expected = match d {
            10 => ("full", Some("no state")),
            25 => ("full", Some(reexported.as_str())),
            31 => ("full", Some("models or config changed")),
            _ => ("incremental", None),
        };
        assert_eq!(
            (mode.as_str(), reason.as_deref()),
            expected,
            "run of {}",
            date(*d)
        );
    }
    // The incremental runs read the new lines only.
    let m = manifest(&inc, &date(39));
    let full_m = manifest(&full, &date(39));
    assert!(
        m["input"]["rows_read"].as_u64().unwrap() * 10
            < full_m["input"]["rows_read"].as_u64().unwrap(),
        "an incremental run read {} rows of {}",
        m["input"]["rows_read"],
        full_m["input"]["rows_read"]
    );
}

/// An incremental night writes only a delta layer and shares the base files of the state it
/// started from; retention and a rerun of an older date delete a state file only when no
/// kept snapshot's state lists it, and the runs after them still publish what full runs do.
#[tokio::test(flavor = "multi_thread")]
async fn nights_share_state_files_which_are_deleted_only_when_no_kept_state_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Outputs {
        orders,
        inc,
        full,
        inc_config,
        full_config,
    } = outputs(dir);
    let text = std::fs::read_to_string(&inc_config).unwrap();
    let kept = text.replacen("[output]\n", "[output]\nkeep_snapshots = 2\n", 1);
    std::fs::write(&inc_config, kept).unwrap();
    let files = history();
    for (d, lines) in files.iter().enumerate().take(13) {
        write_lines(&orders.join(format!("day-{d:02}.parquet")), lines);
    }
    let tables = |m: &serde_json::Value| m["state"]["tables"].as_object().unwrap().clone();
    let bases = |m: &serde_json::Value| -> Vec<serde_json::Value> {
        tables(m).values().map(|t| t["files"].clone()).collect()
    };
    let on_disk_under = |as_of: &str| -> std::collections::BTreeSet<String> {
        state_files_on_disk(&inc)
            .into_iter()
            .filter(|f| f.starts_with(&format!("_state/as_of={as_of}/")))
            .collect()
    };

    assert_eq!(run_at(&inc_config, &date(10)).code, 0);
    let first = manifest(&inc, &date(10));
    let r = run_at(&inc_config, &date(11));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let second = manifest(&inc, &date(11));
    assert_eq!(second["run"]["mode"], "incremental");
    // The night shares every base layer and wrote only its deltas, far smaller.
    assert_eq!(bases(&second), bases(&first));
    let deltas: std::collections::BTreeSet<String> = tables(&second)
        .values()
        .flat_map(|t| t["delta"].as_array().unwrap().clone())
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        deltas.len(),
        tables(&second).len() * 2,
        "one delta file per model and bucket"
    );
    assert_eq!(on_disk_under(&date(11)), deltas);
    let sum = |key: &str| -> u64 {
        tables(&second)
            .values()
            .map(|t| t[key].as_u64().unwrap())
            .sum()
    };
    assert!(
        sum("delta_rows") * 5 < sum("rows"),
        "delta {} rows, base {}",
        sum("delta_rows"),
        sum("rows")
    );

    // Retention (2 snapshots) retires the first snapshot, not its base files: both kept
    // states read them.
    let r = run_at(&inc_config, &date(12));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!inc
        .join(format!("_manifest/as_of={}.json", date(10)))
        .exists());
    // (A table whose delta outgrew a tenth of its base wrote a new base instead.)
    let third = manifest(&inc, &date(12));
    let sharing: Vec<String> = tables(&third)
        .into_iter()
        .filter(|(_, t)| t.get("delta").is_some())
        .map(|(name, t)| {
            assert_eq!(t["files"], tables(&first)[&name]["files"], "{name}");
            name
        })
        .collect();
    assert!(sharing.len() >= 2, "only {sharing:?} kept a delta");
    assert!(!on_disk_under(&date(10)).is_empty());
    assert_eq!(state_files_on_disk(&inc), state_files_listed(&inc));

    // A full rerun of the middle date replaces its deltas with a base of its own; the files
    // of the first snapshot stay, the next night's state shares them.
    let r = full_refresh(&inc_config, &date(11));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rerun = manifest(&inc, &date(11));
    assert!(tables(&rerun).values().all(|t| t.get("delta").is_none()));
    assert!(on_disk_under(&date(11)).is_disjoint(&deltas));
    assert!(!on_disk_under(&date(10)).is_empty());
    assert_eq!(state_files_on_disk(&inc), state_files_listed(&inc));

    // The full output's run of the twelfth date, on the files the incremental one saw (the
    // next file holds late lines of older days): the previous snapshot of the last date
    // shapes its migration and stability.
    let r = full_refresh(&full_config, &date(12));
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The next night merges into the shared base and the twelfth night's delta; retention
    // then retires the rerun, whose base no kept state lists.
    write_lines(&orders.join("day-13.parquet"), &files[13]);
    let r = run_at(&inc_config, &date(13));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = manifest(&inc, &date(13));
    assert_eq!(last["run"]["mode"], "incremental");
    assert_eq!(last["run"]["state_from"], date(12).as_str());
    assert!(on_disk_under(&date(11)).is_empty());
    assert_eq!(state_files_on_disk(&inc), state_files_listed(&inc));
    let r = full_refresh(&full_config, &date(13));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_snapshot(&inc, &full, &date(13)).await;
}

/// A run SIGKILLed as it commits (its state staged and, before its manifest, already placed
/// under `_state/`) leaves no state a later run trusts: the next run starts from the state of
/// the last committed snapshot, keeps no trace of the killed one, and publishes what a full
/// run publishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_before_its_manifest_leaves_no_state_a_later_run_trusts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Outputs {
        orders,
        inc,
        full,
        inc_config,
        full_config,
    } = outputs(dir);
    let files = history();
    for (d, lines) in files.iter().enumerate().take(13) {
        write_lines(&orders.join(format!("day-{d:02}.parquet")), lines);
    }
    assert_eq!(run_at(&inc_config, &date(10)).code, 0);
    for point in ["mid_commit", "before_manifest"] {
        let killed = crate::util::segflow_env(
            &[
                "run",
                "--config",
                inc_config.to_str().unwrap(),
                "--as-of",
                &date(11),
            ],
            &[("SEGFLOW_FAILPOINTS".into(), format!("{point}=kill"))],
        );
        assert_eq!(killed.code, -1, "not killed at {point}: {}", killed.stderr);
        assert!(!inc
            .join(format!("_manifest/as_of={}.json", date(11)))
            .exists());
    }
    let r = run_at(&inc_config, &date(12));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = manifest(&inc, &date(12));
    assert_eq!(m["run"]["mode"], "incremental", "{}", m["run"]);
    assert_eq!(m["run"]["state_from"], date(10).as_str());
    assert!(
        !inc.join(format!("_state/as_of={}", date(11))).exists(),
        "the killed run's state is still there"
    );
    for d in [10, 12] {
        let r = full_refresh(&full_config, &date(d));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_same_snapshot(&inc, &full, &date(12)).await;
}

/// An incremental model whose merge gives other columns than the model, or that breaks a
/// rule, is an error `check` reports naming the file (exit 1), and the run stops on it as on
/// any model error (exit 2) before anything is written.
#[test]
fn a_broken_incremental_model_is_reported_by_check_and_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = crate::util::demo_config(
        tmp.path(),
        &format!("[models]\npaths = [\"{}\"]\n", models.display()),
    );
    let by_category = "grain = [\"category\"]";
    let by_customer = "grain = [\"customer_id\"]";
    let cases = [
        (
            by_category,
            "merge = \"select category, sum(lines) as lines from (select * from state union all select * from slice) u group by category\"",
            "select coalesce(category, 'none') as category, count(*) as lines, sum(quantity) as units from orders group by 1",
            "the merge query must give the model's columns; it lacks `units`",
        ),
        (
            by_category,
            "merge = \"select category, sum(lines) as lines from state group by category\"",
            "select coalesce(category, 'none') as category, count(*) as lines from orders where order_date <= $as_of group by 1",
            "must not use $as_of",
        ),
        // Over other models: only incremental ones, recomputed per touched customer.
        (
            by_customer,
            "merge = \"select * from slice\"",
            "select customer_id, count(*) as lines from rfm group by 1",
            "`rfm` is not incremental",
        ),
        (
            by_category,
            "merge = \"select * from slice\"",
            "select category, sum(revenue) as revenue from customer_category_spend group by 1",
            "its grain includes `customer_id`",
        ),
    ];
    for (grain, merge, query, needle) in cases {
        std::fs::write(
            models.join("category_lines.sql"),
            format!("/*---\n{grain}\npublish = false\nmaterialized = \"incremental\"\n{merge}\n---*/\n{query}\n"),
        )
        .unwrap();
        let r = segflow(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert!(
            text.contains("category_lines.sql") && text.contains(needle),
            "{text}"
        );
        let r = run_at(&config, crate::util::DEMO_AS_OF);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{}", r.stderr);
        let out = tmp.path().join("out");
        let left = match out.exists() {
            true => crate::util::snapshot_files(&out),
            false => Default::default(),
        };
        assert!(left.is_empty(), "the run left {:?}", left.keys());
    }
}
