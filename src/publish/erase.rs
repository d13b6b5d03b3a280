//! Erasure (`segflow forget`): customers removed from every kept snapshot, and kept out of
//! later runs.
//!
//! - The erased ids live in `_privacy/erased.parquet`: one column `hash`, each the salted
//!   hash of a published id (see [`ErasedIds`]), the salt in the file's key-value metadata
//!   (`segflow.erased.salt`). It is written first, in one atomic put, so a run after an
//!   interrupted erasure already leaves the customers out.
//! - Each kept snapshot whose manifest says it is without fewer ids than the file holds
//!   (`erasure.erased_ids`) is rewritten through the commit every run uses: each Parquet
//!   file of a table, of the rejected rows or of the state that holds an erased id is
//!   written again without those rows (other files stay as they are), the audiences' upload
//!   files lose the erased customers' addresses, and the manifest, put last, lists the new
//!   files. A state file shared by several snapshots is rewritten once. A kill leaves each
//!   snapshot whole, before or after; running `forget` again finishes the others.
//! - Delta tables: the erased customers' rows are deleted from each table first (one
//!   DELETE commit), each snapshot's manifest then names the table's new version, and at
//!   the end a vacuum with zero retention deletes every file the newest versions no longer
//!   reference: time travel to before the erasure ends.
//! - Aggregates (segment_summary, cohorts, ...) of kept snapshots are left as they were:
//!   they hold no customer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tracing::{info, warn};

use super::layout::{AUDIENCES, ERASED_FILE, REJECTED, STATE};
use super::manifest::{ErasureEntry, ErasureRecord};
use super::{staging_rel, Manifest, Output, OutputLock};
use crate::error::Result;
use crate::failpoint;
use crate::privacy::{hex, unhex, ErasedIds};
use crate::storage::retrying;

/// The key-value metadata entry of `_privacy/erased.parquet` that holds the salt (hex).
const SALT_KEY: &str = "segflow.erased.salt";
/// Its column of salted hashes.
const HASH_COLUMN: &str = "hash";
/// The column of customer ids in every table, rejected row and state file.
const CUSTOMER_ID: &str = "customer_id";

/// The address each erased customer's audience upload lines hold, by published id: the
/// address as exported (trimmed, in email audiences) and the SHA-256 hex of it lower-cased
/// (in ads audiences).
#[derive(Debug, Default)]
pub struct Contacts {
    pub by_id: HashMap<String, (String, String)>,
}

impl Contacts {
    /// Adds a customer's exported address (already trimmed, as `audiences` exports it).
    pub fn insert(&mut self, id: &str, email: &str) {
        use sha2::{Digest, Sha256};
        let hashed = hex(&Sha256::digest(email.to_lowercase().as_bytes()));
        self.by_id
            .insert(id.to_string(), (email.to_string(), hashed));
    }
}

/// An upload file's line as a value (a quoted CSV field unquoted).
fn csv_value(line: &str) -> String {
    let value = line.trim_end_matches(['\n', '\r']);
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .map(|v| v.replace("\"\"", "\""))
        .unwrap_or_else(|| value.to_string())
}

/// One erasure: the whole set of erased ids (the new ones included), the addresses of the
/// erased customers, and what the request named.
pub struct Erasure<'a> {
    pub ids: &'a ErasedIds,
    pub contacts: &'a Contacts,
    /// The table of audience memberships (`audience`, `change`), whose counts the
    /// manifest's audience summaries repeat.
    pub members_table: &'a str,
    pub at: DateTime<Utc>,
    /// Customers the request named.
    pub customers: u64,
}

/// What an erasure did to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotErasure {
    pub as_of: NaiveDate,
    pub rows_removed: u64,
    pub files_rewritten: u64,
}

/// A Parquet file written again without the erased rows.
#[derive(Debug, Clone)]
struct Filtered {
    removed: u64,
    rows: u64,
    bytes: u64,
    /// Bytes of the file it replaces.
    old_bytes: u64,
    /// The removed rows (the erased customers' only).
    dropped: Vec<RecordBatch>,
}

