//! The run report: published with its snapshot and listed by its manifest, its numbers equal
//! to the tables read back, sections left out when their table is absent. (ci/report_check.py
//! loads it in headless Chromium and checks every number against DuckDB.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{demo_config, demo_config_with, manifest, read_table, run_ok, DEMO_AS_OF};

mod charts;
mod svg;

/// A `<table class="data">` of the report: its `data-table` and its cells as
/// (row key, column) -> `data-v` (None when the cell has no value).
struct DataTable {
    source: String,
    cells: BTreeMap<(String, String), Option<String>>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in a start tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

/// Every data table of a report page.
fn data_tables(html: &str) -> Vec<DataTable> {
    let mut out = vec![];
    for block in html.split("<table class=\"data\"").skip(1) {
        let block = &block[..block.find("</table>").unwrap()];
        let source = attr(block, "data-table").unwrap();
        let mut cells = BTreeMap::new();
        for row in block.split("<tr data-key=").skip(1) {
            let row_key = unescape(&row[1..row[1..].find('"').unwrap() + 1]);
            for cell in row.split("<td").skip(1) {
                let tag = &cell[..cell.find('>').unwrap()];
                let Some(col) = attr(tag, "data-col") else {
                    continue;
                };
                let key = attr(tag, "data-key").unwrap_or_else(|| row_key.clone());
                cells.insert((key, col), attr(tag, "data-v"));
            }
        }
        out.push(DataTable { source, cells });
    }
    out
}

fn sections(html: &str) -> Vec<String> {
    html.split("<section id=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_string())
        .collect()
}

fn report(out: &Path, as_of: &str) -> String {
    std::fs::read_to_string(out.join(format!("_report/as_of={as_of}/index.html"))).unwrap()
}

fn num(v: &str) -> f64 {
    v.parse().unwrap_or_else(|_| panic!("not a number: {v}"))
}

#[tokio::test]
async fn the_demo_report_is_committed_with_its_snapshot_and_shows_the_tables_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let m = manifest(&out, DEMO_AS_OF);
    let file = format!("_report/as_of={DEMO_AS_OF}/index.html");
    assert!(
        r.stdout
            .contains(&format!("  report:   {}", out.join(&file).display())),
        "{}",
        r.stdout
    );
    assert_eq!(m["report"]["path"], format!("_report/as_of={DEMO_AS_OF}"));
    assert_eq!(m["report"]["files"], serde_json::json!([file]));
    let html = report(&out, DEMO_AS_OF);
    assert_eq!(m["report"]["bytes"], html.len());

    // Self-contained: no scripts, nothing fetched.
    assert!(!html.contains("<script"), "the report has a script");
    for needle in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(needle), "the report loads {needle}");
    }
    assert_eq!(
        sections(&html),
        [
            "segments",
            "rfm",
            "lifecycle",
            "cohorts",
            "products",
            "channels",
            "migration",
            "clv",
            "run"
        ]
    );
    // Every chart is one inline SVG drawing what its table holds: its bars, cells, lines
    // and points, labels, ticks and legend, worked out from the tables read back.
    charts::assert_demo_charts(&html, &out).await;

    // The scorecard's numbers are the table's, exactly.
    let tables = data_tables(&html);
    let scorecard: BTreeMap<_, _> = tables
        .iter()
        .filter(|t| t.source == "segment_summary")
        .flat_map(|t| t.cells.clone())
        .collect();
    let rows = read_table(&out, "segment_summary", DEMO_AS_OF).await;
    assert_eq!(rows.len(), 59);
    for row in &rows {
        let key = format!(
            "{}|{}",
            row["segmentation"].as_deref().unwrap(),
            row["segment"].as_deref().unwrap()
        );
        for col in [
            "customers",
            "share",
            "revenue_share",
            "aov",
            "repeat_rate",
            "stability",
        ] {
            let shown = scorecard
                .get(&(key.clone(), col.to_string()))
                .unwrap_or_else(|| panic!("{key} {col} not in the report"));
            match (&row[col], shown) {
                (None, None) => {}
                (Some(t), Some(r)) => assert_eq!(num(t), num(r), "{key} {col}"),
                (t, r) => panic!("{key} {col}: table {t:?}, report {r:?}"),
            }
        }
    }
    assert_eq!(
        scorecard.keys().filter(|(_, c)| c == "customers").count(),
        rows.len()
    );

    // Run facts are the manifest's.
    let input: BTreeMap<_, _> = tables
        .iter()
        .filter(|t| t.source == "manifest:input")
        .flat_map(|t| t.cells.clone())
        .collect();
    let visible = &input[&("rows_visible".to_string(), "rows_visible".to_string())];
    assert_eq!(
        visible.as_deref(),
        Some(m["input"]["rows_visible"].to_string().as_str())
    );
    let models = tables
        .iter()
        .find(|t| t.source == "manifest:models")
        .unwrap();
    for (name, t) in m["models"].as_object().unwrap() {
        let rows = &models.cells[&(name.clone(), "rows".to_string())];
        assert_eq!(
            rows.as_deref(),
            Some(t["rows"].to_string().as_str()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_second_snapshot_reports_segment_migration_and_retention_deletes_old_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(
        tmp.path(),
        "uri = \"out\"",
        "uri = \"out\"\nkeep_snapshots = 1",
    );
    let out = tmp.path().join("out");
    run_ok(&config, &["--as-of", "2026-10-31"]);
    let first = report(&out, "2026-10-31");
    assert!(first.contains("No previous snapshot"));
    assert!(!first.contains("data-chart=\"migration_rfm\""));
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let second = report(&out, DEMO_AS_OF);
    assert!(second.contains("data-chart=\"migration_rfm\""));
    let shown: BTreeMap<(String, String), Option<String>> = data_tables(&second)
        .into_iter()
        .filter(|t| t.source == "segment_migration")
        .flat_map(|t| t.cells)
        .collect();
    let rows = read_table(&out, "segment_migration", DEMO_AS_OF).await;
    assert!(!rows.is_empty());
    charts::assert_migration_charts(&second, &rows);
    for row in &rows {
        let key = ["segmentation", "from_segment", "to_segment"]
            .map(|c| row[c].clone().unwrap_or_else(|| "(none)".to_string()))
            .join("|");
        assert_eq!(
            shown[&(key.clone(), "customers".to_string())],
            row["customers"],
            "{key}"
        );
    }
    assert_eq!(shown.len(), rows.len());
    assert!(
        !out.join("_report/as_of=2026-10-31").exists(),
        "kept an old report"
    );
}

#[test]
fn a_project_without_the_builtin_models_gets_a_report_of_its_run() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(
        models.join("daily.sql"),
        "select cast(order_ts as date) as day, count(*) as lines from orders group by 1",
    )
    .unwrap();
    // A model named like a built-in table, without the columns its section needs.
    std::fs::write(
        models.join("rfm.sql"),
        "select customer_id, count(*) as orders from orders group by 1",
    )
    .unwrap();
    let config = demo_config(
        tmp.path(),
        &format!(
            "[models]\nbuiltin = false\npaths = [\"{}\"]\n",
            models.display()
        ),
    );
    let r = run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let html = report(&tmp.path().join("out"), DEMO_AS_OF);
    assert_eq!(sections(&html), ["run"]);
    assert!(html.contains(">daily<") && html.contains(">rfm<"));
    assert!(
        r.stderr.contains("report section left out") && r.stderr.contains("r_score"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_select_run_reports_the_whole_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let full = sections(&report(&out, DEMO_AS_OF));
    run_ok(&config, &["--as-of", DEMO_AS_OF, "--select", "lifecycle"]);
    let html = report(&out, DEMO_AS_OF);
    assert_eq!(sections(&html), full);
    assert!(html.contains(
        &manifest(&out, DEMO_AS_OF)["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    ));
}
