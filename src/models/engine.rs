//! Engine: plans and runs the models in dependency order, then runs their checks.
//!
//! Each model's SQL is planned from its parsed AST with `$name` parameters typed and bound
//! by DataFusion (never pasted into the text), checked to be a read-only query, executed
//! once, streaming its result to staging Parquet, and the staged table is registered for
//! the models downstream (no result is held in memory). Planning errors carry
//! `file:line:col` from DataFusion's diagnostics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use tracing::{debug, info, warn};

use crate::config::{date_to_days, toml_to_scalar, ParamValue};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::models::{
    parse_statement, type_placeholders, unique_columns, DataTest, Model, Severity, INPUT_TABLES,
    PREVIOUS_SCHEMA,
};
use crate::publish::stage::{conform, open_dir, open_staged, StageError, StagedTable, Staging};
use crate::publish::{Manifest, Output};
use crate::redact::redact;

/// The computed result of one model, staged as Parquet.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub name: String,
    pub file: String,
    /// The schema models downstream see (and `previous.<name>` has).
    pub schema: SchemaRef,
    pub rows: u64,
    pub duration: Duration,
    pub publish: bool,
    pub partition_by: Vec<String>,
    pub staged: StagedTable,
    /// Column sets the model's plan makes unique (see [`crate::models::keys::unique_keys`]).
    pub unique_keys: Vec<BTreeSet<String>>,
}

/// The previous published snapshot, read as `previous.<model>`.
pub struct Previous<'a> {
    pub output: &'a Output,
    pub manifest: Option<&'a Manifest>,
}

impl Previous<'_> {
    /// The previous snapshot of `model`, with exactly the schema `target` of the model's
    /// current result: columns by name, in its order and types (a column the old snapshot
    /// lacks is NULL); an empty table of that schema when there is no previous snapshot.
    async fn table(
        &self,
        ctx: &SessionContext,
        model: &str,
        target: &SchemaRef,
    ) -> std::result::Result<Arc<dyn TableProvider>, DataFusionError> {
        match self
            .manifest
            .and_then(|m| m.tables.get(model))
            .filter(|e| e.rows > 0)
        {
            Some(entry) => {
                let df = open_dir(ctx, &self.output.loc, &entry.path, &entry.partition_by).await?;
                Ok(conform(df, target, &entry.partition_by)?.into_view())
            }
            None => Ok(Arc::new(MemTable::try_new(target.clone(), vec![vec![]])?)),
        }
    }
}