/// A rewritten state file: where it went, its rows and bytes.
#[derive(Debug, Clone)]
struct Placed {
    rel: String,
    removed: u64,
    /// Bytes of the new file less those of the one it replaces.
    grown: i64,
}

/// The names of a snapshot's Delta tables.
fn delta_tables(m: &Manifest) -> impl Iterator<Item = String> + '_ {
    m.tables
        .iter()
        .filter(|(_, t)| super::delta::is_delta(t))
        .map(|(name, _)| name.clone())
}

/// The run id's prefix of a file name (`<run_id>-`, the run id being
/// `YYYYMMDDTHHMMSS.ffffffZ-<pid>`), stripped so that a rewritten file gets one prefix.
fn without_run_prefix(name: &str) -> &str {
    let b = name.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let stamp = b.len() > 25
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..22)
        && b[22] == b'Z'
        && b[23] == b'-';
    if !stamp {
        return name;
    }
    let rest = &name[24..];
    match rest.find('-') {
        Some(i) if i > 0 && rest[..i].bytes().all(|c| c.is_ascii_digit()) => &rest[i + 1..],
        _ => name,
    }
}

/// `_privacy/erased.parquet` as bytes.
fn encode_erased(ids: &ErasedIds) -> std::result::Result<Vec<u8>, String> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        HASH_COLUMN,
        DataType::Utf8,
        false,
    )]));
    let hashes = StringArray::from(ids.hashes_hex());
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(hashes)]).map_err(|e| e.to_string())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SALT_KEY.to_string(),
            hex(ids.salt()),
        )]))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The erased ids in `_privacy/erased.parquet`'s bytes.
fn decode_erased(bytes: bytes::Bytes) -> std::result::Result<ErasedIds, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let salt = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == SALT_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(unhex)
        .ok_or_else(|| format!("no salt ({SALT_KEY}) in its metadata"))?;
    let mut ids = ErasedIds::with_salt(salt);
    for batch in builder.build().map_err(|e| e.to_string())? {
        let batch = batch.map_err(|e| e.to_string())?;
        let column = batch
            .column_by_name(HASH_COLUMN)
            .ok_or_else(|| format!("no column `{HASH_COLUMN}`"))?;
        let column =
            datafusion::arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        for h in column.as_string::<i32>().iter() {
            if !h.is_some_and(|h| ids.insert_hash_hex(h)) {
                return Err(format!("`{HASH_COLUMN}` holds {h:?}, not a SHA-256 in hex"));
            }
        }
    }
    Ok(ids)
}

impl Output {
    /// The erased ids of this output (`_privacy/erased.parquet`), if any customer was ever
    /// erased.
    pub async fn erased_ids(&self) -> Result<Option<ErasedIds>> {
        let path = self.loc.path(ERASED_FILE);
        let read = retrying("read", || async {
            self.loc.store.get(&path).await?.bytes().await
        })
        .await;
        match read {
            Ok(bytes) => decode_erased(bytes)
                .map(Some)
                .map_err(|m| self.err(format!("read {ERASED_FILE}"), m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("read {ERASED_FILE}"), e)),
        }
    }

    /// Replaces `_privacy/erased.parquet` (one atomic put).
    pub async fn put_erased_ids(&self, ids: &ErasedIds, run_id: &str) -> Result<()> {
        let bytes = encode_erased(ids).map_err(|m| self.err(format!("encode {ERASED_FILE}"), m))?;
        self.put_atomic(ERASED_FILE, bytes, run_id).await
    }

