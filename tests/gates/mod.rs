//! Input gates with their policies (`fail`, `drop`, `warn`), the freshness gate, and the
//! rule that gates judge only the rows a run uses. Expected counts are read off the rows
//! written here.

use std::path::Path;

use super::*;

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

fn write_lines(path: &Path, rows: &[Line]) {
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    let ts: Vec<Option<i64>> = rows
        .iter()
        .map(|r| {
            r.1.map(|t| {
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M")
                    .unwrap()
                    .and_utc()
                    .timestamp_micros()
            })
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new(
            "order_ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("revenue", DataType::Float64, true),
        Field::new("status", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(ts)),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| Some(r.3)).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
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

    let ctx = SessionContext::new();
    let rows = display_rows(
        &ctx.read_parquet(
            format!("{}/", out.join("_rejected/as_of=2026-03-20").display()),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap(),
    );
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
