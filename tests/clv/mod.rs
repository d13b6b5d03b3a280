//! A CLV fit that fails (here: a history without one repeat buyer, which cannot identify the
//! drop-out process) never publishes its own parameters: the nightly snapshot predicts from
//! the newest previous snapshot's parameters, flagged, or, without one, predicts NULL; the
//! log, the manifest and the report warn either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{demo_config, manifest, read_table, run_ok, write_minimal_orders, Run};

/// One order per customer: no repeat buyer, so neither BG/NBD's a and b nor Gamma-Gamma
/// can be fitted.
fn one_timers() -> Vec<(String, String, f64)> {
    (0..40)
        .map(|i| {
            (
                format!("c{i:02}"),
                format!("2026-{:02}-{:02}", 1 + i % 10, 1 + i % 27),
                10.0 + f64::from(i),
            )
        })
        .collect()
}

fn run_one_timers(dir: &Path, as_of: &str) -> (PathBuf, Run) {
    let rows = one_timers();
    let rows: Vec<(&str, &str, f64)> = rows
        .iter()
        .map(|(c, d, r)| (c.as_str(), d.as_str(), *r))
        .collect();
    write_minimal_orders(&dir.join("orders.parquet"), &rows);
    let config = dir.join("segflow.toml");
    std::fs::write(
        &config,
        "[input.orders]\nuri = \"orders.parquet\"\n[output]\nuri = \"out\"\n",
    )
    .unwrap();
    let r = run_ok(&config, &["--as-of", as_of]);
    (dir.join("out"), r)
}

fn only_row(rows: Vec<BTreeMap<String, Option<String>>>) -> BTreeMap<String, Option<String>> {
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

/// The run warned about both fits in its log (stderr), its manifest and its report.
fn assert_warned(out: &Path, as_of: &str, r: &Run) {
    for model in ["bgnbd_fit_source", "gamma_gamma_fit_source"] {
        assert!(
            r.stderr.contains(model),
            "no warning naming {model} in the log:\n{}",
            r.stderr
        );
        let m = manifest(out, as_of);
        let warnings: Vec<&str> = m["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("clv_model") && w.contains(model)),
            "manifest warnings {warnings:?} lack {model}"
        );
        let report =
            std::fs::read_to_string(out.join(format!("_report/as_of={as_of}/index.html"))).unwrap();
        assert!(
            report.contains("data-section=\"warnings\"") && report.contains(model),
            "the report has no warning naming {model}"
        );
    }
}

#[tokio::test]
async fn a_failed_fit_predicts_from_the_previous_snapshot_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    run_ok(&config, &["--as-of", "2026-10-31"]);
    let out = tmp.path().join("out");
    let good = only_row(read_table(&out, "clv_model", "2026-10-31").await);
    assert_eq!(good["bgnbd_fit_source"].as_deref(), Some("this run"));
    assert_eq!(good["gamma_gamma_fit_source"].as_deref(), Some("this run"));
    assert_eq!(good["bgnbd_converged"].as_deref(), Some("true"));
    assert!(good["bgnbd_method"].is_some() && good["bgnbd_ln_likelihood"].is_some());

    // The next night's history cannot be fitted.
    let (out, r) = run_one_timers(tmp.path(), "2026-11-21");
    let row = only_row(read_table(&out, "clv_model", "2026-11-21").await);
    for k in ["r", "alpha", "a", "b", "p", "q", "v"] {
        assert!(row[k].is_some(), "{k} is NULL");
        assert_eq!(
            row[k], good[k],
            "{k}: not the previous snapshot's parameter"
        );
    }
    for model in ["bgnbd", "gamma_gamma"] {
        assert_eq!(row[&format!("{model}_converged")].as_deref(), Some("false"));
        assert_eq!(row[&format!("{model}_ln_likelihood")], None);
        assert_eq!(row[&format!("{model}_method")], None);
        assert_eq!(
            row[&format!("{model}_fit_source")].as_deref(),
            Some("previous snapshot")
        );
    }
    // Predictions from those parameters: one-time buyers are alive (p_alive = 1 whatever
    // the parameters) and expected to buy something.
    let clv = read_table(&out, "clv", "2026-11-21").await;
    assert_eq!(clv.len(), 40);
    for c in &clv {
        assert_eq!(c["p_alive"].as_deref(), Some("1.0"), "{c:?}");
        let e: f64 = c["expected_purchases_365d"]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(e > 0.0 && e.is_finite(), "{c:?}");
        assert_ne!(c["value_band"].as_deref(), Some("unknown"), "{c:?}");
    }
    assert_warned(&out, "2026-11-21", &r);
}

#[tokio::test]
async fn a_failed_fit_without_a_previous_snapshot_predicts_null_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, r) = run_one_timers(tmp.path(), "2026-11-21");
    let row = only_row(read_table(&out, "clv_model", "2026-11-21").await);
    for k in [
        "r",
        "alpha",
        "a",
        "b",
        "p",
        "q",
        "v",
        "bgnbd_ln_likelihood",
        "bgnbd_method",
    ] {
        assert_eq!(row[k], None, "{k} published though the fit failed");
    }
    assert_eq!(row["bgnbd_converged"].as_deref(), Some("false"));
    assert_eq!(row["bgnbd_fit_source"].as_deref(), Some("none"));
    assert_eq!(row["gamma_gamma_fit_source"].as_deref(), Some("none"));
    let clv = read_table(&out, "clv", "2026-11-21").await;
    assert_eq!(clv.len(), 40);
    for c in &clv {
        assert_eq!(c["p_alive"], None, "{c:?}");
        assert_eq!(c["churn_risk"].as_deref(), Some("unknown"), "{c:?}");
    }
    assert_warned(&out, "2026-11-21", &r);
}