    /// Rewrites every kept snapshot that still holds an erased id (see the module docs),
    /// oldest first, each through the commit; returns what changed in each.
    pub async fn erase(
        &self,
        lock: &OutputLock,
        run_id: &str,
        erasure: &Erasure<'_>,
    ) -> Result<Vec<SnapshotErasure>> {
        let total = erasure.ids.len() as u64;
        // One read of every kept manifest: the snapshots to rewrite, and every Delta table
        // (vacuumed at the end, also when an earlier erasure was cut short after its last
        // manifest: a vacuum finds nothing to do the second time).
        let mut pending = Vec::new();
        let mut all_delta: BTreeSet<String> = BTreeSet::new();
        for as_of in self.snapshots().await? {
            let Some(m) = self.manifest(as_of).await? else {
                continue;
            };
            all_delta.extend(delta_tables(&m));
            if m.erased_ids() < total {
                pending.push(m);
            }
        }
        // Delta tables first: one DELETE commit each; the manifests then name the new
        // versions, and a vacuum ends time travel to before the erasure.
        let delta: BTreeSet<String> = pending.iter().flat_map(delta_tables).collect();
        let ids = Arc::new(erasure.ids.clone());
        // The membership rows the deletes remove, per snapshot: their upload lines go too.
        let mut delta_members: BTreeMap<NaiveDate, Vec<(String, String, String)>> = BTreeMap::new();
        if delta.contains(erasure.members_table) {
            for m in &pending {
                let table = m.tables.get(erasure.members_table);
                if let Some(version) = table.and_then(|t| t.delta_version) {
                    // At the version the manifest names: a DELETE an interrupted erasure
                    // already committed has not been vacuumed yet.
                    let version = Some(version);
                    let rows = self
                        .erased_members(erasure.members_table, m.as_of, version, &ids)
                        .await?;
                    delta_members.insert(m.as_of, rows);
                }
            }
        }
        for name in &delta {
            lock.heartbeat().await?;
            self.erase_delta(name, &ids, run_id).await?;
        }
        if !delta.is_empty() {
            failpoint::hit("delta_erased").await;
        }
        // State files rewritten for an earlier snapshot, which later ones share.
        let mut shared: HashMap<String, Option<Placed>> = HashMap::new();
        let mut done = Vec::new();
        for old in pending {
            let as_of = old.as_of;
            lock.heartbeat().await?;
            let mut job = Rewrite {
                out: self,
                run_id,
                as_of,
                erasure,
                staged: BTreeMap::new(),
                removed: 0,
                files: 0,
                shared: &mut shared,
                members: Vec::new(),
                delta_members: delta_members.remove(&as_of).unwrap_or_default(),
            };
            let mut m = old.clone();
            let rewritten = job.snapshot(&mut m).await;
            let (staged, removed, files) = (job.staged, job.removed, job.files);
            if let Err(e) = rewritten {
                self.remove_staging(run_id).await;
                return Err(e);
            }
            m.run_id = run_id.to_string();
            let entry = m.erasure.get_or_insert_with(ErasureEntry::default);
            entry.erased_ids = total;
            entry.erasures.push(ErasureRecord {
                at: erasure.at,
                customers: erasure.customers,
                rows_removed: removed,
                files_rewritten: files,
            });
            if staged.is_empty() {
                // No file changes: the manifest alone (one atomic write) records it.
                self.put_json(&super::manifest_rel(as_of), &m, run_id)
                    .await?;
                // It may now share state files rewritten for an earlier snapshot: the
                // files it listed before are left to no one.
                self.sweep_state().await?;
            } else {
                self.commit(lock, &mut m, &staged, None).await?;
                if self.loc.local.is_none()
                    && !self
                        .loc
                        .list(&staging_rel(run_id))
                        .await
                        .map_err(|e| self.err("list the staging", e))?
                        .is_empty()
                {
                    // The audience files could not be put in place: the next run's recovery
                    // does it from this staging, which the next snapshot would remove.
                    return Err(self.err(
                        format!("put the rewritten audience files of snapshot {as_of} in place"),
                        "left for the next run's recovery; run segflow forget again after it",
                    ));
                }
            }
            info!(%as_of, rows = removed, files, "snapshot rewritten without the erased customers");
            done.push(SnapshotErasure {
                as_of,
                rows_removed: removed,
                files_rewritten: files,
            });
        }
        for name in &all_delta {
            self.vacuum_erased(name).await?;
        }
        Ok(done)
    }

