//! Delta Lake output (`[output] format = "delta"`): every published model is one Delta
//! table at `<output>/<model>/`, partitioned by `as_of` (then the model's `partition_by`).
//!
//! - A run replaces partition `as_of = D` of each table in one write commit (replace-where),
//!   written from the staged files, with `segflow.run_id` in the commit info and an
//!   application transaction (`txn`, app id `segflow`, a version one above the table's
//!   last). The run manifest stays the commit point across tables: it records each table's
//!   Delta version ([`TableEntry::delta_version`]) and is written after every table.
//! - Recovery ([`Output::recover_delta`]): a table whose log has a write commit after the
//!   newest version any manifest lists (a run killed between its table commits and its
//!   manifest) is restored to that version; a table no manifest lists is removed.
//! - Retention deletes a dropped snapshot's partition (a Delta delete), then vacuums files
//!   removed more than `[output] vacuum_after` ago, so readers of older versions keep
//!   working until then. Logs are checkpointed every 10 commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{lit, DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use deltalake::delta_datafusion::planner::DeltaPlanner;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::StructType;
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, FilterOp, FilterValue};
use futures::TryStreamExt;
use tracing::{info, warn};
use url::Url;

use super::stage::{conform, open_staged, StagedTable};
use super::{Manifest, Output, TableEntry};
use crate::config::SchemaChange;
use crate::error::Result;
use crate::failpoint;

/// The application id of segflow's transactions (`txn`) in every table's log.
pub const APP_ID: &str = "segflow";
/// The partition column every Delta table has first.
pub const AS_OF: &str = "as_of";
/// Commits between log checkpoints.
const CHECKPOINT_INTERVAL: &str = "10";

/// Each published table as staged, with the schema models saw, by name.
pub type StagedTables = BTreeMap<String, (StagedTable, SchemaRef)>;

/// What the commit needs to write the Delta tables: the run's session (which reads the
/// staged files) and each published table as staged, with the schema models saw.
pub struct DeltaInputs<'a> {
    pub ctx: &'a SessionContext,
    pub tables: &'a StagedTables,
}

/// A Delta table a run wrote and its version before (None: the run created it).
pub(crate) struct Written {
    name: String,
    before: Option<u64>,
}

/// `as_of` as an Arrow date (days since 1970-01-01).
fn date32(as_of: NaiveDate) -> ScalarValue {
    let days = as_of.signed_duration_since(chrono::DateTime::UNIX_EPOCH.date_naive());
    ScalarValue::Date32(Some(days.num_days() as i32))
}

/// The predicate of partition `as_of`.
fn date_literal(as_of: NaiveDate) -> String {
    format!("{AS_OF} = DATE '{as_of}'")
}

impl Output {
    /// The URL of `model`'s table directory.
    fn table_url(&self, model: &str) -> Result<Url> {
        let url = match &self.loc.local {
            Some(root) => Url::from_directory_path(root.join(model)).ok(),
            None => Url::parse(&self.loc.dir_url(model)).ok(),
        };
        url.ok_or_else(|| self.err(format!("open Delta table {model}"), "not a valid URL"))
    }

