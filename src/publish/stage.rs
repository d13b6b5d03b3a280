//! Staging: every model (and the canonical `orders`) is written once, streaming, as Parquet
//! under `_staging/<run_id>/`, and read back from there by the models downstream, the
//! checks and the commit. Nothing is held in memory outside DataFusion's memory pool.
//!
//! Published models go to `_staging/<run_id>/<model>/as_of=D/` in their published form
//! (zstd; strings as Utf8; partition columns as strings, hive-partitioned), internal ones
//! (`publish = false`, `orders`) to `_staging/<run_id>/_internal/<name>/`, never published.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, ScalarValue};
use datafusion::config::{ParquetColumnOptions, TableParquetOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{cast, lit, Expr};
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::{arrow_writer::ArrowWriterOptions, ArrowWriter, AsyncArrowWriter};

use super::{staging_rel, ColumnEntry, Output};
use crate::storage::{retrying, Location};

/// Where a run stages its tables.
#[derive(Clone, Debug)]
pub struct Staging {
    pub out: Output,
    pub run_id: String,
    pub as_of: NaiveDate,
}

/// A table written to staging.
#[derive(Debug, Clone)]
pub struct StagedTable {
    /// Directory relative to the output root.
    pub rel: String,
    pub rows: u64,
    /// Data files relative to `rel`, sorted.
    pub files: Vec<String>,
    /// Bytes of those files.
    pub bytes: u64,
    /// Published columns and types.
    pub columns: Vec<ColumnEntry>,
    pub partition_by: Vec<String>,
    /// How an internal table's files are bucketed by customer, if they are.
    pub buckets: Option<crate::ext::buckets::Buckets>,
}

/// Why staging a table failed: the engine, or a partition value that cannot be a path.
#[derive(Debug)]
pub enum StageError {
    Engine(DataFusionError),
    PartitionValue { column: String, value: String },
}

impl From<DataFusionError> for StageError {
    fn from(e: DataFusionError) -> Self {
        StageError::Engine(e)
    }
}

impl From<object_store::Error> for StageError {
    fn from(e: object_store::Error) -> Self {
        StageError::Engine(DataFusionError::ObjectStore(Box::new(e)))
    }
}

impl Staging {
    /// The staging directory of a table, relative to the output root.
    pub fn table_rel(&self, name: &str, publish: bool) -> String {
        let root = staging_rel(&self.run_id);
        if publish {
            format!("{root}/{name}/as_of={}", self.as_of)
        } else {
            format!("{root}/_internal/{name}")
        }
    }

    /// Writes `df` once, streaming, to the table's staging directory and returns what
    /// was written. Published tables get their published types and a `_SUCCESS`.
    pub async fn write_table(
        &self,
        df: DataFrame,
        name: &str,
        publish: bool,
        partition_by: &[String],
    ) -> Result<StagedTable, StageError> {
        self.write_table_tapped(df, name, publish, partition_by, None, None)
            .await
    }

    /// Reads an internal table this run staged back and stages `transform` of it as
    /// internal table `name` (e.g. the orders with one copy of each repeated line).
    pub async fn restage(
        &self,
        ctx: &SessionContext,
        staged: &StagedTable,
        name: &str,
        transform: impl FnOnce(DataFrame) -> DfResult<DataFrame>,
    ) -> Result<StagedTable, StageError> {
        let table = open_dir(ctx, &self.out.loc, &staged.rel, &[]).await?;
        self.write_table(transform(table)?, name, false, &[]).await
    }

    /// [`Staging::write_table`], with `tap` seeing every batch of an internal table before
    /// it is written.
    pub async fn write_table_tapped(
        &self,
        df: DataFrame,
        name: &str,
        publish: bool,
        partition_by: &[String],
        tap: Option<Arc<dyn BatchTap>>,
        buckets: Option<usize>,
    ) -> Result<StagedTable, StageError> {
        let rel = self.table_rel(name, publish);
        self.write_at(rel, df, publish, partition_by, tap, buckets)
            .await
    }

    /// The staging directory of an incremental model's state (published with the
    /// snapshot as `_state/as_of=D/<name>`), relative to the output root.
    pub fn state_rel(&self, name: &str) -> String {
        format!(
            "{}/{}/as_of={}/{name}",
            staging_rel(&self.run_id),
            crate::publish::layout::STATE,
            self.as_of
        )
    }

    /// Writes an incremental model's rows, as an internal table, into its state directory.
    pub async fn write_state(&self, df: DataFrame, name: &str) -> Result<StagedTable, StageError> {
        self.write_at(self.state_rel(name), df, false, &[], None, None)
            .await
    }

    async fn write_at(
        &self,
        rel: String,
        df: DataFrame,
        publish: bool,
        partition_by: &[String],
        tap: Option<Arc<dyn BatchTap>>,
        buckets: Option<usize>,
    ) -> Result<StagedTable, StageError> {
        let loc = &self.out.loc;
        let df = published_form(df, partition_by, publish)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let options = parquet_options(&schema, publish, loc.local.is_some());
        // Internal tables without hive partitions go through [`write_internal`]; for one with
        // partitions, DataFusion's writer encodes each file by one task (its files are already
        // written side by side; encoding one file's columns in parallel too only added copies).
        let (rows, schema, buckets) = if publish || !partition_by.is_empty() {
            let written =
                write_published(df, &loc.dir_url(&rel), partition_by, options, &rel).await?;
            (written_rows(written), schema, None)
        } else {
            write_internal(df, loc, &rel, &options, tap, buckets).await?
        };
        if rows == 0 {
            write_empty_table(loc, &rel, &schema, partition_by).await?;
        }
        let (files, bytes) = staged_files(loc, &rel).await?;
        if publish {
            let marker = loc.path(&format!("{rel}/_SUCCESS"));
            retrying("put", || loc.store.put(&marker, PutPayload::new())).await?;
        }
        Ok(StagedTable {
            rel,
            rows,
            files,
            bytes,
            columns: column_entries(&schema),
            partition_by: partition_by.to_vec(),
            buckets,
        })
    }
}

/// `df` written as Parquet under `url` by DataFusion's writer (what `DataFrame::write_parquet`
/// plans), its executed plan with metrics logged at debug level (target `segflow::plan`).
async fn write_published(
    df: DataFrame,
    url: &str,
    partition_by: &[String],
    options: TableParquetOptions,
    rel: &str,
) -> DfResult<Vec<RecordBatch>> {
    use datafusion::datasource::file_format::format_as_file_type;
    use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
    use datafusion::logical_expr::LogicalPlanBuilder;
    let (state, plan) = df.into_parts();
    let file_type = format_as_file_type(Arc::new(ParquetFormatFactory::new_with_options(options)));
    let plan = LogicalPlanBuilder::copy_to(
        plan,
        url.into(),
        file_type,
        Default::default(),
        partition_by.to_vec(),
    )?
    .build()?;
    let df = DataFrame::new(state, plan);
    let task_ctx = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let written = datafusion::physical_plan::collect(plan.clone(), task_ctx).await?;
    log_plan(rel, &plan);
    Ok(written)
}

/// Logs an executed `plan` with its metrics (target `segflow::plan`, debug): where a model's
/// time went.
fn log_plan(rel: &str, plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
    if tracing::enabled!(target: "segflow::plan", tracing::Level::DEBUG) {
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true);
        tracing::debug!(target: "segflow::plan", table = rel, "executed plan:\n{shown}");
    }
}