    /// Delta output: the rows (audience, change, customer) of membership table `name` in
    /// snapshot `as_of` whose customer is erased, read before the DELETE removes them.
    async fn erased_members(
        &self,
        name: &str,
        as_of: NaiveDate,
        version: Option<u64>,
        ids: &Arc<ErasedIds>,
    ) -> Result<Vec<(String, String, String)>> {
        use datafusion::prelude::{col, SessionContext};
        let ctx = SessionContext::new();
        let op = || format!("read the erased members of {name} as_of={as_of}");
        let batches = self
            .read_delta_at(&ctx, name, as_of, version)
            .await
            .and_then(|df| df.filter(ids.udf().call(vec![col(CUSTOMER_ID)])))
            .and_then(|df| df.select_columns(&["audience", "change", CUSTOMER_ID]))
            .map_err(|e| self.err(op(), e))?
            .collect()
            .await
            .map_err(|e| self.err(op(), e))?;
        let mut rows = Vec::new();
        tally_changes(&mut rows, &batches);
        Ok(rows)
    }

    /// `from` (a Parquet file) written again at `to` without the rows of erased customers;
    /// None (nothing written) when it has none or no customer column.
    async fn filter_parquet(
        &self,
        from: &str,
        to: &str,
        ids: &ErasedIds,
    ) -> Result<Option<Filtered>> {
        let path = self.loc.path(from);
        let bytes = retrying("read", || async {
            self.loc.store.get(&path).await?.bytes().await
        })
        .await
        .map_err(|e| self.err(format!("read {from}"), e))?;
        let read_err = |e: parquet::errors::ParquetError| self.err(format!("read {from}"), e);
        let open = || ParquetRecordBatchReaderBuilder::try_new(bytes.clone());
        let builder = open().map_err(read_err)?;
        let Ok(column) = builder.schema().index_of(CUSTOMER_ID) else {
            return Ok(None);
        };
        // First the ids alone: most files hold no erased customer.
        let ids_only = ProjectionMask::roots(builder.parquet_schema(), [column]);
        let mut erased = 0usize;
        for batch in builder
            .with_projection(ids_only)
            .build()
            .map_err(read_err)?
        {
            let batch = batch.map_err(|e| self.err(format!("read {from}"), e))?;
            erased += ids
                .erased_rows(batch.column(0))
                .map_err(|e| self.err(format!("read {from}"), e))?
                .true_count();
        }
        if erased == 0 {
            return Ok(None);
        }
        let builder = open().map_err(read_err)?;
        let schema = builder.schema().clone();
        let batches = builder.build().map_err(read_err)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let write_err = |e: parquet::errors::ParquetError| self.err(format!("write {to}"), e);
        let sink =
            object_store::buffered::BufWriter::new(self.loc.store.clone(), self.loc.path(to));
        let mut writer = AsyncArrowWriter::try_new(sink, schema, Some(props)).map_err(write_err)?;
        let mut out = Filtered {
            removed: 0,
            rows: 0,
            bytes: 0,
            old_bytes: bytes.len() as u64,
            dropped: Vec::new(),
        };
        for batch in batches {
            let batch = batch.map_err(|e| self.err(format!("read {from}"), e))?;
            let arrow_err =
                |e: datafusion::arrow::error::ArrowError| self.err(format!("rewrite {from}"), e);
            let mask = ids
                .erased_rows(batch.column(column))
                .map_err(|e| self.err(format!("read {from}"), e))?;
            if mask.true_count() > 0 {
                out.dropped
                    .push(filter_record_batch(&batch, &mask).map_err(arrow_err)?);
            }
            let kept =
                filter_record_batch(&batch, &not(&mask).map_err(arrow_err)?).map_err(arrow_err)?;
            out.removed += (batch.num_rows() - kept.num_rows()) as u64;
            out.rows += kept.num_rows() as u64;
            writer.write(&kept).await.map_err(write_err)?;
        }
        writer.close().await.map_err(write_err)?;
        out.bytes = self.size_of(to).await?;
        Ok(Some(out))
    }

