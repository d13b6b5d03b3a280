//! End-to-end tests of the `segflow` binary: golden outputs on a hand-computed fixture, the
//! demo run, idempotent re-runs, atomic publish on failure, locking, migration, and every
//! bad-input error message, and `segflow generate`. One test binary; each test gets its own
//! temp directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

mod analyst;
mod azure;
mod clv;
mod crash;
mod gates;
mod gcs;
mod generate;
mod report;
mod s3;

const DEMO_AS_OF: &str = "2026-11-21";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn segflow(args: &[&str]) -> Run {
    segflow_env(args, &[])
}

/// Runs segflow with extra environment variables.
fn segflow_env(args: &[&str], env: &[(String, String)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_segflow"))
        .args(["--log-format", "json"])
        .args(args)
        .env_remove("SEGFLOW_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("segflow runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The error line segflow printed (logs are JSON lines; the error is plain text).
fn error_line(r: &Run) -> String {
    r.stderr
        .lines()
        .filter(|l| !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes a config into `dir` that reads the demo data with the demo mapping.
fn demo_config(dir: &Path, extra: &str) -> PathBuf {
    let demo = repo().join("fixtures/demo");
    let text = std::fs::read_to_string(demo.join("segflow.toml")).unwrap();
    let text = text
        .replace(
            "uri = \"orders\"",
            &format!("uri = \"{}\"", demo.join("orders").display()),
        )
        .replace(
            "uri = \"customers.parquet\"",
            &format!("uri = \"{}\"", demo.join("customers.parquet").display()),
        )
        .replace(
            "uri = \"marketing_spend.parquet\"",
            &format!(
                "uri = \"{}\"",
                demo.join("marketing_spend.parquet").display()
            ),
        )
        .replace("uri = \"../../out\"", "uri = \"out\"");
    let path = dir.join("segflow.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// The demo config with one piece of text replaced.
fn demo_config_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let c = demo_config(dir, "");
    let text = std::fs::read_to_string(&c).unwrap();
    assert!(text.contains(from), "`{from}` not in the demo config");
    std::fs::write(&c, text.replace(from, to)).unwrap();
    c
}

fn demo_orders() -> String {
    repo().join("fixtures/demo/orders").display().to_string()
}

/// `segflow run --config <config> --as-of <as_of>`.
fn run_at(config: &Path, as_of: &str) -> Run {
    run_at_env(config, as_of, &[])
}

/// [`run_at`] with extra environment variables.
fn run_at_env(config: &Path, as_of: &str, env: &[(String, String)]) -> Run {
    segflow_env(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--as-of",
            as_of,
        ],
        env,
    )
}

fn run_ok(config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = segflow(&args);
    assert_eq!(r.code, 0, "segflow failed:\n{}", r.stderr);
    r
}

fn manifest(out: &Path, as_of: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(format!("_manifest/as_of={as_of}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Reads a published table back (as any hive reader would) into rows of display strings.
async fn read_table(out: &Path, model: &str, as_of: &str) -> Vec<BTreeMap<String, Option<String>>> {
    let m = manifest(out, as_of);
    let entry = &m["tables"][model];
    assert!(entry.is_object(), "table {model} missing from manifest");
    let dir = out.join(format!("{model}/as_of={as_of}/"));
    let parts: Vec<(String, DataType)> = if entry["rows"].as_u64() == Some(0) {
        vec![]
    } else {
        entry["partition_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p.as_str().unwrap().to_string(), DataType::Utf8))
            .collect()
    };
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(
            format!("{}/", dir.display()),
            ParquetReadOptions::default().table_partition_cols(parts),
        )
        .await
        .unwrap();
    display_rows(&df.collect().await.unwrap())
}

/// Rows of display strings (NULL as `None`), by column name.
fn display_rows(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
) -> Vec<BTreeMap<String, Option<String>>> {
    let mut rows = Vec::new();
    let opts = FormatOptions::default();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (j, f) in b.schema().fields().iter().enumerate() {
                let v = (!b.column(j).is_null(i)).then(|| formatters[j].value(i).to_string());
                row.insert(f.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

fn sorted_dump(rows: &[BTreeMap<String, Option<String>>]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

fn same_value(expected: &str, actual: Option<&str>) -> bool {
    match (expected, actual) {
        ("NULL", None) => true,
        ("NULL", Some(_)) | (_, None) => false,
        (e, Some(a)) if e == a => true,
        (e, Some(a)) => match (e.parse::<f64>(), a.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-3),
            _ => false,
        },
    }
}

/// Compares a published table with a hand-computed CSV (columns in the CSV only).
async fn assert_matches_csv(out: &Path, model: &str, as_of: &str, csv: &Path) {
    assert_rows_match_csv(read_table(out, model, as_of).await, model, csv);
}

fn assert_rows_match_csv(actual: Vec<BTreeMap<String, Option<String>>>, model: &str, csv: &Path) {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let expected: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(
        actual.len(),
        expected.len(),
        "{model}: expected {} rows, got {}",
        expected.len(),
        actual.len()
    );
    let mut unmatched: Vec<&BTreeMap<String, Option<String>>> = actual.iter().collect();
    for e in &expected {
        let pos = unmatched.iter().position(|a| {
            header.iter().zip(e.iter()).all(|(h, v)| {
                same_value(
                    v,
                    a.get(*h)
                        .unwrap_or_else(|| panic!("{model}: no column {h}"))
                        .as_deref(),
                )
            })
        });
        match pos {
            Some(p) => {
                unmatched.remove(p);
            }
            None => {
                // Show the row with the same key for a useful diff.
                let key = e[0];
                let near: Vec<_> = actual
                    .iter()
                    .filter(|a| a.get(header[0]).and_then(|v| v.as_deref()) == Some(key))
                    .collect();
                panic!("{model}: no row matches expected {e:?}\nheader {header:?}\nrows with the same key: {near:#?}");
            }
        }
    }
}

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
    for model in [
        "customer_facts",
        "rfm",
        "lifecycle",
        "cohort_retention",
        "customer_affinity",
        "product_value",
        "channel_value",
    ] {
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
    for model in [
        "customer_facts",
        "rfm",
        "lifecycle",
        "cohort_retention",
        "customer_affinity",
        "product_value",
        "channel_value",
        "segment_summary",
        "segment_migration",
        "clv",
        "clv_model",
        "clv_backtest",
    ] {
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
/// column, strings dictionary-encoded and floating-point columns not (their values rarely
/// repeat).
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
        let (mut strings, mut floats) = (0, 0);
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
                    Type::BYTE_ARRAY => {
                        strings += 1;
                        assert!(dictionary, "{name}: string column without a dictionary");
                    }
                    _ => {}
                }
            }
        }
        assert!(
            strings > 0 && floats > 0,
            "{strings} string and {floats} float columns"
        );
    }
    assert!(files > 0, "no Parquet file in {}", dir.display());
}

fn snapshot_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[tokio::test]
async fn failing_model_exits_2_and_leaves_previous_snapshot_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = demo_config(tmp.path(), "[models]\npaths = [\"models\"]\n");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);

    std::fs::write(
        models.join("zz_late_failure.sql"),
        "select count(*) / (count(*) - count(*)) as broken from segment_summary",
    )
    .unwrap();
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        DEMO_AS_OF,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("zz_late_failure.sql") && err.to_lowercase().contains("divide by zero"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed run changed the published output"
    );

    std::fs::remove_file(models.join("zz_late_failure.sql")).unwrap();
    // Debris of a killed run: a staging dir and a lock of a process that is gone.
    std::fs::create_dir_all(out.join("_staging/dead-run/rfm")).unwrap();
    std::fs::write(
        out.join("_lock"),
        format!(
            r#"{{"run_id":"dead-run","host":"{}","pid":999999999,"started_at":"2026-11-23T00:00:00Z"}}"#,
            segflow::publish::host_name()
        ),
    )
    .unwrap();
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    assert!(!out.join("_staging").exists(), "staging debris left behind");
    assert_eq!(read_table(&out, "rfm", DEMO_AS_OF).await.len(), 2940);
}

/// The samples of a Prometheus text file: `name{labels}` -> value; every line a comment or
/// a sample.
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a value: {line}"));
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "repeated: {line}"
        );
    }
    samples
}

/// Bytes of the Parquet files under `dir`.
fn parquet_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            total += parquet_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

#[test]
fn metrics_file_reports_a_run_and_a_failed_one_in_prometheus_text() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = demo_config(tmp.path(), "[models]\npaths = [\"models\"]\n");
    let metrics = tmp.path().join("segflow.prom");
    let m = metrics.to_str().unwrap();
    run_ok(&config, &["--as-of", DEMO_AS_OF, "--metrics", m]);
    let s = prometheus_samples(&std::fs::read_to_string(&metrics).unwrap());
    let out = tmp.path().join("out");
    assert_eq!(s["segflow_run_success"], 1.0);
    assert_eq!(s["segflow_run_exit_status"], 0.0);
    assert!(s["segflow_run_duration_seconds"] > 0.0);
    // 2026-11-21T00:00:00Z
    assert_eq!(
        s["segflow_snapshot_as_of_timestamp_seconds"],
        1_795_219_200.0
    );
    // The demo's 2940 customers, as the tables on disk say.
    assert_eq!(
        s[r#"segflow_model_rows{model="rfm",published="true"}"#],
        2940.0
    );
    assert_eq!(s[r#"segflow_table_rows{table="customer_facts"}"#], 2940.0);
    assert!(s.contains_key(
        r#"segflow_model_duration_seconds{model="customer_days",published="false"}"#
    ));
    let rfm_dir = out.join(format!("rfm/as_of={DEMO_AS_OF}"));
    assert_eq!(
        s[r#"segflow_table_bytes{table="rfm"}"#],
        parquet_bytes(&rfm_dir) as f64
    );
    let written: u64 = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .map(|p| parquet_bytes(&p.join(format!("as_of={DEMO_AS_OF}"))))
        .sum();
    assert_eq!(s["segflow_output_bytes"], written as f64);
    let read = s[r#"segflow_input_rows{stage="read"}"#];
    let parts: f64 = ["dropped_status", "after_as_of", "rejected", "visible"]
        .iter()
        .map(|k| s[&format!(r#"segflow_input_rows{{stage="{k}"}}"#)])
        .sum();
    assert_eq!(read, parts, "every line read is accounted for");
    assert!(s
        .keys()
        .any(|k| k.starts_with("segflow_gate_rows{gate=\"duplicate_lines\"")));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A failed run replaces the file: status 2, no snapshot figures.
    std::fs::write(
        models.join("zz_broken.sql"),
        "select count(*) / (count(*) - count(*)) as broken from rfm",
    )
    .unwrap();
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        DEMO_AS_OF,
        "--metrics",
        m,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let s = prometheus_samples(&std::fs::read_to_string(&metrics).unwrap());
    assert_eq!(s["segflow_run_success"], 0.0);
    assert_eq!(s["segflow_run_exit_status"], 2.0);
    assert!(
        !s.keys().any(|k| k.starts_with("segflow_model_rows")),
        "{s:?}"
    );

    // A metrics file that cannot be written stops the run before it touches the output.
    std::fs::remove_file(models.join("zz_broken.sql")).unwrap();
    let before = snapshot_files(&out);
    let nowhere = tmp.path().join("missing/segflow.prom");
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        "2026-11-22",
        "--metrics",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("missing/segflow.prom"),
        "{}",
        error_line(&r)
    );
    assert_eq!(snapshot_files(&out), before);
}

#[test]
fn progress_lines_show_per_model_on_a_terminal_and_not_off_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    // `script` runs segflow on a pseudo-terminal and copies what it drew to stdout.
    let command = format!(
        "{} --log-format json run --config {} --as-of {DEMO_AS_OF}",
        env!("CARGO_BIN_EXE_segflow"),
        config.display()
    );
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env_remove("SEGFLOW_CONFIG")
        .output()
        .expect("script (util-linux) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    let models = manifest(&tmp.path().join("out"), DEMO_AS_OF)["models"]
        .as_object()
        .unwrap()
        .len();
    assert!(screen.contains(&format!("[1/{models}]")), "{screen}");
    assert!(screen.contains("rfm: 2940 rows in "), "{screen}");
    assert!(
        screen.contains(r#""message":"model computed""#),
        "logs still shown: {screen}"
    );

    // Off a terminal: the logs only.
    let r = run_ok(&config, &["--as-of", "2026-11-22"]);
    assert!(!r.stderr.contains(" rows in "), "{}", r.stderr);
    assert!(!r.stdout.contains(" rows in "), "{}", r.stdout);
}

/// A one-thread HTTP server on 127.0.0.1 that answers 200 to every POST and keeps the
/// bodies; stops after `requests` requests.
fn lineage_server(requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with("POST /api/v1/lineage "),
                "{request_line}"
            );
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            bodies.push(String::from_utf8(body).unwrap());
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
        }
        bodies
    });
    (url, handle)
}

#[test]
fn openlineage_events_name_inputs_and_outputs_with_schemas_in_a_file_and_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let (url, server) = lineage_server(4);
    let config = demo_config(
        tmp.path(),
        &format!(
            "[models]\npaths = [\"models\"]\n[lineage]\nfile = \"lineage.jsonl\"\nurl = \"{url}\"\nnamespace = \"shop\"\njob = \"nightly\"\n"
        ),
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    std::fs::write(
        models.join("zz_broken.sql"),
        "select count(*) / (count(*) - count(*)) as broken from rfm",
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 2, "{}", r.stderr);

    let text = std::fs::read_to_string(tmp.path().join("lineage.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "COMPLETE", "START", "FAIL"]);
    let posted = server.join().unwrap();
    let posted: Vec<serde_json::Value> = posted
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        posted, events,
        "the file and the endpoint got the same events"
    );
    assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
    assert_ne!(events[1]["run"]["runId"], events[2]["run"]["runId"]);
    assert_eq!(
        events[0]["job"],
        serde_json::json!({"namespace": "shop", "name": "nightly"})
    );

    // Inputs: the demo's three, named by path, with the columns the models see.
    let orders = repo().join("fixtures/demo/orders").display().to_string();
    let inputs = events[1]["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 3);
    let order_input = inputs
        .iter()
        .find(|d| d["name"] == orders.as_str())
        .unwrap();
    assert_eq!(order_input["namespace"], "file");
    let fields: Vec<&str> = order_input["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"customer_id") && fields.contains(&"revenue"),
        "{fields:?}"
    );

    // Outputs: every published table, its columns as in its Parquet files, rows and bytes.
    let out = tmp.path().join("out");
    let outputs = events[1]["outputs"].as_array().unwrap();
    let rfm_dir = out.join(format!("rfm/as_of={DEMO_AS_OF}"));
    let rfm = outputs
        .iter()
        .find(|d| d["name"] == rfm_dir.display().to_string().as_str())
        .unwrap_or_else(|| panic!("no rfm output in {outputs:?}"));
    assert_eq!(rfm["outputFacets"]["outputStatistics"]["rowCount"], 2940);
    assert_eq!(
        rfm["outputFacets"]["outputStatistics"]["size"],
        parquet_bytes(&rfm_dir)
    );
    let file = std::fs::read_dir(rfm_dir.join("segment=Champions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap();
    let mut in_file: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    in_file.push("segment".into());
    let mut reported: Vec<String> = rfm["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    in_file.sort();
    reported.sort();
    assert_eq!(reported, in_file);

    // FAIL carries the error.
    let message = events[3]["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("zz_broken.sql"), "{message}");
    assert!(events[3]["outputs"].as_array().unwrap().is_empty());
}

#[test]
fn lineage_config_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let c = demo_config(tmp.path(), "[lineage]\nurl = \"ftp://example\"\n");
    let r = run_at(&c, DEMO_AS_OF);
    assert_eq!(r.code, 2);
    assert!(error_line(&r).contains("lineage.url"), "{}", error_line(&r));
    let c = demo_config(tmp.path(), "[lineage]\nnamespace = \"x\"\n");
    let r = run_at(&c, DEMO_AS_OF);
    assert_eq!(r.code, 2);
    assert!(error_line(&r).contains("lineage"), "{}", error_line(&r));
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn live_lock_makes_a_second_run_exit_2_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lock = format!(
        r#"{{"run_id":"nightly-42","host":"{}","pid":{},"started_at":"{}"}}"#,
        segflow::publish::host_name(),
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    );
    std::fs::write(out.join("_lock"), &lock).unwrap();
    let r = segflow(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    let err = error_line(&r);
    assert!(
        err.contains("locked") && err.contains("nightly-42"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("_lock")).unwrap(),
        lock,
        "lock of a live run was touched"
    );
}

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

#[test]
fn init_scaffolds_a_project_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    let r = segflow(&["init", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.join("models/rfm.sql").exists());
    let r = run_ok(&dir.join("segflow.toml"), &[]);
    assert!(
        r.stdout.contains("published as_of=2026-11-21"),
        "{}",
        r.stdout
    );
    assert!(dir.join("out/rfm").exists());
    assert_eq!(segflow(&["init", dir.to_str().unwrap()]).code, 2);
}

/// Runs with a broken setup; checks nothing was published; returns (exit code, error text).
fn failing(setup: impl FnOnce(&Path) -> PathBuf) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        DEMO_AS_OF,
    ]);
    assert!(
        !tmp.path().join("out/_manifest").exists(),
        "a failed run published something"
    );
    (r.code, error_line(&r))
}

fn with_model(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join(name), sql).unwrap();
    demo_config(dir, "[models]\npaths = [\"models\"]\n")
}

/// A run with one extra model file exits with `code` and an error containing every needle.
fn assert_model_fails(file: &str, sql: &str, code: i32, needles: &[&str]) {
    let (actual, err) = failing(|d| with_model(d, file, sql));
    assert_eq!(actual, code, "{file}: {err}");
    for n in needles {
        assert!(err.contains(n), "{file}: `{n}` missing from: {err}");
    }
}

#[test]
fn unknown_config_key_is_named() {
    let (code, err) = failing(|d| demo_config(d, "[runtime]\nmemroy_limit = \"4g\"\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("memroy_limit") && err.contains("segflow.toml"),
        "{err}"
    );
}

#[test]
fn unknown_datafusion_key_is_named() {
    let (code, err) = failing(|d| {
        demo_config_with(
            d,
            "\"execution.target_partitions\"",
            "\"execution.no_such_key\"",
        )
    });
    assert_eq!(code, 2);
    assert!(err.contains("execution.no_such_key"), "{err}");
}

#[test]
fn missing_input_path_is_named() {
    let (code, err) = failing(|d| demo_config_with(d, &demo_orders(), "/nonexistent/orders"));
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/orders") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn missing_mapped_column_names_source_and_canonical_column() {
    let (code, err) = failing(|d| demo_config_with(d, "\"created_at\"", "\"created_on\""));
    assert_eq!(code, 2);
    assert!(
        err.contains("created_on") && err.contains("order_ts"),
        "{err}"
    );
}

#[test]
fn model_cycle_names_the_chain() {
    let (code, err) = failing(|d| {
        with_model(d, "cyc_a.sql", "select * from cyc_b");
        with_model(d, "cyc_b.sql", "select * from cyc_a")
    });
    assert_eq!(code, 2);
    assert!(err.contains("cyc_a -> cyc_b -> cyc_a"), "{err}");
}

#[test]
fn unknown_table_names_the_table_and_the_file() {
    assert_model_fails(
        "uses_missing.sql",
        "select * from custmer_facts",
        2,
        &["custmer_facts", "uses_missing.sql"],
    );
}

#[test]
fn ddl_and_dml_in_a_model_are_rejected_naming_the_file() {
    for (file, sql, kind) in [
        ("make_table.sql", "create table t as select 1", "CREATE"),
        ("add_rows.sql", "insert into t values (1)", "INSERT"),
        ("export.sql", "copy (select 1) to '/tmp/x.parquet'", "COPY"),
        (
            "settings.sql",
            "set datafusion.execution.batch_size = 1",
            "SET",
        ),
    ] {
        assert_model_fails(file, sql, 2, &[file, kind]);
    }
}

#[test]
fn unparsable_front_matter_names_file_and_line() {
    let sql = "/*---\ndescription = \"ok\"\ngrain = [\"customer_id\"\npublish = true\n---*/\nselect 1 as x";
    assert_model_fails("bad_header.sql", sql, 2, &["bad_header.sql:4"]);
}

#[test]
fn sql_error_points_at_file_line_and_column() {
    let sql =
        "/*---\ndescription = \"x\"\n---*/\nselect\n  customer_id,\n  revenu\nfrom customer_facts";
    assert_model_fails("typo.sql", sql, 2, &["typo.sql:6:3", "revenu"]);
}

#[test]
fn unknown_clv_time_unit_exits_2_naming_the_parameter_and_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = segflow_env(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--as-of",
            DEMO_AS_OF,
        ],
        &[("SEGFLOW_PARAM_TIME_UNIT".into(), "months".into())],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = error_line(&r);
    assert!(
        line.contains("btyd_summary") && line.contains("time_unit must be days or weeks"),
        "{line}"
    );
    let out = tmp.path().join("out");
    assert!(
        !out.exists() || snapshot_files(&out).is_empty(),
        "nothing published"
    );
}

#[test]
fn failed_model_check_exits_1_and_publishes_nothing() {
    let sql = "/*---\n[checks]\nunique = [\"acquisition_channel\"]\n---*/\nselect customer_id, acquisition_channel from customer_facts";
    assert_model_fails(
        "checked.sql",
        sql,
        1,
        &["checked.sql", "unique(acquisition_channel)"],
    );
}

#[test]
fn undefined_parameter_is_named() {
    let sql = "select * from customer_facts where tenure_days > $min_tenure";
    assert_model_fails("param.sql", sql, 2, &["$min_tenure", "param.sql"]);
}

#[test]
fn empty_input_fails_naming_the_uri() {
    let (code, err) = failing(|d| {
        let empty = d.join("empty_orders");
        std::fs::create_dir_all(&empty).unwrap();
        demo_config_with(d, &demo_orders(), &empty.display().to_string())
    });
    assert_eq!(code, 2);
    assert!(
        err.contains("empty_orders") && err.contains("empty"),
        "{err}"
    );
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

#[test]
fn a_commit_that_fails_halfway_rolls_back_every_swapped_table() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    // The last table to be swapped in cannot be: its folder is in the way as a plain file.
    std::fs::remove_dir_all(out.join("segment_summary")).unwrap();
    std::fs::write(out.join("segment_summary"), "in the way").unwrap();
    let before = snapshot_files(&out);
    let r = segflow(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        DEMO_AS_OF,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("segment_summary"),
        "{}",
        error_line(&r)
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed commit changed the published tables"
    );
    assert!(!out.join("_staging").exists() && !out.join("_lock").exists());
}

/// Writes a minimal orders file: customer_id, a Date32 order_ts, revenue — nothing else.
fn write_minimal_orders(path: &Path, rows: &[(&str, &str, f64)]) {
    let rows: Vec<_> = rows
        .iter()
        .map(|(c, d, r)| (Some(*c), Some(*d), *r))
        .collect();
    write_orders_with_nulls(path, &rows);
}

/// Runs the built-in library over (customer, date, revenue) lines with `as_of` and `extra`
/// config text; returns the output folder.
fn run_minimal(dir: &Path, as_of: &str, rows: &[(&str, &str, f64)], extra: &str) -> PathBuf {
    write_minimal_orders(&dir.join("orders.parquet"), rows);
    let config = dir.join("segflow.toml");
    std::fs::write(
        &config,
        format!("as_of = \"{as_of}\"\n[input.orders]\nuri = \"orders.parquet\"\n[output]\nuri = \"out\"\n{extra}"),
    )
    .unwrap();
    run_ok(&config, &[]);
    dir.join("out")
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

#[tokio::test]
async fn parameters_are_case_insensitive_and_env_overrides_take_the_default_type() {
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(
        tmp.path(),
        "long_tenure.sql",
        "/*---\n[params]\nmin_tenure = 10\nlabel = \"x\"\n---*/\nselect customer_id, $Label as label from customer_facts where tenure_days > $MIN_TENURE",
    );
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_segflow"))
            .args([
                "--log-format",
                "json",
                "run",
                "--config",
                config.to_str().unwrap(),
                "--as-of",
                DEMO_AS_OF,
            ])
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
    let r = segflow_env(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--as-of",
            DEMO_AS_OF,
        ],
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

/// The log records of a run (`--log-format json`) with the given message, as their fields.
fn logged(r: &Run, message: &str) -> Vec<serde_json::Value> {
    r.stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["fields"].clone())
        .filter(|f| f["message"] == message)
        .collect()
}

/// Logs of the scheduler: which model started, beside how many others.
fn scheduler_logs() -> Vec<(String, String)> {
    vec![(
        "SEGFLOW_LOG".to_string(),
        "info,segflow::models::schedule=debug".to_string(),
    )]
}

/// The models that started beside another one.
fn started_beside(r: &Run) -> Vec<String> {
    logged(r, "model started")
        .iter()
        .filter(|f| f["beside"].as_u64().unwrap() > 0)
        .map(|f| f["model"].as_str().unwrap().to_string())
        .collect()
}

/// Every published table of `out` at `as_of`, sorted, floats as their shortest round-trip
/// text (equal text = equal bits).
async fn published_dumps(out: &Path, as_of: &str) -> BTreeMap<String, Vec<String>> {
    let m = manifest(out, as_of);
    let mut tables = BTreeMap::new();
    for model in m["tables"].as_object().unwrap().keys() {
        tables.insert(
            model.clone(),
            sorted_dump(&read_table(out, model, as_of).await),
        );
    }
    tables
}

/// The tables do not depend on the partition count or on whether models run one at a time
/// or side by side.
#[tokio::test]
async fn reruns_are_bit_identical_at_one_and_eight_partitions_and_models_one_or_two_at_a_time() {
    let mut dumps = Vec::new();
    for (partitions, concurrent) in [("1", 1), ("8", 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let config = demo_config_with(
            tmp.path(),
            "\"execution.target_partitions\" = \"2\"",
            &format!(
                "\"execution.target_partitions\" = \"{partitions}\"\n\n\
                 [runtime]\nconcurrent_models = {concurrent}"
            ),
        );
        let r = run_at_env(&config, DEMO_AS_OF, &scheduler_logs());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let beside = started_beside(&r);
        assert_eq!(beside.is_empty(), concurrent == 1, "{beside:?}");
        dumps.push(published_dumps(&tmp.path().join("out"), DEMO_AS_OF).await);
    }
    assert_eq!(dumps[0].len(), dumps[1].len());
    for (model, rows) in &dumps[0] {
        assert_eq!(
            rows, &dumps[1][model],
            "{model} differs between 1 partition, one model at a time and 8, two at a time"
        );
    }
}

/// Two models at a time: one failing beside another stops the run there (the models
/// downstream never start), exits 2 naming its file, and leaves the output as it was, with
/// no staging left behind.
#[test]
fn a_model_failing_beside_another_stops_the_run_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = demo_config(
        tmp.path(),
        "[models]\npaths = [\"models\"]\n\n[runtime]\nconcurrent_models = 2\n",
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);

    // Reads only the orders: it starts as soon as they are staged, with the first built-in
    // model beside it, and fails on its first rows.
    std::fs::write(
        models.join("aa_early_failure.sql"),
        "select customer_id, quantity / (quantity - quantity) as broken from orders",
    )
    .unwrap();
    let r = run_at_env(&config, DEMO_AS_OF, &scheduler_logs());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("aa_early_failure.sql") && err.to_lowercase().contains("divide by zero"),
        "{err}"
    );
    let started: Vec<String> = logged(&r, "model started")
        .iter()
        .map(|f| f["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(started[0], "aa_early_failure", "{started:?}");
    assert!(started_beside(&r).contains(&started[1]), "{}", r.stderr);
    assert!(
        !started.iter().any(|m| m == "segment_summary"),
        "the run went on after the failure: {started:?}"
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed run changed the published output"
    );
    let staging = out.join("_staging");
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
        "staging left behind"
    );
}

/// A model that runs out of memory beside another is rerun alone once the other finishes,
/// and the run publishes the same tables as one where nothing ran out of memory.
#[tokio::test]
async fn a_model_out_of_memory_beside_another_is_rerun_alone_with_the_same_tables() {
    let plain = tempfile::tempdir().unwrap();
    let config = demo_config(plain.path(), "[runtime]\nconcurrent_models = 2\n");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let expected = published_dumps(&plain.path().join("out"), DEMO_AS_OF).await;

    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "[runtime]\nconcurrent_models = 2\n");
    let mut env = scheduler_logs();
    env.push((
        "SEGFLOW_FAILPOINTS".to_string(),
        "out_of_memory=error".to_string(),
    ));
    let r = run_at_env(&config, DEMO_AS_OF, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warned = logged(
        &r,
        "model ran out of memory beside other models; rerunning it alone once they finish",
    );
    assert_eq!(warned.len(), 1, "{}", r.stderr);
    let model = warned[0]["model"].as_str().unwrap();
    // Started twice: first beside another model, then alone.
    let starts: Vec<u64> = logged(&r, "model started")
        .iter()
        .filter(|f| f["model"] == model)
        .map(|f| f["beside"].as_u64().unwrap())
        .collect();
    assert_eq!(starts.len(), 2, "{}", r.stderr);
    assert_eq!(starts[1], 0, "{}", r.stderr);
    assert_eq!(
        published_dumps(&tmp.path().join("out"), DEMO_AS_OF).await,
        expected
    );
}

#[test]
fn zero_concurrent_models_exits_2_naming_the_key() {
    let (code, err) = failing(|d| demo_config(d, "[runtime]\nconcurrent_models = 0\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("runtime.concurrent_models") && err.contains("at least 1"),
        "{err}"
    );
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

/// Order lines with optional customer ids and dates (NULL where `None`).
fn write_orders_with_nulls(path: &Path, rows: &[(Option<&str>, Option<&str>, f64)]) {
    use datafusion::arrow::array::{Date32Array, Float64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let days: Vec<Option<i32>> = rows
        .iter()
        .map(|(_, d, _)| {
            d.map(|d| {
                (chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap() - epoch).num_days()
                    as i32
            })
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("order_ts", DataType::Date32, true),
        Field::new("revenue", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(days)),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    write_parquet(path, &batch);
}

/// Writes one batch as a Parquet file.
fn write_parquet(path: &Path, batch: &datafusion::arrow::record_batch::RecordBatch) {
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
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

#[test]
fn unique_check_ignores_null_keys_and_still_catches_duplicates() {
    // Two rows with a NULL key and one with 'x': unique passes (NULL keys take no part).
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(
        tmp.path(),
        "keys.sql",
        "/*---\n[checks]\nunique = [\"k\", \"k, j\"]\n---*/\n\
         select * from (values (cast(null as varchar), 1), (cast(null as varchar), 1), ('x', 1)) as t(k, j)",
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    // Two rows with 'x': a duplicate.
    assert_model_fails(
        "keys.sql",
        "/*---\n[checks]\nunique = [\"k\"]\n---*/\n\
         select * from (values (cast(null as varchar)), ('x'), ('x')) as t(k)",
        1,
        &["keys.sql", "unique(k): 1 duplicated value(s)"],
    );
}

#[test]
fn environment_mistakes_exit_2_naming_the_variable_without_panicking() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let run = |key: &str, value: &OsStr| {
        let out = Command::new(env!("CARGO_BIN_EXE_segflow"))
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--as-of",
                DEMO_AS_OF,
            ])
            .env_remove("SEGFLOW_CONFIG")
            .env(key, value)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("SEGFLOW_PARAM_LABEL", OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SEGFLOW_PARAM_LABEL") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = run("SEGFLOW_INPUT_URI", OsStr::new("/tmp/x"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SEGFLOW_INPUT_URI") && err.contains("SEGFLOW_INPUT_<NAME>_URI"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !tmp.path().join("out/_manifest").exists(),
        "nothing is published"
    );
    // Variables outside SEGFLOW_* may hold any bytes.
    let (code, err) = run("SOME_OTHER_TOOL_SETTING", OsStr::from_bytes(b"\xff\xfe"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn enormous_sizes_and_durations_exit_2_naming_the_key() {
    for (extra, key) in [
        (
            "[runtime]\nmemory_limit = \"99999999999999t\"\n",
            "runtime.memory_limit",
        ),
        (
            "[output]\nlock_timeout = \"99999999999999999d\"\n",
            "output.lock_timeout",
        ),
    ] {
        let (code, err) = failing(|d| {
            let c = demo_config(d, "");
            let text = std::fs::read_to_string(&c).unwrap();
            // The demo config has an [output] table already: add the key there.
            let text = if extra.starts_with("[output]") {
                text.replace("[output]\n", extra)
            } else {
                format!("{text}\n{extra}")
            };
            std::fs::write(&c, text).unwrap();
            c
        });
        assert_eq!(code, 2, "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("panicked"), "{key}: {err}");
    }
}

#[test]
fn symlink_loop_under_a_model_folder_exits_2_naming_it() {
    let (code, err) = failing(|d| {
        let c = with_model(d, "ok.sql", "select 1 as x");
        std::os::unix::fs::symlink(d.join("models"), d.join("models/again")).unwrap();
        c
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("symlink loop") && err.contains("models/again"),
        "{err}"
    );
}
