//! Planning: each model's SQL planned from its parsed AST with `$name` parameters typed and
//! bound by DataFusion (never pasted into the text), checked to be a read-only query;
//! planning errors carry `file:line:col` from DataFusion's diagnostics. `previous.<model>`
//! resolves to the newest earlier snapshot (or an empty table of the model's schema).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
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

use crate::config::{date_to_days, toml_to_scalar, ParamValue};
use crate::error::{Error, Result};
use crate::models::{parse_statement, type_placeholders, Model, PREVIOUS_SCHEMA};
use crate::publish::stage::{conform, StagedTable};
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
    /// Column sets the model's plan makes unique (see [`crate::models::keys::unique_keys`]);
    /// of the delta alone when `layered`.
    pub unique_keys: Vec<BTreeSet<String>>,
    /// Where models downstream read its staged table from (a [`crate::models::keys::location_key`]).
    pub location: Option<String>,
    /// Columns that pass on a table column's values unchanged, with that table's location
    /// and column (see [`crate::models::keys::column_sources`]).
    pub sources: BTreeMap<String, (String, String)>,
    /// A kept state model's delta, which models downstream read laid over the kept base
    /// (its rows replace the base's by [`crate::models::incremental::replaced_by`]).
    pub layered: bool,
}

/// The previous published snapshot, read as `previous.<model>`.
pub struct Previous<'a> {
    pub output: &'a Output,
    pub manifest: Option<&'a Manifest>,
    /// Erased customers: a snapshot an erasure has not rewritten yet may still hold them.
    pub erased: Option<&'a Arc<crate::privacy::ErasedIds>>,
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
        let found = self
            .manifest
            .and_then(|m| m.tables.get(model).map(|e| (m.as_of, e)))
            .filter(|(_, e)| e.rows > 0);
        match found {
            Some((as_of, entry)) => {
                let mut df = self.output.open_snapshot(ctx, model, entry, as_of).await?;
                let holds_customers = df.schema().has_column_with_unqualified_name("customer_id");
                if let Some(erased) = self.erased.filter(|_| holds_customers) {
                    df = crate::privacy::without_erased(erased, df)?;
                }
                // Parquet folders give partition columns back as strings; Delta typed.
                let as_strings: &[String] = match entry.delta_version {
                    Some(_) => &[],
                    None => &entry.partition_by,
                };
                Ok(conform(df, target, as_strings)?.into_view())
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
    if let Some(why) = crate::cluster::why_cancelled(&message) {
        message.push_str(&format!(" ({why})"));
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
pub(crate) async fn plan_model_with(
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
pub(crate) fn register_previous_schema(ctx: &SessionContext) -> Result<Arc<MemorySchemaProvider>> {
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

pub(crate) fn empty_table(
    schema: SchemaRef,
) -> std::result::Result<Arc<dyn TableProvider>, DataFusionError> {
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// Plans one model in the planning session: its output schema and the `orders` columns it
/// reads.
pub(crate) async fn plan_empty(
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
    check_personal_data(model, &schema, &settings.privacy)?;
    check_partition_by(model, &schema)?;
    if model.incremental() {
        // The merge, planned over empty kept and new rows of the model's schema, must give
        // the model's columns and types.
        let empty = || {
            empty_table(schema.clone())
                .and_then(|t| report.planner.read_table(t))
                .map_err(|e| model_error(model, e))
        };
        let merged =
            super::incremental::plan_merge(&report.planner, model, empty()?, empty()?).await?;
        super::incremental::conform_merge(model, merged, &schema)?;
    }
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

/// A published model must not output a column of personal data (`[privacy]`): an error
/// naming the file and the line of the query where the column first appears.
pub(crate) fn check_personal_data(
    model: &Model,
    schema: &SchemaRef,
    privacy: &crate::config::PrivacySettings,
) -> Result<()> {
    if !model.header.publish {
        return Ok(());
    }
    let Some(column) = schema
        .fields()
        .iter()
        .map(|f| f.name())
        .find(|c| privacy.forbids(c))
    else {
        return Ok(());
    };
    let file = match query_line_naming(&model.sql, column) {
        Some(line) => format!("{}:{line}", model.file),
        None => model.file.clone(),
    };
    Err(Error::PersonalData {
        file,
        model: model.name.clone(),
        column: column.clone(),
    })
}

/// The 1-based line of the first query line (after the front matter) that names `word`
/// (case-insensitive, as a whole identifier).
fn query_line_naming(sql: &str, word: &str) -> Option<usize> {
    let start = sql.find("---*/").map_or(0, |i| i + "---*/".len());
    let word = word.to_lowercase();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut offset = start;
    for line in sql[start..].split_inclusive('\n') {
        let lower = line.to_lowercase();
        let found = lower.match_indices(&word).any(|(i, _)| {
            let before = lower[..i].chars().next_back();
            let after = lower[i + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        });
        if found && !line.trim_start().starts_with("--") {
            return Some(crate::models::line_of(sql, offset));
        }
        offset += line.len();
    }
    None
}

/// Every `partition_by` column must be a column of the model.
pub(crate) fn check_partition_by(model: &Model, schema: &SchemaRef) -> Result<()> {
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

/// The output schema of a model that reads its own previous snapshot (`previous.<self>`,
/// e.g. `clv_model`'s fallback to the previous fit): planned with `previous.<self>` as an
/// empty table of NULL-typed columns named as the model documents its columns, then again
/// with the schema that gave, until it no longer changes (at most 4 plans). Leaves
/// `previous.<self>` registered, empty, with that schema.
pub(crate) async fn self_referencing_schema(
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
pub(crate) async fn register_previous_deps(
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