/// Resolves a model's parameters: `$as_of`, front-matter defaults, config overrides.
pub fn model_params(
    model: &Model,
    as_of: NaiveDate,
    config_params: &BTreeMap<String, ParamValue>,
) -> Result<BTreeMap<String, ScalarValue>> {
    let mut values = BTreeMap::new();
    for (k, v) in &model.header.params {
        values.insert(
            k.to_lowercase(),
            toml_to_scalar(&format!("{} [params] {k}", model.file), v)?,
        );
    }
    for (k, v) in config_params {
        let key = k.to_lowercase();
        // An override takes the type of the model's default.
        let value = match values.get(&key) {
            Some(default) => {
                v.as_type(&default.data_type())
                    .map_err(|message| Error::ConfigValue {
                        key: format!("params.{k}"),
                        message: format!("{message} (the type of the default in {})", model.file),
                    })?
            }
            None => v.inferred(),
        };
        values.insert(key, value);
    }
    values.insert(
        "as_of".into(),
        ScalarValue::Date32(Some(date_to_days(as_of))),
    );
    for used in &model.params_used {
        if !values.contains_key(used) {
            let mut known: Vec<&String> = values.keys().collect();
            known.sort();
            return Err(Error::ModelFile {
                file: model.file.clone(),
                message: format!(
                    "model `{}` uses parameter `${used}`, which has no value: add it to the model's [params] or the config's [params] (known: {})",
                    model.name,
                    known.iter().map(|k| format!("${k}")).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(values)
}

/// Formats an engine error for a model; planning errors get `file:line:col`.
pub fn model_error(model: &Model, e: DataFusionError) -> Error {
    let diagnostic = e.iter().find_map(|e| e.diagnostic());
    let file = match diagnostic.and_then(|d| d.span) {
        Some(span) if span.start.line > 0 => {
            format!("{}:{}:{}", model.file, span.start.line, span.start.column)
        }
        _ => model.file.clone(),
    };
    let mut message = match diagnostic {
        Some(d) => d.message.clone(),
        None => e.strip_backtrace(),
    };
    if let Some(d) = diagnostic {
        for h in &d.helps {
            message.push_str(&format!(" (help: {})", h.message));
        }
        // DataFusion's "Did you mean" suggestion lives in the error text, not the diagnostic.
        let full = e.strip_backtrace();
        if let Some(i) = full.find("Did you mean") {
            let hint = full[i..]
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches('.');
            if !message.contains(hint) {
                message.push_str(&format!(" (help: {hint}?)").replace("??", "?"));
            }
        } else if let Some(i) = full.find("Valid fields are ") {
            let valid = full[i + "Valid fields are ".len()..].trim_end_matches('.');
            message.push_str(&format!(" (valid fields: {valid})"));
        }
        tracing::debug!(error = %full, "planning error");
    }
    Error::Model {
        file,
        model: model.name.clone(),
        message,
    }
}

/// Plans one model into a DataFrame with its parameters bound.
pub async fn plan_model(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
) -> Result<DataFrame> {
    plan_model_with(ctx.state(), model, params).await
}

/// [`plan_model`] in a given session state (e.g. with other optimizer settings).
async fn plan_model_with(
    state: SessionState,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
) -> Result<DataFrame> {
    let mut statement = parse_statement(&model.file, &model.sql)?;
    type_placeholders(&mut statement, params);
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| model_error(model, e))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| Error::ModelFile {
            file: model.file.clone(),
            message: format!(
                "only queries are allowed in a model: {}",
                e.strip_backtrace()
            ),
        })?;
    let used: std::collections::HashMap<String, _> = params
        .iter()
        .filter(|(k, _)| model.params_used.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let df = DataFrame::new(state, plan);
    if used.is_empty() {
        Ok(df)
    } else {
        df.with_param_values(ParamValues::Map(used))
            .map_err(|e| model_error(model, e))
    }
}

/// Registers the empty `previous` schema, where `previous.<model>` tables go.
fn register_previous_schema(ctx: &SessionContext) -> Result<Arc<MemorySchemaProvider>> {
    let schema = Arc::new(MemorySchemaProvider::new());
    ctx.catalog("datafusion")
        .ok_or_else(|| {
            Error::engine(
                "catalog",
                DataFusionError::Internal("no default catalog".into()),
            )
        })?
        .register_schema(PREVIOUS_SCHEMA, schema.clone())
        .map_err(|e| Error::engine("register previous schema", e))?;
    Ok(schema)
}

/// What planning every model against empty tables found (no data read).
pub struct PlanReport {
    /// The planning session: the inputs (`orders` empty), and each model that planned as an
    /// empty table of its schema, so checks and data tests can be planned against it too.
    pub planner: SessionContext,
    /// Each planned model's output schema.
    pub schemas: BTreeMap<String, SchemaRef>,
    /// The columns of `orders` the models read.
    pub orders_columns: std::collections::BTreeSet<String>,
    /// Models that failed to plan, with why.
    pub failures: Vec<(String, Error)>,
    /// Models not planned because a model they read failed: (model, the failed one).
    pub skipped: Vec<(String, String)>,
}

/// Plans every model, in order, against empty tables: `orders` with `orders_schema`, every
/// model upstream with the schema it planned to, and the live `customers` and
/// `marketing_spend` of `ctx`. The optimizer projects each scan of `orders` down to the
/// columns the model needs; staging writes only those. With `keep_going` false the first
/// model that fails to plan is the error (a run stops before reading data); with it true
/// (`segflow check`) every failure is collected and the models reading a failed one are
/// skipped.
pub async fn plan_models(
    ctx: &SessionContext,
    settings: &crate::config::Settings,
    orders_schema: SchemaRef,
    models: &[Model],
    as_of: NaiveDate,
    keep_going: bool,
) -> Result<PlanReport> {
    let planner = crate::session::build_session(settings)?;
    for name in ["customers", "marketing_spend"] {
        let table = ctx
            .table_provider(name)
            .await
            .map_err(|e| Error::engine(format!("open {name}"), e))?;
        planner
            .register_table(name, table)
            .map_err(|e| Error::engine(format!("register {name} for planning"), e))?;
    }
    planner
        .register_table(
            "orders",
            empty_table(orders_schema).map_err(|e| Error::engine("empty orders", e))?,
        )
        .map_err(|e| Error::engine("register orders for planning", e))?;
    let previous = register_previous_schema(&planner)?;

    let mut report = PlanReport {
        planner,
        schemas: BTreeMap::new(),
        orders_columns: Default::default(),
        failures: Vec::new(),
        skipped: Vec::new(),
    };
    for model in models {
        let broken = model
            .tables_read()
            .find(|d| !report.schemas.contains_key(*d));
        if let Some(dep) = broken {
            report.skipped.push((model.name.clone(), dep.clone()));
            continue;
        }
        match plan_empty(&report, &previous, model, settings, as_of).await {
            Ok((schema, columns)) => {
                report.orders_columns.extend(columns);
                report
                    .planner
                    .register_table(
                        model.name.as_str(),
                        empty_table(schema.clone()).map_err(|e| model_error(model, e))?,
                    )
                    .map_err(|e| model_error(model, e))?;
                report.schemas.insert(model.name.clone(), schema);
            }
            Err(e) if keep_going => report.failures.push((model.name.clone(), e)),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn empty_table(schema: SchemaRef) -> std::result::Result<Arc<dyn TableProvider>, DataFusionError> {
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// Plans one model in the planning session: its output schema and the `orders` columns it
/// reads.
async fn plan_empty(
    report: &PlanReport,
    previous: &MemorySchemaProvider,
    model: &Model,
    settings: &crate::config::Settings,
    as_of: NaiveDate,
) -> Result<(SchemaRef, Vec<String>)> {
    let params = model_params(model, as_of, &settings.params)?;
    for dep in &model.previous_deps {
        if dep == &model.name {
            self_referencing_schema(&report.planner, model, &params, previous).await?;
        } else if let (false, Some(schema)) = (previous.table_exist(dep), report.schemas.get(dep)) {
            let table = empty_table(schema.clone()).map_err(|e| model_error(model, e))?;
            previous
                .register_table(dep.clone(), table)
                .map_err(|e| model_error(model, e))?;
        }
    }
    let df = plan_model(&report.planner, model, &params).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    check_partition_by(model, &schema)?;
    let plan = df
        .into_optimized_plan()
        .map_err(|e| model_error(model, e))?;
    let mut used = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if scan.table_name.table() == "orders" && scan.table_name.schema().is_none() {
                used.extend(
                    scan.projected_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone()),
                );
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| model_error(model, e))?;
    Ok((schema, used))
}

/// Every `partition_by` column must be a column of the model.
fn check_partition_by(model: &Model, schema: &SchemaRef) -> Result<()> {
    for p in &model.header.partition_by {
        if schema.field_with_name(p).is_err() {
            return Err(Error::ModelFile {
                file: model.file.clone(),
                message: format!(
                    "partition_by column `{p}` is not a column of model `{}`",
                    model.name
                ),
            });
        }
    }
    Ok(())
}

/// Runs every model in order, writing each once to staging and registering the staged
/// table for the models downstream; returns their outputs (internal models included).
pub async fn run_models(
    ctx: &SessionContext,
    models: &[Model],
    as_of: NaiveDate,
    config_params: &BTreeMap<String, ParamValue>,
    previous: &Previous<'_>,
    staging: &Staging,
    concurrency: usize,
) -> Result<Vec<ModelOutput>> {
    let run = Run {
        until: None,
        concurrency,
    };
    Ok(
        run_models_until(ctx, models, as_of, config_params, previous, staging, run)
            .await?
            .0,
    )
}

/// How [`run_models_until`] runs the models.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// Stop at this model, planned but not executed.
    pub until: Option<&'a str>,
    /// Models computed side by side (see [`concurrent_models`]).
    pub concurrency: usize,
}

/// Models computed side by side: `[runtime] concurrent_models`, else two while the staged
/// orders take at most a quarter of `memory_limit` (or there is no limit) and one beyond:
/// two models share the memory pool, and on inputs larger than memory each spilled more and
/// ran longer than the two one after the other (BENCHMARKS.md).
pub fn concurrent_models(settings: &crate::config::Settings, staged_orders_bytes: u64) -> usize {
    let fits = match settings.memory_limit {
        Some(limit) => staged_orders_bytes <= limit as u64 / 4,
        None => true,
    };
    settings
        .concurrent_models
        .unwrap_or(if fits { 2 } else { 1 })
}

/// [`run_models`], stopping at the model named `until` (if any): it is planned over the
/// staged tables upstream, with its parameters bound and `previous.*` registered, and
/// returned unexecuted (for `segflow explain`).
pub async fn run_models_until(
    ctx: &SessionContext,
    models: &[Model],
    as_of: NaiveDate,
    config_params: &BTreeMap<String, ParamValue>,
    previous: &Previous<'_>,
    staging: &Staging,
    run: Run<'_>,
) -> Result<(Vec<ModelOutput>, Option<DataFrame>)> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut running = FuturesUnordered::new();
    let scheduler = Scheduler {
        ctx,
        models,
        as_of,
        config_params,
        previous,
        staging,
        previous_schema: register_previous_schema(ctx)?,
    };
    let result = scheduler.schedule(run, &mut running).await;
    if result.is_err() {
        // Models beside the one that failed finish first (their results unused): a model
        // dropped mid-write could leave an upload open or write after staging is removed.
        while running.next().await.is_some() {}
    }
    result
}

/// A model being computed: its place in the run, its planned keys, and its staged table
/// with the time it took.
type Computing<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (usize, Vec<BTreeSet<String>>, Computed)> + Send + 'a>,
>;

/// What computing one model gave: its staged table, schema and duration, or why not.
type Computed = std::result::Result<(StagedTable, SchemaRef, Duration), Failed>;

/// A model that could not be computed.
struct Failed {
    error: Error,
    /// The memory pool refused an allocation.
    out_of_memory: bool,
}

/// Starts each model once the models it reads are staged (see [`run_models_until`]).
struct Scheduler<'a> {
    ctx: &'a SessionContext,
    models: &'a [Model],
    as_of: NaiveDate,
    config_params: &'a BTreeMap<String, ParamValue>,
    previous: &'a Previous<'a>,
    staging: &'a Staging,
    previous_schema: Arc<MemorySchemaProvider>,
}

impl<'a> Scheduler<'a> {
    /// Runs the models, up to `run.concurrency` side by side, started in the run's order as
    /// soon as the models they read (current or previous tables) are staged; with one at a
    /// time, and for `explain` (which stops at a model), they run in that order. A model
    /// that runs out of memory beside others is rerun alone once they finish.
    async fn schedule(
        &self,
        run: Run<'_>,
        running: &mut futures::stream::FuturesUnordered<Computing<'a>>,
    ) -> Result<(Vec<ModelOutput>, Option<DataFrame>)> {
        use futures::stream::StreamExt;
        let models = self.models;
        let names: BTreeSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
        let limit = if run.until.is_some() {
            1
        } else {
            run.concurrency.max(1)
        };
        let mut finished: Vec<Option<ModelOutput>> = vec![None; models.len()];
        let mut started = vec![false; models.len()];
        // Whether another model ran while it did (it shared the memory pool).
        let mut shared = vec![false; models.len()];
        // Models to rerun alone, one by one, once the running ones finish.
        let mut reruns: std::collections::VecDeque<usize> = Default::default();
        // The keys of the staged models, for the models downstream.
        let mut known: HashMap<String, Vec<BTreeSet<String>>> = HashMap::new();
        loop {
            let mut starting = Vec::new();
            match reruns.front() {
                // Alone: nothing else starts before it finishes.
                Some(&position) if running.is_empty() => {
                    reruns.pop_front();
                    starting.push(position);
                }
                Some(_) => {}
                None => {
                    for (position, model) in models.iter().enumerate() {
                        if running.len() + starting.len() >= limit {
                            break;
                        }
                        let ready = !started[position]
                            && model
                                .tables_read()
                                .filter(|d| names.contains(d.as_str()))
                                .all(|d| finished.iter().flatten().any(|o| &o.name == d));
                        if ready {
                            started[position] = true;
                            starting.push(position);
                        }
                    }
                }
            }
            for position in starting {
                let model = &models[position];
                let staged: Vec<&ModelOutput> = finished.iter().flatten().collect();
                let (df, params) = self.plan(model, &staged).await?;
                if run.until == Some(model.name.as_str()) {
                    let outputs = finished.into_iter().flatten().collect();
                    return Ok((outputs, Some(df)));
                }
                if !running.is_empty() {
                    shared[position] = true;
                    for (p, s) in shared.iter_mut().enumerate() {
                        *s |= started[p] && finished[p].is_none() && p != position;
                    }
                }
                debug!(model = %model.name, beside = running.len(), "model started");
                let unique_keys = crate::models::keys::unique_keys(&df, &known);
                let progress =
                    crate::progress::ModelProgress::start(&model.name, position + 1, models.len());
                let (ctx, staging) = (self.ctx, self.staging);
                running.push(Box::pin(async move {
                    let clock = Instant::now();
                    let computed = compute_model(ctx, model, &params, df, staging).await;
                    let computed = computed.map(|(staged, schema)| {
                        let duration = clock.elapsed();
                        progress.finish(&model.name, staged.rows, duration);
                        (staged, schema, duration)
                    });
                    (position, unique_keys, computed)
                }));
            }
            let Some((position, unique_keys, computed)) = running.next().await else {
                break;
            };
            let model = &models[position];
            let (staged, schema, duration) = match computed {
                Ok(c) => c,
                Err(Failed {
                    error,
                    out_of_memory: true,
                }) if shared[position] => {
                    warn!(model = %model.name, %error,
                        "model ran out of memory beside other models; rerunning it alone once they finish");
                    self.staging
                        .out
                        .delete_prefix(&self.staging.table_rel(&model.name, model.header.publish))
                        .await?;
                    shared[position] = false;
                    reruns.push_back(position);
                    continue;
                }
                Err(f) => return Err(f.error),
            };
            info!(model = %model.name, rows = staged.rows, duration_ms = duration.as_millis() as u64, "model computed");
            let output = ModelOutput {
                name: model.name.clone(),
                file: model.file.clone(),
                schema,
                rows: staged.rows,
                duration,
                publish: model.header.publish,
                partition_by: model.header.partition_by.clone(),
                staged,
                unique_keys,
            };
            known.extend(known_keys(model, &output, self.staging));
            finished[position] = Some(output);
            failpoint::hit("staging").await;
        }
        if let Some(position) = finished.iter().position(Option::is_none) {
            let model = &models[position];
            return Err(Error::Model {
                file: model.file.clone(),
                model: model.name.clone(),
                message: "was never started: a model it reads did not run (internal error)".into(),
            });
        }
        Ok((finished.into_iter().flatten().collect(), None))
    }

    /// Plans `model` over the staged tables, with `previous.*` registered; returns the plan
    /// and its bound parameters (to plan it again, should it rerun on sort-merge joins).
    async fn plan(
        &self,
        model: &Model,
        staged: &[&ModelOutput],
    ) -> Result<(DataFrame, BTreeMap<String, ScalarValue>)> {
        let params = model_params(model, self.as_of, self.config_params)?;
        register_previous_deps(
            self.ctx,
            model,
            &params,
            &self.previous_schema,
            self.previous,
            staged,
        )
        .await?;
        Ok((plan_model(self.ctx, model, &params).await?, params))
    }
}

/// The output schema of a model that reads its own previous snapshot (`previous.<self>`,
/// e.g. `clv_model`'s fallback to the previous fit): planned with `previous.<self>` as an
/// empty table of NULL-typed columns named as the model documents its columns, then again
/// with the schema that gave, until it no longer changes (at most 4 plans). Leaves
/// `previous.<self>` registered, empty, with that schema.
async fn self_referencing_schema(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
    previous_schema: &MemorySchemaProvider,
) -> Result<SchemaRef> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut schema: SchemaRef = Arc::new(Schema::new(
        model
            .header
            .columns
            .keys()
            .map(|c| Field::new(c, DataType::Null, true))
            .collect::<Vec<_>>(),
    ));
    for _ in 0..4 {
        previous_schema
            .deregister_table(&model.name)
            .map_err(|e| model_error(model, e))?;
        let table = empty_table(schema.clone()).map_err(|e| model_error(model, e))?;
        previous_schema
            .register_table(model.name.clone(), table)
            .map_err(|e| model_error(model, e))?;
        let df = plan_model(ctx, model, params).await?;
        let planned: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        if planned == schema {
            break;
        }
        schema = planned;
    }
    Ok(schema)
}

/// Registers `previous.<dep>` for each previous table `model` reads: the previous
/// snapshot's table conformed to the schema of the model computed in this run (empty when
/// the previous snapshot lacks it). A model reading its own previous snapshot takes the
/// schema it plans to ([`self_referencing_schema`]).
async fn register_previous_deps(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
    previous_schema: &MemorySchemaProvider,
    previous: &Previous<'_>,
    outputs: &[&ModelOutput],
) -> Result<()> {
    for dep in &model.previous_deps {
        let target = if dep == &model.name {
            self_referencing_schema(ctx, model, params, previous_schema).await?
        } else if previous_schema.table_exist(dep) {
            continue;
        } else {
            match outputs.iter().find(|o| &o.name == dep) {
                Some(current) => current.schema.clone(),
                None => {
                    return Err(Error::Model {
                        file: model.file.clone(),
                        model: model.name.clone(),
                        message: format!(
                            "`{PREVIOUS_SCHEMA}.{dep}` needs model `{dep}` to run first, to know its schema"
                        ),
                    })
                }
            }
        };
        let table = previous
            .table(ctx, dep, &target)
            .await
            .map_err(|e| Error::Output {
                uri: previous.output.loc.uri.clone(),
                operation: format!("open the previous snapshot of {dep}"),
                message: redact(&e.strip_backtrace()),
            })?;
        // A model reading its own previous snapshot planned it as an empty table first.
        previous_schema
            .deregister_table(dep)
            .map_err(|e| model_error(model, e))?;
        previous_schema
            .register_table(dep.clone(), table)
            .map_err(|e| model_error(model, e))?;
    }
    Ok(())
}

/// Executes a planned model into staging (rerunning it on sort-merge joins if hash joins
/// ran out of memory) and registers the staged table for the models downstream.
async fn compute_model(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
    df: DataFrame,
    staging: &Staging,
) -> std::result::Result<(StagedTable, SchemaRef), Failed> {
    let failed = |error: Error| Failed {
        error,
        out_of_memory: false,
    };
    let planned = df.schema().as_arrow().clone();
    check_partition_by(model, &Arc::new(planned.clone())).map_err(failed)?;
    if failpoint::fails("out_of_memory") {
        return Err(Failed {
            error: model_error(
                model,
                DataFusionError::ResourcesExhausted("failpoint out_of_memory".into()),
            ),
            out_of_memory: true,
        });
    }
    let stage = |df: DataFrame| {
        staging.write_table(
            df,
            &model.name,
            model.header.publish,
            &model.header.partition_by,
        )
    };
    let staged = match stage(df).await {
        Err(StageError::Engine(e)) if out_of_memory_in_hash_join(ctx, &e) => {
            // Hash joins are fast but keep their build side in memory; sort-merge joins
            // spill. Rerun the model with them, from a clean staging directory.
            warn!(model = %model.name, error = %redact(&e.strip_backtrace()),
                "model ran out of memory with hash joins; rerunning it with sort-merge joins, which spill");
            staging
                .out
                .delete_prefix(&staging.table_rel(&model.name, model.header.publish))
                .await
                .map_err(failed)?;
            let mut state = ctx.state();
            state.config_mut().options_mut().optimizer.prefer_hash_join = false;
            let df = plan_model_with(state, model, params)
                .await
                .map_err(failed)?;
            stage(df).await
        }
        other => other,
    };
    let staged = staged.map_err(|e| Failed {
        out_of_memory: matches!(&e, StageError::Engine(e) if out_of_memory(e)),
        error: stage_error(model, e),
    })?;
    let (table, schema) = open_staged(ctx, &staged, &staging.out.loc, &planned)
        .await
        .map_err(|e| failed(model_error(model, e)))?;
    ctx.register_table(model.name.as_str(), table)
        .map_err(|e| failed(model_error(model, e)))?;
    Ok((staged, schema))
}

/// True when the memory pool refused an allocation while the session prefers hash joins,
/// whose build sides cannot spill (a sort-merge plan may fit where they did not).
fn out_of_memory_in_hash_join(ctx: &SessionContext, e: &DataFusionError) -> bool {
    ctx.state().config().options().optimizer.prefer_hash_join && out_of_memory(e)
}

/// True when the memory pool refused an allocation.
fn out_of_memory(e: &DataFusionError) -> bool {
    matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
}

/// A staging failure as a model error naming the file.
fn stage_error(model: &Model, e: StageError) -> Error {
    match e {
        StageError::Engine(e) => {
            let mut err = model_error(model, e);
            if let Error::Model { message, .. } = &mut err {
                *message = redact(&format!("cannot write table: {message}"));
            }
            err
        }
        StageError::PartitionValue { column, value } => Error::Model {
            file: model.file.clone(),
            model: model.name.clone(),
            message: format!(
                "partition column `{column}` has the value `{value}`, which contains `=` and cannot be a hive partition value"
            ),
        },
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn count_query(ctx: &SessionContext, sql: &str) -> std::result::Result<i64, DataFusionError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .filter(|a| !a.is_empty() && !a.is_null(0))
                .map(|a| a.value(0))
        })
        .unwrap_or(0))
}

/// One declared check (except `row_count`): its label (with `{n}` for the count) and the
/// SQL counting the offending rows; for a check judged row by row (not_null,
/// accepted_values, expression) also the predicate of an offending row, so that a model's
/// row checks can be counted in one scan.
pub struct CheckQuery {
    pub label: String,
    pub sql: String,
    pub row_predicate: Option<String>,
    /// The columns of a `unique` check.
    pub unique: Option<BTreeSet<String>>,
}

/// The count queries of a model's declared checks (except `row_count`).
pub fn check_queries(model: &Model) -> Vec<CheckQuery> {
    let checks = &model.header.checks;
    let t = quote_ident(&model.name);
    let mut queries: Vec<CheckQuery> = Vec::new();
    let row_check = |label: String, predicate: String| CheckQuery {
        label,
        sql: format!("select count(*) from {t} where {predicate}"),
        row_predicate: Some(predicate),
        unique: None,
    };
    for cols in &checks.unique {
        // Rows with a NULL key take no part, as in dbt and SQL's UNIQUE (`not_null`
        // is the check for those).
        let keys: Vec<String> = unique_columns(cols).map(quote_ident).collect();
        let present = keys
            .iter()
            .map(|k| format!("{k} is not null"))
            .collect::<Vec<_>>()
            .join(" and ");
        let list = keys.join(", ");
        queries.push(CheckQuery {
            label: format!("unique({cols}): {{n}} duplicated value(s)"),
            sql: format!("select count(*) from (select {list} from {t} where {present} group by {list} having count(*) > 1)"),
            row_predicate: None,
            unique: Some(unique_columns(cols).map(str::to_string).collect()),
        });
    }
    for c in &checks.not_null {
        queries.push(row_check(
            format!("not_null({c}): {{n}} NULL row(s)"),
            format!("{} is null", quote_ident(c)),
        ));
    }
    for (c, values) in &checks.accepted_values {
        let list: Vec<String> = values.iter().map(|v| quote_str(v)).collect();
        queries.push(row_check(
            format!(
                "accepted_values({c}): {{n}} row(s) outside [{}]",
                values.join(", ")
            ),
            format!(
                "{c} is not null and cast({c} as varchar) not in ({})",
                list.join(", "),
                c = quote_ident(c)
            ),
        ));
    }
    for e in &checks.expression {
        queries.push(row_check(
            format!("expression({e}): {{n}} row(s) violate it"),
            format!("not coalesce(({e}), false)"),
        ));
    }
    for (c, target) in &checks.relationships {
        // A target that is not `model.column` fails to plan and is reported as such.
        let (tm, tc) = target.split_once('.').unwrap_or((target, ""));
        queries.push(CheckQuery {
            label: format!("relationships({c} -> {target}): {{n}} value(s) missing from {target}"),
            sql: format!(
                "select count(*) from {t} a where a.{c} is not null and not exists (select 1 from {tm} b where b.{tc} = a.{c})",
                c = quote_ident(c),
                tm = quote_ident(tm),
                tc = quote_ident(tc)
            ),
            row_predicate: None,
            unique: None,
        });
    }
    queries
}

/// The counts of a model's row checks from one scan of its table; None when that query
/// fails (each check is then run alone, to say which one cannot run).
async fn row_check_counts(
    ctx: &SessionContext,
    table: &str,
    queries: &[CheckQuery],
) -> Option<Vec<i64>> {
    let predicates: Vec<&String> = queries
        .iter()
        .filter_map(|q| q.row_predicate.as_ref())
        .collect();
    if predicates.len() < 2 {
        return None;
    }
    let counts: Vec<String> = predicates
        .iter()
        .enumerate()
        .map(|(i, p)| format!("count(*) filter (where {p}) as c{i}"))
        .collect();
    let sql = format!("select {} from {table}", counts.join(", "));
    let batches = ctx.sql(&sql).await.ok()?.collect().await.ok()?;
    let batch = batches.first()?;
    (0..predicates.len())
        .map(|i| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .filter(|a| a.len() == 1 && !a.is_null(0))
                .map(|a| a.value(0))
        })
        .collect()
}