/// The Parquet writer options of a staged table with `schema`: a published one's, or an
/// internal one's (`local`: on local disk).
///
/// Published tables: zstd and dictionaries (but for floats) for readers; internal ones
/// (read back once or twice, by segflow) are written fast: not compressed on local
/// disk (lz4 took ~10 % of a run), lz4 on object storage (fewer bytes to upload),
/// dictionaries only for label strings — not for keys (`*_id`: interning every string
/// of a high-cardinality key column cost ~10 % of a run), while a label (channel, country,
/// category, ...) shrinks to a few bits a row: at 10 M lines the staged orders take
/// 533 MB instead of 870, purchase_orders 143 instead of 350 — page-cache pages the run
/// no longer fills and reads back (fresh pages cost this machine's kernel ~13 µs each
/// once the recently freed ones are used up; the run got ~1 s faster); no
/// min/max statistics (comparing every string of the key columns; nothing prunes by
/// them: the row counts the planner uses are in the footer anyway); keys without
/// dictionaries and no statistics took the 10 M-line run's CPU time down by ~5 %.
fn parquet_options(schema: &Schema, publish: bool, local: bool) -> TableParquetOptions {
    let mut options = TableParquetOptions::default();
    if publish {
        // zstd level 1, and no dictionary for floating-point columns (amounts, rates,
        // predictions rarely repeat: their dictionary was filled, then abandoned for plain
        // encoding). Against level 3 with dictionaries everywhere, on 10 M lines: the
        // samples in zstd and the dictionary interner 673 -> 423 and every published
        // table 2-11 % smaller.
        // Nor for key columns (`*_id`): a key's values are distinct, so its dictionary was
        // filled and abandoned the same way (interning 6.3 M customer ids per table); nor
        // for timestamps (first and last order times: nearly one per customer).
        options.global.compression = Some("zstd(1)".into());
        set_dictionaries(
            &mut options,
            schema,
            |f| {
                f.data_type().is_floating()
                    || is_key(f)
                    || matches!(f.data_type(), DataType::Timestamp(..))
            },
            false,
        );
    } else {
        options.global.compression = Some(if local { "uncompressed" } else { "lz4_raw" }.into());
        options.global.max_row_group_size = INTERNAL_ROW_GROUP_ROWS;
        options.global.dictionary_enabled = Some(false);
        set_dictionaries(&mut options, schema, is_label, true);
        options.global.statistics_enabled = Some("none".into());
        options.global.allow_single_file_parallelism = false;
    }
    options
}