    async fn size_of(&self, rel: &str) -> Result<u64> {
        let path = self.loc.path(rel);
        retrying("head", || self.loc.store.head(&path))
            .await
            .map(|m| m.size)
            .map_err(|e| self.err(format!("read {rel}"), e))
    }

    /// Local disk: links `rel` into this run's staging (a table folder is swapped whole).
    fn link_into_staging(&self, run_id: &str, rel: &str) -> Result<()> {
        let root = self.local_root()?;
        let from = root.join(rel);
        let to = root.join(staging_rel(run_id)).join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| crate::Error::io("create staging", parent, e))?;
        }
        std::fs::hard_link(&from, &to).map_err(|e| crate::Error::io("link into staging", &from, e))
    }
}

/// The rewrite of one snapshot.
struct Rewrite<'a, 'e> {
    out: &'a Output,
    run_id: &'a str,
    as_of: NaiveDate,
    erasure: &'a Erasure<'e>,
    /// What the commit publishes: folder → staged files (relative to its staging folder).
    staged: BTreeMap<String, Vec<String>>,
    removed: u64,
    files: u64,
    shared: &'a mut HashMap<String, Option<Placed>>,
    /// The membership rows removed (audience, change, customer), whose upload lines go.
    members: Vec<(String, String, String)>,
    /// Delta output: the membership rows of this snapshot the table's DELETE removed.
    delta_members: Vec<(String, String, String)>,
}

impl Rewrite<'_, '_> {
    async fn snapshot(&mut self, m: &mut Manifest) -> Result<()> {
        let names: Vec<String> = m.tables.keys().cloned().collect();
        for name in names {
            let Some(t) = m.tables.get_mut(&name) else {
                continue;
            };
            if super::delta::is_delta(t) {
                // Its erased rows were deleted (see `Output::erase`): the entry takes the
                // table's newest version.
                let (rows, files) = (t.rows, t.files.clone());
                self.out.delta_entry_now(&name, self.as_of, t).await?;
                self.removed += rows.saturating_sub(t.rows);
                self.files += t.files.iter().filter(|f| !files.contains(f)).count() as u64;
                if name == self.erasure.members_table {
                    let dropped = std::mem::take(&mut self.delta_members);
                    self.members_removed(m.audiences.as_mut(), dropped);
                }
                continue;
            }
            let (path, mut files) = (t.path.clone(), t.files.clone());
            let tally = (name == self.erasure.members_table).then(Vec::new);
            if let Some(r) = self.folder(&name, &path, &mut files, tally).await? {
                let t = m.tables.get_mut(&name).expect("listed above");
                t.files = files;
                t.rows = t.rows.saturating_sub(r.removed);
                t.bytes = t.bytes.saturating_add_signed(r.grown);
                if let Some(dropped) = r.dropped {
                    self.members_removed(m.audiences.as_mut(), dropped);
                }
            }
        }
        if let Some(r) = m.rejected.as_mut() {
            let mut files = r.files.clone();
            let path = r.path.clone();
            if let Some(f) = self.folder(REJECTED, &path, &mut files, None).await? {
                r.files = files;
                r.rows = r.rows.saturating_sub(f.removed);
                r.bytes = r.bytes.saturating_add_signed(f.grown);
            }
        }
        self.state(m).await?;
        self.audiences(m).await?;
        Ok(())
    }

