//! Configuration: the `segflow.toml` file, `SEGFLOW_*` environment overrides and flags.
//!
//! Layers, the later winning: defaults → config file → environment → command-line flags.
//! Relative paths in the file resolve against the file's directory; relative paths given as
//! flags or env vars resolve against the working directory. Unknown keys are errors that
//! name the key, so a typo never silently falls back to a default.

pub mod audiences;
pub mod canonical;
mod env;
pub mod output;
mod runtime;

pub use output::{SchemaChange, TableFormat, TableSettings};
use runtime::engine;
pub use runtime::{Engine, SchedulerAddr, DEFAULT_SCHEDULER_PORT};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The config file as written by users.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Snapshot date; default = latest order date in the input.
    #[serde(default)]
    pub as_of: Option<toml::Value>,
    /// Inputs by name (`orders`, `customers`, `marketing_spend`).
    #[serde(default)]
    pub input: BTreeMap<String, InputConfig>,
    /// Where tables are published.
    #[serde(default)]
    pub output: OutputConfig,
    /// Which model files run.
    #[serde(default)]
    pub models: ModelsConfig,
    /// Model parameter overrides.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Engine resources.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// DataFusion config keys passed through to `ConfigOptions::set`.
    #[serde(default)]
    pub datafusion: BTreeMap<String, toml::Value>,
    /// Object-store settings.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Input gate policies.
    #[serde(default)]
    pub gates: BTreeMap<String, toml::Value>,
    /// Where OpenLineage run events go.
    #[serde(default)]
    pub lineage: Option<LineageConfig>,
    /// Pseudonymised ids and personal-data columns.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// `[[audiences]]`: segments exported to email and ads tools.
    #[serde(default)]
    pub audiences: Vec<AudienceConfig>,
}

/// One `[[audiences]]` entry.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    pub name: Option<String>,
    pub segmentation: Option<String>,
    #[serde(default)]
    pub segments: Vec<String>,
    pub channel: Option<String>,
    pub consent: Option<String>,
}

/// `[privacy]`
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Publish every customer id as its HMAC-SHA256 under `SEGFLOW_PSEUDONYM_KEY`.
    #[serde(default)]
    pub pseudonymise: bool,
    /// Column names of personal data beyond the built-in list.
    #[serde(default)]
    pub pii_columns: Vec<String>,
    /// Personal-data columns a published table may carry.
    #[serde(default)]
    pub publish_pii: Vec<String>,
}

/// `[privacy]`, resolved: the key (from the environment) when ids are pseudonymised.
#[derive(Debug, Clone, Default)]
pub struct PrivacySettings {
    pub pseudonym: Option<crate::privacy::PseudonymKey>,
    /// The erased customers (`_privacy/erased.parquet` of the output), set by a run once it
    /// holds the lock: their lines and rows are dropped as the inputs are mapped.
    pub erased: Option<std::sync::Arc<crate::privacy::ErasedIds>>,
    pub pii_columns: Vec<String>,
    pub publish_pii: Vec<String>,
}

impl PrivacySettings {
    /// Whether a published table may not carry `column`.
    pub fn forbids(&self, column: &str) -> bool {
        crate::privacy::is_pii(column, &self.pii_columns)
            && !self
                .publish_pii
                .iter()
                .any(|p| p.eq_ignore_ascii_case(column))
    }
}

/// `[lineage]`: OpenLineage run events to a JSON-lines file and/or POSTed to a URL.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// JSON-lines file events are appended to (relative to the config file).
    pub file: Option<String>,
    /// `http(s)://` endpoint each event is POSTed to, e.g. Marquez's `/api/v1/lineage`.
    pub url: Option<String>,
    /// The job's namespace (default `segflow`).
    pub namespace: Option<String>,
    /// The job's name (default `segflow`).
    pub job: Option<String>,
}

/// What a gate does with the rows it catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The run fails (exit 1) naming the gate, the column and the count.
    Fail,
    /// The rows are left out and published under `_rejected/as_of=D/` with the gate's name.
    Drop,
    /// The rows are counted and logged; the run goes on.
    Warn,
}

