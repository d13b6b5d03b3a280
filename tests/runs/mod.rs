//! Runs over time and over odd inputs: migration between two snapshots, `--select`,
//! time zones, minimal inputs, parameters, and the order columns staged for models.

use std::collections::BTreeMap;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::util::{
    demo_config, demo_orders, display_rows, error_line, manifest, read_table, repo, run_at_env,
    run_command, run_minimal, run_ok, segflow, sorted_dump, with_model, DEMO_AS_OF,
};

#[tokio::test]
async fn two_snapshots_give_a_migration_that_sums_to_customers_in_both() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    run_ok(&config, &["--as-of", "2026-08-31"]);
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let ids = |rows: Vec<BTreeMap<String, Option<String>>>| -> std::collections::BTreeSet<String> {
        rows.into_iter()
            .map(|r| r["customer_id"].clone().unwrap())
            .collect()
    };
    let before = ids(read_table(&out, "customer_facts", "2026-08-31").await);
    let after = ids(read_table(&out, "customer_facts", DEMO_AS_OF).await);
    let both = before.intersection(&after).count() as u64;
    let migration = read_table(&out, "segment_migration", DEMO_AS_OF).await;
    assert!(!migration.is_empty());
    for seg in ["rfm", "lifecycle", "clv"] {
        let total: u64 = migration
            .iter()
            .filter(|r| r["segmentation"].as_deref() == Some(seg))
            .map(|r| r["customers"].as_deref().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, both, "{seg}");
    }
    // Stability is known once a previous snapshot exists, except for the demographic
    // segmentations, whose history is not kept.
    let summary = read_table(&out, "segment_summary", DEMO_AS_OF).await;
    let demographic = ["age_band", "gender", "email_opt_in"];
    for r in &summary {
        let seg = r["segmentation"].as_deref().unwrap();
        assert_eq!(
            r["stability"].is_some(),
            !demographic.contains(&seg),
            "{r:?}"
        );
    }
    for seg in demographic.into_iter().chain(["clv"]) {
        assert!(
            summary
                .iter()
                .any(|r| r["segmentation"].as_deref() == Some(seg)),
            "no {seg} rows"
        );
    }
    let latest = std::fs::read_to_string(out.join("_manifest/latest.json")).unwrap();
    assert!(latest.contains(DEMO_AS_OF));
    // Back-filling an older date does not move latest.json.
    run_ok(&config, &["--as-of", "2026-01-31"]);
    assert!(std::fs::read_to_string(out.join("_manifest/latest.json"))
        .unwrap()
        .contains(DEMO_AS_OF));
}

#[tokio::test]
async fn select_republishes_one_table_and_keeps_the_rest_of_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = manifest(&out, DEMO_AS_OF);
    run_ok(&config, &["--as-of", DEMO_AS_OF, "--select", "lifecycle"]);
    let after = manifest(&out, DEMO_AS_OF);
    assert_ne!(before["run_id"], after["run_id"]);
    assert_eq!(
        after["tables"].as_object().unwrap().len(),
        before["tables"].as_object().unwrap().len()
    );
    assert_eq!(after["tables"]["rfm"], before["tables"]["rfm"]);
    assert_eq!(after["models"]["lifecycle"]["published"], true);
    assert_eq!(after["models"]["customer_facts"]["published"], false);
    assert!(
        after["models"].get("rfm").is_none(),
        "rfm is not needed by lifecycle"
    );
    assert_eq!(read_table(&out, "rfm", DEMO_AS_OF).await.len(), 2940);
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--select",
        "no_such_model",
    ]);
    assert_eq!(r.code, 2);
    assert!(error_line(&r).contains("no_such_model"));
}

#[tokio::test]
async fn timezone_moves_day_boundaries_and_the_as_of_cutoff() {
    // c08 ordered at 2026-03-16 00:30 UTC: after as_of in UTC, but 2026-03-15 20:30 in New York.
    let orders_of_c08 = |tz: &'static str| async move {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("segflow.toml");
        std::fs::write(
            &config,
            format!(
                "as_of = \"2026-03-15\"\n[input.orders]\nuri = \"{}\"\n[output]\nuri = \"out\"\n[runtime]\ntimezone = \"{tz}\"\n",
                repo().join("fixtures/golden/orders.parquet").display()
            ),
        )
        .unwrap();
        run_ok(&config, &[]);
        let rows = read_table(&tmp.path().join("out"), "customer_facts", "2026-03-15").await;
        let c08 = rows
            .into_iter()
            .find(|r| r["customer_id"].as_deref() == Some("c08"))
            .unwrap();
        (
            c08["orders"].clone().unwrap(),
            c08["last_order_date"].clone().unwrap(),
            c08["recency_days"].clone().unwrap(),
        )
    };
    assert_eq!(
        orders_of_c08("UTC").await,
        ("1".into(), "2026-03-15".into(), "0".into())
    );
    assert_eq!(
        orders_of_c08("America/New_York").await,
        ("2".into(), "2026-03-15".into(), "0".into())
    );
}

