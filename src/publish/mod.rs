//! Publishing: the output location, its lock, staging, the commit and crash recovery.
//!
//! Layout under the output root: `<model>/as_of=D/[<col>=<v>/]*.parquet` with `_SUCCESS`,
//! `_manifest/as_of=D.json` (the commit point: the snapshot exists iff it does),
//! `_manifest/latest.json`, `_staging/<run_id>/` and `_lock`.
//!
//! Protocol, the same on every store up to step 3:
//! 1. take `_lock` ([`lock`]), then recover what dead runs left ([`recover`]);
//! 2. every model is written once, streaming, under `_staging/<run_id>/` ([`stage`]);
//! 3. commit ([`commit`]): on local disk each table directory is swapped in by rename
//!    (glob readers see the old or the new table, never a mix) and the manifest replaced
//!    by temp + rename; on object storage the staged files are copied in under run-unique
//!    names, `_SUCCESS` is put, the manifest is put last, then the replaced snapshot's
//!    files are deleted;
//! 4. staging is removed, old snapshots beyond `keep_snapshots` deleted (manifest first),
//!    the lock released.

pub mod catalog;
pub mod commit;
pub mod delta;
pub mod draft;
pub mod erase;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod recover;
pub mod stage;
pub mod state;

use chrono::NaiveDate;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::{S3Settings, TableFormat, TableSettings};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::storage::Location;

pub use layout::{manifest_rel, staging_rel};
pub use lock::{host_name, process_alive, LockInfo, OutputLock};
pub use manifest::{ColumnEntry, Manifest, ModelTiming, RejectedEntry, ReportEntry, TableEntry};

/// The output location of a run.
#[derive(Clone, Debug)]
pub struct Output {
    pub loc: Location,
    /// How this run writes published models (readers follow each manifest entry).
    pub tables: TableSettings,
}

pub(crate) fn out_err(uri: &str, operation: impl Into<String>, message: impl ToString) -> Error {
    Error::Output {
        uri: uri.to_string(),
        operation: operation.into(),
        message: redact(&message.to_string()),
    }
}

impl Output {
    /// Opens an output root (a local directory is created). Delta tables are written on
    /// local disk and S3 only.
    pub fn open(uri: &str, s3: &S3Settings, tables: &TableSettings) -> Result<Output> {
        let loc = Location::resolve_output(uri, s3)?;
        if tables.format == TableFormat::Delta && !(loc.local.is_some() || uri.starts_with("s3://"))
        {
            return Err(Error::ConfigValue {
                key: "output.format".into(),
                message: format!(
                    "Delta output is written on local disk and s3:// only, not to {uri}: use format = \"parquet\" there"
                ),
            });
        }
        if let Some(root) = &loc.local {
            std::fs::create_dir_all(root)
                .map_err(|e| Error::io("create output directory", root, e))?;
        }
        Ok(Output {
            loc,
            tables: tables.clone(),
        })
    }

    /// An output error naming this location.
    pub(crate) fn err(&self, operation: impl Into<String>, message: impl ToString) -> Error {
        out_err(&self.loc.uri, operation, message)
    }

    pub(crate) async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        rel: &str,
    ) -> Result<Option<T>> {
        // A body cut short is not retried by object_store: read the whole object again.
        let path = self.loc.path(rel);
        let read = crate::storage::retrying("read", || async {
            self.loc.store.get(&path).await?.bytes().await
        })
        .await;
        match read {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.err(format!("parse {rel}"), e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("read {rel}"), e)),
        }
    }

    /// Writes JSON so readers see the old or the new content (see [`Output::put_atomic`]).
    pub(crate) async fn put_json<T: Serialize>(
        &self,
        rel: &str,
        value: &T,
        run_id: &str,
    ) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(value).map_err(|e| self.err(format!("encode {rel}"), e))?;
        self.put_atomic(rel, bytes, run_id).await
    }

    /// Writes a file so readers see the old or the new content: one put on object storage
    /// (atomic there), temp file `<dir>/.tmp-<run_id>` + rename on local disk (recovery
    /// deletes a temp file a killed run left).
    pub(crate) async fn put_atomic(&self, rel: &str, bytes: Vec<u8>, run_id: &str) -> Result<()> {
        if self.loc.local.is_none() {
            return self
                .loc
                .store
                .put(&self.loc.path(rel), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.err(format!("write {rel}"), e));
        }
        let dir = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
        let tmp = format!("{dir}/.tmp-{run_id}");
        self.loc
            .store
            .put(&self.loc.path(&tmp), PutPayload::from(bytes))
            .await
            .map_err(|e| self.err(format!("write {tmp}"), e))?;
        self.loc
            .store
            .rename(&self.loc.path(&tmp), &self.loc.path(rel))
            .await
            .map_err(|e| self.err(format!("rename {tmp} to {rel}"), e))
    }

    /// Deletes every object below `rel` (a directory on local disk).
    pub(crate) async fn delete_prefix(&self, rel: &str) -> Result<()> {
        if let Some(root) = &self.loc.local {
            let dir = root.join(rel);
            return match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove", &dir, e)),
            };
        }
        let listed = self
            .loc
            .list(rel)
            .await
            .map_err(|e| self.err(format!("list {rel}"), e))?;
        let paths: Vec<_> = listed.into_iter().map(|m| m.location).collect();
        let mut deleted = self
            .loc
            .store
            .delete_stream(futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed());
        let mut failed = false;
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(_) => failed = true,
            }
        }
        drop(deleted);
        if failed {
            // One by one, each retried, naming the object that cannot be deleted.
            for p in paths {
                if let Some(r) = self.loc.rel(&p) {
                    self.delete_file(&r).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes this run's staging (after a failure or a commit); failures are logged.
    pub async fn remove_staging(&self, run_id: &str) {
        if let Err(e) = self.delete_prefix(&staging_rel(run_id)).await {
            warn!(error = %e, "cannot remove staging");
        }
        if let Some(root) = &self.loc.local {
            // The parent goes too once no run uses it.
            let _ = std::fs::remove_dir(root.join("_staging"));
        }
    }

    /// Published snapshot dates, from the manifests, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<NaiveDate>> {
        let listed = self
            .loc
            .list("_manifest")
            .await
            .map_err(|e| self.err("list _manifest", e))?;
        let mut out: Vec<NaiveDate> = listed
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter_map(|n| {
                n.strip_prefix("as_of=")
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The rows of table `name` in the published snapshot `as_of` (`entry` is its manifest
    /// entry): its Parquet folder (partition columns as strings), or its Delta table's
    /// partition `as_of`.
    pub async fn open_snapshot(
        &self,
        ctx: &SessionContext,
        name: &str,
        entry: &TableEntry,
        as_of: NaiveDate,
    ) -> datafusion::error::Result<DataFrame> {
        if entry.delta_version.is_some() {
            return self.read_delta_snapshot(ctx, name, as_of).await;
        }
        stage::open_dir(ctx, &self.loc, &entry.path, &entry.partition_by).await
    }

    /// Reads the manifest of a snapshot.
    pub async fn manifest(&self, as_of: NaiveDate) -> Result<Option<Manifest>> {
        self.get_json(&manifest_rel(as_of)).await
    }

    /// The published snapshot with the greatest as_of below `as_of`.
    pub async fn previous_snapshot(&self, as_of: NaiveDate) -> Result<Option<Manifest>> {
        match self
            .snapshots()
            .await?
            .into_iter()
            .filter(|d| *d < as_of)
            .max()
        {
            Some(d) => self.manifest(d).await,
            None => Ok(None),
        }
    }
}