impl Policy {
    /// The name in the config (and in metrics and the report).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fail => "fail",
            Policy::Drop => "drop",
            Policy::Warn => "warn",
        }
    }
}

/// `[gates]` of a run: the policies the config sets, by gate name, and the opt-in
/// freshness gate. The gates themselves (names, default policies, what they catch) are the
/// table `ingest::gates::GATES`, which also rejects a name it does not know.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Gates {
    pub policies: BTreeMap<String, Policy>,
    /// Fail when the latest order is more than this many days before as_of.
    pub max_input_age_days: Option<u32>,
}

impl Gates {
    /// `[gates]` as written: `<gate> = "fail" | "drop" | "warn"` and `max_input_age_days`.
    fn from_table(table: &BTreeMap<String, toml::Value>) -> Result<Gates> {
        let mut gates = Gates::default();
        for (name, value) in table {
            let bad = |message: String| Error::ConfigValue {
                key: format!("gates.{name}"),
                message,
            };
            if name == "max_input_age_days" {
                let days = value
                    .as_integer()
                    .and_then(|d| u32::try_from(d).ok())
                    .ok_or_else(|| bad(format!("expected a number of days, got {value}")))?;
                gates.max_input_age_days = Some(days);
                continue;
            }
            let policy = match value.as_str() {
                Some("fail") => Policy::Fail,
                Some("drop") => Policy::Drop,
                Some("warn") => Policy::Warn,
                _ => {
                    return Err(bad(format!(
                        "expected \"fail\", \"drop\" or \"warn\", got {value}"
                    )))
                }
            };
            gates.policies.insert(name.clone(), policy);
        }
        Ok(gates)
    }
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `[storage.s3]`: overrides on top of the standard `AWS_*` environment.
    #[serde(default)]
    pub s3: S3Config,
}

/// `[storage.s3]`: every key is optional; a key that is set overrides what
/// `AmazonS3Builder::from_env()` read from the environment, an unset key leaves it alone.
/// Credentials are deliberately not accepted here: they come from the environment (or web
/// identity, container or instance credentials), never from a file that gets committed.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible store (MinIO, Ceph, R2), e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// AWS region, e.g. `eu-central-1`.
    pub region: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: Option<bool>,
    /// Virtual-hosted-style requests (`bucket.host`) instead of path style (`host/bucket`).
    pub virtual_hosted_style: Option<bool>,
    /// Maximum retries of a failed request (default 10).
    pub max_retries: Option<usize>,
    /// Give up retrying a request after this long, e.g. `"3m"` (default 3 minutes).
    pub retry_timeout: Option<String>,
    /// First retry backoff, e.g. `"100ms"`.
    pub backoff_initial: Option<String>,
    /// Longest retry backoff, e.g. `"15s"`.
    pub backoff_max: Option<String>,
    /// Backoff growth factor (default 2).
    pub backoff_base: Option<f64>,
    /// TCP connect timeout, e.g. `"5s"`.
    pub connect_timeout: Option<String>,
    /// Whole-request timeout, e.g. `"30s"`.
    pub request_timeout: Option<String>,
}

/// `[storage.s3]` with durations parsed.
#[derive(Debug, Default, Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub virtual_hosted_style: Option<bool>,
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<Duration>,
    pub backoff_initial: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub backoff_base: Option<f64>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

impl S3Config {
    fn resolve(&self) -> Result<S3Settings> {
        let d = |key: &str, v: &Option<String>| -> Result<Option<Duration>> {
            v.as_deref()
                .map(|s| parse_duration(&format!("storage.s3.{key}"), s))
                .transpose()
        };
        if let Some(b) = self.backoff_base {
            if !(b.is_finite() && b >= 1.0) {
                return Err(Error::ConfigValue {
                    key: "storage.s3.backoff_base".into(),
                    message: format!("expected a number >= 1, found {b}"),
                });
            }
        }
        Ok(S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
            max_retries: self.max_retries,
            retry_timeout: d("retry_timeout", &self.retry_timeout)?,
            backoff_initial: d("backoff_initial", &self.backoff_initial)?,
            backoff_max: d("backoff_max", &self.backoff_max)?,
            backoff_base: self.backoff_base,
            connect_timeout: d("connect_timeout", &self.connect_timeout)?,
            request_timeout: d("request_timeout", &self.request_timeout)?,
        })
    }
}