    /// `model`'s Delta table, through segflow's own store (not loaded).
    fn delta_table(&self, model: &str) -> Result<DeltaTable> {
        let url = self.table_url(model)?;
        DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.with_storage_backend(self.loc.store.clone(), url).build())
            .map_err(|e| self.err(format!("open Delta table {model}"), e))
    }

    /// `model`'s Delta table at its newest version, or None when there is none.
    pub(crate) async fn open_delta(&self, model: &str) -> Result<Option<DeltaTable>> {
        let log = format!("{model}/_delta_log");
        let listed = self
            .loc
            .list(&log)
            .await
            .map_err(|e| self.err(format!("list {log}"), e))?;
        if listed.is_empty() {
            return Ok(None);
        }
        let mut table = self.delta_table(model)?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(self.err(format!("read the Delta log of {model}"), e)),
        }
    }

    /// Writes partition `as_of` of every table in `inputs` (one commit each) and records
    /// each table's version, files and bytes in `manifest`; returns what it wrote, for
    /// [`Output::undo_delta`]. On failure the tables already written are restored to their
    /// previous versions.
    pub(crate) async fn commit_delta(
        &self,
        manifest: &mut Manifest,
        inputs: &DeltaInputs<'_>,
    ) -> Result<Vec<Written>> {
        // Every schema first: a model whose columns changed fails the run before any table
        // is written.
        let mut frames = Vec::new();
        for (name, (staged, schema)) in inputs.tables {
            let df = self
                .staged_with_as_of(inputs.ctx, staged, schema, manifest.as_of)
                .await
                .map_err(|e| self.err(format!("read staged {name}"), e.strip_backtrace()))?;
            // Each table's log is read once, here: its schema, version and txn come from it.
            let table = self.open_delta(name).await?;
            if let (SchemaChange::Fail, Some(t)) = (self.tables.schema_change, &table) {
                self.check_schema(name, t, df.schema().as_arrow())?;
            }
            frames.push((name, staged, df, table));
        }
        let mut written: Vec<Written> = Vec::new();
        let result = async {
            for (name, staged, df, table) in frames {
                let before = table.as_ref().and_then(|t| t.version());
                let (version, files, bytes) = self
                    .write_delta(inputs.ctx, name, manifest, staged, df, table)
                    .await?;
                written.push(Written {
                    name: name.clone(),
                    before,
                });
                if let Some(entry) = manifest.tables.get_mut(name) {
                    entry.delta_version = Some(version);
                    entry.files = files;
                    entry.bytes = bytes;
                }
                failpoint::hit("mid_commit").await;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.undo_delta(&written).await;
            return Err(e);
        }
        Ok(written)
    }

    /// Whether `schema` (the model's columns and `as_of`) has the columns and types of
    /// `table`'s schema; an error listing the differences otherwise.
    fn check_schema(
        &self,
        name: &str,
        table: &DeltaTable,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<()> {
        let op = format!("write Delta table {name}");
        let Ok(state) = table.snapshot() else {
            return Ok(());
        };
        let old = state.schema();
        let new = StructType::try_from_arrow(schema).map_err(|e| self.err(&op, e))?;
        let mut differences: Vec<String> = Vec::new();
        for f in new.fields() {
            match old.field(f.name()) {
                None => differences.push(format!("new column `{}` {}", f.name(), f.data_type())),
                Some(o) if o.data_type() != f.data_type() => differences.push(format!(
                    "`{}` was {}, is {}",
                    f.name(),
                    o.data_type(),
                    f.data_type()
                )),
                Some(_) => {}
            }
        }
        for o in old.fields().filter(|o| new.field(o.name()).is_none()) {
            differences.push(format!("column `{}` is gone", o.name()));
        }
        if differences.is_empty() {
            return Ok(());
        }
        Err(self.err(
            op,
            format!(
                "model `{name}`'s columns differ from its Delta table's: {}. Set [output] \
                 schema_change = \"overwrite\" to give the table the model's columns",
                differences.join("; ")
            ),
        ))
    }

    /// One table's write commit; returns its version and the files of the partition.
    async fn write_delta(
        &self,
        ctx: &SessionContext,
        name: &str,
        manifest: &Manifest,
        staged: &StagedTable,
        df: DataFrame,
        table: Option<DeltaTable>,
    ) -> Result<(u64, Vec<String>, u64)> {
        let as_of = manifest.as_of;
        let op = format!("write Delta table {name}");
        let table = match table {
            Some(t) => t,
            None => self.delta_table(name)?,
        };
        let txn = match table.snapshot() {
            Ok(s) => s
                .transaction_version(table.log_store().as_ref(), APP_ID)
                .await
                .map_err(|e| self.err(&op, e))?
                .unwrap_or(0),
            Err(_) => 0,
        };
        let mut partitions = vec![AS_OF.to_string()];
        partitions.extend(staged.partition_by.iter().cloned());
        let commit = CommitProperties::default()
            .with_application_transaction(Transaction::new(APP_ID, txn + 1))
            .with_metadata([(
                "segflow.run_id".to_string(),
                serde_json::json!(manifest.run_id),
            )]);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
            .build();
        // No statistics of customer ids in the log: its commits are kept after an erasure
        // deletes the rows (and their min / max would name customers); every other column
        // keeps them for data skipping. Set when a table is created.
        let stats_columns: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != "customer_id" && !partitions.contains(n))
            .collect();
        let stats_columns = stats_columns.join(",");
        let mut write = table
            .write(vec![])
            .with_input_plan(df.into_unoptimized_plan())
            .with_session_state(Arc::new(delta_session(ctx)))
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(date_literal(as_of))
            .with_partition_columns(partitions)
            .with_configuration([
                ("delta.checkpointInterval", Some(CHECKPOINT_INTERVAL)),
                (
                    "delta.dataSkippingStatsColumns",
                    Some(stats_columns.as_str()),
                ),
            ])
            .with_writer_properties(props)
            .with_commit_properties(commit);
        if self.tables.schema_change == SchemaChange::Overwrite {
            write = write.with_schema_mode(SchemaMode::Overwrite);
        }
        let table = write.await.map_err(|e| match e {
            DeltaTableError::Arrow { source } => self.err(
                &op,
                format!(
                    "the model's columns do not match the table's ({source}); set [output] \
                     schema_change = \"overwrite\" to give the table the model's new columns"
                ),
            ),
            e => self.err(&op, e),
        })?;
        let version = table
            .version()
            .ok_or_else(|| self.err(&op, "the write left no version"))?;
        let (files, bytes) = self.partition_files(&table, name, as_of).await?;
        info!(
            table = name,
            version,
            files = files.len(),
            "Delta table written"
        );
        Ok((version, files, bytes))
    }

    /// The staged table with its `as_of` column, in the model's columns and types.
    async fn staged_with_as_of(
        &self,
        ctx: &SessionContext,
        staged: &StagedTable,
        schema: &SchemaRef,
        as_of: NaiveDate,
    ) -> datafusion::error::Result<DataFrame> {
        let (provider, read) = open_staged(ctx, staged, &self.loc, schema).await?;
        let df = conform(ctx.read_table(provider)?, &read, &[])?;
        df.with_column(AS_OF, lit(date32(as_of)))
    }

    /// The data files (relative to the output root) and bytes of partition `as_of`.
    async fn partition_files(
        &self,
        table: &DeltaTable,
        name: &str,
        as_of: NaiveDate,
    ) -> Result<(Vec<String>, u64)> {
        let (files, bytes, _) = self.partition(table, name, as_of).await?;
        Ok((files, bytes))
    }

    /// The data files, bytes and rows (from the files' statistics, None when one has none)
    /// of partition `as_of`.
    async fn partition(
        &self,
        table: &DeltaTable,
        name: &str,
        as_of: NaiveDate,
    ) -> Result<(Vec<String>, u64, Option<u64>)> {
        let day = as_of.to_string();
        let filter = [(AS_OF, FilterOp::Eq, FilterValue::Scalar(day.as_str()))];
        let views: Vec<_> = table
            .get_active_add_actions_by_partitions(&filter)
            .try_collect()
            .await
            .map_err(|e| self.err(format!("list the files of Delta table {name}"), e))?;
        let bytes = views.iter().map(|v| v.size().max(0) as u64).sum();
        let rows = views
            .iter()
            .map(|v| v.num_records().map(|n| n as u64))
            .sum::<Option<u64>>();
        let mut files: Vec<String> = views
            .iter()
            .map(|v| format!("{name}/{}", v.object_store_path()))
            .collect();
        files.sort();
        Ok((files, bytes, rows))
    }

    /// Restores tables this run wrote to their previous versions (a table it created is
    /// removed); failures are logged, the next run's recovery finishes the job.
    pub(crate) async fn undo_delta(&self, written: &[Written]) {
        for w in written {
            let undone = match w.before {
                Some(v) => self.restore_delta(&w.name, v).await,
                None => self.delete_prefix(&w.name).await,
            };
            if let Err(e) = undone {
                warn!(table = %w.name, error = %e, "roll back: cannot undo a Delta write");
            }
        }
    }

    /// Restores `name` to `version` (one RESTORE commit).
    async fn restore_delta(&self, name: &str, version: u64) -> Result<()> {
        let Some(table) = self.open_delta(name).await? else {
            return Ok(());
        };
        table
            .restore()
            .with_version_to_restore(version)
            .await
            .map(|_| ())
            .map_err(|e| {
                self.err(
                    format!("restore Delta table {name} to version {version}"),
                    e,
                )
            })
    }

    /// The newest Delta version each table has in any kept manifest.
    async fn manifest_versions(&self) -> Result<BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for d in self.snapshots().await? {
            let Some(m) = self.manifest(d).await? else {
                continue;
            };
            for (name, t) in &m.tables {
                if let Some(v) = t.delta_version {
                    let e = out.entry(name.clone()).or_insert(v);
                    *e = (*e).max(v);
                }
            }
        }
        Ok(out)
    }

    /// Recovery of the Delta tables `tables` (the folders holding a `_delta_log`): a table
    /// whose log has a write after the newest version the manifests list is restored to
    /// that version; a table no manifest lists is removed.
    pub(crate) async fn recover_delta(&self, tables: &[String]) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        let committed = self.manifest_versions().await?;
        for name in tables {
            let Some(expected) = committed.get(name).copied() else {
                warn!(table = %name, "removing a Delta table no manifest lists (a killed run)");
                self.delete_prefix(name).await?;
                continue;
            };
            let Some(table) = self.open_delta(name).await? else {
                continue;
            };
            let latest = table.version().unwrap_or(0);
            if latest <= expected {
                continue;
            }
            let newer: Vec<_> = table
                .history(Some((latest - expected) as usize))
                .try_collect()
                .await
                .map_err(|e| self.err(format!("read the history of Delta table {name}"), e))?;
            let unpublished = newer
                .iter()
                .any(|c| c.operation.as_deref() == Some("WRITE"));
            if unpublished {
                warn!(table = %name, latest, restore_to = expected,
                    "restoring a Delta table a killed run wrote after its last manifest");
                self.restore_delta(name, expected).await?;
            }
        }
        Ok(())
    }

    /// Retention of a Delta table: deletes partition `as_of` (one DELETE commit when it has
    /// rows), then vacuums files removed longer than `vacuum_after` ago.
    pub(crate) async fn drop_delta_partition(&self, name: &str, as_of: NaiveDate) -> Result<()> {
        let Some(table) = self.open_delta(name).await? else {
            return Ok(());
        };
        let ctx = SessionContext::new();
        let (table, _) = table
            .delete()
            .with_predicate(date_literal(as_of))
            .with_session_state(Arc::new(delta_session(&ctx)))
            .await
            .map_err(|e| self.err(format!("delete {AS_OF}={as_of} of Delta table {name}"), e))?;
        let retention = chrono::Duration::from_std(self.tables.vacuum_after)
            .unwrap_or(chrono::Duration::days(7));
        table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("vacuum Delta table {name}"), e))
    }

    /// Erasure of Delta table `name`: one DELETE commit of the rows of erased customers
    /// (with `segflow.run_id` in its commit info), when it holds any; returns the rows
    /// deleted. A DELETE is not a write recovery restores: an erasure cut short before the
    /// manifests is kept, and `forget` again records it.
    pub(crate) async fn erase_delta(
        &self,
        name: &str,
        ids: &Arc<crate::privacy::ErasedIds>,
        run_id: &str,
    ) -> Result<u64> {
        use datafusion::prelude::col;
        let Some(table) = self.open_delta(name).await? else {
            return Ok(0);
        };
        let op = format!("erase customers from Delta table {name}");
        let ctx = SessionContext::new();
        let provider = table
            .table_provider()
            .with_session(Arc::new(ctx.state()))
            .await
            .map_err(|e| self.err(&op, e))?;
        let df = ctx.read_table(provider).map_err(|e| self.err(&op, e))?;
        if !df.schema().has_column_with_unqualified_name("customer_id") {
            return Ok(0);
        }
        // Whether it holds any (the ids themselves never reach the log: the predicate is
        // the salted-hash test, recorded as `segflow_erased(customer_id)`).
        let erased = ids.udf().call(vec![col("customer_id")]);
        let found = df
            .filter(erased.clone())
            .and_then(|d| d.limit(0, Some(1)))
            .map_err(|e| self.err(&op, e))?
            .count()
            .await
            .map_err(|e| self.err(&op, e))?;
        if found == 0 {
            return Ok(0);
        }
        let commit = CommitProperties::default()
            .with_metadata([("segflow.run_id".to_string(), serde_json::json!(run_id))]);
        let (_, metrics) = table
            .delete()
            .with_predicate(erased)
            .with_session_state(Arc::new(delta_session(&ctx)))
            .with_commit_properties(commit)
            .await
            .map_err(|e| self.err(&op, e))?;
        let deleted = metrics.num_deleted_rows.unwrap_or(0) as u64;
        info!(
            table = name,
            rows = deleted,
            "erased customers deleted from the Delta table"
        );
        Ok(deleted)
    }

    /// A snapshot's entry of Delta table `name` at the table's newest version: version,
    /// files, bytes and rows of partition `as_of` (after an erasure).
    pub(crate) async fn delta_entry_now(
        &self,
        name: &str,
        as_of: NaiveDate,
        entry: &mut TableEntry,
    ) -> Result<()> {
        let Some(table) = self.open_delta(name).await? else {
            return Ok(());
        };
        let (files, bytes, rows) = self.partition(&table, name, as_of).await?;
        entry.delta_version = table.version();
        entry.files = files;
        entry.bytes = bytes;
        entry.rows = match rows {
            Some(rows) => rows,
            // A file without statistics: count the partition.
            None => {
                let ctx = SessionContext::new();
                self.read_delta_snapshot(&ctx, name, as_of)
                    .await
                    .map_err(|e| self.err(format!("count {name} as_of={as_of}"), e))?
                    .count()
                    .await
                    .map_err(|e| self.err(format!("count {name} as_of={as_of}"), e))?
                    as u64
            }
        };
        Ok(())
    }

    /// After an erasure: every file the tables' newest versions no longer reference is
    /// deleted (a vacuum with zero retention), so the erased rows cannot be read through
    /// time travel either.
    pub(crate) async fn vacuum_erased(&self, name: &str) -> Result<()> {
        let Some(table) = self.open_delta(name).await? else {
            return Ok(());
        };
        table
            .vacuum()
            .with_retention_period(chrono::Duration::zero())
            .with_enforce_retention_duration(false)
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("vacuum Delta table {name} after the erasure"), e))
    }

    /// The rows of partition `as_of` of Delta table `name`, without the `as_of` column.
    pub(crate) async fn read_delta_snapshot(
        &self,
        ctx: &SessionContext,
        name: &str,
        as_of: NaiveDate,
    ) -> datafusion::error::Result<DataFrame> {
        self.read_delta_at(ctx, name, as_of, None).await
    }

    /// [`Output::read_delta_snapshot`] at `version` (None: the newest).
    pub(crate) async fn read_delta_at(
        &self,
        ctx: &SessionContext,
        name: &str,
        as_of: NaiveDate,
        version: Option<u64>,
    ) -> datafusion::error::Result<DataFrame> {
        let external = |e| datafusion::error::DataFusionError::External(Box::new(e));
        let mut table = self
            .open_delta(name)
            .await
            .map_err(external)?
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!("no Delta table at {name}/"))
            })?;
        if let Some(v) = version.filter(|v| Some(*v) != table.version()) {
            table
                .load_version(v as _)
                .await
                .map_err(|e| external(self.err(format!("read {name} at version {v}"), e)))?;
        }
        let provider = table
            .table_provider()
            .with_session(Arc::new(ctx.state()))
            .await?;
        let df = ctx.read_table(provider)?;
        let df = df.filter(datafusion::prelude::col(AS_OF).eq(lit(date32(as_of))))?;
        df.drop_columns(&[AS_OF])
    }
}

/// The run's session with delta-rs's query planner, which Delta writes and deletes need.
fn delta_session(ctx: &SessionContext) -> datafusion::execution::session_state::SessionState {
    SessionStateBuilder::new_from_existing(ctx.state())
        .with_query_planner(DeltaPlanner::new())
        .build()
}

/// Whether a manifest entry is a Delta table's snapshot.
pub fn is_delta(entry: &TableEntry) -> bool {
    entry.delta_version.is_some()
}
