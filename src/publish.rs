//! Publishing: the output lock, staging, the atomic swap into place, and the run manifest.
//!
//! Protocol (the manifest written last is the commit point):
//! 1. take `_lock` with a create-only put (one writer at a time; stale locks are taken over
//!    and the dead run's staging removed);
//! 2. write every table under `_staging/<run_id>/<model>/as_of=D/` with a `_SUCCESS`;
//! 3. swap each table into `<model>/as_of=D/` (old aside, new in, old deleted);
//! 4. write `_manifest/as_of=D.json` (temp + rename), then `_manifest/latest.json`;
//! 5. remove all staging, release the lock.
//!
//! Small files (lock, manifests) go through object_store; directory swaps use renames.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::config::TableParquetOptions;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::engine::{ModelOutput, PreviousTables};
use crate::error::{Error, Result};
use crate::sources::InputStats;

/// One published table in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    /// Directory relative to the output root, e.g. `rfm/as_of=2026-11-21`.
    pub path: String,
    pub rows: u64,
    /// Data files relative to the output root.
    pub files: Vec<String>,
    pub partition_by: Vec<String>,
    pub duration_ms: u64,
    pub columns: Vec<ColumnEntry>,
}

/// A column name and its Arrow type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The run manifest: the snapshot exists iff its manifest does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub as_of: NaiveDate,
    pub segflow_version: String,
    pub datafusion_version: String,
    pub config_hash: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub input: Option<InputStats>,
    pub models: BTreeMap<String, ModelTiming>,
    pub tables: BTreeMap<String, TableEntry>,
}

/// Timing of every model, published or internal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelTiming {
    pub rows: u64,
    pub duration_ms: u64,
    pub published: bool,
}

/// Who holds the output lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} (host {}, pid {}, started {})",
            self.run_id,
            self.host,
            self.pid,
            self.started_at.to_rfc3339()
        )
    }
}

/// The output location of a run.
pub struct Output {
    pub uri: String,
    root: PathBuf,
    store: Arc<dyn ObjectStore>,
}

fn out_err(uri: &str, operation: impl Into<String>, message: impl ToString) -> Error {
    Error::Output {
        uri: uri.to_string(),
        operation: operation.into(),
        message: message.to_string(),
    }
}