#[tokio::test]
async fn minimal_input_with_dates_runs_every_model_in_a_non_utc_time_zone() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_minimal(
        tmp.path(),
        "2026-03-15",
        &[
            ("a", "2026-03-10", 10.0),
            ("a", "2026-03-16", 20.0),
            ("b", "2026-03-15", 30.0),
        ],
        "[runtime]\ntimezone = \"America/New_York\"\n",
    );
    let m = manifest(&out, "2026-03-15");
    assert_eq!(
        m["input"]["rows_after_as_of"], 1,
        "the 2026-03-16 row is after as_of in any zone"
    );
    let facts = read_table(&out, "customer_facts", "2026-03-15").await;
    let a = facts
        .iter()
        .find(|r| r["customer_id"].as_deref() == Some("a"))
        .unwrap();
    assert_eq!(
        a["last_order_date"].as_deref(),
        Some("2026-03-10"),
        "dates are local days"
    );
    assert_eq!(a["acquisition_channel"].as_deref(), Some("unknown"));
    assert_eq!(a["margin"], None);
    // A table whose result is empty is still published with its schema.
    assert!(read_table(&out, "segment_migration", "2026-03-15")
        .await
        .is_empty());
}

#[tokio::test]
async fn parameters_are_case_insensitive_and_env_overrides_take_the_default_type() {
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(
        tmp.path(),
        "long_tenure.sql",
        "/*---\n[params]\nmin_tenure = 10\nlabel = \"x\"\n---*/\nselect customer_id, $Label as label from customer_facts where tenure_days > $MIN_TENURE",
    );
    let run = |env: &[(&str, &str)]| {
        let out = run_command(&["--log-format", "json"], &config, DEMO_AS_OF)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = tmp.path().join("out");
    run(&[]);
    let all = read_table(&out, "long_tenure", DEMO_AS_OF).await.len();
    run(&[
        ("SEGFLOW_PARAM_MIN_TENURE", "700"),
        ("SEGFLOW_PARAM_LABEL", "007"),
    ]);
    let rows = read_table(&out, "long_tenure", DEMO_AS_OF).await;
    assert!(
        !rows.is_empty() && rows.len() < all,
        "{} of {all}",
        rows.len()
    );
    assert_eq!(
        rows[0]["label"].as_deref(),
        Some("007"),
        "text keeps its text"
    );
    let m = manifest(&out, DEMO_AS_OF);
    assert_eq!(m["tables"]["long_tenure"]["columns"][1]["type"], "Utf8");

    // A value that does not fit the default's type is refused, never truncated.
    let r = run_at_env(
        &config,
        DEMO_AS_OF,
        &[("SEGFLOW_PARAM_MIN_TENURE".to_string(), "60.5".to_string())],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    for needle in [
        "params.min_tenure",
        "`60.5` is not a valid Int64",
        "long_tenure.sql",
    ] {
        assert!(err.contains(needle), "`{needle}` missing: {err}");
    }
}

/// Staging writes only the `orders` columns some model reads: a model reading columns the
/// built-in library never touches (quantity, product_id, status) still gets them, with the
/// values of the source, and `select *` sees every canonical column.
#[tokio::test]
async fn models_reading_order_columns_the_library_does_not_get_them_from_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(
        tmp.path(),
        "qty_by_status.sql",
        "select status, sum(quantity) as qty, count(distinct product_id) as skus \
         from orders group by status",
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let got = sorted_dump(&read_table(&out, "qty_by_status", DEMO_AS_OF).await);

    // The same figures straight from the source files: cancelled lines dropped (the demo's
    // drop_status), nothing after as_of (UTC days).
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "src",
        format!("{}/", demo_orders()),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let expected = ctx
        .sql(&format!(
            "select order_status as status, sum(qty) as qty, count(distinct sku) as skus from src \
             where (order_status is null or lower(order_status) <> 'cancelled') \
               and cast(created_at as date) <= date '{DEMO_AS_OF}' \
             group by order_status"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let want = display_rows(&expected);
    assert!(want.len() >= 2, "the demo has several statuses: {want:?}");
    assert_eq!(got, sorted_dump(&want));

    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(tmp.path(), "all_lines.sql", "select * from orders");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let rows = read_table(&out, "all_lines", DEMO_AS_OF).await;
    let m = manifest(&out, DEMO_AS_OF);
    assert_eq!(
        rows.len() as u64,
        m["input"]["rows_visible"].as_u64().unwrap()
    );
    let columns: Vec<&String> = rows[0].keys().collect();
    let mut canonical = vec![
        "customer_id",
        "order_id",
        "order_ts",
        "order_date",
        "revenue",
        "quantity",
        "cost",
        "product_id",
        "category",
        "channel",
        "country",
        "region",
        "device",
        "status",
    ];
    canonical.sort();
    assert_eq!(columns, canonical);
}
