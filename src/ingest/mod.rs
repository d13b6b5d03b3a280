//! Sources: the canonical input views models read (`orders`, `customers`, `marketing_spend`).
//!
//! Each input is a Parquet file, directory (hive partitions inferred) or glob. The config maps
//! canonical column names onto source columns; every mapped column is cast to its canonical
//! type, optional columns the source lacks become typed NULLs, cancelled order lines are
//! dropped and rows after `as_of` are invisible. No `order_id` means one order per source row.

pub mod fingerprints;
pub mod gates;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{cast, col, lit, Expr, ExprFunctionExt, ScalarUDF, SortExpr};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;

use crate::config::canonical::{canonical_columns, ts_type};
use crate::config::{InputSpec, Policy, Settings};
use crate::error::{Error, Result};
use crate::ingest::fingerprints::{Fingerprints, Repeated, COLUMNS as FINGERPRINT};
use crate::ingest::gates::{
    Catch, GateCounts, GateReason, GateRules, GateTally, LineHash, DUPLICATE_LINES, GATES,
};
use crate::publish::layout::REJECTED;
use crate::publish::manifest::{GateStat, InputStats};
use crate::publish::stage::{open_dir, open_staged, StageError, StagedTable, Staging};
use crate::redact::redact;
use object_store::ObjectStoreExt;
use tracing::{debug, info, warn};

/// The result of registering inputs.
#[derive(Debug, Clone)]
pub struct Sources {
    pub as_of: NaiveDate,
    pub orders: InputStats,
    /// The rows gates dropped, staged as `_rejected` (None when no row was dropped).
    pub rejected: Option<StagedTable>,
    /// Bytes of the staged orders the models read.
    pub staged_bytes: u64,
}

/// The orders input opened: the rows the models see (not yet staged), the mapped source
/// (for the rejected rows), the tally of the gates.
pub struct OrdersSource<'s> {
    visible: DataFrame,
    mapped: DataFrame,
    present: BTreeSet<&'static str>,
    tally: Arc<GateTally>,
    files: InputFiles,
    spec: &'s InputSpec,
}

/// The schema of the `orders` view (canonical columns plus `order_date`).
pub fn orders_schema() -> SchemaRef {
    let mut fields: Vec<Field> = canonical_columns("orders")
        .into_iter()
        .map(|(n, t, _)| Field::new(n, t, true))
        .collect();
    fields.insert(3, Field::new("order_date", DataType::Date32, true));
    Arc::new(Schema::new(fields))
}

impl OrdersSource<'_> {
    /// The schema of the rows the models see.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.visible.schema().as_arrow().clone())
    }
}

/// Registers `customers` and `marketing_spend` and opens the `orders` source: the rows the
/// models see (not yet staged), the tally of the gates, the number of files.
pub async fn open_sources<'s>(
    ctx: &SessionContext,
    settings: &'s Settings,
) -> Result<OrdersSource<'s>> {
    for name in ["customers", "marketing_spend"] {
        let table = match settings.inputs.get(name) {
            Some(spec) => {
                let (raw, _) = read_parquet_input(ctx, spec).await?;
                map_columns(raw, spec, settings)?.0.into_view()
            }
            None => {
                let schema = Arc::new(Schema::new(
                    canonical_columns(name)
                        .into_iter()
                        .map(|(n, t, _)| Field::new(n, t, true))
                        .collect::<Vec<_>>(),
                ));
                Arc::new(
                    MemTable::try_new(schema, vec![vec![]])
                        .map_err(|e| Error::engine(format!("empty {name} table"), e))?,
                )
            }
        };
        ctx.register_table(name, table)
            .map_err(|e| Error::engine(format!("register {name}"), e))?;
    }
    let orders_spec = settings
        .inputs
        .get("orders")
        .ok_or_else(|| Error::ConfigValue {
            key: "input.orders".into(),
            message: "the orders input is required".into(),
        })?;
    let (raw, files) = read_parquet_input(ctx, orders_spec).await?;
    let (mapped, present) = map_columns(raw, orders_spec, settings)?;
    let (visible, tally) = visible_orders(mapped.clone(), &present, orders_spec, settings)?;
    Ok(OrdersSource {
        visible,
        mapped,
        present,
        tally,
        files,
        spec: orders_spec,
    })
}

