//! `segflow run --metrics FILE`: the run's figures in the Prometheus text exposition format
//! (version 0.0.4), for node-exporter's textfile collector. The file is written whole to a
//! temporary file beside it and renamed over it, so the collector never reads half a file.
//!
//! A successful run writes everything its manifest knows; a failed one writes its duration,
//! exit status and finish time, with `segflow_run_success 0`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::publish::manifest::InputStats;
use crate::publish::Manifest;

/// What a run leaves for its metrics.
pub struct RunOutcome<'a> {
    /// The published snapshot's manifest; None when the run failed.
    pub manifest: Option<&'a Manifest>,
    pub exit_code: u8,
    pub duration: Duration,
    pub finished_at: DateTime<Utc>,
}

/// The metrics text of a run.
pub fn render(outcome: &RunOutcome<'_>) -> String {
    let mut out = Metrics::default();
    run_gauges(&mut out, outcome);
    let Some(m) = outcome.manifest else {
        return out.text;
    };
    let as_of = m
        .as_of
        .and_hms_opt(0, 0, 0)
        .map_or(0.0, |t| t.and_utc().timestamp() as f64);
    out.gauge(
        "segflow_snapshot_as_of_timestamp_seconds",
        "as_of of the published snapshot (Unix time of its midnight, UTC).",
        &[(vec![], as_of)],
    );
    if let Some(input) = &m.input {
        input_gauges(&mut out, input);
    }
    model_gauges(&mut out, m);
    table_gauges(&mut out, m);
    out.text
}

/// What every run reports, failed or not: success, exit status, duration, finish time.
fn run_gauges(out: &mut Metrics, outcome: &RunOutcome<'_>) {
    out.gauge(
        "segflow_run_success",
        "1 when the run published its snapshot, 0 when it failed.",
        &[(vec![], f64::from(u8::from(outcome.manifest.is_some())))],
    );
    out.gauge(
        "segflow_run_exit_status",
        "Exit status of the run: 0 published, 1 a check or gate failed, 2 the run stopped.",
        &[(vec![], f64::from(outcome.exit_code))],
    );
    out.gauge(
        "segflow_run_duration_seconds",
        "Wall time of the run.",
        &[(vec![], outcome.duration.as_secs_f64())],
    );
    out.gauge(
        "segflow_run_finished_timestamp_seconds",
        "When the run ended (Unix time).",
        &[(
            vec![],
            outcome.finished_at.timestamp_millis() as f64 / 1000.0,
        )],
    );
}

/// The orders input: files read, order lines by stage, lines caught by each gate.
fn input_gauges(out: &mut Metrics, input: &InputStats) {
    out.gauge(
        "segflow_input_files",
        "Parquet files of the orders input read.",
        &[(vec![], input.files as f64)],
    );
    let rows = [
        ("read", input.rows_read),
        ("dropped_status", input.rows_dropped_status),
        ("after_as_of", input.rows_after_as_of),
        ("rejected", input.rows_rejected),
        ("visible", input.rows_visible),
    ];
    out.gauge(
        "segflow_input_rows",
        "Order lines read, dropped by drop_status, after as_of, rejected by a gate, and seen by the models.",
        &rows
            .iter()
            .map(|(stage, n)| (vec![("stage", stage.to_string())], *n as f64))
            .collect::<Vec<_>>(),
    );
    out.gauge(
        "segflow_gate_rows",
        "Order lines each input gate caught, by gate and policy.",
        &input
            .gates
            .iter()
            .map(|(gate, s)| {
                let policy = s.policy.as_str();
                (
                    vec![("gate", gate.clone()), ("policy", policy.to_string())],
                    s.rows as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
}

/// Wall time and rows of each model.
fn model_gauges(out: &mut Metrics, m: &Manifest) {
    out.gauge(
        "segflow_model_duration_seconds",
        "Wall time of each model (computed and staged).",
        &m.models
            .iter()
            .map(|(name, t)| {
                (
                    model_labels(name, t.published),
                    t.duration_ms as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    out.gauge(
        "segflow_model_rows",
        "Rows each model produced.",
        &m.models
            .iter()
            .map(|(name, t)| (model_labels(name, t.published), t.rows as f64))
            .collect::<Vec<_>>(),
    );
}

/// Rows and bytes of each published table, then of the whole output.
fn table_gauges(out: &mut Metrics, m: &Manifest) {
    out.gauge(
        "segflow_table_rows",
        "Rows of each published table.",
        &m.tables
            .iter()
            .map(|(name, t)| (vec![("table", name.clone())], t.rows as f64))
            .collect::<Vec<_>>(),
    );
    out.gauge(
        "segflow_table_bytes",
        "Bytes of the data files of each published table.",
        &m.tables
            .iter()
            .map(|(name, t)| (vec![("table", name.clone())], t.bytes as f64))
            .collect::<Vec<_>>(),
    );
    let rejected = m.rejected.as_ref();
    out.gauge(
        "segflow_output_rows",
        "Rows published: all tables together.",
        &[(vec![], m.tables.values().map(|t| t.rows as f64).sum())],
    );
    out.gauge(
        "segflow_output_bytes",
        "Bytes of data files published: all tables and the rejected rows together.",
        &[(
            vec![],
            m.tables.values().map(|t| t.bytes as f64).sum::<f64>()
                + rejected.map_or(0.0, |r| r.bytes as f64),
        )],
    );
}

fn model_labels(name: &str, published: bool) -> Vec<(&'static str, String)> {
    vec![
        ("model", name.to_string()),
        ("published", published.to_string()),
    ]
}

#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    /// One gauge family: HELP, TYPE and a sample per label set (none when empty).
    fn gauge(&mut self, name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} gauge");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(self.text, " {}", format_value(*value));
        }
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Fails unless `path` names a file in an existing directory (checked before a run).
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let invalid = |why: &str| {
        Error::io(
            "write the metrics file",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
        )
    };
    if path.file_name().is_none() || path.is_dir() {
        return Err(invalid("not a file path"));
    }
    if !dir.is_dir() {
        return Err(invalid("its directory does not exist"));
    }
    Ok(())
}

/// Writes `text` to `path`: to a temporary file in the same directory, then renamed over it.
pub fn write(path: &Path, text: &str) -> Result<()> {
    crate::storage::write_file_atomically(path, text.as_bytes(), "write the metrics file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_use_prometheus_spellings() {
        let mut m = Metrics::default();
        m.gauge(
            "x",
            "a\\b\nc",
            &[
                (vec![("l", "q\"u\\o\nte".to_string())], f64::INFINITY),
                (vec![], 0.5),
            ],
        );
        assert_eq!(
            m.text,
            "# HELP x a\\\\b\\nc\n# TYPE x gauge\nx{l=\"q\\\"u\\\\o\\nte\"} +Inf\nx 0.5\n"
        );
    }

    #[test]
    fn a_failed_run_reports_status_duration_and_no_snapshot() {
        let text = render(&RunOutcome {
            manifest: None,
            exit_code: 2,
            duration: Duration::from_millis(1500),
            finished_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        });
        assert!(text.contains("\nsegflow_run_success 0\n"), "{text}");
        assert!(text.contains("\nsegflow_run_exit_status 2\n"), "{text}");
        assert!(
            text.contains("\nsegflow_run_duration_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("\nsegflow_run_finished_timestamp_seconds 1700000000\n"),
            "{text}"
        );
        assert!(!text.contains("segflow_model_rows"), "{text}");
    }
}