/// One input table.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// File, directory (hive partitions ok) or glob.
    pub uri: String,
    /// Canonical column name → source column name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Status values whose lines are dropped (orders only; default `["cancelled"]`).
    #[serde(default)]
    pub drop_status: Option<Vec<String>>,
    /// Status values of return lines, whose revenue may be negative (orders only; default
    /// `["returned", "refunded"]`).
    #[serde(default)]
    pub return_status: Option<Vec<String>>,
}

/// `[output]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Output root: a local path, `file://`, `s3://` or `az://` URL (`gs://` is refused).
    pub uri: Option<String>,
    /// How long after its last heartbeat another run's lock is stale, e.g. `"10m"`.
    pub lock_timeout: Option<String>,
    /// Published snapshots to keep (oldest deleted first); default: all.
    pub keep_snapshots: Option<usize>,
    /// `"parquet"` (default) or `"delta"`.
    pub format: Option<String>,
    /// Delta: how long files a retention delete removed stay for readers of old versions.
    pub vacuum_after: Option<String>,
    /// Delta: `"fail"` (default) or `"overwrite"` when a model's columns change.
    pub schema_change: Option<String>,
}

/// `[models]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Model folders; later paths override same-named models.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Whether the built-in library runs (default true).
    #[serde(default = "default_true")]
    pub builtin: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            paths: Vec::new(),
            builtin: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// `[runtime]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Memory pool size, e.g. `"4g"`; default: no limit.
    pub memory_limit: Option<String>,
    /// IANA time zone for day and month boundaries; default UTC.
    pub timezone: Option<String>,
    /// Directory for spill files; default: the system temp dir.
    pub temp_dir: Option<String>,
    /// Models computed side by side; default: see [`Settings::concurrent_models`].
    pub concurrent_models: Option<usize>,
    /// `"local"` (default: in this process) or `"ballista"` (on a cluster).
    pub engine: Option<String>,
    /// The Ballista scheduler, `df://HOST:PORT` (default `df://localhost:50050`).
    pub scheduler: Option<String>,
}

/// Overrides given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub as_of: Option<String>,
    pub output: Option<String>,
    pub select: Vec<String>,
    /// `--full-refresh`: no incremental run.
    pub full_refresh: bool,
}

/// One resolved input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    /// Absolute local path (possibly with a glob) or URL.
    pub uri: String,
    pub columns: BTreeMap<String, String>,
    pub drop_status: Vec<String>,
    /// Lower-cased statuses of return lines.
    pub return_status: Vec<String>,
}

/// The fully resolved settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub as_of: Option<NaiveDate>,
    pub inputs: BTreeMap<String, InputSpec>,
    pub output: String,
    pub model_paths: Vec<PathBuf>,
    pub builtin_models: bool,
    pub params: BTreeMap<String, ParamValue>,
    pub memory_limit: Option<usize>,
    pub timezone: Option<chrono_tz::Tz>,
    pub temp_dir: Option<PathBuf>,
    /// `[runtime] concurrent_models`: how many models may run side by side (None: two while
    /// the staged orders take at most a quarter of `memory_limit`, else one).
    pub concurrent_models: Option<usize>,
    /// `[runtime] engine` / `scheduler`: where the models are computed.
    pub engine: Engine,
    pub datafusion: Vec<(String, String)>,
    pub lock_timeout: Duration,
    pub keep_snapshots: Option<usize>,
    /// `[output] format`, `vacuum_after`, `schema_change`.
    pub tables: TableSettings,
    pub s3: S3Settings,
    pub select: Vec<String>,
    /// `--full-refresh`: compute every model from every line.
    pub full_refresh: bool,
    /// Input gate policies.
    pub gates: Gates,
    /// `[lineage]`, when set.
    pub lineage: Option<LineageSettings>,
    /// `[privacy]`.
    pub privacy: PrivacySettings,
    /// `[[audiences]]`, checked.
    pub audiences: Vec<audiences::Audience>,
    /// SHA-256 of the config file bytes and the effective overrides.
    pub config_hash: String,
}