impl Output {
    /// Opens (and creates) a local output root.
    pub fn open(uri: &str) -> Result<Output> {
        if uri.contains("://") && !uri.starts_with("file://") {
            return Err(out_err(
                uri,
                "open",
                "only local output paths are supported in this version",
            ));
        }
        let root = PathBuf::from(uri.trim_start_matches("file://"));
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io("create output directory", &root, e))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| out_err(uri, "open", e))?;
        Ok(Output {
            uri: uri.to_string(),
            root,
            store: Arc::new(store),
        })
    }

    /// Local root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn staging_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("_staging").join(run_id)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<Option<T>> {
        match self.store.get(&ObjPath::from(path)).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| out_err(&self.uri, format!("read {path}"), e))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| out_err(&self.uri, format!("parse {path}"), e))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(out_err(&self.uri, format!("read {path}"), e)),
        }
    }

    /// Writes JSON by temp file + rename, so readers see the old or the new content.
    async fn put_json_atomic<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        run_id: &str,
    ) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| out_err(&self.uri, format!("encode {path}"), e))?;
        let tmp = format!("_manifest/.tmp-{run_id}.json");
        self.store
            .put(&ObjPath::from(tmp.as_str()), PutPayload::from(bytes))
            .await
            .map_err(|e| out_err(&self.uri, format!("write {tmp}"), e))?;
        self.store
            .rename(&ObjPath::from(tmp.as_str()), &ObjPath::from(path))
            .await
            .map_err(|e| out_err(&self.uri, format!("rename {tmp} to {path}"), e))
    }

    /// Takes the output lock; a stale lock (dead process on this host, or older than
    /// `timeout`) is taken over and its run's staging removed.
    pub async fn acquire_lock(&self, me: &LockInfo, timeout: std::time::Duration) -> Result<()> {
        let path = ObjPath::from("_lock");
        let body =
            serde_json::to_vec_pretty(me).map_err(|e| out_err(&self.uri, "encode lock", e))?;
        for _attempt in 0..3 {
            let put = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(body.clone()),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let holder: Option<LockInfo> = self.get_json("_lock").await.unwrap_or_default();
                    let stale = match &holder {
                        Some(h) => {
                            let age = Utc::now().signed_duration_since(h.started_at);
                            let same_host = h.host == me.host;
                            // Same pid as ours under another run id: a restarted container.
                            (same_host && (h.pid == me.pid || !process_alive(h.pid)))
                                || age.to_std().map(|a| a > timeout).unwrap_or(false)
                        }
                        // Unreadable: judge by the file's age alone.
                        None => match self.store.head(&path).await {
                            Ok(meta) => Utc::now()
                                .signed_duration_since(meta.last_modified)
                                .to_std()
                                .map(|a| a > timeout)
                                .unwrap_or(false),
                            Err(_) => false,
                        },
                    };
                    if !stale {
                        let holder = holder
                            .map(|h| h.to_string())
                            .unwrap_or_else(|| "an unreadable _lock file".into());
                        return Err(Error::Locked {
                            uri: self.uri.clone(),
                            holder,
                        });
                    }
                    // Take over by renaming the lock aside, then check it is the one judged
                    // stale (another run may have taken over and locked in between).
                    let aside = ObjPath::from(format!("_lock.takeover-{}", me.run_id));
                    match self.store.rename(&path, &aside).await {
                        Ok(()) => {}
                        Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(out_err(&self.uri, "take over stale _lock", e)),
                    }
                    let taken: Option<LockInfo> = match self.store.get(&aside).await {
                        Ok(r) => r
                            .bytes()
                            .await
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok()),
                        Err(_) => None,
                    };
                    if taken.as_ref().map(|t| &t.run_id) != holder.as_ref().map(|h| &h.run_id) {
                        // Not the stale lock: put it back and report its holder.
                        let _ = self.store.rename_if_not_exists(&aside, &path).await;
                        return Err(Error::Locked {
                            uri: self.uri.clone(),
                            holder: taken.map(|t| t.to_string()).unwrap_or_default(),
                        });
                    }
                    let _ = self.store.delete(&aside).await;
                    if let Some(h) = &holder {
                        warn!(holder = %h, "taking over a stale output lock");
                        self.recover_dead_run(h).await?;
                    }
                }
                Err(e) => return Err(out_err(&self.uri, "create _lock", e)),
            }
        }
        Err(out_err(
            &self.uri,
            "create _lock",
            "lost the race for the lock three times",
        ))
    }

    /// Releases the lock if this run holds it.
    pub async fn release_lock(&self, run_id: &str) {
        if let Ok(Some(h)) = self.get_json::<LockInfo>("_lock").await {
            if h.run_id == run_id {
                if let Err(e) = self.store.delete(&ObjPath::from("_lock")).await {
                    warn!(error = %e, "cannot remove the output lock");
                }
            }
        }
    }

    /// Removes this run's staging directory (after a failure).
    pub fn remove_staging(&self, run_id: &str) {
        let dir = self.staging_dir(run_id);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "cannot remove staging");
            }
        }
        // The parent goes too once no run uses it.
        let _ = std::fs::remove_dir(self.root.join("_staging"));
    }

    /// Published snapshot dates, from the manifests.
    pub fn snapshots(&self) -> Result<Vec<NaiveDate>> {
        let dir = self.root.join("_manifest");
        if !dir.exists() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("list manifests", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list manifests", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(d) = name
                .strip_prefix("as_of=")
                .and_then(|n| n.strip_suffix(".json"))
            {
                if let Ok(d) = NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads the manifest of a snapshot.
    pub async fn manifest(&self, as_of: NaiveDate) -> Result<Option<Manifest>> {
        self.get_json(&format!("_manifest/as_of={as_of}.json"))
            .await
    }

    /// The published snapshot with the greatest as_of below `as_of`.
    pub async fn previous_snapshot(&self, as_of: NaiveDate) -> Result<Option<Manifest>> {
        match self.snapshots()?.into_iter().filter(|d| *d < as_of).max() {
            Some(d) => self.manifest(d).await,
            None => Ok(None),
        }
    }

    /// Writes every published model under this run's staging directory.
    pub async fn stage_tables(
        &self,
        ctx: &SessionContext,
        outputs: &[ModelOutput],
        run_id: &str,
        as_of: NaiveDate,
        only: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, TableEntry>> {
        let mut entries = BTreeMap::new();
        for o in outputs
            .iter()
            .filter(|o| o.publish && only.contains(&o.name))
        {
            let rel = format!("{}/as_of={as_of}", o.name);
            let dir = self.staging_dir(run_id).join(&rel);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create staging", &dir, e))?;
            let (schema, batches) = stringify_partitions(o)?;
            let mut options = TableParquetOptions::default();
            options.global.compression = Some("zstd(3)".into());
            if o.rows == 0 {
                // One zero-row file carrying the schema. A partitioned table puts it under
                // `col=/` (the NULL partition) without the partition columns, as the
                // partitioned writer would, so hive readers see one consistent layout.
                let mut file_dir = dir.clone();
                for p in &o.partition_by {
                    file_dir.push(format!("{p}="));
                }
                std::fs::create_dir_all(&file_dir)
                    .map_err(|e| Error::io("create staging", &file_dir, e))?;
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .filter(|f| !o.partition_by.contains(f.name()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                write_empty_parquet(
                    &file_dir.join("part-0.parquet"),
                    Arc::new(Schema::new(fields)),
                )?;
            } else {
                let df = ctx.read_batches(batches).map_err(|e| stage_err(o, e))?;
                let url = format!("{}/", dir.display());
                let written = df
                    .write_parquet(
                        &url,
                        DataFrameWriteOptions::new().with_partition_by(o.partition_by.clone()),
                        Some(options),
                    )
                    .await
                    .map_err(|e| stage_err(o, e))?;
                let count: u64 = written
                    .first()
                    .and_then(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                            .map(|a| a.value(0))
                    })
                    .unwrap_or(0);
                if count != o.rows {
                    return Err(out_err(
                        &self.uri,
                        format!("write table {}", o.name),
                        format!("wrote {count} rows, expected {}", o.rows),
                    ));
                }
            }
            std::fs::write(dir.join("_SUCCESS"), b"")
                .map_err(|e| Error::io("write _SUCCESS", &dir, e))?;
            let mut files = Vec::new();
            list_parquet(&dir, &dir, &mut files)?;
            files.sort();
            if files.is_empty() {
                return Err(out_err(
                    &self.uri,
                    format!("write table {}", o.name),
                    "no file written",
                ));
            }
            entries.insert(
                o.name.clone(),
                TableEntry {
                    path: rel.clone(),
                    rows: o.rows,
                    files: files.into_iter().map(|f| format!("{rel}/{f}")).collect(),
                    partition_by: o.partition_by.clone(),
                    duration_ms: o.duration.as_millis() as u64,
                    columns: o
                        .schema
                        .fields()
                        .iter()
                        .map(|f| ColumnEntry {
                            name: f.name().clone(),
                            data_type: published_type(o, f).to_string(),
                        })
                        .collect(),
                },
            );
            info!(table = %o.name, rows = o.rows, "staged");
        }
        Ok(entries)
    }

    /// Fails unless this run still holds the lock (a run outliving `lock_timeout` may
    /// have been taken over; it must not publish then).
    async fn check_lock_owner(&self, run_id: &str) -> Result<()> {
        match self.get_json::<LockInfo>("_lock").await {
            Ok(Some(h)) if h.run_id == run_id => Ok(()),
            Ok(Some(h)) => Err(Error::Locked {
                uri: self.uri.clone(),
                holder: format!("this run's lock was taken over by {h}"),
            }),
            _ => Err(Error::Locked {
                uri: self.uri.clone(),
                holder: "this run's lock disappeared".into(),
            }),
        }
    }

    /// Moves staged tables into place and writes the manifest; the commit point.
    /// On failure every swap is undone, so the snapshot being replaced stays whole.
    pub async fn commit(&self, run_id: &str, manifest: &Manifest, staged: &[String]) -> Result<()> {
        self.check_lock_owner(run_id).await?;
        let as_of = manifest.as_of;
        let manifest_path = format!("_manifest/as_of={as_of}.json");
        let staging = self.staging_dir(run_id);
        // Journal for a run that takes over after this one is killed mid-commit.
        let journal = staging.join("commit.json");
        std::fs::write(
            &journal,
            serde_json::json!({ "as_of": as_of.to_string() }).to_string(),
        )
        .map_err(|e| Error::io("write commit journal", &journal, e))?;
        let mut swapped: Vec<String> = Vec::new();
        let mut result = self.swap_tables(run_id, as_of, staged, &mut swapped);
        if result.is_ok() {
            result = self.put_json_atomic(&manifest_path, manifest, run_id).await;
        }
        if let Err(e) = result {
            self.roll_back(run_id, as_of, &swapped);
            return Err(e);
        }
        let latest: Option<serde_json::Value> =
            self.get_json("_manifest/latest.json").await.unwrap_or(None);
        let latest_date = latest
            .as_ref()
            .and_then(|v| v.get("as_of"))
            .and_then(|v| v.as_str())
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
        if latest_date.is_none_or(|d| d <= as_of) {
            let body = serde_json::json!({
                "as_of": as_of.to_string(),
                "manifest": manifest_path,
                "run_id": run_id,
            });
            // The snapshot is published; a stale pointer is worth a warning, not a failure.
            if let Err(e) = self
                .put_json_atomic("_manifest/latest.json", &body, run_id)
                .await
            {
                warn!(error = %e, "cannot update _manifest/latest.json");
            }
        }
        self.remove_staging(run_id);
        Ok(())
    }

    /// Swaps each staged table in: old aside (into this run's `_old/`), new in.
    fn swap_tables(
        &self,
        run_id: &str,
        as_of: NaiveDate,
        staged: &[String],
        swapped: &mut Vec<String>,
    ) -> Result<()> {
        let staging = self.staging_dir(run_id);
        let aside_root = staging.join("_old");
        std::fs::create_dir_all(&aside_root)
            .map_err(|e| Error::io("create staging", &aside_root, e))?;
        for name in staged {
            let rel = format!("{name}/as_of={as_of}");
            let target = self.root.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create table directory", parent, e))?;
            }
            if target.exists() {
                std::fs::rename(&target, aside_root.join(name))
                    .map_err(|e| Error::io("move old table aside", &target, e))?;
            }
            swapped.push(name.clone());
            std::fs::rename(staging.join(&rel), &target)
                .map_err(|e| Error::io("move table into place", &target, e))?;
        }
        Ok(())
    }

    /// Undoes swaps: tables set aside in `_old/` go back; tables that had no old version
    /// and were moved in by this run (`swapped`) are removed.
    fn roll_back(&self, run_id: &str, as_of: NaiveDate, swapped: &[String]) {
        let aside_root = self.staging_dir(run_id).join("_old");
        let mut names: Vec<String> = swapped.to_vec();
        if let Ok(entries) = std::fs::read_dir(&aside_root) {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        names.sort();
        names.dedup();
        for name in names {
            let target = self.root.join(format!("{name}/as_of={as_of}"));
            let aside = aside_root.join(&name);
            let has_old = aside.exists();
            if !has_old && !swapped.contains(&name) {
                continue;
            }
            if target.exists() {
                if let Err(e) = std::fs::remove_dir_all(&target) {
                    warn!(dir = %target.display(), error = %e, "roll back: cannot remove new table");
                    continue;
                }
            }
            if has_old {
                if let Err(e) = std::fs::rename(&aside, &target) {
                    warn!(dir = %target.display(), error = %e, "roll back: cannot restore old table");
                }
            }
        }
    }

    /// Cleans up after a dead run: if it was killed mid-commit before its manifest landed,
    /// its swaps are undone; then its staging is removed.
    async fn recover_dead_run(&self, dead: &LockInfo) -> Result<()> {
        let staging = self.staging_dir(&dead.run_id);
        if let Ok(text) = std::fs::read_to_string(staging.join("commit.json")) {
            let as_of = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("as_of").and_then(|d| d.as_str()).map(str::to_string))
                .and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            if let Some(as_of) = as_of {
                let committed = self
                    .manifest(as_of)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.run_id == dead.run_id);
                if !committed {
                    warn!(run = %dead.run_id, %as_of, "rolling back a run killed mid-commit");
                    self.roll_back(&dead.run_id, as_of, &[]);
                }
            }
        }
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io("remove stale staging", &staging, e))?;
        }
        Ok(())
    }
}

