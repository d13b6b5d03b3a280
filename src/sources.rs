//! Sources: the canonical input views models read (`orders`, `customers`, `marketing_spend`).
//!
//! Each input is a Parquet file, directory (hive partitions inferred) or glob. The config maps
//! canonical column names onto source columns; every mapped column is cast to its canonical
//! type, optional columns the source lacks become typed NULLs, cancelled order lines are
//! dropped and rows after `as_of` are invisible. No `order_id` means one order per source row.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    cast, col, lit, ColumnarValue, Expr, ExprFunctionExt, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, SortExpr, Volatility,
};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::config::{InputSpec, Settings};
use crate::engine::orders_columns_used;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::publish::stage::{open_staged, StageError, Staging};
use crate::storage::redact;
use object_store::ObjectStoreExt;
use tracing::{debug, info};

/// What the orders input held, for the manifest and the default as_of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputStats {
    /// Parquet files read.
    pub files: usize,
    /// Source rows.
    pub rows_read: u64,
    /// Rows dropped by `drop_status`.
    pub rows_dropped_status: u64,
    /// Rows after as_of: normal data, invisible to this snapshot.
    pub rows_after_as_of: u64,
    /// Rows the models see.
    pub rows_visible: u64,
}

/// The result of registering inputs.
#[derive(Debug, Clone)]
pub struct Sources {
    pub as_of: NaiveDate,
    pub orders: InputStats,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Canonical columns of each input with their types; `true` = required.
fn canonical_columns(input: &str) -> Vec<(&'static str, DataType, bool)> {
    match input {
        "orders" => vec![
            ("customer_id", DataType::Utf8, true),
            ("order_id", DataType::Utf8, false),
            ("order_ts", ts_type(), true),
            ("revenue", DataType::Float64, true),
            ("quantity", DataType::Int64, false),
            ("cost", DataType::Float64, false),
            ("product_id", DataType::Utf8, false),
            ("category", DataType::Utf8, false),
            ("channel", DataType::Utf8, false),
            ("country", DataType::Utf8, false),
            ("region", DataType::Utf8, false),
            ("device", DataType::Utf8, false),
            ("status", DataType::Utf8, false),
        ],
        "customers" => vec![
            ("customer_id", DataType::Utf8, true),
            ("signup_ts", ts_type(), false),
            ("birth_year", DataType::Int64, false),
            ("gender", DataType::Utf8, false),
            ("email_opt_in", DataType::Boolean, false),
        ],
        "marketing_spend" => vec![
            ("month", DataType::Date32, true),
            ("channel", DataType::Utf8, true),
            ("spend", DataType::Float64, true),
        ],
        _ => vec![],
    }
}

/// The canonical column names of an input, or None for an unknown input name.
pub fn canonical_column_names(input: &str) -> Option<Vec<&'static str>> {
    let names: Vec<&'static str> = canonical_columns(input)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    (!names.is_empty()).then_some(names)
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

/// Registers `orders`, `customers` and `marketing_spend`; decides `as_of`. The canonical
/// `orders` (casts, status filter, as_of cut-off, synthetic order ids) is computed once and
/// staged as Parquet; every model reads the staged table.
pub async fn register_sources(
    ctx: &SessionContext,
    settings: &Settings,
    models: &[Model],
    staging: impl FnOnce(NaiveDate) -> Staging,
) -> Result<(Sources, Staging)> {
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
    let (orders, tally) = visible_orders(mapped, &present, orders_spec, settings)?;
    // The default as_of is known after the pass; which columns the models read does not
    // depend on it.
    let planning_as_of = settings.as_of.unwrap_or_else(|| Utc::now().date_naive());
    let mut staging = staging(planning_as_of);
    // Only the columns some model reads are staged (a quarter fewer bytes for the built-in
    // library); at least one, so the table has a schema.
    let schema: SchemaRef = Arc::new(orders.schema().as_arrow().clone());
    let used = orders_columns_used(ctx, settings, schema.clone(), models, planning_as_of).await?;
    let keep: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| used.contains(*n))
        .collect();
    debug!(columns = ?keep, "orders columns the models read");
    let orders = match keep.len() {
        n if n == schema.fields().len() => Ok(orders),
        0 => orders.select_columns(&["customer_id"]),
        _ => orders.select_columns(&keep),
    }
    .map_err(|e| input_err(orders_spec, e.to_string()))?;
    let planned = orders.schema().as_arrow().clone();
    let staged = staging
        .write_table(orders, "orders", false, &[])
        .await
        .map_err(|e| match e {
            StageError::Engine(e) => input_err(orders_spec, redact(&e.strip_backtrace())),
            StageError::PartitionValue { .. } => input_err(orders_spec, "unexpected partition"),
        })?;
    let (stats, as_of) = settle_gates(&tally, orders_spec, settings, files)?;
    staging.as_of = as_of;
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
async fn read_parquet_input(ctx: &SessionContext, spec: &InputSpec) -> Result<(DataFrame, usize)> {
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
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&state)
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot read Parquet schema: {e}"))))?;
    let table = ListingTable::try_new(config).map_err(|e| input_err(spec, format!("{e}")))?;
    let df = ctx
        .read_table(Arc::new(table))
        .map_err(|e| input_err(spec, format!("{e}")))?;
    Ok((df, files.len()))
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
            (DataType::Timestamp(..), DataType::Timestamp(..)) => {
                crate::functions::utc_timestamp(column)
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
    crate::functions::local_date(ts, settings.timezone)
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

/// The rows of `orders` the models see (status dropping, the as_of cut-off, synthetic order
/// ids), with a [`GateTally`] that counts, as the staging pass streams every source row
/// through it, what the gates and the manifest need. One scan of the source does both.
fn visible_orders(
    mapped: DataFrame,
    present: &BTreeSet<&'static str>,
    spec: &InputSpec,
    settings: &Settings,
) -> Result<(DataFrame, Arc<GateTally>)> {
    let err = |e: datafusion::error::DataFusionError| input_err(spec, e.to_string());
    let status = if present.contains("status") {
        col("status")
    } else {
        lit(ScalarValue::Utf8(None))
    };
    let tally = Arc::new(GateTally {
        drop_status: spec.drop_status.iter().map(|s| s.to_lowercase()).collect(),
        as_of: settings.as_of.map(crate::config::date_to_days),
        now_us: Utc::now().timestamp_micros(),
        counts: Default::default(),
    });
    let args = vec![
        col("customer_id")
            .is_null()
            .or(col("customer_id").eq(lit(""))),
        col("order_ts"),
        col("order_date"),
        status,
    ];
    let predicate = ScalarUDF::new_from_shared_impl(tally.clone()).call(args);
    let mut visible = mapped.filter(predicate).map_err(err)?;
    if !present.contains("order_id") {
        visible = synthetic_order_ids(visible).map_err(err)?;
    }
    Ok((visible, tally))
}

/// After the staging pass: the gates (a failure lists each), the default as_of and the
/// input statistics, from what the [`GateTally`] counted.
fn settle_gates(
    tally: &GateTally,
    spec: &InputSpec,
    settings: &Settings,
    files: usize,
) -> Result<(InputStats, NaiveDate)> {
    let counts = tally.counts();
    if counts.rows == 0 {
        return Err(input_err(
            spec,
            "the input is empty: the Parquet files hold no rows",
        ));
    }
    let mut failures = Vec::new();
    let source_of = |c: &str| {
        spec.columns
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    if counts.null_customer > 0 {
        failures.push(format!(
            "input gate null_customer_id: {} row(s) of {} have a NULL or empty customer_id (source column `{}`)",
            counts.null_customer,
            spec.uri,
            source_of("customer_id")
        ));
    }
    if counts.null_ts > 0 {
        failures.push(format!(
            "input gate null_order_ts: {} row(s) of {} have a NULL order_ts (source column `{}`)",
            counts.null_ts,
            spec.uri,
            source_of("order_ts")
        ));
    }
    if counts.future > 0 {
        failures.push(format!(
            "input gate future_order_ts: {} row(s) of {} have an order_ts (source column `{}`) later than the current time",
            counts.future,
            spec.uri,
            source_of("order_ts")
        ));
    }
    if !failures.is_empty() {
        return Err(Error::ChecksFailed {
            count: failures.len(),
            details: failures.join("\n"),
        });
    }
    let as_of = match settings.as_of {
        Some(d) => d,
        None => {
            let days = counts.latest.ok_or_else(|| {
                input_err(
                    spec,
                    "the input is empty: every row was dropped by drop_status",
                )
            })?;
            NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                + chrono::Duration::days(days as i64)
        }
    };
    let stats = InputStats {
        files,
        rows_read: counts.rows,
        rows_dropped_status: counts.dropped,
        rows_after_as_of: counts.after_as_of,
        rows_visible: counts.rows - counts.dropped - counts.after_as_of,
    };
    Ok((stats, as_of))
}

/// What the staging pass counted over every source row of `orders`.
#[derive(Debug, Default, Clone, Copy)]
struct GateCounts {
    rows: u64,
    dropped: u64,
    null_customer: u64,
    null_ts: u64,
    future: u64,
    after_as_of: u64,
    /// Latest order date (days since the epoch) of a kept row not in the future.
    latest: Option<i32>,
}

impl GateCounts {
    fn add(&mut self, other: &GateCounts) {
        self.rows += other.rows;
        self.dropped += other.dropped;
        self.null_customer += other.null_customer;
        self.null_ts += other.null_ts;
        self.future += other.future;
        self.after_as_of += other.after_as_of;
        self.latest = self.latest.max(other.latest);
    }
}

/// `segflow_gate_tally(null_customer, order_ts, order_date, status)`: the filter of the
/// staging pass. A row is kept when its status is not one of `drop_status` (compared
/// lower-cased) and its local date is on or before `as_of` (any date with the default
/// as_of); each batch's counts are added to the total, so the gates need no scan of their
/// own. Volatile, so the optimizer neither folds nor moves it; a filter evaluates it once
/// per row.
#[derive(Debug)]
pub(crate) struct GateTally {
    /// Lower-cased statuses to drop.
    drop_status: Vec<String>,
    /// The explicit as_of (days since the epoch).
    as_of: Option<i32>,
    /// The wall clock at the start of the run (µs since the epoch, UTC).
    now_us: i64,
    counts: std::sync::Mutex<GateCounts>,
}

impl GateTally {
    fn counts(&self) -> GateCounts {
        *self.total()
    }

    /// The running total (a panic elsewhere cannot leave it half-updated: `add` does not
    /// fail).
    fn total(&self) -> std::sync::MutexGuard<'_, GateCounts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Per row of `status`: is it one of `drop_status`? (No status column or no
    /// `drop_status`: none is.)
    fn dropped_flags(
        &self,
        status: &ArrayRef,
        rows: usize,
    ) -> datafusion::error::Result<Vec<bool>> {
        if self.drop_status.is_empty() {
            return Ok(vec![false; rows]);
        }
        Ok(match status.data_type() {
            DataType::Null => vec![false; rows],
            DataType::Utf8 => status
                .as_string::<i32>()
                .iter()
                .map(|s| self.dropped(s))
                .collect(),
            DataType::LargeUtf8 => status
                .as_string::<i64>()
                .iter()
                .map(|s| self.dropped(s))
                .collect(),
            DataType::Utf8View => status
                .as_string_view()
                .iter()
                .map(|s| self.dropped(s))
                .collect(),
            other => return Err(tally_err(format!("status is {other}"))),
        })
    }

    /// `lower(status) IN drop_status` without lower-casing every value: ASCII values are
    /// compared ignoring ASCII case (the same for them), others lower-cased.
    fn dropped(&self, status: Option<&str>) -> bool {
        let Some(s) = status else { return false };
        if s.is_ascii() {
            self.drop_status.iter().any(|d| s.eq_ignore_ascii_case(d))
        } else {
            let lower = s.to_lowercase();
            self.drop_status.contains(&lower)
        }
    }
}

impl PartialEq for GateTally {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for GateTally {}

impl std::hash::Hash for GateTally {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self, state);
    }
}

fn gate_tally_signature() -> &'static Signature {
    static SIGNATURE: std::sync::OnceLock<Signature> = std::sync::OnceLock::new();
    SIGNATURE.get_or_init(|| Signature::any(4, Volatility::Volatile))
}

fn tally_err(message: String) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Internal(format!("segflow_gate_tally: {message}"))
}