impl Settings {
    /// Loads the config file, then applies `SEGFLOW_*` environment variables, then flags.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings> {
        // Only SEGFLOW_* variables are read; one that is not UTF-8 is an error naming it
        // (other variables may hold any bytes).
        let mut env: Vec<(String, String)> = Vec::new();
        for (key, value) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if !name.starts_with("SEGFLOW_") {
                continue;
            }
            match (key.to_str(), value.into_string()) {
                (Some(k), Ok(v)) => env.push((k.to_string(), v)),
                _ => {
                    return Err(Error::ConfigValue {
                        key: name.into_owned(),
                        message: "the environment variable is not valid UTF-8".into(),
                    })
                }
            }
        }
        Self::load_with_env(path, overrides, &env)
    }

    /// The `[storage.*]` settings of a config file, the rest of it ignored (what a cluster
    /// process takes from a project's config).
    pub fn load_storage(path: &Path) -> Result<S3Settings> {
        /// A config file as far as its storage goes.
        #[derive(Deserialize)]
        struct StorageOnly {
            #[serde(default)]
            storage: StorageConfig,
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let file: StorageOnly = toml::from_str(&text).map_err(|e| Error::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        file.storage.s3.resolve()
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        overrides: &Overrides,
        env: &[(String, String)],
    ) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| Error::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let config_path = absolute(path, &cwd()?);
        let base = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let cwd = cwd()?;
        let mut output = file.output.uri.as_ref().map(|u| resolve_uri(u, &base));
        let mut settings = Settings {
            config_path,
            as_of: match &file.as_of {
                None => None,
                Some(v) => Some(parse_date_value("as_of", v)?),
            },
            inputs: input_specs(&file, path, &base)?,
            output: String::new(),
            model_paths: file
                .models
                .paths
                .iter()
                .map(|p| absolute(Path::new(p), &base))
                .collect(),
            builtin_models: file.models.builtin,
            params: typed_params(&file.params)?,
            memory_limit: match &file.runtime.memory_limit {
                Some(s) => Some(parse_size("runtime.memory_limit", s)?),
                None => None,
            },
            timezone: match &file.runtime.timezone {
                Some(s) => Some(parse_tz("runtime.timezone", s)?),
                None => None,
            },
            temp_dir: file
                .runtime
                .temp_dir
                .as_ref()
                .map(|p| absolute(Path::new(p), &base)),
            concurrent_models: file.runtime.concurrent_models,
            engine: Engine::Local,
            datafusion: datafusion_options(&file.datafusion)?,
            lock_timeout: match &file.output.lock_timeout {
                Some(s) => parse_duration("output.lock_timeout", s)?,
                None => Duration::from_secs(10 * 60),
            },
            keep_snapshots: file.output.keep_snapshots,
            tables: output::table_settings(&file.output)?,
            lineage: match &file.lineage {
                None => None,
                Some(l) => Some(lineage_settings(l, path, &base)?),
            },
            s3: S3Settings::default(),
            select: overrides.select.clone(),
            full_refresh: overrides.full_refresh,
            gates: Gates::default(),
            privacy: PrivacySettings {
                pseudonym: None,
                erased: None,
                pii_columns: file.privacy.pii_columns.clone(),
                publish_pii: file.privacy.publish_pii.clone(),
            },
            audiences: audiences::from_config(&file.audiences)?,
            config_hash: String::new(),
        };
        at_least_one(&file, path)?;
        settings.s3 = file.storage.s3.resolve()?;

        let mut hash_extra = env::apply(env, &mut settings, &mut output, &cwd, path)?;
        // `[runtime] engine` and `scheduler`, each overridden by its variable.
        let setting = |var: &'static str, key: &'static str, file: &Option<String>| match env
            .iter()
            .find(|(k, _)| k == var)
        {
            Some((_, v)) => (var, Some(v.clone())),
            None => (key, file.clone()),
        };
        let (engine_key, engine_value) = setting(
            "SEGFLOW_RUNTIME_ENGINE",
            "runtime.engine",
            &file.runtime.engine,
        );
        let (scheduler_key, scheduler_value) = setting(
            "SEGFLOW_RUNTIME_SCHEDULER",
            "runtime.scheduler",
            &file.runtime.scheduler,
        );
        settings.engine = engine(
            (engine_key, engine_value.as_deref()),
            (scheduler_key, scheduler_value.as_deref()),
        )?;
        if settings.engine != Engine::Local && settings.tables.format == TableFormat::Delta {
            return Err(Error::ConfigValue {
                key: engine_key.to_string(),
                message: "the ballista engine writes Parquet output only: a model reading the \
                    previous snapshot of a Delta table reads it through delta-rs's table \
                    provider, which Ballista's plans cannot carry (set output.format = \
                    \"parquet\" or engine = \"local\")"
                    .into(),
            });
        }
        // Flags.
        if let Some(d) = &overrides.as_of {
            settings.as_of = Some(parse_date("--as-of", d)?);
            hash_extra.push_str(&format!("--as-of={d}\n"));
        }
        if let Some(o) = &overrides.output {
            output = Some(resolve_uri(o, &cwd));
            hash_extra.push_str(&format!("--output={o}\n"));
        }

        if !settings.inputs.contains_key("orders") {
            return Err(Error::ConfigValue {
                key: "input.orders.uri".into(),
                message: format!("{} has no [input.orders] section", path.display()),
            });
        }
        settings.output = output.ok_or_else(|| Error::ConfigValue {
            key: "output.uri".into(),
            message: format!(
                "no output location: set [output] uri in {}, SEGFLOW_OUTPUT or --output",
                path.display()
            ),
        })?;

        if file.privacy.pseudonymise {
            let key = env
                .iter()
                .find(|(k, _)| k == crate::privacy::KEY_ENV)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            settings.privacy.pseudonym = Some(crate::privacy::PseudonymKey::new(key).ok_or_else(
                || Error::ConfigValue {
                    key: crate::privacy::KEY_ENV.into(),
                    message: format!(
                        "[privacy] pseudonymise = true in {} needs the pseudonym key in the \
                         environment variable {} (not set or empty)",
                        path.display(),
                        crate::privacy::KEY_ENV
                    ),
                },
            )?);
        }
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());
        hasher.update(hash_extra.as_bytes());
        settings.config_hash = format!("{:x}", hasher.finalize());
        settings.gates = Gates::from_table(&file.gates)?;
        Ok(settings)
    }
}