/// A staged model's keys for [`crate::models::keys::unique_keys`] downstream, by its staging
/// directory: those its plan proves, and those its `unique` checks of severity `error`
/// declare (a run whose check fails publishes nothing, so a model downstream may rely on it).
fn known_keys(
    model: &Model,
    output: &ModelOutput,
    staging: &Staging,
) -> Option<(String, Vec<BTreeSet<String>>)> {
    let location = crate::models::keys::location_key(&staging.out.loc.dir_url(&output.staged.rel))?;
    let checks = &model.header.checks;
    let mut keys = output.unique_keys.clone();
    if checks.severity == Severity::Error {
        keys.extend(
            checks
                .unique
                .iter()
                .map(|cols| unique_columns(cols).map(str::to_string).collect()),
        );
    }
    Some((location, keys))
}

/// What checks and data tests found: failures of severity `error` (the run publishes
/// nothing) and of severity `warn` (logged, and kept in the manifest and the report).
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Findings {
    fn add(&mut self, severity: Severity, line: String) {
        match severity {
            Severity::Warn => {
                warn!("{line}");
                self.warnings.push(line);
            }
            Severity::Error => self.errors.push(line),
        }
    }

    /// Both sets of findings, these first.
    pub fn extend(&mut self, other: Findings) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

/// Runs every model's declared checks against its computed table. A `unique` check that
/// one of the model's [`crate::models::keys::unique_keys`] implies (in `outputs`) holds by
/// construction and is skipped.
pub async fn run_checks(
    ctx: &SessionContext,
    models: &[Model],
    outputs: &[ModelOutput],
) -> Result<Findings> {
    use futures::StreamExt;
    // The models' checks are independent queries over staged tables: a few run side by
    // side (most are small scans that leave a core idle), reported in the models' order; a
    // check that cannot run ends the phase (dropping the stream cancels the others).
    let mut checked = futures::stream::iter(models)
        .map(|model| async move { (model, model_check_findings(ctx, model, outputs).await) })
        .buffered(CONCURRENT_CHECKS);
    let mut findings = Findings::default();
    while let Some((model, found)) = checked.next().await {
        for f in found? {
            let line = format!("{}: model `{}` check {f}", model.file, model.name);
            findings.add(model.header.checks.severity, line);
        }
    }
    Ok(findings)
}

/// Models whose checks run at the same time.
const CONCURRENT_CHECKS: usize = 4;

/// What the checks of `model` found (one line per failed check).
async fn model_check_findings(
    ctx: &SessionContext,
    model: &Model,
    outputs: &[ModelOutput],
) -> Result<Vec<String>> {
    let checks = &model.header.checks;
    let t = quote_ident(&model.name);
    let output = outputs.iter().find(|o| o.name == model.name);
    let keys: &[BTreeSet<String>] = output.map(|o| o.unique_keys.as_slice()).unwrap_or_default();
    let queries: Vec<CheckQuery> = check_queries(model)
        .into_iter()
        .filter(|q| {
            let Some(cols) = &q.unique else { return true };
            let proven = keys.iter().any(|k| k.is_subset(cols));
            if proven {
                debug!(model = %model.name, columns = ?cols, "unique check holds by the model's plan; not queried");
            }
            !proven
        })
        .collect();
    let mut row_counts = row_check_counts(ctx, &t, &queries)
        .await
        .unwrap_or_default()
        .into_iter();
    let mut found = Vec::new();
    for CheckQuery {
        label,
        sql,
        row_predicate,
        ..
    } in queries
    {
        if let Some(n) = row_predicate.and_then(|_| row_counts.next()) {
            if n > 0 {
                found.push(label.replace("{n}", &n.to_string()));
            }
            continue;
        }
        let n = count_query(ctx, &sql).await.map_err(|e| Error::Model {
            file: model.file.clone(),
            model: model.name.clone(),
            message: format!(
                "check {} cannot run: {}",
                label.split(':').next().unwrap_or(""),
                e.strip_backtrace()
            ),
        })?;
        if n > 0 {
            found.push(label.replace("{n}", &n.to_string()));
        }
    }
    if let Some(rc) = &checks.row_count {
        // The rows the model staged; counted only for a table computed elsewhere.
        let n = match output {
            Some(o) => o.rows,
            None => count_query(ctx, &format!("select count(*) from {t}"))
                .await
                .map_err(|e| model_error(model, e))? as u64,
        };
        if rc.min.is_some_and(|m| n < m) || rc.max.is_some_and(|m| n > m) {
            found.push(format!(
                "row_count: {n} row(s), expected {}..{}",
                rc.min.map(|m| m.to_string()).unwrap_or_default(),
                rc.max.map(|m| m.to_string()).unwrap_or_default()
            ));
        }
    }
    Ok(found)
}

/// The data tests whose tables all exist in this run (a `--select` run skips the others),
/// or the error naming a test that reads a table that is neither an input nor a model.
pub fn runnable_tests<'t>(
    tests: &'t [DataTest],
    all_models: &std::collections::BTreeSet<String>,
    computed: &std::collections::BTreeSet<String>,
) -> Result<Vec<&'t DataTest>> {
    let mut runnable = Vec::new();
    for t in tests {
        let m = &t.model;
        let tables = m.deps.iter().chain(m.previous_deps.iter());
        if let Some(unknown) = tables.clone().find(|d| !all_models.contains(*d)) {
            let mut known: Vec<String> = INPUT_TABLES.iter().map(|s| s.to_string()).collect();
            known.extend(all_models.iter().cloned());
            return Err(Error::UnknownTable {
                file: m.file.clone(),
                model: m.name.clone(),
                table: unknown.clone(),
                known: known.join(", "),
            });
        }
        match tables.clone().find(|d| !computed.contains(*d)) {
            Some(missing) => {
                info!(test = %m.name, table = %missing, "data test skipped: its table is not computed in this run")
            }
            None => runnable.push(t),
        }
    }
    Ok(runnable)
}

