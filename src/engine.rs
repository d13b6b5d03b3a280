//! Engine: plans and runs the models in dependency order, then runs their checks.
//!
//! Each model's SQL is planned from its parsed AST with `$name` parameters typed and bound
//! by DataFusion (never pasted into the text), checked to be a read-only query, executed
//! once, streaming its result to staging Parquet, and the staged table is registered for
//! the models downstream (no result is held in memory). Planning errors carry
//! `file:line:col` from DataFusion's diagnostics.

use std::collections::BTreeMap;
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
use tracing::{info, warn};

use crate::config::{date_to_days, toml_to_scalar, ParamValue};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::models::{parse_statement, type_placeholders, Model, Severity, PREVIOUS_SCHEMA};
use crate::publish::stage::{conform, open_dir, open_staged, StageError, StagedTable, Staging};
use crate::publish::{Manifest, Output};
use crate::storage::redact;

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

/// The columns of `orders` the models read. Each model is planned, not run, against empty
/// tables: `orders` with `orders_schema`, every model upstream with the schema it planned to,
/// and the live `customers` and `marketing_spend` of `ctx`; the optimizer projects each scan
/// of `orders` down to the columns the model needs. Staging then writes only those.
/// A model that fails to plan fails here, before any data is read.
pub async fn orders_columns_used(
    ctx: &SessionContext,
    settings: &crate::config::Settings,
    orders_schema: SchemaRef,
    models: &[Model],
    as_of: NaiveDate,
) -> Result<std::collections::BTreeSet<String>> {
    let planner = crate::session::build_session(settings)?;
    let empty =
        |schema: SchemaRef| -> std::result::Result<Arc<dyn TableProvider>, DataFusionError> {
            Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
        };
    let register = |name: &str, table: Arc<dyn TableProvider>| {
        planner
            .register_table(name, table)
            .map_err(|e| Error::engine(format!("register {name} for planning"), e))
    };
    for name in ["customers", "marketing_spend"] {
        let table = ctx
            .table_provider(name)
            .await
            .map_err(|e| Error::engine(format!("open {name}"), e))?;
        register(name, table)?;
    }
    register(
        "orders",
        empty(orders_schema).map_err(|e| Error::engine("empty orders", e))?,
    )?;
    let previous = register_previous_schema(&planner)?;

    let mut used = std::collections::BTreeSet::new();
    let mut planned: BTreeMap<String, SchemaRef> = BTreeMap::new();
    for model in models {
        for dep in &model.previous_deps {
            if let (false, Some(schema)) = (previous.table_exist(dep), planned.get(dep)) {
                let table = empty(schema.clone()).map_err(|e| model_error(model, e))?;
                previous
                    .register_table(dep.clone(), table)
                    .map_err(|e| model_error(model, e))?;
            }
        }
        let params = model_params(model, as_of, &settings.params)?;
        let df = plan_model(&planner, model, &params).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let plan = df
            .into_optimized_plan()
            .map_err(|e| model_error(model, e))?;
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
        register(
            &model.name,
            empty(schema.clone()).map_err(|e| model_error(model, e))?,
        )?;
        planned.insert(model.name.clone(), schema);
    }
    Ok(used)
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
) -> Result<Vec<ModelOutput>> {
    let previous_schema = register_previous_schema(ctx)?;
    let mut outputs: Vec<ModelOutput> = Vec::new();
    for model in models {
        let started = Instant::now();
        for dep in &model.previous_deps {
            if previous_schema.table_exist(dep) {
                continue;
            }
            let Some(current) = outputs.iter().find(|o| &o.name == dep) else {
                return Err(Error::Model {
                    file: model.file.clone(),
                    model: model.name.clone(),
                    message: format!(
                        "`{PREVIOUS_SCHEMA}.{dep}` needs model `{dep}` to run first, to know its schema"
                    ),
                });
            };
            let table = previous
                .table(ctx, dep, &current.schema)
                .await
                .map_err(|e| Error::Output {
                    uri: previous.output.loc.uri.clone(),
                    operation: format!("open the previous snapshot of {dep}"),
                    message: redact(&e.strip_backtrace()),
                })?;
            previous_schema
                .register_table(dep.clone(), table)
                .map_err(|e| model_error(model, e))?;
        }
        let params = model_params(model, as_of, config_params)?;
        let df = plan_model(ctx, model, &params).await?;
        let planned = df.schema().as_arrow().clone();
        for p in &model.header.partition_by {
            if planned.field_with_name(p).is_err() {
                return Err(Error::ModelFile {
                    file: model.file.clone(),
                    message: format!(
                        "partition_by column `{p}` is not a column of model `{}`",
                        model.name
                    ),
                });
            }
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
                    .await?;
                let mut state = ctx.state();
                state.config_mut().options_mut().optimizer.prefer_hash_join = false;
                stage(plan_model_with(state, model, &params).await?).await
            }
            other => other,
        }
        .map_err(|e| stage_error(model, e))?;
        let (table, schema) = open_staged(ctx, &staged, &staging.out.loc, &planned)
            .await
            .map_err(|e| model_error(model, e))?;
        ctx.register_table(model.name.as_str(), table)
            .map_err(|e| model_error(model, e))?;
        let duration = started.elapsed();
        info!(model = %model.name, rows = staged.rows, duration_ms = duration.as_millis() as u64, "model computed");
        outputs.push(ModelOutput {
            name: model.name.clone(),
            file: model.file.clone(),
            schema,
            rows: staged.rows,
            duration,
            publish: model.header.publish,
            partition_by: model.header.partition_by.clone(),
            staged,
        });
        failpoint::hit("staging").await;
    }
    Ok(outputs)
}

