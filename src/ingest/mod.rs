//! Sources: the canonical input views models read (`orders`, `customers`, `marketing_spend`).
//!
//! Each input is a Parquet file, directory (hive partitions inferred) or glob. The config maps
//! canonical column names onto source columns; every mapped column is cast to its canonical
//! type, optional columns the source lacks become typed NULLs, cancelled order lines are
//! dropped and rows after `as_of` are invisible. No `order_id` means one order per source row.

pub mod fingerprints;
pub mod gates;
mod mapping;
mod read;
mod rejected;

use mapping::*;
use read::*;
use rejected::*;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{col, lit, Expr, ScalarUDF};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::canonical::canonical_columns;
use crate::config::{InputSpec, Policy, Settings};
use crate::error::{Error, Result};
use crate::ingest::fingerprints::Fingerprints;
use crate::ingest::gates::{Catch, GateCounts, GateRules, GateTally, DUPLICATE_LINES, GATES};
use crate::publish::layout::REJECTED;
use crate::publish::manifest::{GateStat, InputFile, InputStats};
use crate::publish::stage::{open_staged, StageError, StagedTable, Staging};
use crate::redact::redact;
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
    /// The orders input's files as read (what a state kept by this run covers).
    pub files: Vec<InputFile>,
    /// The latest order date of a kept line up to as_of, and of a line the models see.
    pub latest: Option<NaiveDate>,
    pub latest_visible: Option<NaiveDate>,
    /// Whether the source maps order ids (else each line is its own, synthetic, order).
    pub order_ids: bool,
}

/// Which order lines a run stages.
#[derive(Debug, Clone, Default)]
pub enum Lines {
    /// Every line.
    #[default]
    All,
    /// What a kept state does not hold yet (an incremental run).
    Since(Since),
}

/// The lines a state kept through `through` does not hold: every line of a file it does
/// not list (late lines of old orders included), and the lines dated after `through` of
/// the files it lists.
#[derive(Debug, Clone)]
pub struct Since {
    pub through: NaiveDate,
    /// The files the state lists (their locations).
    pub known: BTreeSet<String>,
    /// What the state's run saw: its latest order dates (for the default as_of and the
    /// freshness gate of a run that finds no new line).
    pub latest: Option<NaiveDate>,
    pub latest_visible: Option<NaiveDate>,
}

/// The column that marks, in an incremental run, the lines of files the state does not list.
pub(crate) const NEW_FILE: &str = "_segflow_new_file";