/// The as_of that models are planned with before the staging pass decides the default:
/// which columns they read does not depend on it.
pub fn planning_as_of(settings: &Settings) -> NaiveDate {
    settings.as_of.unwrap_or_else(|| Utc::now().date_naive())
}

/// Registers `customers` and `marketing_spend` and returns the schema `orders` has in a
/// run, reading only the inputs' Parquet footers (for `segflow check`).
pub async fn input_schemas(ctx: &SessionContext, settings: &Settings) -> Result<SchemaRef> {
    let source = open_sources(ctx, settings).await?;
    Ok(Arc::new(source.visible.schema().as_arrow().clone()))
}

/// Stages the opened `orders` source and decides `as_of`. The canonical `orders` (casts,
/// status filter, as_of cut-off, synthetic order ids) is computed once and staged as
/// Parquet; every model reads the staged table. Only `used` columns (those some model reads)
/// are staged: a quarter fewer bytes for the built-in library; at least one, so the table
/// has a schema. `staging` is called with the planning as_of (the default as_of is known
/// only after the pass; it is set on the staging afterwards).
pub async fn stage_orders(
    ctx: &SessionContext,
    settings: &Settings,
    source: OrdersSource<'_>,
    used: &BTreeSet<String>,
    staging: impl FnOnce(NaiveDate) -> Staging,
) -> Result<(Sources, Staging)> {
    let schema = source.schema();
    let (orders, orders_spec) = (source.visible, source.spec);
    let mut staging = staging(planning_as_of(settings));
    let keep: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| used.contains(*n))
        .collect();
    debug!(columns = ?keep, "orders columns the models read");
    let keep: Vec<&str> = match keep.len() {
        0 => vec!["customer_id"],
        _ => keep,
    };
    let planned = orders
        .clone()
        .select_columns(&keep)
        .map_err(|e| input_err(orders_spec, e.to_string()))?
        .schema()
        .as_arrow()
        .clone();
    // With order ids mapped, each line's fingerprint is staged too, for the duplicate gate.
    let fingerprint = source.present.contains("order_id");
    let mut columns: Vec<Expr> = keep.iter().map(|c| col(*c)).collect();
    if fingerprint {
        columns.extend(line_fingerprint(&source.present));
    }
    let orders = orders
        .select(columns)
        .map_err(|e| input_err(orders_spec, e.to_string()))?;
    // The duplicate gate's fingerprints are collected as the lines are staged; they stay
    // in the staged table only for the drop policy, which joins on them.
    let policies = source.tally.rules.policies;
    let drop_repeated = gates::policy(&policies, DUPLICATE_LINES) == Policy::Drop;
    let fingerprints = fingerprint.then(|| {
        let runtime = ctx.runtime_env();
        Arc::new(Fingerprints::new(
            &runtime.memory_pool,
            runtime.disk_manager.clone(),
            drop_repeated,
        ))
    });
    let tap = fingerprints
        .clone()
        .map(|f| f as Arc<dyn crate::publish::stage::BatchTap>);
    let staged = match staging
        .write_table_tapped(orders, "orders", false, &[], tap)
        .await
    {
        Ok(s) => s,
        Err(StageError::Engine(e)) => {
            return Err(source
                .files
                .read_error(orders_spec, "cannot read", &e)
                .await)
        }
        Err(StageError::PartitionValue { .. }) => {
            return Err(input_err(orders_spec, "unexpected partition"))
        }
    };
    let counts = source.tally.counts();
    let engine = |e: datafusion::error::DataFusionError| {
        input_err(orders_spec, redact(&e.strip_backtrace()))
    };
    debug!(rows = staged.rows, "orders staged");
    let duplicates = match fingerprints {
        Some(f) => {
            let d = Duplicates::new(f.repeated().map_err(engine)?).map_err(engine)?;
            debug!(extra = d.extra, "duplicate lines counted");
            Some(d)
        }
        None => None,
    };
    let (mut stats, as_of) = settle_gates(
        &counts,
        duplicates.as_ref(),
        orders_spec,
        settings,
        &policies,
        source.files.len(),
    )?;
    staging.as_of = as_of;
    let drop_duplicates = duplicates.as_ref().filter(|d| d.extra > 0 && drop_repeated);
    let mut staged = staged;
    if let Some(d) = drop_duplicates {
        // Models see one copy of each duplicated line.
        let deduped = d
            .deduplicated(ctx, &staged, &staging.out.loc, &planned)
            .await
            .map_err(engine)?;
        staged = staging
            .write_table(deduped, "orders_deduplicated", false, &[])
            .await
            .map_err(|e| match e {
                StageError::Engine(e) => engine(e),
                StageError::PartitionValue { .. } => input_err(orders_spec, "unexpected partition"),
            })?;
        stats.rows_visible -= d.extra;
        stats.rows_rejected += d.extra;
    }
    let rejected = match (counts.rejected, drop_duplicates) {
        (0, None) => None,
        _ => {
            let mut rows = match counts.rejected {
                0 => None,
                _ => Some(
                    rejected_rows(source.mapped.clone(), &source.present, &source.tally.rules)
                        .map_err(engine)?,
                ),
            };
            if let Some(d) = drop_duplicates {
                let copies = d
                    .extra_copies(ctx, source.mapped, &source.present, &source.tally.rules)
                    .await
                    .map_err(engine)?;
                rows = Some(match rows {
                    Some(r) => r.union(copies).map_err(engine)?,
                    None => copies,
                });
            }
            let rows = rows.ok_or_else(|| input_err(orders_spec, "no rejected rows"))?;
            let staged = staging
                .write_table(rows, REJECTED, true, &[])
                .await
                .map_err(|e| match e {
                    StageError::Engine(e) => input_err(
                        orders_spec,
                        redact(&format!(
                            "cannot write the rejected rows: {}",
                            e.strip_backtrace()
                        )),
                    ),
                    StageError::PartitionValue { .. } => {
                        input_err(orders_spec, "unexpected partition")
                    }
                })?;
            info!(
                rows = staged.rows,
                "rows left out by the gates staged under {REJECTED}"
            );
            Some(staged)
        }
    };
    let (table, _) = open_staged(ctx, &staged, &staging.out.loc, &planned)
        .await
        .map_err(|e| input_err(orders_spec, redact(&e.strip_backtrace())))?;
    ctx.register_table("orders", table)
        .map_err(|e| Error::engine("register orders", e))?;
    info!(rows = staged.rows, "canonical orders staged");

    Ok((
        Sources {
            as_of,
            orders: stats,
            rejected,
            staged_bytes: staged.bytes,
        },
        staging,
    ))
}

