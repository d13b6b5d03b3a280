//! Input gates with their policies (`fail`, `drop`, `warn`), the freshness gate, and the
//! rule that gates judge only the rows a run uses. Expected counts are read off the rows
//! written here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::util::{
    demo_config_with, demo_orders, display_rows, error_line, manifest, read_table, run_ok, segflow,
    snapshot_files, write_columns, write_orders_with_nulls, Run, DEMO_AS_OF,
};

/// (customer_id, order_ts "YYYY-MM-DD HH:MM", revenue, status)
type Line = (
    Option<&'static str>,
    Option<&'static str>,
    Option<f64>,
    &'static str,
);

/// Every gate catches known rows: null_customer_id 2, null_order_ts 1, future_order_ts 1,
/// invalid_revenue 2 (NaN, NULL), negative_revenue 1 (a's -3 on a completed line); a's -2 is
/// a return; h's cancelled line with no customer is dropped by status, never gated.
const BAD: &[Line] = &[
    (Some("a"), Some("2026-03-10 10:00"), Some(10.0), "completed"),
    (None, Some("2026-03-11 10:00"), Some(5.0), "completed"),
    (Some(""), Some("2026-03-12 10:00"), Some(5.0), "completed"),
    (Some("b"), None, Some(7.0), "completed"),
    (Some("c"), Some("2999-01-01 00:00"), Some(9.0), "completed"),
    (
        Some("d"),
        Some("2026-03-13 10:00"),
        Some(f64::NAN),
        "completed",
    ),
    (Some("e"), Some("2026-03-13 11:00"), None, "completed"),
    (Some("a"), Some("2026-03-14 10:00"), Some(-3.0), "completed"),
    (Some("a"), Some("2026-03-15 10:00"), Some(-2.0), "returned"),
    (None, Some("2026-03-16 10:00"), Some(4.0), "cancelled"),
    (Some("b"), Some("2026-03-20 10:00"), Some(8.0), "completed"),
];

const GOOD: &[Line] = &[
    (Some("a"), Some("2026-03-10 10:00"), Some(10.0), "completed"),
    (Some("b"), Some("2026-03-20 10:00"), Some(8.0), "completed"),
];

/// Microseconds since the epoch of a "YYYY-MM-DD HH:MM" (UTC).
fn micros(t: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M")
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

fn write_lines(path: &Path, rows: &[Line]) {
    let customers: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
    let ts: Vec<Option<i64>> = rows.iter().map(|r| r.1.map(micros)).collect();
    let revenue: Vec<Option<f64>> = rows.iter().map(|r| r.2).collect();
    let status: Vec<Option<&str>> = rows.iter().map(|r| Some(r.3)).collect();
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(ts));
    write_columns(
        path,
        vec![
            ("customer_id", Arc::new(StringArray::from(customers)), true),
            ("order_ts", ts, true),
            ("revenue", Arc::new(Float64Array::from(revenue)), true),
            ("status", Arc::new(StringArray::from(status)), true),
        ],
    );
}

/// The rows published under `_rejected/as_of=<as_of>/`.
async fn rejected_rows(out: &Path, as_of: &str) -> Vec<BTreeMap<String, Option<String>>> {
    let ctx = SessionContext::new();
    let dir = out.join(format!("_rejected/as_of={as_of}"));
    let df = ctx
        .read_parquet(format!("{}/", dir.display()), ParquetReadOptions::default())
        .await
        .unwrap();
    display_rows(&df.collect().await.unwrap())
}

fn config(dir: &Path, gates: &str) -> PathBuf {
    let config = dir.join("segflow.toml");
    std::fs::write(
        &config,
        format!(
            "[input.orders]\nuri = \"orders.parquet\"\n[output]\nuri = \"out\"\n[gates]\n{gates}\n"
        ),
    )
    .unwrap();
    config
}

fn run(config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    segflow(&args)
}