/// The `[input.*]` sections: known inputs and canonical columns only, statuses lower-cased,
/// URIs resolved against the config's folder.
fn input_specs(file: &ConfigFile, path: &Path, base: &Path) -> Result<BTreeMap<String, InputSpec>> {
    let mut inputs = BTreeMap::new();
    for (name, input) in &file.input {
        let Some(allowed) = canonical::canonical_column_names(name) else {
            return Err(Error::ConfigValue {
                key: format!("input.{name}"),
                message: format!(
                    "unknown input `{name}` in {} (known inputs: orders, customers, marketing_spend)",
                    path.display()
                ),
            });
        };
        for canonical in input.columns.keys() {
            if !allowed.contains(&canonical.as_str()) {
                return Err(Error::ConfigValue {
                    key: format!("input.{name}.columns.{canonical}"),
                    message: format!(
                        "unknown canonical column `{canonical}` in {} (columns of `{name}`: {})",
                        path.display(),
                        allowed.join(", ")
                    ),
                });
            }
        }
        for (key, set) in [
            ("drop_status", input.drop_status.is_some()),
            ("return_status", input.return_status.is_some()),
        ] {
            if set && name != "orders" {
                return Err(Error::ConfigValue {
                    key: format!("input.{name}.{key}"),
                    message: format!("{key} applies to the orders input only"),
                });
            }
        }
        inputs.insert(
            name.clone(),
            InputSpec {
                name: name.clone(),
                uri: resolve_uri(&input.uri, base),
                columns: input.columns.clone(),
                drop_status: input
                    .drop_status
                    .clone()
                    .unwrap_or_else(|| vec!["cancelled".to_string()])
                    .into_iter()
                    .map(|s| s.to_lowercase())
                    .collect(),
                return_status: input
                    .return_status
                    .clone()
                    .unwrap_or_else(|| vec!["returned".to_string(), "refunded".to_string()])
                    .into_iter()
                    .map(|s| s.to_lowercase())
                    .collect(),
            },
        );
    }
    Ok(inputs)
}