    /// Membership rows removed (audience, change, customer): the audiences' counts follow,
    /// and their upload lines go (see [`Self::audiences`]).
    fn members_removed(
        &mut self,
        audiences: Option<&mut super::manifest::AudiencesEntry>,
        dropped: Vec<(String, String, String)>,
    ) {
        if let Some(a) = audiences {
            for (audience, change, _) in &dropped {
                if let Some(s) = a.audiences.get_mut(audience) {
                    match change.as_str() {
                        "entered" => s.entered = s.entered.saturating_sub(1),
                        "stayed" => s.stayed = s.stayed.saturating_sub(1),
                        "left" => s.left = s.left.saturating_sub(1),
                        _ => {}
                    }
                    s.members = s.entered + s.stayed;
                }
            }
        }
        self.members.extend(dropped);
    }

    /// Rewrites the files of one folder (a table or the rejected rows); updates `files`
    /// to their published names. `tally`: count the removed rows by audience and change.
    async fn folder(
        &mut self,
        name: &str,
        dir: &str,
        files: &mut [String],
        tally: Option<Vec<(String, String, String)>>,
    ) -> Result<Option<FolderResult>> {
        let local = self.out.loc.local.is_some();
        let staging = staging_rel(self.run_id);
        let mut changed: Vec<(usize, String)> = Vec::new();
        let mut result = FolderResult {
            removed: 0,
            grown: 0,
            dropped: tally,
        };
        let mut rewritten = vec![false; files.len()];
        for (i, f) in files.iter().enumerate() {
            let Some(inner) = f.strip_prefix(&format!("{dir}/")) else {
                continue;
            };
            let staged = match inner.rsplit_once('/') {
                _ if local => inner.to_string(),
                Some((d, base)) => format!("{d}/{}", without_run_prefix(base)),
                None => without_run_prefix(inner).to_string(),
            };
            let to = format!("{staging}/{dir}/{staged}");
            let Some(filtered) = self.out.filter_parquet(f, &to, self.erasure.ids).await? else {
                continue;
            };
            result.removed += filtered.removed;
            result.grown += filtered.bytes as i64 - filtered.old_bytes as i64;
            rewritten[i] = true;
            if let Some(t) = result.dropped.as_mut() {
                tally_changes(t, &filtered.dropped);
            }
            changed.push((i, staged));
        }
        if changed.is_empty() {
            return Ok(None);
        }
        self.removed += result.removed;
        self.files += changed.len() as u64;
        let mut staged_files: Vec<String> = Vec::new();
        if local {
            // The folder is swapped whole: the unchanged files (and `_SUCCESS`) are linked.
            for (i, f) in files.iter().enumerate() {
                if !rewritten[i] {
                    self.out.link_into_staging(self.run_id, f)?;
                }
            }
            let success = format!("{dir}/_SUCCESS");
            if self.out.local_root()?.join(&success).exists() {
                self.out.link_into_staging(self.run_id, &success)?;
            }
            staged_files.extend(changed.iter().map(|(_, s)| s.clone()));
        } else {
            for (i, staged) in &changed {
                files[*i] = self
                    .out
                    .published_file(self.run_id, name, self.as_of, staged);
                staged_files.push(staged.clone());
            }
        }
        self.staged.insert(name.to_string(), staged_files);
        Ok(Some(result))
    }