/// customer_id → revenue in the published customer_facts.
async fn revenue_by_customer(out: &Path, as_of: &str) -> BTreeMap<String, String> {
    read_table(out, "customer_facts", as_of)
        .await
        .into_iter()
        .map(|r| {
            (
                r["customer_id"].clone().unwrap_or_default(),
                r["revenue"].clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn failing_gates_name_each_gate_count_and_column_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = tmp.path().join("orders.parquet");
    let config = config(tmp.path(), "");
    write_lines(&orders, GOOD);
    assert_eq!(run(&config, &[]).code, 0);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);

    write_lines(&orders, BAD);
    let r = run(&config, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = error_line(&r);
    for needle in [
        "4 check(s) failed",
        "input gate null_customer_id: 2 row(s)",
        "NULL or empty customer_id (source column `customer_id`)",
        "input gate null_order_ts: 1 row(s)",
        "input gate future_order_ts: 1 row(s)",
        "input gate invalid_revenue: 2 row(s)",
        "NULL, NaN or infinite revenue (source column `revenue`)",
    ] {
        assert!(err.contains(needle), "`{needle}` missing: {err}");
    }
    // negative_revenue warns by default: logged, not a failure.
    assert!(!err.contains("negative_revenue"), "{err}");
    assert!(
        r.stderr.contains("input gate negative_revenue: 1 row(s)")
            && r.stderr
                .contains("not a return status (returned, refunded)"),
        "{}",
        r.stderr
    );
    assert!(err.contains(&orders.display().to_string()), "{err}");
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed run changed the output"
    );
}

#[tokio::test]
async fn dropped_rows_are_left_out_and_published_under_rejected_with_the_gate() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), BAD);
    let config = config(
        tmp.path(),
        "null_customer_id = \"drop\"\nnull_order_ts = \"drop\"\nfuture_order_ts = \"drop\"\ninvalid_revenue = \"drop\"\nnegative_revenue = \"drop\"",
    );
    let r = run(&config, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = tmp.path().join("out");
    // The latest date of a row not in the future: b's 2026-03-20.
    let m = manifest(&out, "2026-03-20");
    let input = &m["input"];
    assert_eq!(input["rows_read"], 11);
    assert_eq!(input["rows_dropped_status"], 1);
    assert_eq!(input["rows_rejected"], 7);
    assert_eq!(input["rows_visible"], 3);
    for (gate, rows) in [
        ("null_customer_id", 2),
        ("null_order_ts", 1),
        ("future_order_ts", 1),
        ("invalid_revenue", 2),
        ("negative_revenue", 1),
    ] {
        assert_eq!(input["gates"][gate]["rows"], rows, "{gate}");
        assert_eq!(input["gates"][gate]["policy"], "drop", "{gate}");
    }
    let files: Vec<String> = m["rejected"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.starts_with("_rejected/as_of=2026-03-20/"))
    );
    assert!(
        m["tables"].get("_rejected").is_none(),
        "rejected rows listed as a table"
    );

    let rows = rejected_rows(&out, "2026-03-20").await;
    let mut caught: Vec<(Option<String>, String)> = rows
        .iter()
        .map(|r| (r["customer_id"].clone(), r["gate"].clone().unwrap()))
        .collect();
    caught.sort();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        caught,
        vec![
            (None, "null_customer_id".into()),
            (s(""), "null_customer_id".into()),
            (s("a"), "negative_revenue".into()),
            (s("b"), "null_order_ts".into()),
            (s("c"), "future_order_ts".into()),
            (s("d"), "invalid_revenue".into()),
            (s("e"), "invalid_revenue".into()),
        ]
    );
    // a: 10 - 2 (the return); b: 8.
    assert_eq!(
        revenue_by_customer(&out, "2026-03-20").await,
        BTreeMap::from([("a".into(), "8.0".into()), ("b".into(), "8.0".into())])
    );

    // A rerun of the same as_of without rejected rows leaves no stale _rejected folder.
    write_lines(&tmp.path().join("orders.parquet"), GOOD);
    assert_eq!(run(&config, &[]).code, 0);
    assert!(!out.join("_rejected/as_of=2026-03-20").exists());
    assert!(manifest(&out, "2026-03-20").get("rejected").is_none());
}