/// True when the memory pool refused an allocation while the session prefers hash joins,
/// whose build sides cannot spill (a sort-merge plan may fit where they did not).
fn out_of_memory_in_hash_join(ctx: &SessionContext, e: &DataFusionError) -> bool {
    ctx.state().config().options().optimizer.prefer_hash_join
        && matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
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

/// Runs every model's declared checks against its computed table. Returns the failures of
/// severity `error`; failures of severity `warn` are logged.
pub async fn run_checks(ctx: &SessionContext, models: &[Model]) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for model in models {
        let checks = &model.header.checks;
        let t = quote_ident(&model.name);
        let mut queries: Vec<(String, String)> = Vec::new();
        for cols in &checks.unique {
            // Rows with a NULL key take no part, as in dbt and SQL's UNIQUE (`not_null`
            // is the check for those).
            let keys: Vec<String> = cols.split(',').map(|c| quote_ident(c.trim())).collect();
            let present = keys
                .iter()
                .map(|k| format!("{k} is not null"))
                .collect::<Vec<_>>()
                .join(" and ");
            let list = keys.join(", ");
            queries.push((
                format!("unique({cols}): {{n}} duplicated value(s)"),
                format!("select count(*) from (select {list} from {t} where {present} group by {list} having count(*) > 1)"),
            ));
        }
        for c in &checks.not_null {
            queries.push((
                format!("not_null({c}): {{n}} NULL row(s)"),
                format!("select count(*) from {t} where {} is null", quote_ident(c)),
            ));
        }
        for (c, values) in &checks.accepted_values {
            let list: Vec<String> = values.iter().map(|v| quote_str(v)).collect();
            queries.push((
                format!("accepted_values({c}): {{n}} row(s) outside [{}]", values.join(", ")),
                format!(
                    "select count(*) from {t} where {c} is not null and cast({c} as varchar) not in ({})",
                    list.join(", "),
                    c = quote_ident(c)
                ),
            ));
        }
        for e in &checks.expression {
            queries.push((
                format!("expression({e}): {{n}} row(s) violate it"),
                format!("select count(*) from {t} where not coalesce(({e}), false)"),
            ));
        }
        for (c, target) in &checks.relationships {
            let Some((tm, tc)) = target.split_once('.') else {
                return Err(Error::ModelFile {
                    file: model.file.clone(),
                    message: format!("relationships.{c} must be `model.column`, found `{target}`"),
                });
            };
            queries.push((
                format!("relationships({c} -> {target}): {{n}} value(s) missing from {target}"),
                format!(
                    "select count(*) from {t} a where a.{c} is not null and not exists (select 1 from {tm} b where b.{tc} = a.{c})",
                    c = quote_ident(c),
                    tm = quote_ident(tm),
                    tc = quote_ident(tc)
                ),
            ));
        }
        let mut found = Vec::new();
        for (label, sql) in queries {
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
            let n = count_query(ctx, &format!("select count(*) from {t}"))
                .await
                .map_err(|e| model_error(model, e))? as u64;
            if rc.min.is_some_and(|m| n < m) || rc.max.is_some_and(|m| n > m) {
                found.push(format!(
                    "row_count: {n} row(s), expected {}..{}",
                    rc.min.map(|m| m.to_string()).unwrap_or_default(),
                    rc.max.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
        }
        for f in found {
            let line = format!("{}: model `{}` check {f}", model.file, model.name);
            if checks.severity == Severity::Warn {
                warn!("{line}");
            } else {
                failures.push(line);
            }
        }
    }
    Ok(failures)
}
