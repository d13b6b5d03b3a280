//! OpenLineage run events (spec 2-0-2): START when a run begins, COMPLETE with the published
//! tables or FAIL with the error when it ends, each naming the input datasets and the output
//! datasets with their schemas — appended as JSON lines to a file, POSTed to a URL (Marquez:
//! `http://host:5000/api/v1/lineage`), or both (`[lineage]` in the config).
//!
//! Lineage is a report about the run, not part of it: an event that cannot be delivered is
//! logged as a warning naming the file or URL, and the run goes on.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::datatypes::Schema;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::warn;
use url::Url;

use crate::config::{LineageSettings, Settings};
use crate::publish::Manifest;

const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const SCHEMA_FACET_URL: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const STATISTICS_FACET_URL: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";
const ERROR_FACET_URL: &str =
    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const PRODUCER: &str = concat!(
    "https://github.com/segflow/segflow/tree/v",
    env!("CARGO_PKG_VERSION")
);

/// A dataset as OpenLineage names it, with its columns when known.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub namespace: String,
    pub name: String,
    pub fields: Option<Vec<(String, String)>>,
    /// Rows and bytes written (outputs).
    pub statistics: Option<(u64, u64)>,
}

impl Dataset {
    /// Names `uri` (a local path or an object-store URL) after OpenLineage's conventions:
    /// namespace `file` and the absolute path, or `scheme://bucket` and the key.
    pub fn at(uri: &str) -> Dataset {
        let (namespace, name) = match Url::parse(uri) {
            Ok(u) if u.scheme() != "file" && u.scheme().len() > 1 => (
                format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
                u.path().trim_start_matches('/').to_string(),
            ),
            Ok(u) => ("file".to_string(), u.path().to_string()),
            Err(_) => ("file".to_string(), uri.to_string()),
        };
        Dataset {
            namespace,
            name,
            fields: None,
            statistics: None,
        }
    }

    pub fn with_schema(mut self, schema: &Schema) -> Dataset {
        self.fields = Some(
            schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect(),
        );
        self
    }

    fn to_json(&self) -> Value {
        let mut facets = serde_json::Map::new();
        if let Some(fields) = &self.fields {
            let fields: Vec<Value> = fields
                .iter()
                .map(|(name, t)| json!({"name": name, "type": t}))
                .collect();
            facets.insert(
                "schema".into(),
                json!({"_producer": PRODUCER, "_schemaURL": SCHEMA_FACET_URL, "fields": fields}),
            );
        }
        let mut dataset = json!({
            "namespace": self.namespace,
            "name": self.name,
            "facets": facets,
        });
        if let Some((rows, bytes)) = self.statistics {
            dataset["outputFacets"] = json!({"outputStatistics": {
                "_producer": PRODUCER,
                "_schemaURL": STATISTICS_FACET_URL,
                "rowCount": rows,
                "size": bytes,
            }});
        }
        dataset
    }
}

/// The events of one run.
pub struct Lineage {
    settings: LineageSettings,
    run_id: String,
    client: Option<reqwest::Client>,
}