#[tokio::test]
async fn warned_rows_are_counted_logged_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), BAD);
    // NULL customers and NaN revenue cannot be kept by the built-in models: dropped.
    let config = config(
        tmp.path(),
        "null_customer_id = \"drop\"\nnull_order_ts = \"warn\"\nfuture_order_ts = \"warn\"\ninvalid_revenue = \"drop\"\nnegative_revenue = \"warn\"",
    );
    let r = run(&config, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "input gate null_order_ts: 1 row(s)",
        "input gate future_order_ts: 1 row(s)",
        "input gate negative_revenue: 1 row(s)",
    ] {
        assert!(
            r.stderr.contains(needle),
            "`{needle}` not logged: {}",
            r.stderr
        );
    }
    let out = tmp.path().join("out");
    let m = manifest(&out, "2026-03-20");
    assert_eq!(m["input"]["rows_rejected"], 4);
    assert_eq!(m["input"]["gates"]["negative_revenue"]["policy"], "warn");
    // a: 10 - 3 (the kept negative line) - 2 (the return); rows without a (valid) time
    // never reach the models.
    assert_eq!(
        revenue_by_customer(&out, "2026-03-20").await,
        BTreeMap::from([("a".into(), "5.0".into()), ("b".into(), "8.0".into())])
    );
}

#[test]
fn with_an_explicit_as_of_rows_after_it_are_counted_never_gated() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), BAD);
    let config = config(tmp.path(), "");
    // Up to 2026-03-12 the run uses a's first line, the two without a customer and b's
    // line without a time; the 2999 line and the bad revenues come later.
    let r = run(&config, &["--as-of", "2026-03-12"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = error_line(&r);
    assert!(err.contains("2 check(s) failed"), "{err}");
    assert!(
        err.contains("null_customer_id: 2 row(s)") && err.contains("null_order_ts: 1 row(s)"),
        "{err}"
    );
    assert!(
        !err.contains("future_order_ts") && !err.contains("invalid_revenue"),
        "{err}"
    );

    // Nothing up to as_of: the input is empty (a row without a time has no date, so it is
    // judged at any as_of; GOOD has none).
    write_lines(&tmp.path().join("orders.parquet"), GOOD);
    let r = run(&config, &["--as-of", "2020-01-01"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("the input is empty") && err.contains("orders.parquet"),
        "{err}"
    );
}

#[test]
fn a_stale_input_fails_the_freshness_gate() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), GOOD);
    let config = config(tmp.path(), "max_input_age_days = 10");
    // The latest order is 2026-03-20: 11 days before 2026-03-31.
    let r = run(&config, &["--as-of", "2026-03-31"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("input gate max_input_age_days: the latest order in")
            && err.contains(
                "is from 2026-03-20, 11 day(s) before as_of 2026-03-31 (at most 10 allowed)"
            ),
        "{err}"
    );
    assert!(!tmp.path().join("out/_manifest").exists());
    assert_eq!(run(&config, &["--as-of", "2026-03-30"]).code, 0);
}

#[test]
fn an_unknown_gate_or_policy_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), GOOD);
    let r = run(&config(tmp.path(), "null_customer = \"drop\""), &[]);
    assert_eq!(r.code, 2);
    assert!(error_line(&r).contains("null_customer"), "{}", r.stderr);
    let r = run(&config(tmp.path(), "null_order_ts = \"skip\""), &[]);
    assert_eq!(r.code, 2);
    assert!(error_line(&r).contains("skip"), "{}", r.stderr);
}

