//! Golden outputs: every model on the hand-computed fixture (`fixtures/golden/expected/`),
//! the demo run with its row counts and an identical re-run, and values worked out by hand
//! on minimal inputs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{
    assert_matches_csv, assert_rows_match_csv, demo_config, manifest, read_table, repo,
    run_minimal, run_ok, sorted_dump, DEMO_AS_OF,
};

/// The tables compared whole with their hand-computed CSV in `fixtures/golden/expected/`
/// (segment_summary is compared without its clv rows).
const HAND_COMPUTED: [&str; 7] = [
    "customer_facts",
    "rfm",
    "lifecycle",
    "cohort_retention",
    "customer_affinity",
    "product_value",
    "channel_value",
];

#[tokio::test]
async fn golden_fixture_matches_hand_computed_rows_for_every_model() {
    let tmp = tempfile::tempdir().unwrap();
    let g = repo().join("fixtures/golden");
    let config = tmp.path().join("segflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"as_of = "2026-03-15"
[input.orders]
uri = "{g}/orders.parquet"
[input.customers]
uri = "{g}/customers.parquet"
[input.marketing_spend]
uri = "{g}/marketing_spend.parquet"
[output]
uri = "out"
[params]
min_segment_customers = 2
"#,
            g = g.display()
        ),
    )
    .unwrap();
    run_ok(&config, &[]);
    let out = tmp.path().join("out");
    for model in HAND_COMPUTED {
        assert_matches_csv(
            &out,
            model,
            "2026-03-15",
            &g.join(format!("expected/{model}.csv")),
        )
        .await;
    }
    // The clv segmentation depends on the fitted models: ci/clv_check.py checks it.
    let mut summary = read_table(&out, "segment_summary", "2026-03-15").await;
    let clv_rows = summary.len();
    summary.retain(|r| r.get("segmentation").cloned().flatten().as_deref() != Some("clv"));
    assert!(clv_rows > summary.len(), "no clv segmentation rows");
    assert_rows_match_csv(
        summary,
        "segment_summary",
        &g.join("expected/segment_summary.csv"),
    );
    assert!(read_table(&out, "segment_migration", "2026-03-15")
        .await
        .is_empty());
}

#[tokio::test]
async fn demo_run_publishes_every_table_and_rerun_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = run_ok(&config, &["--as-of", DEMO_AS_OF]);
    assert!(
        r.stdout.contains("published as_of=2026-11-21"),
        "{}",
        r.stdout
    );
    let out = tmp.path().join("out");
    let m = manifest(&out, DEMO_AS_OF);
    let expected_rows = [
        ("customer_facts", 2940u64),
        ("rfm", 2940),
        ("lifecycle", 2940),
        ("customer_affinity", 2940),
        ("cohort_retention", 666),
        ("clv", 2940),
        ("clv_model", 1),
    ];
    let mut first = BTreeMap::new();
    let clv_and_segments = [
        "segment_summary",
        "segment_migration",
        "clv",
        "clv_model",
        "clv_backtest",
    ];
    for model in HAND_COMPUTED.into_iter().chain(clv_and_segments) {
        let rows = read_table(&out, model, DEMO_AS_OF).await;
        assert_eq!(
            rows.len() as u64,
            m["tables"][model]["rows"].as_u64().unwrap(),
            "{model}"
        );
        assert!(out
            .join(format!("{model}/as_of={DEMO_AS_OF}/_SUCCESS"))
            .exists());
        first.insert(model, sorted_dump(&rows));
    }
    for (model, n) in expected_rows {
        assert_eq!(first[model].len() as u64, n, "{model}");
    }
    assert_reader_friendly(&out.join(format!("customer_facts/as_of={DEMO_AS_OF}")));
    // Internal models are never written.
    assert!(!out.join("purchase_orders").exists());
    assert!(m["models"]["purchase_orders"]["duration_ms"].is_u64());
    assert_eq!(m["datafusion_version"], "55.2.0");
    assert_eq!(m["input"]["rows_dropped_status"], 526);

    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    for (model, rows) in &first {
        assert_eq!(
            &sorted_dump(&read_table(&out, model, DEMO_AS_OF).await),
            rows,
            "{model} changed on re-run"
        );
    }
    assert!(!out.join("_staging").exists());
    assert!(!out.join("_lock").exists());
}