/// `[params]`, typed as TOML gives them.
fn typed_params(params: &BTreeMap<String, toml::Value>) -> Result<BTreeMap<String, ParamValue>> {
    params
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                ParamValue::Typed(toml_to_scalar(&format!("params.{k}"), v)?),
            ))
        })
        .collect()
}

/// `[datafusion]` keys with their values as text, as `ConfigOptions::set` takes them.
fn datafusion_options(options: &BTreeMap<String, toml::Value>) -> Result<Vec<(String, String)>> {
    let mut datafusion = Vec::new();
    for (k, v) in options {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(Error::ConfigValue {
                    key: format!("datafusion.{k}"),
                    message: format!("expected a string, number or boolean, found {other}"),
                })
            }
        };
        datafusion.push((k.clone(), value));
    }
    Ok(datafusion)
}

/// `[lineage]`: an http(s) URL and/or a file, and non-empty job names.
fn lineage_settings(l: &LineageConfig, path: &Path, base: &Path) -> Result<LineageSettings> {
    let url = match &l.url {
        None => None,
        Some(u) => match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                return Err(Error::ConfigValue {
                    key: "lineage.url".into(),
                    message: format!(
                        "expected an http:// or https:// URL, found {:?} in {}",
                        crate::redact::redact(u),
                        path.display()
                    ),
                })
            }
        },
    };
    let file_path = l.file.as_ref().map(|p| absolute(Path::new(p), base));
    if url.is_none() && file_path.is_none() {
        return Err(Error::ConfigValue {
            key: "lineage".into(),
            message: format!("set `file`, `url` or both in {}", path.display()),
        });
    }
    let name = |key: &str, v: &Option<String>| match v.as_deref() {
        None => Ok("segflow".to_string()),
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        Some(_) => Err(Error::ConfigValue {
            key: format!("lineage.{key}"),
            message: format!("must not be empty in {}", path.display()),
        }),
    };
    Ok(LineageSettings {
        file: file_path,
        url,
        namespace: name("namespace", &l.namespace)?,
        job: name("job", &l.job)?,
    })
}

/// Counts that must be at least 1 when set.
fn at_least_one(file: &ConfigFile, path: &Path) -> Result<()> {
    if file.runtime.concurrent_models == Some(0) {
        return Err(Error::ConfigValue {
            key: "runtime.concurrent_models".into(),
            message: format!(
                "must be at least 1 (1 computes the models one by one) in {}",
                path.display()
            ),
        });
    }
    if file.output.keep_snapshots == Some(0) {
        return Err(Error::ConfigValue {
            key: "output.keep_snapshots".into(),
            message: format!(
                "must be at least 1 (omit it to keep every snapshot) in {}",
                path.display()
            ),
        });
    }
    Ok(())
}

fn cwd() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| Error::io("read working directory", ".", e))
}