/// Copies the demo's orders (four yearly files) and damages one of them with `damage`.
fn demo_orders_with_one_damaged(dir: &Path, damage: impl FnOnce(&Path)) -> (PathBuf, PathBuf) {
    let orders = dir.join("orders");
    for year in ["2023", "2024", "2025", "2026"] {
        let d = orders.join(format!("year={year}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            Path::new(&demo_orders()).join(format!("year={year}/part-0.parquet")),
            d.join("part-0.parquet"),
        )
        .unwrap();
    }
    let bad = orders.join("year=2025/part-0.parquet");
    damage(&bad);
    let config = demo_config_with(
        dir,
        &format!("uri = \"{}\"", demo_orders()),
        &format!("uri = \"{}\"", orders.display()),
    );
    (config, bad)
}

/// The run exits 2 naming the damaged file.
fn assert_names_the_damaged_file(config: &Path, bad: &Path) {
    let r = run(config, &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains(&format!(
            "the file {} is corrupt or truncated",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn a_truncated_or_corrupt_parquet_file_among_many_is_named_by_its_path() {
    // Cut in half: the footer is gone.
    let tmp = tempfile::tempdir().unwrap();
    let (config, bad) = demo_orders_with_one_damaged(tmp.path(), |f| {
        let bytes = std::fs::read(f).unwrap();
        std::fs::write(f, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_names_the_damaged_file(&config, &bad);
    assert!(!tmp.path().join("out/_manifest").exists());

    // Footer intact, data pages overwritten: found when the rows are read.
    let tmp = tempfile::tempdir().unwrap();
    let (config, bad) = demo_orders_with_one_damaged(tmp.path(), |f| {
        let mut bytes = std::fs::read(f).unwrap();
        for b in bytes.iter_mut().skip(4).take(2000) {
            *b = 0xAB;
        }
        std::fs::write(f, &bytes).unwrap();
    });
    assert_names_the_damaged_file(&config, &bad);
}

/// Lines (customer_id, order id, order_ts, revenue) in a column named `order_column`.
fn write_order_lines(path: &Path, order_column: &str, rows: &[(&str, &str, &str, f64)]) {
    let customers: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let ts: Vec<i64> = rows.iter().map(|r| micros(r.2)).collect();
    let revenue: Vec<f64> = rows.iter().map(|r| r.3).collect();
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(ts));
    write_columns(
        path,
        vec![
            ("customer_id", Arc::new(StringArray::from(customers)), true),
            (order_column, Arc::new(StringArray::from(orders)), true),
            ("order_ts", ts, true),
            ("revenue", Arc::new(Float64Array::from(revenue)), true),
        ],
    );
}

/// a's first line three times (two extra copies), b's once more (one extra): 3 extra lines
/// in 2 duplicated lines; a's 5.0 line and b's o3 line differ in one column each.
const DUPLICATED: &[(&str, &str, &str, f64)] = &[
    ("a", "o1", "2026-03-10 10:00", 10.0),
    ("a", "o1", "2026-03-10 10:00", 10.0),
    ("a", "o1", "2026-03-10 10:00", 5.0),
    ("a", "o1", "2026-03-10 10:00", 10.0),
    ("b", "o2", "2026-03-12 09:00", 7.0),
    ("b", "o3", "2026-03-12 09:00", 7.0),
    ("b", "o2", "2026-03-12 09:00", 7.0),
];

#[tokio::test]
async fn duplicate_lines_fail_warn_or_drop_to_one_copy_when_order_ids_are_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    write_order_lines(&tmp.path().join("orders.parquet"), "order_id", DUPLICATED);
    let out = tmp.path().join("out");

    let r = run(&config(tmp.path(), "duplicate_lines = \"fail\""), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        error_line(&r).contains("input gate duplicate_lines: 3 line(s) of")
            && error_line(&r)
                .contains("repeat another line in every mapped column (2 line(s) duplicated)"),
        "{}",
        r.stderr
    );

    // warn (the default): logged, every copy kept.
    let r = run(&config(tmp.path(), ""), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("input gate duplicate_lines: 3 line(s)"),
        "{}",
        r.stderr
    );
    let m = manifest(&out, "2026-03-12");
    assert_eq!(m["input"]["gates"]["duplicate_lines"]["rows"], 3);
    assert_eq!(m["input"]["rows_visible"], 7);
    assert_eq!(
        revenue_by_customer(&out, "2026-03-12").await,
        BTreeMap::from([("a".into(), "35.0".into()), ("b".into(), "21.0".into())])
    );

    // drop: one copy of each kept, the extra copies under _rejected.
    let r = run(&config(tmp.path(), "duplicate_lines = \"drop\""), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = manifest(&out, "2026-03-12");
    assert_eq!(m["input"]["rows_visible"], 4);
    assert_eq!(m["input"]["rows_rejected"], 3);
    assert_eq!(
        revenue_by_customer(&out, "2026-03-12").await,
        BTreeMap::from([("a".into(), "15.0".into()), ("b".into(), "14.0".into())])
    );
    let rows = rejected_rows(&out, "2026-03-12").await;
    let mut copies: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["customer_id"].clone().unwrap(),
                r["order_id"].clone().unwrap(),
                r["gate"].clone().unwrap(),
            )
        })
        .collect();
    copies.sort();
    let c = |a: &str, o: &str| (a.to_string(), o.to_string(), "duplicate_lines".to_string());
    assert_eq!(copies, vec![c("a", "o1"), c("a", "o1"), c("b", "o2")]);

    // Without order ids every source row is its own order: no duplicate gate.
    write_order_lines(&tmp.path().join("orders.parquet"), "order_no", DUPLICATED);
    let r = run(&config(tmp.path(), "duplicate_lines = \"fail\""), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(manifest(&out, "2026-03-12")["input"]["gates"]
        .get("duplicate_lines")
        .is_none());
}

/// `warn` keeps rows as they are: the built-in models' own checks and exact sums then stop
/// the run naming the model, so nothing wrong is published.
#[test]
fn warned_rows_the_built_in_models_cannot_take_stop_the_run_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("orders.parquet"), BAD);
    let keep_customers = config(
        tmp.path(),
        "null_customer_id = \"warn\"\nnull_order_ts = \"drop\"\nfuture_order_ts = \"drop\"\ninvalid_revenue = \"drop\"",
    );
    let r = run(&keep_customers, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        error_line(&r).contains("sql/purchase_orders.sql: model `purchase_orders` check not_null(customer_id): 1 NULL row(s)"),
        "{}",
        r.stderr
    );
    let keep_nan = config(
        tmp.path(),
        "null_customer_id = \"drop\"\nnull_order_ts = \"drop\"\nfuture_order_ts = \"drop\"\ninvalid_revenue = \"warn\"",
    );
    let r = run(&keep_nan, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("sql/customer_days.sql: model `customer_days` failed")
            && error_line(&r).contains("NaN"),
        "{}",
        r.stderr
    );
    assert!(!tmp.path().join("out/_manifest").exists());
}

#[tokio::test]
async fn input_gates_count_bad_rows_name_the_source_column_and_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_orders_with_nulls(
        &tmp.path().join("orders.parquet"),
        &[
            (Some("a"), Some("2026-03-10"), 10.0),
            (None, Some("2026-03-11"), 5.0),
            (Some(""), Some("2026-03-12"), 5.0),
            (Some("b"), None, 7.0),
            (Some("c"), Some("2999-01-01"), 9.0),
        ],
    );
    let config = tmp.path().join("segflow.toml");
    std::fs::write(
        &config,
        "[input.orders]\nuri = \"orders.parquet\"\n[output]\nuri = \"out\"\n",
    )
    .unwrap();
    let r = segflow(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for needle in [
        "null_customer_id: 2 row(s)",
        "null_order_ts: 1 row(s)",
        "future_order_ts: 1 row(s)",
        "source column `customer_id`",
        "source column `order_ts`",
        "orders.parquet",
    ] {
        assert!(
            r.stderr.contains(needle),
            "`{needle}` missing: {}",
            r.stderr
        );
    }
    let out = tmp.path().join("out");
    let published: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        published
            .iter()
            .all(|n| n.to_string_lossy().starts_with('_') && n.to_string_lossy() != "_manifest"),
        "a failed run published {published:?}"
    );

    // Without bad rows and without as_of, the snapshot is as of the latest order date.
    write_orders_with_nulls(
        &tmp.path().join("orders.parquet"),
        &[
            (Some("a"), Some("2026-03-10"), 10.0),
            (Some("b"), Some("2026-03-14"), 7.0),
            (Some("a"), Some("2026-03-12"), 1.0),
        ],
    );
    run_ok(&config, &[]);
    let m = manifest(&out, "2026-03-14");
    assert_eq!(m["input"]["rows_read"], 3);
    assert_eq!(m["input"]["rows_visible"], 3);
    assert_eq!(m["input"]["rows_after_as_of"], 0);
}