/// Turns dictionaries on (`enabled`) or off for the columns of `schema` that `pick` picks.
fn set_dictionaries(
    options: &mut TableParquetOptions,
    schema: &Schema,
    pick: impl Fn(&Field) -> bool,
    enabled: bool,
) {
    for field in schema.fields() {
        if pick(field) {
            options.column_specific_options.insert(
                field.name().clone(),
                ParquetColumnOptions {
                    dictionary_enabled: Some(enabled),
                    ..Default::default()
                },
            );
        }
    }
}

/// Writes the file of a table without rows: DataFusion writes no file for an empty
/// result; readers need one carrying the schema. A partitioned table puts it under `col=/`
/// without the partition columns, as the partitioned writer would.
async fn write_empty_table(
    loc: &Location,
    rel: &str,
    schema: &Schema,
    partition_by: &[String],
) -> Result<(), StageError> {
    let mut file = rel.to_string();
    for p in partition_by {
        file.push_str(&format!("/{p}="));
    }
    file.push_str("/part-0.parquet");
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| !partition_by.contains(f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let bytes = empty_parquet(Arc::new(Schema::new(fields)))?;
    let path = loc.path(&file);
    let payload = PutPayload::from(bytes);
    retrying("put", || loc.store.put(&path, payload.clone())).await?;
    Ok(())
}

/// The data files written under `rel` (relative to it, sorted) and their bytes; an error
/// when there are none, or when a partition value cannot be a path.
async fn staged_files(loc: &Location, rel: &str) -> Result<(Vec<String>, u64), StageError> {
    let mut files = Vec::new();
    let mut bytes = 0;
    for meta in loc.list(rel).await? {
        let Some(full) = loc.rel(&meta.location) else {
            continue;
        };
        let Some(file) = full.strip_prefix(&format!("{rel}/")) else {
            continue;
        };
        if !file.ends_with(".parquet") {
            continue;
        }
        check_partition_path(file)?;
        files.push(file.to_string());
        bytes += meta.size;
    }
    files.sort();
    if files.is_empty() {
        return Err(StageError::Engine(DataFusionError::Execution(format!(
            "no file was written under {}",
            loc.display(rel)
        ))));
    }
    Ok((files, bytes))
}

/// The published columns and types of `schema`.
fn column_entries(schema: &Schema) -> Vec<ColumnEntry> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnEntry {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect()
}

/// The row count DataFusion's writers return.
fn written_rows(written: Vec<datafusion::arrow::array::RecordBatch>) -> u64 {
    written
        .first()
        .filter(|b| b.num_columns() > 0 && b.num_rows() > 0)
        .and_then(|b| {
            let c = b.column(0);
            c.as_any()
                .downcast_ref::<UInt64Array>()
                .map(|a| a.value(0))
                .or_else(|| {
                    c.as_any()
                        .downcast_ref::<Int64Array>()
                        .map(|a| a.value(0) as u64)
                })
        })
        .unwrap_or(0)
}

/// Rows per row group of an internal table. A writer holds its row group encoded in memory
/// until it is complete: Parquet's default of 1 Mi rows kept ~55 MB per writer for the staged
/// orders. At 128 Ki rows, 10 M-line runs peaked 0.1-0.3 GB lower with ~50 k fewer page
/// faults and were faster in 5 of 6 interleaved pairs (median -0.8 s); lz4 instead of no
/// compression on local disk saved page cache but cost 2-3.5 s of CPU.
const INTERNAL_ROW_GROUP_ROWS: usize = 128 * 1024;

/// A string column that is not a key (`id` or `*_id`): a label of few distinct values, as
/// far as the name tells (the Parquet writer falls back to plain pages when it is not). A
/// name with a dot is left out: per-column options are keyed by dotted column paths.
fn is_label(field: &Field) -> bool {
    is_string(field) && !is_key(field) && !field.name().contains('.')
}

/// A key column: a string named `id` or `*_id`.
fn is_key(field: &Field) -> bool {
    let name = field.name().to_ascii_lowercase();
    is_string(field) && (name == "id" || name.ends_with("_id"))
}

fn is_string(field: &Field) -> bool {
    matches!(
        field.data_type(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
}

/// Sees every batch of an internal table before it is written and may take columns out
/// of it (the duplicate gate collects the line fingerprints as the orders are staged).
pub trait BatchTap: Send + Sync {
    /// The schema written for a plan whose output is `schema`.
    fn written_schema(&self, schema: &SchemaRef) -> DfResult<SchemaRef>;
    /// Records `batch` and returns what is written of it.
    fn tap(&self, batch: RecordBatch) -> DfResult<RecordBatch>;
}

/// Writes an internal table: one Parquet file `part-<i>.parquet` per partition of the plan
/// (none for a partition without rows), each encoded by its own task, straight into its
/// file on local disk, through a multipart upload on object storage. DataFusion's writer
/// encodes each row group into a buffer that starts empty and grows by copying, then copies
/// it again into the upload buffer, and cannot show a batch to a [`BatchTap`]. The
/// buffered row groups are reserved in the memory pool, as DataFusion's are. Returns the
/// rows and the schema written.
async fn write_internal(
    df: DataFrame,
    loc: &Location,
    rel: &str,
    options: &TableParquetOptions,
    tap: Option<Arc<dyn BatchTap>>,
    buckets: Option<usize>,
) -> DfResult<(u64, SchemaRef, Option<crate::ext::buckets::Buckets>)> {
    use datafusion::execution::memory_pool::MemoryConsumer;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::{
        execute_stream_partitioned, ExecutionPlanProperties, Partitioning,
    };

    let task_ctx = Arc::new(df.task_ctx());
    let target = task_ctx.session_config().target_partitions();
    let mut plan = df.create_physical_plan().await?;
    // Rows with a customer key go to one file per bucket (see `crate::ext::buckets`): one
    // per partition of the plan, or `buckets`.
    let count = buckets.unwrap_or(target);
    let buckets;
    (plan, buckets) = crate::ext::buckets::by_bucket(plan, count)?;
    // A plan of fewer partitions than cores would encode on fewer cores than DataFusion's
    // writer (which spreads one stream over several files).
    if buckets.is_none() && plan.output_partitioning().partition_count() < target {
        plan = Arc::new(RepartitionExec::try_new(
            plan,
            Partitioning::RoundRobinBatch(target),
        )?);
    }
    let schema = match &tap {
        Some(t) => t.written_schema(&plan.schema())?,
        None => plan.schema(),
    };
    let writer_options = arrow_writer_options(options, &schema)?;
    if let Some(root) = &loc.local {
        std::fs::create_dir_all(root.join(rel))?;
    }
    let mut tasks: tokio::task::JoinSet<DfResult<u64>> = tokio::task::JoinSet::new();
    for (i, stream) in execute_stream_partitioned(plan.clone(), task_ctx.clone())?
        .into_iter()
        .enumerate()
    {
        let file = format!("{rel}/part-{i}.parquet");
        let file = PartFile {
            local: loc.local.as_ref().map(|root| root.join(&file)),
            store: loc.store.clone(),
            path: loc.path(&file),
        };
        let (schema, writer_options, tap) = (schema.clone(), writer_options.clone(), tap.clone());
        let reservation = MemoryConsumer::new(format!("internal table writer[{i}]"))
            .register(task_ctx.memory_pool());
        tasks.spawn(write_part(
            stream,
            file,
            schema,
            writer_options,
            tap,
            reservation,
        ));
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done.map_err(|e| DataFusionError::External(Box::new(e)))??;
    }
    log_plan(rel, &plan);
    Ok((rows, schema, buckets))
}

/// The Arrow writer's options for `schema` from `options`, the Arrow schema going into the
/// footer's metadata, as DataFusion's writer puts it.
fn arrow_writer_options(
    options: &TableParquetOptions,
    schema: &SchemaRef,
) -> DfResult<ArrowWriterOptions> {
    use datafusion::common::file_options::parquet_writer::ParquetWriterOptions;
    let mut options = options.clone();
    options.arrow_schema(schema);
    let props = ParquetWriterOptions::try_from(&options)?
        .writer_options()
        .clone();
    Ok(ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true))
}

/// The file of one partition of an internal table: a path on local disk, or else a path in
/// the store.
struct PartFile {
    local: Option<std::path::PathBuf>,
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
}

/// The writer of a [`PartFile`].
enum PartWriter {
    Local(Box<ArrowWriter<std::fs::File>>),
    Store(Box<AsyncArrowWriter<object_store::buffered::BufWriter>>),
}

impl PartWriter {
    fn create(file: &PartFile, schema: &SchemaRef, options: &ArrowWriterOptions) -> DfResult<Self> {
        Ok(match &file.local {
            Some(p) => PartWriter::Local(Box::new(ArrowWriter::try_new_with_options(
                std::fs::File::create(p)?,
                schema.clone(),
                options.clone(),
            )?)),
            None => PartWriter::Store(Box::new(AsyncArrowWriter::try_new_with_options(
                object_store::buffered::BufWriter::new(file.store.clone(), file.path.clone()),
                schema.clone(),
                options.clone(),
            )?)),
        })
    }

    /// Writes `batch`; returns the bytes the writer now buffers.
    async fn write(&mut self, batch: &RecordBatch) -> DfResult<usize> {
        Ok(match self {
            PartWriter::Local(w) => {
                w.write(batch)?;
                w.memory_size()
            }
            PartWriter::Store(w) => {
                w.write(batch).await?;
                w.memory_size()
            }
        })
    }

    /// Writes the footer and flushes what is buffered.
    async fn close(self) -> DfResult<()> {
        match self {
            PartWriter::Local(w) => drop(w.into_inner()?),
            PartWriter::Store(w) => drop(w.close().await?),
        }
        Ok(())
    }
}

/// Writes one partition's `stream` to `file` (created at its first row; none without rows),
/// each batch seen by `tap` first, the buffered bytes held in `reservation`; returns the
/// rows written.
async fn write_part(
    mut stream: SendableRecordBatchStream,
    file: PartFile,
    schema: SchemaRef,
    options: ArrowWriterOptions,
    tap: Option<Arc<dyn BatchTap>>,
    reservation: MemoryReservation,
) -> DfResult<u64> {
    use futures::StreamExt;
    let mut writer: Option<PartWriter> = None;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let mut batch = batch?;
        if let Some(t) = &tap {
            batch = t.tap(batch)?;
        }
        if batch.num_rows() == 0 {
            continue;
        }
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(PartWriter::create(&file, &schema, &options)?),
        };
        let size = w.write(&batch).await?;
        rows += batch.num_rows() as u64;
        reservation.try_resize(size)?;
    }
    if let Some(w) = writer {
        w.close().await?;
    }
    Ok(rows)
}

