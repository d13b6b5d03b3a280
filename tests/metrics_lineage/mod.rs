//! What a run reports about itself: the Prometheus text file of `--metrics`, progress
//! lines on a terminal, and OpenLineage events written to a file and POSTed to an endpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{
    demo_config, error_line, manifest, repo, run_at, run_ok, segflow, snapshot_files, wait_until,
    Deadline, DEMO_AS_OF, RUN_DEADLINE, UPDATE_SNAPSHOTS,
};

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
        .env_remove(UPDATE_SNAPSHOTS)
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
/// bodies; stops after `requests` requests. It waits for each request as long as a run may
/// take, and 60 s for each read, then fails (the test's `join` sees it).
fn lineage_server(requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
    let at = url.clone();
    let handle = std::thread::spawn(move || {
        (1..=requests)
            .map(|n| {
                let what = format!("POST {n} of {requests} to {at}");
                let (stream, _) = wait_until(
                    &what,
                    RUN_DEADLINE,
                    Duration::from_millis(20),
                    || match listener.accept() {
                        Ok(accepted) => Some(accepted),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                        Err(e) => panic!("{what}: {e}"),
                    },
                );
                read_post(stream, &what)
            })
            .collect()
    });
    (url, handle)
}

/// Reads one `POST /api/v1/lineage` (each read fails after 60 s), answers 200 and returns
/// its body.
fn read_post(mut stream: TcpStream, what: &str) -> String {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut read_line = || {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        line
    };
    let request_line = read_line();
    assert!(
        request_line.starts_with("POST /api/v1/lineage "),
        "{request_line}"
    );
    let mut length = 0;
    let deadline = Deadline::after(Duration::from_secs(60));
    loop {
        deadline.check(|| format!("the end of the headers of {what}"));
        let line = read_line();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .unwrap();
    String::from_utf8(body).unwrap()
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