impl ScalarUDFImpl for GateTally {
    fn name(&self) -> &str {
        "segflow_gate_tally"
    }

    fn signature(&self) -> &Signature {
        gate_tally_signature()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let null_customer = arrays[0]
            .as_boolean_opt()
            .ok_or_else(|| tally_err(format!("customer flag is {}", arrays[0].data_type())))?;
        let ts = arrays[1]
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| tally_err(format!("order_ts is {}", arrays[1].data_type())))?;
        let dates = arrays[2]
            .as_primitive_opt::<Date32Type>()
            .ok_or_else(|| tally_err(format!("order_date is {}", arrays[2].data_type())))?;
        let dropped = self.dropped_flags(&arrays[3], rows)?;
        let mut batch = GateCounts {
            rows: rows as u64,
            null_customer: null_customer.true_count() as u64,
            ..GateCounts::default()
        };
        let mut keep = datafusion::arrow::array::BooleanBufferBuilder::new(rows);
        for (i, &dropped) in dropped.iter().enumerate() {
            let t = ts.is_valid(i).then(|| ts.value(i));
            let d = dates.is_valid(i).then(|| dates.value(i));
            batch.dropped += u64::from(dropped);
            batch.null_ts += u64::from(t.is_none());
            batch.future += u64::from(t.is_some_and(|t| t > self.now_us));
            if !dropped && t.is_some_and(|t| t <= self.now_us) {
                batch.latest = batch.latest.max(d);
            }
            let visible = match (self.as_of, d) {
                (_, None) => false,
                (Some(as_of), Some(d)) if d > as_of => {
                    batch.after_as_of += u64::from(!dropped);
                    false
                }
                _ => true,
            };
            keep.append(visible && !dropped);
        }
        self.total().add(&batch);
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            keep.finish(),
            None,
        ))))
    }
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

    #[test]
    fn dropped_statuses_compare_like_lower_in_list_for_ascii_and_other_text() {
        let tally = GateTally {
            drop_status: ["Cancelled", "ÄNDERUNG", "test"]
                .iter()
                .map(|s| s.to_lowercase())
                .collect(),
            as_of: None,
            now_us: 0,
            counts: Default::default(),
        };
        for (status, dropped) in [
            (Some("cancelled"), true),
            (Some("CANCELLED"), true),
            (Some("cAnCeLlEd"), true),
            (Some("cancelled "), false),
            (Some("Änderung"), true),
            (Some("änderung"), true),
            (Some("anderung"), false),
            (Some("TEST"), true),
            (Some(""), false),
            (None, false),
        ] {
            let lower_in_list = status
                .map(|s| tally.drop_status.contains(&s.to_lowercase()))
                .unwrap_or(false);
            assert_eq!(tally.dropped(status), dropped, "{status:?}");
            assert_eq!(lower_in_list, dropped, "{status:?}");
        }
    }
}
