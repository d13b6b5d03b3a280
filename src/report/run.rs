//! Section: facts of the run.

use crate::publish::Manifest;

use super::*;

/// Run facts from the manifest: inputs, gates, models, versions.
pub(super) fn run_facts(manifest: &Manifest) -> Section {
    let how = match &manifest.run {
        Some(r) => match (&r.full_reason, r.state_from) {
            (None, Some(from)) => format!(
                " Incremental: the order lines below are those the state kept by the snapshot of {from} lacked."
            ),
            (Some(why), _) => format!(" Full run ({why})."),
            (None, None) => String::new(),
        },
        None => String::new(),
    };
    let mut section = Section::new(
        "run",
        "Run",
        format!(
            "Run {} of segflow {} on DataFusion {}, config hash {}.{how}",
            manifest.run_id,
            manifest.segflow_version,
            manifest.datafusion_version,
            manifest.config_hash
        ),
    );
    let int = |col: &str, v: u64| Value::i(col, i64::try_from(v).ok());
    if let Some(input) = &manifest.input {
        let rows = [
            ("files", "files read", input.files as u64),
            ("rows_read", "rows read", input.rows_read),
            (
                "rows_dropped_status",
                "dropped by status",
                input.rows_dropped_status,
            ),
            ("rows_after_as_of", "after as_of", input.rows_after_as_of),
            ("rows_rejected", "rejected by gates", input.rows_rejected),
            ("rows_visible", "rows the models read", input.rows_visible),
        ];
        section.tables.push(DataTable {
            source: "manifest:input".to_string(),
            caption: "Order lines".to_string(),
            headers: vec!["".to_string(), "rows".to_string()],
            rows: rows
                .iter()
                .map(|(key, label, v)| Row {
                    key: key.to_string(),
                    label: label.to_string(),
                    cells: vec![int(key, *v)],
                    flag: None,
                })
                .collect(),
            open: true,
        });
        section.tables.push(DataTable {
            source: "manifest:gates".to_string(),
            caption: "Input gates".to_string(),
            headers: ["gate", "policy", "rows"].map(String::from).to_vec(),
            rows: input
                .gates
                .iter()
                .map(|(gate, stat)| {
                    let policy = stat.policy.as_str().to_string();
                    Row {
                        key: gate.clone(),
                        label: gate.clone(),
                        cells: vec![
                            Value::new("policy", policy.clone(), Some(policy)),
                            int("rows", stat.rows),
                        ],
                        flag: (stat.rows > 0).then_some("warn"),
                    }
                })
                .collect(),
            open: true,
        });
    }
    section.tables.push(DataTable {
        source: "manifest:models".to_string(),
        caption: "Models in run order of their names".to_string(),
        headers: ["model", "rows", "seconds", "published"]
            .map(String::from)
            .to_vec(),
        rows: manifest
            .models
            .iter()
            .map(|(name, m)| Row {
                key: name.clone(),
                label: name.clone(),
                cells: vec![
                    int("rows", m.rows),
                    Value::new(
                        "duration_ms",
                        format!("{:.2}", m.duration_ms as f64 / 1000.0),
                        Some(m.duration_ms.to_string()),
                    ),
                    Value::new(
                        "published",
                        if m.published { "yes" } else { "internal" }.to_string(),
                        Some(m.published.to_string()),
                    ),
                ],
                flag: None,
            })
            .collect(),
        open: false,
    });
    section
}