/// Runs the data tests after the models: a test fails when its query returns rows (a
/// finding names the test, the count and up to 5 sample rows).
pub async fn run_data_tests(
    ctx: &SessionContext,
    tests: &[&DataTest],
    as_of: NaiveDate,
    config_params: &BTreeMap<String, ParamValue>,
) -> Result<Findings> {
    const SAMPLE: usize = 5;
    let mut findings = Findings::default();
    for t in tests {
        let m = &t.model;
        let params = model_params(m, as_of, config_params)?;
        let df = plan_model(ctx, m, &params).await?;
        let count = df.clone().count().await.map_err(|e| model_error(m, e))?;
        if count == 0 {
            info!(test = %m.name, "data test passed");
            continue;
        }
        let sample = df
            .limit(0, Some(SAMPLE))
            .map_err(|e| model_error(m, e))?
            .collect()
            .await
            .map_err(|e| model_error(m, e))?;
        let table = datafusion::arrow::util::pretty::pretty_format_batches(&sample)
            .map(|t| t.to_string())
            .unwrap_or_else(|e| format!("(rows cannot be shown: {e})"));
        let line = format!(
            "{}: data test `{}` returned {count} row(s){}:\n{table}",
            m.file,
            m.name,
            if count > SAMPLE {
                format!(", the first {SAMPLE}")
            } else {
                String::new()
            }
        );
        findings.add(t.severity, line);
    }
    Ok(findings)
}

