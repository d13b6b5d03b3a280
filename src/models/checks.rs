//! Checks and data tests of the computed models: unique, not_null, accepted_values,
//! relationships and row expressions from the front matter, and the `tests/*.sql` queries.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use tracing::{debug, info, warn};

use crate::config::ParamValue;
use crate::error::{Error, Result};
use crate::models::{unique_columns, DataTest, Model, Severity, INPUT_TABLES};

use super::*;

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) async fn count_query(
    ctx: &SessionContext,
    sql: &str,
) -> std::result::Result<i64, DataFusionError> {
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
    /// Queries this run's delta of a kept state model, not the whole table.
    pub on_delta: bool,
    /// The column of a `relationships` check, and the model and column it must be found in.
    pub relationship: Option<(String, String, String)>,
}

/// The count queries of a model's declared checks (except `row_count`) over its table.
pub fn check_queries(model: &Model) -> Vec<CheckQuery> {
    check_queries_on(model, None)
}

/// [`check_queries`]; with `delta` (the name of the table of this run's delta of a kept
/// state model, and the columns by which its rows replace the base's), the row checks and
/// the `unique` checks of column sets that include those columns query the delta alone:
/// the base was checked by the run that wrote it (the same models and checks, or the state
/// would not be used), and a base row whose replacing columns the delta holds is not read.
fn check_queries_on(model: &Model, delta: Option<(&str, &[String])>) -> Vec<CheckQuery> {
    let checks = &model.header.checks;
    let whole = quote_ident(&model.name);
    let rows_table = delta.map_or_else(|| whole.clone(), |(name, _)| quote_ident(name));
    let mut queries: Vec<CheckQuery> = Vec::new();
    let row_check = |label: String, predicate: String| CheckQuery {
        label,
        sql: format!("select count(*) from {rows_table} where {predicate}"),
        row_predicate: Some(predicate),
        unique: None,
        on_delta: delta.is_some(),
        relationship: None,
    };
    for cols in &checks.unique {
        let on_delta = delta.is_some_and(|(_, replaced_by)| {
            replaced_by
                .iter()
                .all(|c| unique_columns(cols).any(|u| u == c))
        });
        let t = if on_delta { &rows_table } else { &whole };
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
            on_delta,
            relationship: None,
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
                "select count(*) from {whole} a where a.{c} is not null and not exists (select 1 from {tm} b where b.{tc} = a.{c})",
                c = quote_ident(c),
                tm = quote_ident(tm),
                tc = quote_ident(tc)
            ),
            row_predicate: None,
            unique: None,
            on_delta: false,
            relationship: Some((c.clone(), tm.to_string(), tc.to_string())),
        });
    }
    queries
}