/// Casts to the published types: partition columns to strings (a NULL int/date/bool would
/// otherwise become 0 / 1970-01-01 / false in the path) and, for published tables, string
/// views to Utf8 so column types stay stable for readers.
fn published_form(df: DataFrame, partition_by: &[String], publish: bool) -> DfResult<DataFrame> {
    let mut changed = false;
    let exprs: Vec<Expr> = df
        .schema()
        .iter()
        .map(|(q, f)| {
            let c = Expr::Column(Column::from((q, f)));
            let to_string = partition_by.contains(f.name())
                || (publish && matches!(f.data_type(), DataType::Utf8View | DataType::LargeUtf8));
            if !to_string {
                return c;
            }
            let target = DataType::Utf8;
            if f.data_type() == &target {
                return c;
            }
            changed = true;
            cast(c, target).alias(f.name())
        })
        .collect();
    if changed {
        df.select(exprs)
    } else {
        Ok(df)
    }
}

/// A partition directory `col=value` whose value holds `=` breaks hive readers.
fn check_partition_path(file: &str) -> Result<(), StageError> {
    let parts: Vec<&str> = file.split('/').collect();
    for dir in &parts[..parts.len().saturating_sub(1)] {
        if let Some((column, value)) = dir.split_once('=') {
            if value.contains('=') {
                return Err(StageError::PartitionValue {
                    column: column.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A zero-row Parquet file carrying `schema`.
fn empty_parquet(schema: SchemaRef) -> DfResult<Vec<u8>> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let mut buf = Vec::new();
    let writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    writer.close()?;
    Ok(buf)
}

/// Opens a hive-partitioned Parquet directory (partition columns as strings).
pub async fn open_dir(
    ctx: &SessionContext,
    loc: &Location,
    rel: &str,
    partition_by: &[String],
) -> DfResult<DataFrame> {
    ctx.read_table(listing(ctx, loc, rel, partition_by).await?)
}

/// The listing of a hive-partitioned Parquet directory (partition columns as strings).
async fn listing(
    ctx: &SessionContext,
    loc: &Location,
    rel: &str,
    partition_by: &[String],
) -> DfResult<Arc<dyn TableProvider>> {
    let url = ListingTableUrl::parse(loc.dir_url(rel))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partition_by
                .iter()
                .map(|p| (p.clone(), DataType::Utf8))
                .collect(),
        );
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// Projects `df` onto `target`: columns by name in the target's order and types. Partition
/// columns read back as strings get NULL for the empty value (how a NULL is written) and
/// their target type; a column `df` lacks becomes a typed NULL.
pub fn conform(df: DataFrame, target: &Schema, partition_by: &[String]) -> DfResult<DataFrame> {
    let exprs: Vec<Expr> = target
        .fields()
        .iter()
        .map(|f| {
            let Some((q, have)) = df.schema().iter().find(|(_, h)| h.name() == f.name()) else {
                return ScalarValue::try_from(f.data_type()).map(|v| lit(v).alias(f.name()));
            };
            let mut e = Expr::Column(Column::from((q, have)));
            if partition_by.contains(f.name()) {
                e = datafusion::functions::core::expr_fn::nullif(e, lit(""));
            }
            if have.data_type() != f.data_type() || partition_by.contains(f.name()) {
                e = cast(e, f.data_type().clone());
            }
            Ok(e.alias(f.name()))
        })
        .collect::<DfResult<_>>()?;
    df.select(exprs)
}

/// The staged table as models downstream see it: the model's columns in its order, with
/// partition columns back in their planned types.
pub async fn open_staged(
    ctx: &SessionContext,
    staged: &StagedTable,
    loc: &Location,
    planned: &Schema,
) -> DfResult<(Arc<dyn TableProvider>, SchemaRef)> {
    let mut table = listing(ctx, loc, &staged.rel, &staged.partition_by).await?;
    if let Some(buckets) = &staged.buckets {
        table = Arc::new(crate::ext::buckets::BucketedTable {
            inner: table,
            buckets: buckets.clone(),
        });
    }
    let df = ctx.read_table(table)?;
    let target = Schema::new(
        planned
            .fields()
            .iter()
            .map(|f| {
                if staged.partition_by.contains(f.name()) {
                    return Ok(f.as_ref().clone().with_nullable(true));
                }
                let read = df.schema().field_with_unqualified_name(f.name())?;
                Ok(Field::new(f.name(), read.data_type().clone(), true))
            })
            .collect::<DfResult<Vec<_>>>()?,
    );
    let df = conform(df, &target, &staged.partition_by)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    Ok((df.into_view(), schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_strings_get_dictionaries_and_keys_do_not() {
        let field = |name: &str, t: DataType| Field::new(name, t, true);
        assert!(is_label(&field("channel", DataType::Utf8View)));
        assert!(is_label(&field("top_category", DataType::Utf8)));
        assert!(!is_label(&field("customer_id", DataType::Utf8View)));
        assert!(!is_label(&field("Order_ID", DataType::Utf8)));
        assert!(!is_label(&field("id", DataType::Utf8)));
        assert!(!is_label(&field("lower(c.name)", DataType::Utf8)));
        assert!(!is_label(&field("orders", DataType::Int64)));
    }

    #[test]
    fn an_equals_sign_in_a_partition_value_is_caught() {
        assert!(check_partition_path("segment=Loyal/x.parquet").is_ok());
        assert!(check_partition_path("a=1/b=%2F/x.parquet").is_ok());
        match check_partition_path("segment=a=b/x.parquet") {
            Err(StageError::PartitionValue { column, value }) => {
                assert_eq!((column.as_str(), value.as_str()), ("segment", "a=b"));
            }
            other => panic!("{other:?}"),
        }
    }
}