    /// Rewrites the state's files that hold an erased customer (once per erasure, for
    /// every snapshot that shares them).
    async fn state(&mut self, m: &mut Manifest) -> Result<()> {
        let Some(state) = m.state.as_mut() else {
            return Ok(());
        };
        let staging = format!("{}/{STATE}/as_of={}", staging_rel(self.run_id), self.as_of);
        for (model, table) in state.tables.iter_mut() {
            for (layer, files) in [("base", &mut table.files), ("delta", &mut table.delta)] {
                let (mut removed, mut grown) = (0u64, 0i64);
                for f in files.iter_mut() {
                    let placed = match self.shared.get(f.as_str()) {
                        Some(p) => p.clone(),
                        None => {
                            let base = f.rsplit('/').next().unwrap_or(f);
                            let part = base.find("part-").map_or(base, |i| &base[i..]);
                            let staged = format!("{model}/{layer}-{part}");
                            let to = format!("{staging}/{staged}");
                            let filtered =
                                self.out.filter_parquet(f, &to, self.erasure.ids).await?;
                            let placed = filtered.map(|r| Placed {
                                rel: self.out.state_file(self.run_id, self.as_of, &staged),
                                removed: r.removed,
                                grown: r.bytes as i64 - r.old_bytes as i64,
                            });
                            if placed.is_some() {
                                self.staged
                                    .entry(STATE.to_string())
                                    .or_default()
                                    .push(staged);
                                self.files += 1;
                            }
                            self.shared.insert(f.clone(), placed.clone());
                            placed
                        }
                    };
                    if let Some(p) = placed {
                        removed += p.removed;
                        grown += p.grown;
                        *f = p.rel;
                    }
                }
                self.removed += removed;
                let (rows, bytes) = match layer {
                    "base" => (&mut table.rows, &mut table.bytes),
                    _ => (&mut table.delta_rows, &mut table.delta_bytes),
                };
                *rows = rows.saturating_sub(removed);
                *bytes = bytes.saturating_add_signed(grown);
            }
        }
        state.files = state
            .tables
            .values()
            .flat_map(|t| t.all_files().cloned())
            .collect();
        state.bytes = state.tables.values().map(|t| t.bytes + t.delta_bytes).sum();
        Ok(())
    }