/// The counts of a model's row checks from one scan of its table; None when that query
/// fails (each check is then run alone, to say which one cannot run).
pub(crate) async fn row_check_counts(
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

/// The name under which an incremental run registers its delta of the kept state model
/// `model` (what that model's checks query; not a name a model can read).
pub(crate) fn delta_table(model: &str) -> String {
    format!("{model} (this run's delta)")
}

/// A staged model's keys for [`crate::models::keys::unique_keys`] downstream, by where it
/// is read from: those its plan proves, and those its `unique` checks of severity `error`
/// declare (a run whose check fails publishes nothing, so a model downstream may rely on
/// them). A delta of kept state, read over its base (at `base`, see
/// [`crate::models::keys::plan_location`]), has the same keys as the whole table it is part
/// of, and so has the base: the run that wrote it checked them.
pub(crate) fn known_keys(
    model: &Model,
    output: &ModelOutput,
    base: Option<String>,
) -> Vec<(String, Vec<BTreeSet<String>>)> {
    let checks = &model.header.checks;
    let declared: Vec<BTreeSet<String>> = match checks.severity {
        Severity::Error => checks
            .unique
            .iter()
            .map(|cols| unique_columns(cols).map(str::to_string).collect())
            .collect(),
        Severity::Warn => Vec::new(),
    };
    let mut known = Vec::new();
    if let Some(base) = base {
        known.push((base, declared.clone()));
    }
    if let Some(location) = output.location.clone() {
        let mut keys = output.unique_keys.clone();
        keys.extend(declared);
        known.push((location, keys));
    }
    known
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
pub(crate) const CONCURRENT_CHECKS: usize = 4;

/// What the checks of `model` found (one line per failed check).
pub(crate) async fn model_check_findings(
    ctx: &SessionContext,
    model: &Model,
    outputs: &[ModelOutput],
) -> Result<Vec<String>> {
    let checks = &model.header.checks;
    let t = quote_ident(&model.name);
    let output = outputs.iter().find(|o| o.name == model.name);
    // The keys its plan proves: of the whole table, or of the delta of a kept state table.
    let keys: &[BTreeSet<String>] = output.map(|o| o.unique_keys.as_slice()).unwrap_or_default();
    let delta_name = delta_table(&model.name);
    let delta = output.filter(|o| o.layered).map(|_| {
        (
            delta_name.as_str(),
            crate::models::incremental::replaced_by(model),
        )
    });
    let rows_table = match delta {
        Some((name, _)) => quote_ident(name),
        None => t.clone(),
    };
    let queries: Vec<CheckQuery> = check_queries_on(model, delta)
        .into_iter()
        .filter(|q| {
            if let Some((column, target, target_column)) = &q.relationship {
                // The column's values are the target column's, read where the target is.
                let source = output.and_then(|o| o.sources.get(column));
                let at_target = outputs.iter().find(|o| &o.name == target).and_then(|t| t.location.as_ref());
                let proven = matches!((source, at_target), (Some((at, c)), Some(t)) if at == t && c == target_column);
                if proven {
                    debug!(model = %model.name, column = %column, "relationships check holds by the model's plan (its values are the target's); not queried");
                }
                return !proven;
            }
            let Some(cols) = &q.unique else { return true };
            if delta.is_some() && !q.on_delta {
                return true;
            }
            let proven = keys.iter().any(|k| k.is_subset(cols));
            if proven {
                debug!(model = %model.name, columns = ?cols, "unique check holds by the model's plan; not queried");
            }
            !proven
        })
        .collect();
    let mut row_counts = row_check_counts(ctx, &rows_table, &queries)
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
            Some(o) if !o.layered => o.rows,
            _ => count_query(ctx, &format!("select count(*) from {t}"))
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
        // Sample rows without customer ids: a snapshot's warnings and report are not
        // rewritten when a customer is erased.
        let df = match df.schema().has_column_with_unqualified_name("customer_id") {
            true => df
                .drop_columns(&["customer_id"])
                .map_err(|e| model_error(m, e))?,
            false => df,
        };
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

/// What a run computes: every model in order, the ones selected (with what they read),
/// the data tests that can run on them, and the models to publish.
pub struct Selection {
    pub models: Vec<Model>,
    pub tests: Vec<DataTest>,
    pub publish_only: std::collections::BTreeSet<String>,
}

/// Discovers the models and data tests of `settings` and selects what a run computes. A
/// broken model, a cycle, an unused parameter or an unknown `--select` fails here, before
/// any I/O.
pub fn select_run(settings: &crate::config::Settings) -> Result<Selection> {
    let sources = ModelSources::of(settings);
    let models = order_models(discover_models(&sources)?)?;
    let tests = discover_tests(&sources)?;
    reject_unused_params(
        &settings.params,
        models.iter().chain(tests.iter().map(|t| &t.model)),
    )?;
    let all_models: std::collections::BTreeSet<String> =
        models.iter().map(|m| m.name.clone()).collect();
    let (models, publish_only) = select_models(models, &settings.select)?;
    let computed: std::collections::BTreeSet<String> =
        models.iter().map(|m| m.name.clone()).collect();
    let tests = runnable_tests(&tests, &all_models, &computed)?
        .into_iter()
        .cloned()
        .collect();
    Ok(Selection {
        models,
        tests,
        publish_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_models_delta_gets_its_row_checks_and_unique_checks_on_its_replacing_columns() {
        let model = crate::models::parse_model(
            "lines",
            "sql/lines.sql",
            "/*---\n[checks]\nunique = [\"customer_id, order_id\", \"order_id\"]\n\
             not_null = [\"order_id\"]\nexpression = [\"n > 0\"]\n\
             relationships = { customer_id = \"people.customer_id\" }\n---*/\n\
             select 'a' as customer_id, 'o' as order_id, 1 as n"
                .to_string(),
        )
        .unwrap();
        let replaced_by = ["customer_id".to_string(), "order_id".to_string()];
        let queries = check_queries_on(&model, Some(("lines (delta)", &replaced_by)));
        let by_label = |start: &str| {
            queries
                .iter()
                .find(|q| q.label.starts_with(start))
                .unwrap_or_else(|| panic!("no check {start}"))
        };
        for (label, on_delta) in [
            ("unique(customer_id, order_id)", true),
            ("unique(order_id)", false),
            ("not_null(order_id)", true),
            ("expression(n > 0)", true),
            ("relationships(customer_id", false),
        ] {
            let q = by_label(label);
            assert_eq!(q.on_delta, on_delta, "{label}");
            assert_eq!(
                q.sql.contains("\"lines (delta)\""),
                on_delta,
                "{label}: {}",
                q.sql
            );
        }
        // Without a delta every check reads the whole table.
        assert!(check_queries(&model)
            .iter()
            .all(|q| !q.on_delta && !q.sql.contains("delta")));
    }
}