fn input_err(spec: &InputSpec, message: impl Into<String>) -> Error {
    Error::Input {
        input: spec.name.clone(),
        uri: spec.uri.clone(),
        message: message.into(),
    }
}

/// Lists the Parquet files of an input and opens them as one table (hive partition
/// columns become Utf8 columns).
async fn read_parquet_input(
    ctx: &SessionContext,
    spec: &InputSpec,
) -> Result<(DataFrame, InputFiles)> {
    let is_glob = spec.uri.contains(['*', '?', '[']);
    let mut uri = spec.uri.clone();
    if !uri.contains("://") {
        let path = std::path::Path::new(&uri);
        if !is_glob && !path.exists() {
            return Err(input_err(spec, "path does not exist"));
        }
        if path.is_dir() && !uri.ends_with('/') {
            uri.push('/');
        }
    } else if !is_glob && !uri.ends_with('/') {
        // An object store has no directories: a uri that is not an object is a prefix.
        // The store is the one the session registered for this uri.
        let url = ListingTableUrl::parse(&uri)
            .map_err(|e| input_err(spec, format!("invalid uri: {e}")))?;
        let store = ctx
            .runtime_env()
            .object_store(&url)
            .map_err(|e| input_err(spec, format!("no object store for this uri: {e}")))?;
        match store.head(url.prefix()).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => uri.push('/'),
            Err(e) => {
                return Err(input_err(
                    spec,
                    format!("cannot read: {}", redact(&e.to_string())),
                ))
            }
        }
    }
    let url = listing_url(&uri).map_err(|e| input_err(spec, format!("invalid uri: {e}")))?;
    let state = ctx.state();
    let store = ctx
        .runtime_env()
        .object_store(&url)
        .map_err(|e| input_err(spec, format!("no object store for this uri: {e}")))?;
    let files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), "parquet")
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot list files: {e}"))))?
        .try_collect()
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot list files: {e}"))))?;
    if files.is_empty() {
        return Err(input_err(
            spec,
            "the input is empty: no .parquet files found",
        ));
    }
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let partitions = options
        .infer_partitions(&state, &url)
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot infer hive partitions: {e}"))))?;
    let options = options.with_table_partition_cols(
        partitions
            .into_iter()
            .map(|p| (p, DataType::Utf8))
            .collect(),
    );
    let input = InputFiles {
        base: url.object_store().as_str().to_string(),
        store,
        files,
    };
    let config = match ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&state)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return Err(input
                .read_error(spec, "cannot read Parquet schema", &e)
                .await)
        }
    };
    let table = ListingTable::try_new(config).map_err(|e| input_err(spec, format!("{e}")))?;
    let df = ctx
        .read_table(Arc::new(table))
        .map_err(|e| input_err(spec, format!("{e}")))?;
    Ok((df, input))
}