/// Makes `p` absolute against `base`, without touching the filesystem.
pub fn absolute(p: &Path, base: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    // Normalise `.` and `..` lexically so messages and manifests show clean paths.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A URI with a scheme (`s3://...`, `file:///...`) is kept; anything else is a local path.
fn resolve_uri(uri: &str, base: &Path) -> String {
    if uri.contains("://") {
        uri.to_string()
    } else {
        absolute(Path::new(uri), base)
            .to_string_lossy()
            .into_owned()
    }
}

fn parse_date_value(key: &str, v: &toml::Value) -> Result<NaiveDate> {
    match v {
        toml::Value::String(s) => parse_date(key, s),
        toml::Value::Datetime(d) => parse_date(key, &d.to_string()),
        other => Err(Error::ConfigValue {
            key: key.into(),
            message: format!("expected a date like 2026-11-21, found {other}"),
        }),
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(key: &str, s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| Error::ConfigValue {
        key: key.into(),
        message: format!("expected a date like 2026-11-21, found `{s}`"),
    })
}

/// Parses sizes like `512m`, `4g`, `4GiB`, `1024` (bytes); binary units.
pub fn parse_size(key: &str, s: &str) -> Result<usize> {
    let t = s.trim().to_lowercase();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let shift: Option<u32> = match unit.trim() {
        "" | "b" => Some(0),
        "k" | "kb" | "kib" => Some(10),
        "m" | "mb" | "mib" => Some(20),
        "g" | "gb" | "gib" => Some(30),
        "t" | "tb" | "tib" => Some(40),
        _ => None,
    };
    let bad = |message: String| Error::ConfigValue {
        key: key.into(),
        message,
    };
    let (Some(shift), Ok(n)) = (shift, num.parse::<f64>()) else {
        return Err(bad(format!("expected a size like 512m or 4g, found `{s}`")));
    };
    // Units are binary (4g = 4 GiB); anything past 1 PiB is a typo, not a memory size.
    let bytes = n * (1u64 << shift) as f64;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(bad(format!(
            "expected a size of at least 1 byte, found `{s}`"
        )));
    }
    if bytes > (1u64 << 50) as f64 {
        return Err(bad(format!("`{s}` is larger than 1 PiB")));
    }
    Ok(bytes as usize)
}

/// Parses durations like `250ms`, `90s`, `30m`, `6h`, `2d` (humantime's units; a bare number
/// is seconds). Anything past 100 years is refused rather than saturated.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration> {
    let t = s.trim();
    let parsed = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(t).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(d) if d <= Duration::from_secs(100 * 365 * 86_400) => Ok(d),
        Ok(_) => Err(Error::ConfigValue {
            key: key.into(),
            message: format!("`{s}` is longer than 100 years"),
        }),
        Err(e) => Err(Error::ConfigValue {
            key: key.into(),
            message: format!("expected a duration like 30m or 6h, found `{s}` ({e})"),
        }),
    }
}

fn parse_tz(key: &str, s: &str) -> Result<chrono_tz::Tz> {
    s.parse::<chrono_tz::Tz>().map_err(|_| Error::ConfigValue {
        key: key.into(),
        message: format!("unknown time zone `{s}` (use an IANA name like Europe/Berlin)"),
    })
}

/// Converts a TOML value into a typed DataFusion parameter value.
pub fn toml_to_scalar(key: &str, v: &toml::Value) -> Result<ScalarValue> {
    Ok(match v {
        toml::Value::Integer(i) => ScalarValue::Int64(Some(*i)),
        toml::Value::Float(f) => ScalarValue::Float64(Some(*f)),
        toml::Value::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        toml::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        toml::Value::Datetime(d) => {
            let date = parse_date(key, &d.to_string())?;
            ScalarValue::Date32(Some(date_to_days(date)))
        }
        other => {
            return Err(Error::ConfigValue {
                key: key.into(),
                message: format!(
                    "parameters must be numbers, strings, booleans or dates, found {other}"
                ),
            })
        }
    })
}

/// Env values are typed by their look: integer, float, boolean, date, else string.
/// A `[params]` override: typed in the config file, text from `SEGFLOW_PARAM_<NAME>`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Typed(ScalarValue),
    /// Read as the type of the model's default (`007` stays text for a text default; `60.5`
    /// is refused for an integer one); without a default, as the first of integer, float,
    /// boolean, date that fits, else text.
    Text(String),
}