/// The orders input opened: the rows the models see (not yet staged), the mapped source
/// (for the rejected rows), the tally of the gates.
pub struct OrdersSource<'s> {
    visible: DataFrame,
    mapped: DataFrame,
    present: BTreeSet<&'static str>,
    tally: Arc<GateTally>,
    files: InputFiles,
    spec: &'s InputSpec,
    lines: Lines,
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
/// models see (not yet staged), the tally of the gates, the number of files. `choose` picks,
/// from the orders input's files, which lines to stage (all, or an incremental slice).
pub async fn open_sources<'s>(
    ctx: &SessionContext,
    settings: &'s Settings,
    choose: impl FnOnce(&[InputFile]) -> Lines,
) -> Result<OrdersSource<'s>> {
    for name in ["customers", "marketing_spend"] {
        let table = match settings.inputs.get(name) {
            Some(spec) => {
                let (raw, _) = read_parquet_input(ctx, spec).await?;
                map_columns(ctx, raw, spec, settings)?.0.into_view()
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
    // The run's partitions follow the size of the whole input (an incremental night keeps
    // the full run's). The read itself keeps one partition per core (planned before): the
    // staged lines go to one bucket per partition of the run.
    let bytes = files.files.iter().map(|f| f.size).sum();
    let partitions = crate::session::set_partitions(ctx, settings, bytes);
    debug!(
        input_bytes = bytes,
        partitions, "partitions of the run's plans"
    );
    let lines = choose(&files.watermark());
    let raw = match &lines {
        Lines::All => raw,
        Lines::Since(since) => slice_of(ctx, raw, &files, since, orders_spec)
            .map_err(|e| input_err(orders_spec, redact(&e.strip_backtrace())))?,
    };
    let (mapped, present) = map_columns(ctx, raw, orders_spec, settings)?;
    let slice = match &lines {
        Lines::All => None,
        Lines::Since(s) => Some(crate::config::date_to_days(s.through)),
    };
    let (visible, tally) = visible_orders(mapped.clone(), &present, orders_spec, settings, slice)?;
    Ok(OrdersSource {
        visible,
        mapped,
        present,
        tally,
        files,
        spec: orders_spec,
        lines,
    })
}

/// The source rows an incremental run reads: the lines of the files `since` lists that may
/// be dated after its day (row groups whose source time column ends before that day are
/// skipped by their statistics), and every line of the files it does not list, marked by
/// [`NEW_FILE`] (the gate tally keeps of each only what the state does not hold).
fn slice_of(
    ctx: &SessionContext,
    raw: DataFrame,
    files: &InputFiles,
    since: &Since,
    spec: &InputSpec,
) -> datafusion::error::Result<DataFrame> {
    let schema = raw.schema().as_arrow().clone();
    let mut old = raw.with_column(NEW_FILE, lit(false))?;
    let source = spec
        .columns
        .get("order_ts")
        .map(String::as_str)
        .unwrap_or("order_ts");
    if let Some(bound) = schema
        .field_with_name(source)
        .ok()
        .and_then(|f| day_start(f.data_type(), since.through))
    {
        // A line dated after `through` in any time zone is at or after that day's start in
        // UTC (zones are at most 14 hours off): a superset the tally narrows exactly.
        let column = Expr::Column(datafusion::common::Column::new_unqualified(source));
        old = old.filter(column.gt_eq(lit(bound)))?;
    }
    let mut all = old;
    for file in files
        .files
        .iter()
        .filter(|f| !since.known.contains(&files.display(f)))
    {
        let one = files
            .read_one(ctx, file, &schema)?
            .with_column(NEW_FILE, lit(true))?;
        all = all.union(one)?;
    }
    Ok(all)
}

/// The start of `day` (UTC midnight) as a literal of a source time column's type, if it is
/// one whose row-group statistics can skip what came before.
fn day_start(t: &DataType, day: NaiveDate) -> Option<ScalarValue> {
    use datafusion::arrow::datatypes::TimeUnit;
    let days = crate::config::date_to_days(day);
    let secs = i64::from(days) * 86_400;
    Some(match t {
        DataType::Timestamp(unit, tz) => {
            let tz = tz.clone();
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(secs), tz),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(secs * 1_000), tz),
                TimeUnit::Microsecond => {
                    ScalarValue::TimestampMicrosecond(Some(secs * 1_000_000), tz)
                }
                TimeUnit::Nanosecond => {
                    ScalarValue::TimestampNanosecond(Some(secs * 1_000_000_000), tz)
                }
            }
        }
        DataType::Date32 => ScalarValue::Date32(Some(days)),
        DataType::Date64 => ScalarValue::Date64(Some(secs * 1_000)),
        _ => return None,
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
    let source = open_sources(ctx, settings, |_| Lines::All).await?;
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
    let orders_spec = source.spec;
    let mut staging = staging(planning_as_of(settings));
    let policies = source.tally.rules.policies;
    let drop_repeated = gates::policy(&policies, DUPLICATE_LINES) == Policy::Drop;
    let (orders, planned, fingerprints) = staged_orders(ctx, &source, used, drop_repeated)?;
    let tap = fingerprints
        .clone()
        .map(|f| f as Arc<dyn crate::publish::stage::BatchTap>);
    // How a table of the pass that cannot be staged is reported.
    let failed = |what: &'static str| move |e: StageError| staging_failed(orders_spec, what, e);
    let buckets = ctx.state().config().target_partitions();
    let staged = match staging
        .write_table_tapped(orders, "orders", false, &[], tap, Some(buckets))
        .await
    {
        Ok(s) => s,
        Err(StageError::Engine(e)) => {
            return Err(source
                .files
                .read_error(orders_spec, "cannot read", &e)
                .await)
        }
        Err(e) => return Err(failed("")(e)),
    };
    debug!(rows = staged.rows, "orders staged");
    // What the staging pass counted decides the gates, as_of and what else is staged.
    let counts = source.tally.counts();
    let engine = |e: datafusion::error::DataFusionError| {
        input_err(orders_spec, redact(&e.strip_backtrace()))
    };
    let duplicates = match fingerprints {
        Some(f) => {
            let d = Duplicates::new(f.repeated().map_err(engine)?).map_err(engine)?;
            debug!(extra = d.extra, "duplicate lines counted");
            Some(d)
        }
        None => None,
    };
    let since = match &source.lines {
        Lines::All => None,
        Lines::Since(s) => Some(s),
    };
    let (mut stats, as_of) = settle_gates(
        &counts,
        duplicates.as_ref(),
        orders_spec,
        settings,
        &policies,
        source.files.len(),
        since,
    )?;
    staging.as_of = as_of;
    let drop_duplicates = duplicates.as_ref().filter(|d| d.extra > 0 && drop_repeated);
    let rejected = rejected_plan(
        ctx,
        &source.mapped,
        &source.present,
        &source.tally.rules,
        counts.rejected,
        drop_duplicates,
    )
    .await
    .map_err(engine)?;
    let one_copy_each = match drop_duplicates {
        Some(d) => {
            stats.rows_visible -= d.extra;
            stats.rows_rejected += d.extra;
            Some(d.one_copy_each(ctx, &planned).map_err(engine)?)
        }
        None => None,
    };
    // Then the staged tables that follow from it.
    let staged = match one_copy_each {
        Some(transform) => staging
            .restage(ctx, &staged, "orders_deduplicated", transform)
            .await
            .map_err(failed(""))?,
        None => staged,
    };
    let rejected = match rejected {
        Some(rows) => {
            let r = staging
                .write_table(rows, REJECTED, true, &[])
                .await
                .map_err(failed("cannot write the rejected rows: "))?;
            info!(
                rows = r.rows,
                "rows left out by the gates staged under {REJECTED}"
            );
            Some(r)
        }
        None => None,
    };
    let (table, _) = open_staged(ctx, &staged, &staging.out.loc, &planned)
        .await
        .map_err(|e| input_err(orders_spec, redact(&e.strip_backtrace())))?;
    ctx.register_table("orders", table)
        .map_err(|e| Error::engine("register orders", e))?;
    info!(rows = staged.rows, "canonical orders staged");

    let day = |d: Option<i32>| d.map(|d| epoch_day(d).min(as_of));
    let (mut latest, mut latest_visible) = (day(counts.latest), day(counts.latest_visible));
    if let Some(s) = since {
        latest = latest.max(s.latest);
        latest_visible = latest_visible.max(s.latest_visible);
    }
    Ok((
        Sources {
            as_of,
            orders: stats,
            rejected,
            staged_bytes: staged.bytes,
            files: source.files.watermark(),
            latest,
            latest_visible,
            order_ids: source.present.contains("order_id"),
        },
        staging,
    ))
}

/// What the staging pass writes: the `used` columns of the visible orders, with each line's
/// fingerprint when order ids are mapped (for the duplicate gate, whose fingerprints are
/// collected as the lines are staged: they stay in the staged table only for the drop
/// policy, which joins on them); the schema the models see; the fingerprint collector.
fn staged_orders(
    ctx: &SessionContext,
    source: &OrdersSource<'_>,
    used: &BTreeSet<String>,
    drop_repeated: bool,
) -> Result<(DataFrame, Schema, Option<Arc<Fingerprints>>)> {
    let schema = source.schema();
    let keep = staged_columns(&schema, used);
    let err = |e: datafusion::error::DataFusionError| input_err(source.spec, e.to_string());
    let planned = source
        .visible
        .clone()
        .select_columns(&keep)
        .map_err(err)?
        .schema()
        .as_arrow()
        .clone();
    let fingerprint = source.present.contains("order_id");
    let mut columns: Vec<Expr> = keep.iter().map(|c| col(*c)).collect();
    if fingerprint {
        columns.extend(line_fingerprint(&source.present));
    }
    let orders = source.visible.clone().select(columns).map_err(err)?;
    let fingerprints = fingerprint.then(|| {
        let runtime = ctx.runtime_env();
        Arc::new(Fingerprints::new(
            &runtime.memory_pool,
            runtime.disk_manager.clone(),
            drop_repeated,
        ))
    });
    Ok((orders, planned, fingerprints))
}

/// The columns of `schema` that some model reads (`used`), in schema order; at least one,
/// so that the staged table has a schema.
fn staged_columns<'a>(schema: &'a SchemaRef, used: &BTreeSet<String>) -> Vec<&'a str> {
    let keep: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| used.contains(*n))
        .collect();
    debug!(columns = ?keep, "orders columns the models read");
    match keep.len() {
        0 => vec!["customer_id"],
        _ => keep,
    }
}