/// The Parquet files of an input, to name the one that cannot be read.
pub(crate) struct InputFiles {
    /// `file:///` or `s3://bucket/`: the store's URL, which the file paths follow.
    base: String,
    store: Arc<dyn object_store::ObjectStore>,
    files: Vec<object_store::ObjectMeta>,
}

impl InputFiles {
    /// The error for a failed read of the input: when the failure came from reading Parquet
    /// (not, say, memory), every file is read whole, in order, and the first that fails is
    /// named by its path; otherwise the input's uri is.
    async fn read_error(
        &self,
        spec: &InputSpec,
        doing: &str,
        e: &datafusion::error::DataFusionError,
    ) -> Error {
        use datafusion::error::DataFusionError as D;
        let from_files = matches!(
            e.find_root(),
            D::ParquetError(_)
                | D::ArrowError(..)
                | D::IoError(_)
                | D::ObjectStore(_)
                | D::External(_)
        );
        if from_files {
            if let Some((path, why)) = self.first_unreadable().await {
                return input_err(
                    spec,
                    redact(&format!(
                        "{doing}: the file {path} is corrupt or truncated: {why}"
                    )),
                );
            }
        }
        input_err(spec, redact(&format!("{doing}: {}", e.strip_backtrace())))
    }

    /// Reads each file whole (one at a time: this runs only after a read failed) and
    /// returns the first that fails, with why.
    async fn first_unreadable(&self) -> Option<(String, String)> {
        use object_store::ObjectStoreExt;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        for f in &self.files {
            let read = async {
                let bytes = self
                    .store
                    .get(&f.location)
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| e.to_string())?;
                for batch in reader {
                    batch.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            };
            if let Err(why) = read.await {
                let base = match self.base.as_str() {
                    "file:///" => "/",
                    other => other,
                };
                return Some((format!("{base}{}", f.location), why));
            }
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }
}

/// A listing URL. DataFusion splits globs off local paths only; for an object-store URL
/// the part from the first directory holding a glob character on is the pattern, matched
/// as DataFusion matches local globs (against the file name; `col=value` folders of hive
/// partitions are always allowed), e.g. `s3://bucket/orders/*.parquet`.
fn listing_url(uri: &str) -> datafusion::error::Result<ListingTableUrl> {
    let Some(glob_at) = uri.find(['*', '?', '[']).filter(|_| uri.contains("://")) else {
        return ListingTableUrl::parse(uri);
    };
    let cut = uri[..glob_at].rfind('/').map(|i| i + 1).unwrap_or(glob_at);
    let (prefix, pattern) = uri.split_at(cut);
    let url = url::Url::parse(prefix)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let pattern = glob::Pattern::new(pattern)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(url, Some(pattern))
}

/// Selects and casts the canonical columns; a missing or ill-typed source column is an
/// error naming both the source and the canonical column.
fn map_columns(
    raw: DataFrame,
    spec: &InputSpec,
    settings: &Settings,
) -> Result<(DataFrame, BTreeSet<&'static str>)> {
    let schema = raw.schema().clone();
    let available: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut exprs: Vec<Expr> = Vec::new();
    let mut present = BTreeSet::new();
    let mut order_date: Option<Expr> = None;
    for (canonical, target, required) in canonical_columns(&spec.name) {
        let mapped = spec.columns.get(canonical);
        let source = mapped.map(String::as_str).unwrap_or(canonical);
        let field = schema.fields().iter().find(|f| f.name() == source);
        let Some(field) = field else {
            if let Some(m) = mapped {
                return Err(input_err(
                    spec,
                    format!(
                        "source column `{m}` (mapped to canonical column `{canonical}`) does not exist; available columns: {}",
                        available.join(", ")
                    ),
                ));
            }
            if required {
                return Err(input_err(
                    spec,
                    format!(
                        "required column `{canonical}` not found; map it with [input.{}.columns] {canonical} = \"<source column>\" (available columns: {})",
                        spec.name,
                        available.join(", ")
                    ),
                ));
            }
            let default = if canonical == "quantity" {
                lit(ScalarValue::Int64(Some(1)))
            } else {
                lit(ScalarValue::try_from(&target).map_err(|e| Error::engine("typed null", e))?)
            };
            exprs.push(default.alias(canonical));
            continue;
        };
        present.insert(canonical);
        let source_type = field.data_type().clone();
        check_castable(spec, canonical, source, &source_type, &target)?;
        let column = Expr::Column(Column::new_unqualified(source));
        let expr = match (&target, &source_type) {
            // A date is a local calendar day: its midnight in the configured time zone.
            (DataType::Timestamp(..), DataType::Date32 | DataType::Date64) => {
                match settings.timezone {
                    Some(tz) => cast(
                        cast(
                            cast(column, DataType::Timestamp(TimeUnit::Microsecond, None)),
                            DataType::Timestamp(TimeUnit::Microsecond, Some(tz.name().into())),
                        ),
                        ts_type(),
                    ),
                    None => cast(column, ts_type()),
                }
            }
            // Strings stay views: the staged table is read back as views anyway, and the
            // cast copied every string of every line.
            (DataType::Utf8, DataType::Utf8View) => column,
            (DataType::Utf8, from) if from.is_integer() => {
                crate::ext::scalars::integer_text(column)
            }
            (DataType::Timestamp(..), DataType::Timestamp(..)) => {
                crate::ext::scalars::utc_timestamp(column)
            }
            (DataType::Timestamp(..), _) => cast(column, ts_type()),
            (DataType::Date32, DataType::Timestamp(..)) => {
                cast(cast(column, ts_type()), DataType::Date32)
            }
            _ => cast(column, target.clone()),
        };
        if spec.name == "orders" && canonical == "order_ts" {
            // A date source is already the local calendar day.
            order_date = Some(match source_type {
                DataType::Date32 | DataType::Date64 => cast(
                    Expr::Column(Column::new_unqualified(source)),
                    DataType::Date32,
                ),
                _ => local_date(expr.clone(), settings),
            });
        }
        exprs.push(expr.alias(canonical));
    }
    if let Some(order_date) = order_date {
        exprs.insert(3, order_date.alias("order_date"));
    }
    let df = raw
        .select(exprs)
        .map_err(|e| input_err(spec, format!("cannot map columns: {e}")))?;
    Ok((df, present))
}

/// The calendar date of a UTC timestamp in the configured time zone.
fn local_date(ts: Expr, settings: &Settings) -> Expr {
    crate::ext::scalars::local_date(ts, settings.timezone)
}

fn check_castable(
    spec: &InputSpec,
    canonical: &str,
    source: &str,
    from: &DataType,
    to: &DataType,
) -> Result<()> {
    let base = match from {
        DataType::Dictionary(_, v) => v.as_ref(),
        other => other,
    };
    let ok = match to {
        DataType::Utf8 => {
            base.is_integer()
                || matches!(
                    base,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
        DataType::Float64 | DataType::Int64 => base.is_numeric(),
        DataType::Timestamp(..) | DataType::Date32 => {
            matches!(
                base,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            )
        }
        DataType::Boolean => matches!(base, DataType::Boolean) || base.is_integer(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(input_err(
            spec,
            format!(
                "source column `{source}` (canonical `{canonical}`) has type {from}, which cannot be used as {to}"
            ),
        ))
    }
}

/// The rows of `orders` the models see (status dropping, the as_of cut-off, the gates,
/// synthetic order ids), with the [`GateTally`] that counts, as the staging pass streams
/// every source row through it, what the gates and the manifest need. One scan of the source
/// does both.
fn visible_orders(
    mapped: DataFrame,
    present: &BTreeSet<&'static str>,
    spec: &InputSpec,
    settings: &Settings,
) -> Result<(DataFrame, Arc<GateTally>)> {
    let err = |e: datafusion::error::DataFusionError| input_err(spec, e.to_string());
    let tally = Arc::new(GateTally::new(GateRules {
        drop_status: spec.drop_status.clone(),
        return_status: spec.return_status.clone(),
        status_mapped: present.contains("status"),
        as_of: settings.as_of.map(crate::config::date_to_days),
        now_us: Utc::now().timestamp_micros(),
        policies: gates::policies(&settings.gates)?,
    }));
    let predicate = ScalarUDF::new_from_shared_impl(tally.clone()).call(gate_args(present));
    let mut visible = mapped.filter(predicate).map_err(err)?;
    if !present.contains("order_id") {
        visible = synthetic_order_ids(visible).map_err(err)?;
    }
    Ok((visible, tally))
}

/// The arguments of the gate functions: the NULL-or-empty customer flag, order_ts,
/// order_date, status (NULL when not mapped), revenue.
fn gate_args(present: &BTreeSet<&'static str>) -> Vec<Expr> {
    let status = if present.contains("status") {
        col("status")
    } else {
        lit(ScalarValue::Utf8(None))
    };
    vec![
        col("customer_id")
            .is_null()
            .or(col("customer_id").eq(lit(""))),
        col("order_ts"),
        col("order_date"),
        status,
        col("revenue"),
    ]
}

/// The line fingerprint (two 64-bit hashes of every mapped column, `_line_a`, `_line_b`).
fn line_fingerprint(present: &BTreeSet<&'static str>) -> Vec<Expr> {
    let hash = |seed: i64, name: &str| {
        let mut args = vec![lit(seed)];
        args.extend(present.iter().map(|c| col(*c)));
        ScalarUDF::new_from_impl(LineHash).call(args).alias(name)
    };
    let [a, b] = FINGERPRINT;
    vec![hash(0x5e9f, a), hash(0x10e5, b)]
}

/// Lines identical in every mapped column (equal fingerprints) among the staged orders.
struct Duplicates {
    /// Copies beyond the first of each duplicated line.
    extra: u64,
    /// Duplicated lines (groups of identical copies).
    groups: u64,
    /// The fingerprints of the duplicated lines.
    keys: Vec<datafusion::arrow::array::RecordBatch>,
}

impl Duplicates {
    /// From the fingerprints the staging pass saw more than once.
    fn new(repeated: Repeated) -> datafusion::error::Result<Duplicates> {
        use datafusion::arrow::array::{Int64Array, RecordBatch};
        let extra = repeated.iter().map(|(_, _, n)| n - 1).sum();
        let groups = repeated.len() as u64;
        let schema = Arc::new(Schema::new(vec![
            Field::new(FINGERPRINT[0], DataType::Int64, false),
            Field::new(FINGERPRINT[1], DataType::Int64, false),
        ]));
        let keys = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(repeated.iter().map(|f| f.0))),
                Arc::new(Int64Array::from_iter_values(repeated.iter().map(|f| f.1))),
            ],
        )?;
        Ok(Duplicates {
            extra,
            groups,
            keys: vec![keys],
        })
    }

    fn keys(&self, ctx: &SessionContext) -> datafusion::error::Result<DataFrame> {
        let schema = match self.keys.first() {
            Some(b) => b.schema(),
            None => {
                return datafusion::common::internal_err!("no duplicated lines");
            }
        };
        ctx.read_table(Arc::new(MemTable::try_new(
            schema,
            vec![self.keys.clone()],
        )?))?
        .select(vec![
            col(FINGERPRINT[0]).alias("_dup_a"),
            col(FINGERPRINT[1]).alias("_dup_b"),
        ])
    }

    /// The staged orders with one copy of each duplicated line, in the `planned` columns.
    async fn deduplicated(
        &self,
        ctx: &SessionContext,
        staged: &StagedTable,
        loc: &crate::storage::Location,
        planned: &Schema,
    ) -> datafusion::error::Result<DataFrame> {
        use datafusion::common::JoinType;
        let lines = open_dir(ctx, loc, &staged.rel, &[]).await?;
        let names: Vec<&str> = planned.fields().iter().map(|f| f.name().as_str()).collect();
        let on = FINGERPRINT;
        let keys = ["_dup_a", "_dup_b"];
        let single = lines
            .clone()
            .join(self.keys(ctx)?, JoinType::LeftAnti, &on, &keys, None)?
            .select_columns(&names)?;
        let mut with_keys = names.clone();
        with_keys.extend(on);
        let one_copy = lines
            .join(self.keys(ctx)?, JoinType::LeftSemi, &on, &keys, None)?
            .select_columns(&with_keys)?
            .distinct()?
            .select_columns(&names)?;
        single.union(one_copy)
    }

    /// The source rows beyond the first copy of each duplicated line the run uses, in the
    /// columns of the rejected rows, gate `duplicate_lines`.
    async fn extra_copies(
        &self,
        ctx: &SessionContext,
        mapped: DataFrame,
        present: &BTreeSet<&'static str>,
        rules: &GateRules,
    ) -> datafusion::error::Result<DataFrame> {
        use datafusion::common::JoinType;
        let names: Vec<String> = mapped
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // The rows the run uses, judged again (the counts of this pass are not kept).
        let used = ScalarUDF::new_from_shared_impl(Arc::new(GateTally::new(rules.clone())))
            .call(gate_args(present));
        let mut columns: Vec<Expr> = names.iter().map(|n| col(n.as_str())).collect();
        columns.extend(line_fingerprint(present));
        let copy = row_number()
            .partition_by(FINGERPRINT.map(col).to_vec())
            .build()?
            .alias("_copy");
        let mut out: Vec<Expr> = names.iter().map(|n| col(n.as_str())).collect();
        out.push(lit(crate::ingest::gates::DUPLICATE_LINES).alias("gate"));
        mapped
            .filter(used)?
            .select(columns)?
            .join(
                self.keys(ctx)?,
                JoinType::LeftSemi,
                &FINGERPRINT,
                &["_dup_a", "_dup_b"],
                None,
            )?
            .window(vec![copy])?
            .filter(col("_copy").gt(lit(1u64)))?
            .select(out)
    }
}

/// The source rows a `drop` policy left out, with the gate's name in column `gate`: a
/// second pass over the source, run only when some row was dropped.
fn rejected_rows(
    mapped: DataFrame,
    present: &BTreeSet<&'static str>,
    rules: &GateRules,
) -> datafusion::error::Result<DataFrame> {
    let reason = ScalarUDF::new_from_impl(GateReason(rules.clone())).call(gate_args(present));
    let mut columns: Vec<Expr> = mapped
        .schema()
        .fields()
        .iter()
        .map(|f| col(f.name().as_str()))
        .collect();
    columns.push(reason.alias("gate"));
    mapped.select(columns)?.filter(col("gate").is_not_null())
}

/// After the staging pass: the gates (a failure lists each, warnings are logged), the
/// default as_of, the freshness gate and the input statistics, from what the [`GateTally`]
/// counted.
fn settle_gates(
    counts: &GateCounts,
    duplicates: Option<&Duplicates>,
    spec: &InputSpec,
    settings: &Settings,
    policies: &[Policy; GATES.len()],
    files: usize,
) -> Result<(InputStats, NaiveDate)> {
    if counts.rows == 0 {
        return Err(input_err(
            spec,
            "the input is empty: the Parquet files hold no rows",
        ));
    }
    let source_of = |c: &str| {
        spec.columns
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let repeated = duplicates.filter(|d| d.extra > 0);
    let mut failures = Vec::new();
    for (n, gate) in GATES.iter().enumerate() {
        let caught = match gate.catch {
            Catch::Line(_) => counts.caught[n],
            Catch::Repeated => repeated.map_or(0, |d| d.extra),
        };
        if caught == 0 {
            continue;
        }
        let what = (gate.what)(&source_of, spec);
        let line = match gate.catch {
            Catch::Line(_) => format!(
                "input gate {}: {caught} row(s) of {} {what}",
                gate.name, spec.uri
            ),
            Catch::Repeated => format!(
                "input gate {}: {caught} line(s) of {} {what} ({} line(s) duplicated)",
                gate.name,
                spec.uri,
                repeated.map_or(0, |d| d.groups)
            ),
        };
        match (policies[n], &gate.catch) {
            (Policy::Fail, _) => failures.push(line),
            (Policy::Warn, _) => warn!("{line} (policy warn: kept)"),
            (Policy::Drop, Catch::Line(_)) => {
                warn!("{line} (policy drop: left out, written to _rejected)")
            }
            (Policy::Drop, Catch::Repeated) => {
                warn!("{line} (policy drop: one copy kept, the others written to _rejected)")
            }
        }
    }
    if !failures.is_empty() {
        return Err(Error::ChecksFailed {
            count: failures.len(),
            details: failures.join("\n"),
        });
    }
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    let as_of = match settings.as_of {
        Some(d) => d,
        None => {
            let days = counts.latest.ok_or_else(|| {
                input_err(
                    spec,
                    "the input is empty: every row was dropped by drop_status",
                )
            })?;
            epoch + chrono::Duration::days(days as i64)
        }
    };
    let Some(latest) = counts.latest_visible else {
        return Err(input_err(
            spec,
            format!(
                "the input is empty: no row up to as_of {as_of} passes drop_status and the gates"
            ),
        ));
    };
    let latest = epoch + chrono::Duration::days(latest as i64);
    if let Some(max_age) = settings.gates.max_input_age_days {
        let age = (as_of - latest).num_days();
        if age > i64::from(max_age) {
            return Err(Error::ChecksFailed {
                count: 1,
                details: format!(
                    "input gate max_input_age_days: the latest order in {} is from {latest}, {age} day(s) before as_of {as_of} (at most {max_age} allowed): is the export stalled?",
                    spec.uri
                ),
            });
        }
    }
    let stats = InputStats {
        files,
        rows_read: counts.rows,
        rows_dropped_status: counts.dropped,
        rows_after_as_of: counts.after_as_of,
        rows_visible: counts.visible,
        rows_rejected: counts.rejected,
        gates: counts.stats(policies),
    };
    let mut stats = stats;
    if let Some(d) = duplicates {
        stats.gates.insert(
            DUPLICATE_LINES.to_string(),
            GateStat {
                rows: d.extra,
                policy: gates::policy(policies, DUPLICATE_LINES),
            },
        );
    }
    Ok((stats, as_of))
}

/// Every source row is its own order: number each customer's rows by all their values
/// (time first), so identical rows (real duplicate orders) get distinct ids, the ids do not
/// depend on scan order, earlier orders keep their ids as history grows, and the numbering
/// runs in parallel per customer. Ids look like `<customer_id>#000000001`.
fn synthetic_order_ids(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    let sort: Vec<SortExpr> = [
        "order_ts",
        "revenue",
        "quantity",
        "cost",
        "product_id",
        "category",
        "channel",
        "country",
        "region",
        "device",
        "status",
    ]
    .iter()
    .map(|c| col(*c).sort(true, true))
    .collect();
    let rn = row_number()
        .partition_by(vec![col("customer_id")])
        .order_by(sort)
        .build()?
        .alias("_row");
    let df = df.window(vec![rn])?;
    let cols: Vec<Expr> = orders_schema()
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "order_id" {
                datafusion::functions::string::expr_fn::concat(vec![
                    col("customer_id"),
                    lit("#"),
                    datafusion::functions::unicode::expr_fn::lpad(vec![
                        cast(col("_row"), DataType::Utf8),
                        lit(9i64),
                        lit("0"),
                    ]),
                ])
                .alias("order_id")
            } else {
                col(f.name())
            }
        })
        .collect();
    df.select(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies count beyond the first of each duplicated line.
    #[test]
    fn extra_copies_are_those_beyond_the_first_of_each_line() {
        let d = Duplicates::new(vec![(1, 10, 2), (3, 30, 3)]).unwrap();
        assert_eq!((d.extra, d.groups), (3, 2));
        assert_eq!(d.keys[0].num_rows(), 2);
    }
}