impl ParamValue {
    /// The value as a parameter of type `target` (the model's default), or why not.
    pub fn as_type(&self, target: &DataType) -> std::result::Result<ScalarValue, String> {
        match self {
            ParamValue::Typed(v) if v.data_type() == *target => Ok(v.clone()),
            ParamValue::Typed(v) => v
                .cast_to(target)
                .map_err(|_| format!("`{v}` cannot be used as {target}")),
            ParamValue::Text(s) => {
                let bad = || format!("`{s}` is not a valid {target}");
                match target {
                    DataType::Int64 => s
                        .trim()
                        .parse::<i64>()
                        .map(|i| ScalarValue::Int64(Some(i)))
                        .map_err(|_| bad()),
                    DataType::Float64 => s
                        .trim()
                        .parse::<f64>()
                        .map(|f| ScalarValue::Float64(Some(f)))
                        .map_err(|_| bad()),
                    DataType::Boolean => s
                        .trim()
                        .parse::<bool>()
                        .map(|b| ScalarValue::Boolean(Some(b)))
                        .map_err(|_| bad()),
                    DataType::Date32 => NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                        .map(|d| ScalarValue::Date32(Some(date_to_days(d))))
                        .map_err(|_| bad()),
                    DataType::Utf8 => Ok(ScalarValue::Utf8(Some(s.clone()))),
                    _ => ScalarValue::Utf8(Some(s.clone()))
                        .cast_to(target)
                        .map_err(|_| bad()),
                }
            }
        }
    }

    /// The value when the model has no default for it.
    pub fn inferred(&self) -> ScalarValue {
        match self {
            ParamValue::Typed(v) => v.clone(),
            ParamValue::Text(s) => env_to_scalar(s),
        }
    }
}

fn env_to_scalar(s: &str) -> ScalarValue {
    if let Ok(i) = s.parse::<i64>() {
        ScalarValue::Int64(Some(i))
    } else if let Ok(f) = s.parse::<f64>() {
        ScalarValue::Float64(Some(f))
    } else if let Ok(b) = s.parse::<bool>() {
        ScalarValue::Boolean(Some(b))
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        ScalarValue::Date32(Some(date_to_days(d)))
    } else {
        ScalarValue::Utf8(Some(s.to_string()))
    }
}

/// Days since 1970-01-01, the Arrow Date32 representation.
pub fn date_to_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid epoch")).num_days() as i32
}

/// `[lineage]`: where events go and the job they describe.
#[derive(Debug, Clone, PartialEq)]
pub struct LineageSettings {
    /// A JSON-lines file events are appended to.
    pub file: Option<PathBuf>,
    /// An HTTP endpoint events are POSTed to.
    pub url: Option<url::Url>,
    /// The job's namespace (default `segflow`).
    pub namespace: String,
    /// The job's name (default `segflow`).
    pub job: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enormous_or_empty_sizes_and_durations_are_errors_not_saturated() {
        assert_eq!(parse_size("k", "4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("k", "1.5m").unwrap(), 3 << 19);
        assert!(parse_size("k", "99999999999999t").is_err());
        assert!(parse_size("k", "0").is_err());
        assert!(parse_size("k", "4x").is_err());
        assert_eq!(parse_duration("k", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("k", "2d").unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            parse_duration("k", "1h 30m").unwrap(),
            Duration::from_secs(5_400)
        );
        assert!(parse_duration("k", "99999999999999999d").is_err());
        assert!(parse_duration("k", "18446744073709551615").is_err());
        assert!(parse_duration("k", "soon").is_err());
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("k", "4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("k", "512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("k", "4GiB").unwrap(), 4 << 30);
        assert!(parse_size("k", "four").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("k", "6h").unwrap(),
            Duration::from_secs(21600)
        );
        assert!(parse_duration("k", "6x").is_err());
    }

    #[test]
    fn relative_paths_resolve_against_base() {
        assert_eq!(
            absolute(Path::new("../out"), Path::new("/a/b")),
            PathBuf::from("/a/out")
        );
    }
}