    /// The audiences' upload files without the lines of the members removed from the
    /// membership table: in an email audience one line of the member's address per member,
    /// in an ads audience its hash. An audience whose removed member has no address in the
    /// `customers` input any more (so its line cannot be told) loses its upload files in
    /// that snapshot: they could hold the customer.
    async fn audiences(&mut self, m: &mut Manifest) -> Result<()> {
        let Some(a) = m.audiences.as_mut() else {
            return Ok(());
        };
        let contacts = self.erasure.contacts;
        let staging = staging_rel(self.run_id);
        // Per file: the values to remove (a count of each), or None to drop the file.
        let mut plan: BTreeMap<String, Option<HashMap<String, usize>>> = BTreeMap::new();
        for (name, summary) in a.audiences.iter_mut() {
            let gone: Vec<&str> = self
                .members
                .iter()
                .filter(|(aud, change, _)| aud == name && change != "left")
                .map(|(_, _, id)| id.as_str())
                .collect();
            if gone.is_empty() {
                continue;
            }
            let addresses: Option<Vec<&(String, String)>> =
                gone.iter().map(|id| contacts.by_id.get(*id)).collect();
            let Some(addresses) = addresses else {
                warn!(audience = %name, as_of = %self.as_of,
                    "an erased member has no address in `customers` any more: the audience's upload files of this snapshot are deleted");
                for f in summary.files.drain(..) {
                    plan.insert(f, None);
                }
                continue;
            };
            let hashed = summary.channel != "email";
            for f in &summary.files {
                let mut remove: HashMap<String, usize> = HashMap::new();
                for (email, hash) in &addresses {
                    let value = if hashed { hash } else { email };
                    // A hash is listed once however many members share the address.
                    let n = remove.entry(value.clone()).or_insert(0);
                    *n = if hashed { 1 } else { *n + 1 };
                }
                plan.insert(f.clone(), Some(remove));
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        // Every file of the folder is staged: it is swapped (local) or put in place (object
        // storage) whole.
        a.files.retain(|f| !matches!(plan.get(f), Some(None)));
        let mut bytes = 0u64;
        for f in &a.files {
            let path = self.out.loc.path(f);
            let body = retrying("read", || async {
                self.out.loc.store.get(&path).await?.bytes().await
            })
            .await
            .map_err(|e| self.out.err(format!("read {f}"), e))?;
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut lines = text.split_inclusive('\n');
            let mut kept: String = lines.next().unwrap_or_default().to_string();
            let mut remove = plan.get(f).cloned().flatten().unwrap_or_default();
            for line in lines {
                match remove.get_mut(&csv_value(line)) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => kept.push_str(line),
                }
            }
            if plan.contains_key(f) {
                self.files += 1;
            }
            let to = self.out.loc.path(&format!("{staging}/{f}"));
            let payload = object_store::PutPayload::from(kept.clone().into_bytes());
            retrying("put", || self.out.loc.store.put(&to, payload.clone()))
                .await
                .map_err(|e| self.out.err(format!("write the rewritten {f}"), e))?;
            bytes += kept.len() as u64;
        }
        self.files += plan.values().filter(|p| p.is_none()).count() as u64;
        if let Some(root) = &self.out.loc.local {
            // The folder is swapped in even when no file is left in it.
            let dir = root.join(format!("{staging}/{}", a.path));
            std::fs::create_dir_all(&dir)
                .map_err(|e| crate::Error::io("create staging", &dir, e))?;
        }
        a.bytes = bytes;
        let prefix = format!("{}/", a.path);
        let staged = a
            .files
            .iter()
            .map(|f| f.strip_prefix(&prefix).unwrap_or(f).to_string())
            .collect();
        self.staged.insert(AUDIENCES.to_string(), staged);
        Ok(())
    }
}

/// What one folder's rewrite removed.
struct FolderResult {
    removed: u64,
    /// Bytes of the rewritten files less those of the files they replace.
    grown: i64,
    /// Removed membership rows (audience, change, customer), for the membership table.
    dropped: Option<Vec<(String, String, String)>>,
}

/// Adds the removed membership rows of `batches`: (audience, change, customer).
fn tally_changes(tally: &mut Vec<(String, String, String)>, batches: &[RecordBatch]) {
    for b in batches {
        let columns = ["audience", "change", CUSTOMER_ID].map(|c| {
            b.column_by_name(c)
                .and_then(|a| datafusion::arrow::compute::cast(a, &DataType::Utf8).ok())
        });
        let [Some(audience), Some(change), Some(id)] = columns else {
            continue;
        };
        let (audience, change, id) = (
            audience.as_string::<i32>(),
            change.as_string::<i32>(),
            id.as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            if audience.is_null(i) || change.is_null(i) || id.is_null(i) {
                continue;
            }
            tally.push((
                audience.value(i).to_string(),
                change.value(i).to_string(),
                id.value(i).to_string(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_keeps_one_run_prefix() {
        assert_eq!(
            without_run_prefix("20261206T220401.123456Z-4242-part-0.parquet"),
            "part-0.parquet"
        );
        assert_eq!(without_run_prefix("part-0.parquet"), "part-0.parquet");
        assert_eq!(
            without_run_prefix("20261206T220401.123456Z-x-part-0.parquet"),
            "20261206T220401.123456Z-x-part-0.parquet"
        );
    }

    #[test]
    fn the_erased_file_round_trips_with_its_salt() {
        let mut ids = ErasedIds::with_salt(b"s".to_vec());
        ids.insert("a");
        ids.insert("b");
        let back = decode_erased(encode_erased(&ids).unwrap().into()).unwrap();
        assert_eq!(back.salt(), b"s");
        assert_eq!(back.hashes_hex(), ids.hashes_hex());
        assert!(back.contains("a") && !back.contains("c"));
    }

    #[test]
    fn upload_lines_are_read_as_csv_values_and_hashed_lower_cased() {
        assert_eq!(csv_value("Ann@Example.com\r\n"), "Ann@Example.com");
        assert_eq!(csv_value("\"a,\"\"b\"\"@x\"\n"), "a,\"b\"@x");
        let mut c = Contacts::default();
        c.insert("7", "Ann@Example.com");
        // SHA-256 of "ann@example.com".
        use sha2::{Digest, Sha256};
        assert_eq!(c.by_id["7"].1, hex(&Sha256::digest(b"ann@example.com")));
    }
}