/// The `[params]` overrides (config file or `SEGFLOW_PARAM_*`) that no model or data test
/// uses or declares: (where it was set, name) — a typo that would otherwise pass silently.
pub fn unused_params<'m>(
    params: &BTreeMap<String, ParamValue>,
    models: impl IntoIterator<Item = &'m Model>,
) -> Vec<(String, String)> {
    let mut known: std::collections::BTreeSet<String> = ["as_of".to_string()].into();
    for m in models {
        known.extend(m.params_used.iter().cloned());
        known.extend(m.header.params.keys().map(|k| k.to_lowercase()));
    }
    params
        .iter()
        .filter(|(k, _)| !known.contains(&k.to_lowercase()))
        .map(|(k, v)| {
            let source = match v {
                ParamValue::Text(_) => format!("SEGFLOW_PARAM_{}", k.to_uppercase()),
                ParamValue::Typed(_) => format!("params.{k}"),
            };
            (source, k.clone())
        })
        .collect()
}

/// [`unused_params`] as the error a run stops with.
pub fn reject_unused_params<'m>(
    params: &BTreeMap<String, ParamValue>,
    models: impl IntoIterator<Item = &'m Model> + Clone,
) -> Result<()> {
    let unused = unused_params(params, models.clone());
    let Some((source, name)) = unused.first() else {
        return Ok(());
    };
    let mut known: std::collections::BTreeSet<String> = Default::default();
    for m in models {
        known.extend(m.params_used.iter().map(|p| format!("${p}")));
    }
    Err(Error::ConfigValue {
        key: source.clone(),
        message: format!(
            "no model or data test uses the parameter `${name}`{} (parameters used: {})",
            if unused.len() > 1 {
                format!(
                    " (nor {})",
                    unused[1..]
                        .iter()
                        .map(|(s, _)| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            },
            known.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}