/// Every Parquet file under `dir` is zstd-compressed with min/max statistics on every
/// column, strings dictionary-encoded and floating-point columns, keys (`*_id`) and
/// timestamps (`*_ts`) not (their values rarely repeat).
fn assert_reader_friendly(dir: &Path) {
    use parquet::basic::{Compression, Encoding, Type};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        files += 1;
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let (mut strings, mut floats, mut timestamps) = (0, 0, 0);
        for group in reader.metadata().row_groups() {
            for column in group.columns() {
                let name = column.column_path().string();
                let stats = column.statistics().expect("statistics");
                assert!(
                    stats.min_bytes_opt().is_some()
                        || stats.null_count_opt() == Some(group.num_rows() as u64),
                    "{name}: no min/max in {}",
                    path.display()
                );
                assert!(
                    matches!(column.compression(), Compression::ZSTD(_)),
                    "{name}: {:?}",
                    column.compression()
                );
                let dictionary = column.dictionary_page_offset().is_some()
                    || column.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
                match column.column_type() {
                    Type::DOUBLE | Type::FLOAT => {
                        floats += 1;
                        assert!(!dictionary, "{name}: float column with a dictionary");
                    }
                    Type::BYTE_ARRAY if name == "id" || name.ends_with("_id") => {
                        assert!(!dictionary, "{name}: key column with a dictionary");
                    }
                    Type::INT64 if name.ends_with("_ts") => {
                        timestamps += 1;
                        assert!(!dictionary, "{name}: timestamp column with a dictionary");
                    }
                    Type::BYTE_ARRAY => {
                        strings += 1;
                        assert!(dictionary, "{name}: string column without a dictionary");
                    }
                    _ => {}
                }
            }
        }
        assert!(
            strings > 0 && floats > 0 && timestamps > 0,
            "{strings} string, {floats} float and {timestamps} timestamp columns"
        );
    }
    assert!(files > 0, "no Parquet file in {}", dir.display());
}

/// A refund dated before a customer's first purchase lowers their revenue but lies outside
/// the value windows after acquisition and outside the BTYD monetary value (values by hand).
#[tokio::test]
async fn refunds_before_the_first_purchase_count_in_no_window() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_minimal(
        tmp.path(),
        "2026-06-15",
        &[
            ("a", "2026-01-01", -5.0),
            ("a", "2026-01-10", 10.0),
            ("a", "2026-02-01", 20.0),
            ("b", "2026-03-01", 30.0),
        ],
        "",
    );
    let facts = read_table(&out, "customer_facts", "2026-06-15").await;
    let a = facts
        .iter()
        .find(|r| r["customer_id"].as_deref() == Some("a"))
        .unwrap();
    // first purchase 2026-01-10; tenure 156 days
    let num = |v: &Option<String>| v.as_deref().map(|s| s.parse::<f64>().unwrap());
    assert_eq!(num(&a["revenue"]), Some(25.0), "the refund lowers revenue");
    assert_eq!(
        num(&a["revenue_90d"]),
        Some(30.0),
        "10 + 20 after acquisition; the refund 9 days before is in no window"
    );
    assert_eq!(a["revenue_180d"], None, "tenure 156 < 180");
    assert_eq!(num(&a["repeat_revenue"]), Some(20.0));
    let clv = read_table(&out, "clv", "2026-06-15").await;
    let a = clv
        .iter()
        .find(|r| r["customer_id"].as_deref() == Some("a"))
        .unwrap();
    assert_eq!(num(&a["frequency"]), Some(1.0));
    assert_eq!(num(&a["recency"]), Some(22.0));
    assert_eq!(num(&a["t"]), Some(156.0));
    assert_eq!(
        num(&a["monetary"]),
        Some(20.0),
        "the refund is not a repeat purchase"
    );
}

/// The backtest's holdout is the days after as_of - holdout_days: a customer counts when
/// they bought by then, a refund-only day in the holdout adds its revenue but no purchase
/// day, and a customer acquired in the holdout is left out (values by hand).
#[tokio::test]
async fn the_backtest_holdout_counts_purchase_days_and_revenue_after_the_calibration_end() {
    let tmp = tempfile::tempdir().unwrap();
    // holdout_days = 90: the calibration ends on 2026-03-17
    let out = run_minimal(
        tmp.path(),
        "2026-06-15",
        &[
            ("a", "2026-01-01", -5.0),
            ("a", "2026-01-10", 10.0),
            ("a", "2026-02-01", 20.0),
            ("a", "2026-04-01", 40.0),
            ("a", "2026-05-01", -8.0),
            ("b", "2026-03-01", 30.0),
            ("b", "2026-03-17", 12.0),
            ("b", "2026-03-20", 15.0),
            ("c", "2026-04-10", 50.0),
        ],
        "",
    );
    let backtest = read_table(&out, "clv_backtest", "2026-06-15").await;
    let total = backtest
        .iter()
        .find(|r| r["scope"].as_deref() == Some("total"))
        .unwrap();
    assert_eq!(total["calibration_end"].as_deref(), Some("2026-03-17"));
    assert_eq!(
        total["customers"].as_deref(),
        Some("2"),
        "a and b; c came later"
    );
    let num = |c: &str| total[c].as_deref().map(|s| s.parse::<f64>().unwrap());
    assert_eq!(
        num("actual_purchases"),
        Some(2.0),
        "a on 04-01, b on 03-20; a's refund day is no purchase"
    );
    assert_eq!(
        num("actual_revenue"),
        Some(47.0),
        "40 - 8 + 15; b's 03-17 is calibration"
    );
}