impl Lineage {
    pub fn new(settings: LineageSettings, started_at: DateTime<Utc>) -> Lineage {
        let client = settings.url.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .ok()
        });
        Lineage {
            run_id: run_uuid(started_at),
            settings,
            client,
        }
    }

    /// The run's OpenLineage run id (a UUID).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub async fn start(&self, inputs: &[Dataset]) {
        self.emit(self.event("START", inputs, &[], None)).await;
    }

    pub async fn complete(&self, inputs: &[Dataset], outputs: &[Dataset]) {
        self.emit(self.event("COMPLETE", inputs, outputs, None))
            .await;
    }

    pub async fn fail(&self, inputs: &[Dataset], message: &str) {
        self.emit(self.event("FAIL", inputs, &[], Some(message)))
            .await;
    }

    fn event(
        &self,
        kind: &str,
        inputs: &[Dataset],
        outputs: &[Dataset],
        error: Option<&str>,
    ) -> Value {
        let mut run = json!({"runId": self.run_id});
        if let Some(message) = error {
            run["facets"] = json!({"errorMessage": {
                "_producer": PRODUCER,
                "_schemaURL": ERROR_FACET_URL,
                "message": message,
                "programmingLanguage": "SQL",
            }});
        }
        json!({
            "eventType": kind,
            "eventTime": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "producer": PRODUCER,
            "schemaURL": SCHEMA_URL,
            "run": run,
            "job": {"namespace": self.settings.namespace, "name": self.settings.job},
            "inputs": inputs.iter().map(Dataset::to_json).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(Dataset::to_json).collect::<Vec<_>>(),
        })
    }

    async fn emit(&self, event: Value) {
        let line = event.to_string();
        if let Some(path) = &self.settings.file {
            if let Err(e) = append_line(path, &line) {
                warn!(file = %path.display(), error = %e, "cannot write the OpenLineage event");
            }
        }
        if let (Some(url), Some(client)) = (&self.settings.url, &self.client) {
            let sent = client
                .post(url.clone())
                .header("content-type", "application/json")
                .body(line)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if let Err(e) = sent {
                warn!(url = %crate::redact::redact(url.as_str()), error = %crate::redact::redact(&e.to_string()),
                    "cannot POST the OpenLineage event");
            }
        }
    }
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per event: concurrent appenders never interleave within a line.
    f.write_all(format!("{line}\n").as_bytes())
}

/// A version-4-shaped UUID from the run's start time, process id and host.
fn run_uuid(started_at: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    h.update(
        started_at
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes(),
    );
    h.update(std::process::id().to_le_bytes());
    h.update(crate::publish::host_name().as_bytes());
    let bytes: [u8; 16] = h.finalize()[..16].try_into().unwrap_or([0; 16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The run's input datasets, with their schemas when the inputs can be read (footers only).
pub async fn input_datasets(settings: &Settings) -> Vec<Dataset> {
    let mut datasets: Vec<Dataset> = settings
        .inputs
        .values()
        .map(|i| Dataset::at(&i.uri))
        .collect();
    let Ok(ctx) = crate::session::build_session(settings) else {
        return datasets;
    };
    let Ok(orders) = crate::ingest::input_schemas(&ctx, settings).await else {
        return datasets;
    };
    for (d, name) in datasets.iter_mut().zip(settings.inputs.keys()) {
        // The columns the models see: the canonical, mapped schema.
        if name == "orders" {
            *d = d.clone().with_schema(&orders);
        } else if let Ok(table) = ctx.table_provider(name.as_str()).await {
            *d = d.clone().with_schema(table.schema().as_ref());
        }
    }
    datasets
}

/// The published tables of a snapshot, with their columns, rows and bytes.
pub fn output_datasets(manifest: &Manifest, output: &crate::storage::Location) -> Vec<Dataset> {
    manifest
        .tables
        .iter()
        .filter(|(name, _)| manifest.models.get(*name).is_some_and(|m| m.published))
        .map(|(_, t)| {
            let mut d = Dataset::at(&output.display(&t.path));
            d.fields = Some(
                t.columns
                    .iter()
                    .map(|c| (c.name.clone(), c.data_type.clone()))
                    .collect(),
            );
            d.statistics = Some((t.rows, t.bytes));
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_are_named_by_openlineage_conventions() {
        let d = Dataset::at("s3://shop-data/orders/year=2026");
        assert_eq!(
            (d.namespace.as_str(), d.name.as_str()),
            ("s3://shop-data", "orders/year=2026")
        );
        let d = Dataset::at("/data/orders");
        assert_eq!(
            (d.namespace.as_str(), d.name.as_str()),
            ("file", "/data/orders")
        );
    }

    #[test]
    fn run_ids_are_version_4_uuids() {
        let id = run_uuid(Utc::now());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