/// A table of the staging pass that cannot be staged, `what` saying which.
fn staging_failed(spec: &InputSpec, what: &str, e: StageError) -> Error {
    match e {
        StageError::Engine(e) => input_err(spec, redact(&format!("{what}{}", e.strip_backtrace()))),
        StageError::PartitionValue { .. } => input_err(spec, "unexpected partition"),
    }
}

fn input_err(spec: &InputSpec, message: impl Into<String>) -> Error {
    Error::Input {
        input: spec.name.clone(),
        uri: spec.uri.clone(),
        message: message.into(),
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
    slice: Option<i32>,
) -> Result<(DataFrame, Arc<GateTally>)> {
    let err = |e: datafusion::error::DataFusionError| input_err(spec, e.to_string());
    let tally = Arc::new(GateTally::new(GateRules {
        drop_status: spec.drop_status.clone(),
        return_status: spec.return_status.clone(),
        status_mapped: present.contains("status"),
        as_of: settings.as_of.map(crate::config::date_to_days),
        now_us: Utc::now().timestamp_micros(),
        policies: gates::policies(&settings.gates)?,
        slice,
    }));
    let predicate =
        ScalarUDF::new_from_shared_impl(tally.clone()).call(gate_args(present, &tally.rules));
    let mut visible = mapped.filter(predicate).map_err(err)?;
    if !present.contains("order_id") {
        visible = synthetic_order_ids(visible).map_err(err)?;
    }
    Ok((visible, tally))
}

/// The arguments of the gate functions: the NULL-or-empty customer flag, order_ts,
/// order_date, status (NULL when not mapped), revenue, and in an incremental run the
/// new-file flag (NULL otherwise).
fn gate_args(present: &BTreeSet<&'static str>, rules: &GateRules) -> Vec<Expr> {
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
        match rules.slice {
            Some(_) => col(NEW_FILE),
            None => lit(ScalarValue::Boolean(None)),
        },
    ]
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
    since: Option<&Since>,
) -> Result<(InputStats, NaiveDate)> {
    if counts.rows == 0 && since.is_none() {
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
    // An incremental run also counts what its state saw.
    let state_latest = since.and_then(|s| s.latest);
    let as_of = match settings.as_of {
        Some(d) => d,
        None => counts
            .latest
            .map(epoch_day)
            .max(state_latest)
            .ok_or_else(|| {
                input_err(
                    spec,
                    "the input is empty: every row was dropped by drop_status",
                )
            })?,
    };
    let latest_visible = counts
        .latest_visible
        .map(epoch_day)
        .max(since.and_then(|s| s.latest_visible));
    let Some(latest) = latest_visible else {
        return Err(input_err(
            spec,
            format!(
                "the input is empty: no row up to as_of {as_of} passes drop_status and the gates"
            ),
        ));
    };
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

/// The date `days` days after 1970-01-01.
fn epoch_day(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::Duration::days(days as i64)
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