/// Opens the tables of a published snapshot that models read as `previous.<model>`.
/// Zero-row tables are left out: the engine gives them the current schema instead.
pub async fn previous_tables(
    ctx: &SessionContext,
    output: &Output,
    manifest: Option<&Manifest>,
    models: &std::collections::BTreeSet<String>,
) -> Result<PreviousTables> {
    let mut tables = PreviousTables::new();
    let Some(manifest) = manifest else {
        return Ok(tables);
    };
    for model in models {
        let Some(entry) = manifest.tables.get(model).filter(|e| e.rows > 0) else {
            continue;
        };
        let dir = format!("{}/", output.root.join(&entry.path).display());
        let err = |e: datafusion::error::DataFusionError| {
            out_err(&output.uri, format!("open previous snapshot {dir}"), e)
        };
        let url = ListingTableUrl::parse(&dir).map_err(err)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                entry
                    .partition_by
                    .iter()
                    .map(|p| (p.clone(), DataType::Utf8))
                    .collect(),
            );
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
            .map_err(err)?;
        tables.insert(
            model.clone(),
            Arc::new(ListingTable::try_new(config).map_err(err)?),
        );
    }
    Ok(tables)
}

fn stage_err(o: &ModelOutput, e: datafusion::error::DataFusionError) -> Error {
    Error::Model {
        file: o.file.clone(),
        model: o.name.clone(),
        message: format!("cannot write table: {}", e.strip_backtrace()),
    }
}

/// The type a column is published with: partition columns are strings (a NULL
/// int/date/bool would otherwise become 0 / 1970-01-01 / false in the path), and string
/// views are plain Utf8, so column types stay stable for readers.
fn published_type(o: &ModelOutput, field: &Field) -> DataType {
    if o.partition_by.contains(field.name()) {
        return DataType::Utf8;
    }
    match field.data_type() {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        other => other.clone(),
    }
}

/// Casts the batches to their published types. A partition value containing `=` is
/// rejected: DataFusion does not escape it and hive readers would misparse the path.
fn stringify_partitions(o: &ModelOutput) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let fields: Vec<Field> = o
        .schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), published_type(o, f), f.is_nullable()))
        .collect();
    let schema = Arc::new(Schema::new(fields.clone()));
    let mut batches = Vec::new();
    for b in &o.batches {
        let mut cols: Vec<ArrayRef> = Vec::new();
        for (i, f) in o.schema.fields().iter().enumerate() {
            if o.partition_by.contains(f.name()) {
                let c = cast(b.column(i), &DataType::Utf8).map_err(|e| stage_err(o, e.into()))?;
                if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                    for v in s.iter().flatten() {
                        if v.contains('=') {
                            return Err(Error::Model {
                                file: o.file.clone(),
                                model: o.name.clone(),
                                message: format!(
                                    "partition column `{}` has the value `{v}`, which contains `=` and cannot be a hive partition value",
                                    f.name()
                                ),
                            });
                        }
                    }
                }
                cols.push(c);
            } else if fields[i].data_type() != f.data_type() {
                cols.push(
                    cast(b.column(i), fields[i].data_type()).map_err(|e| stage_err(o, e.into()))?,
                );
            } else {
                cols.push(b.column(i).clone());
            }
        }
        batches
            .push(RecordBatch::try_new(schema.clone(), cols).map_err(|e| stage_err(o, e.into()))?);
    }
    Ok((schema, batches))
}

fn write_empty_parquet(path: &Path, schema: SchemaRef) -> Result<()> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    let file = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| Error::Output {
        uri: path.display().to_string(),
        operation: "write empty table".into(),
        message: e.to_string(),
    })?;
    writer.close().map_err(|e| Error::Output {
        uri: path.display().to_string(),
        operation: "write empty table".into(),
        message: e.to_string(),
    })?;
    Ok(())
}

fn list_parquet(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            list_parquet(root, &p, out)?;
        } else if p.extension().and_then(|e| e.to_str()) == Some("parquet") {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// Whether a process with this pid exists on this host.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
