//! Incremental models (`materialized = "incremental"`): line-level aggregates kept as state
//! between runs. A run that finds a state it can trust computes such a model over the new
//! order lines only (`slice`), reads the kept rows of the keys `slice` holds (`state`) and
//! runs the model's `merge` query over the two; its rows replace those keys' rows, every
//! other kept row stays. A full run computes the model from every line, as a table.
//!
//! What makes that exact: the model reads nothing but `orders` and no `$as_of`, so its rows
//! depend only on the lines; `merge` combines per key what the model's aggregates combine
//! (sums add, minima take the minimum, ...), so merging the new lines' rows into the old
//! ones gives the rows of all the lines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::catalog::TableProvider;
use datafusion::common::JoinType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{col, Expr};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::resolve::resolve_table_references;

use crate::error::{Error, Result};
use crate::models::{line_of, parse_statement, Model};

/// The tables a `merge` query reads: the kept rows of the keys the new lines touch, and the
/// model's query over the new lines.
pub const MERGE_TABLES: [&str; 2] = ["state", "slice"];

/// The key an incremental model over other incremental models is recomputed by.
pub use crate::models::touched::CUSTOMER;

/// Whether `model` is incremental over other incremental models (not over the lines): an
/// incremental run recomputes its rows of the customers the new lines touch.
pub fn by_customer(model: &Model) -> bool {
    model.incremental() && !model.inputs.contains("orders")
}

/// The columns by which an incremental model's new rows replace its kept rows: the grain of
/// a model over the lines; the customer of a model over other incremental models (every row
/// of a touched customer is recomputed, so a kept row of a key it no longer has goes too).
pub fn replaced_by(model: &Model) -> &[String] {
    static BY_CUSTOMER: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec![CUSTOMER.to_string()]);
    match by_customer(model) {
        true => BY_CUSTOMER.as_slice(),
        false => &model.header.grain,
    }
}

/// An incremental model over other models that reads a model which is not incremental
/// itself is an error naming the file (checked once every model is known): the first one.
pub fn validate_reads(models: &[Model]) -> Result<()> {
    match read_errors(models).into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Each incremental model over other models that reads a model which is not incremental,
/// with its error (for `segflow check`, which reports them all).
pub fn read_errors(models: &[Model]) -> Vec<(String, Error)> {
    let incremental: BTreeSet<&str> = models
        .iter()
        .filter(|m| m.incremental())
        .map(|m| m.name.as_str())
        .collect();
    let mut errors = Vec::new();
    for model in models.iter().filter(|m| by_customer(m)) {
        let tables: Vec<String> = model
            .deps
            .iter()
            .filter(|d| !incremental.contains(d.as_str()))
            .map(|d| format!("`{d}`"))
            .collect();
        if !tables.is_empty() {
            let file = located(model, key_line(&model.sql, "materialized"));
            let message = format!(
                "an incremental model over other models reads only incremental models (their \
                 kept rows of the touched customers); {} is not incremental",
                tables.join(", ")
            );
            errors.push((model.name.clone(), Error::ModelFile { file, message }));
        }
    }
    errors
}

/// The rules an incremental model's front matter and query must follow (before anything is
/// planned); a table model must not carry a `merge`.
pub fn validate(model: &Model) -> Result<()> {
    let fail = |line: Option<usize>, message: String| {
        Err(Error::ModelFile {
            file: located(model, line),
            message,
        })
    };
    let merge_line = key_line(&model.sql, "merge");
    if !model.incremental() {
        if model.header.merge.is_some() {
            return fail(
                merge_line,
                "`merge` is only for models with materialized = \"incremental\"".into(),
            );
        }
        return Ok(());
    }
    let at = key_line(&model.sql, "materialized");
    let Some(merge) = &model.header.merge else {
        return fail(
            at,
            "an incremental model needs a `merge` query in its front matter: how the rows of \
             the new lines (`slice`) merge into the kept rows of the same grain (`state`)"
                .into(),
        );
    };
    if model.header.publish || !model.header.partition_by.is_empty() {
        return fail(
            at,
            "an incremental model is internal: set publish = false (and no partition_by); \
             a table model that selects from it publishes it"
                .into(),
        );
    }
    if model.header.grain.is_empty() {
        return fail(
            at,
            "an incremental model needs a `grain`: the columns its merge replaces rows by".into(),
        );
    }
    let reads_lines = model.inputs.contains("orders");
    let others: Vec<&String> = model
        .previous_deps
        .iter()
        .chain(model.inputs.iter().filter(|i| i.as_str() != "orders"))
        .chain(model.deps.iter().filter(|_| reads_lines))
        .collect();
    if !others.is_empty() || (!reads_lines && model.deps.is_empty()) {
        return fail(
            at,
            format!(
                "an incremental model reads either the order lines (`orders`) or other incremental models, and nothing else; this one reads {}",
                match others.is_empty() {
                    true => "neither".to_string(),
                    false => others
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            ),
        );
    }
    if !reads_lines && !model.header.grain.iter().any(|g| g == CUSTOMER) {
        return fail(
            at,
            format!(
                "an incremental model over other incremental models is recomputed for the customers \
                 the new lines touch, so its grain includes `{CUSTOMER}`"
            ),
        );
    }
    if model.params_used.contains("as_of") {
        return fail(
            at,
            "an incremental model must not use $as_of: its kept rows have to hold for every later as_of"
                .into(),
        );
    }
    // The merge query: one query over `state` and `slice` (its own CTEs aside).
    let place = merge_place(&model.sql, merge);
    let shown = match place {
        Some(line) => format!("{} (merge, from line {line})", model.file),
        None => format!("{} (merge)", model.file),
    };
    let statement = parse_statement(&shown, merge)?;
    let (tables, _ctes) =
        resolve_table_references(&statement, true).map_err(|e| Error::ModelFile {
            file: shown.clone(),
            message: format!("cannot resolve table references: {e}"),
        })?;
    let unknown: BTreeSet<String> = tables
        .iter()
        .map(|t| t.to_string())
        .filter(|t| !MERGE_TABLES.contains(&t.as_str()))
        .collect();
    if !unknown.is_empty() {
        return fail(
            merge_line,
            format!(
                "the merge query reads only `state` and `slice`; it reads {}",
                unknown
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(())
}

/// `model`'s file, with `line` when known (`file:line`).
fn located(model: &Model, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", model.file),
        None => model.file.clone(),
    }
}

/// The 1-based line of the first front-matter line that sets `key`.
fn key_line(sql: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in sql.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            return Some(line_of(sql, offset));
        }
        offset += line.len();
        if t.starts_with("---*/") {
            break;
        }
    }
    None
}

/// The line where the merge query's text starts in the file, when it is there verbatim.
fn merge_place(sql: &str, merge: &str) -> Option<usize> {
    let text = merge.trim_start();
    let first = text.lines().next().filter(|l| !l.trim().is_empty())?;
    sql.find(first).map(|offset| line_of(sql, offset))
}

/// The new state of an incremental model: the kept rows (`kept`) whose grain `slice` does
/// not hold, and the merge of the others with `slice`, `merge` being the model's merge
/// query planned with `state` and `slice` registered. Conformed to `schema` (the model's
/// own output), so the state's types never drift from the model's.
pub fn merged_state(
    model: &Model,
    kept: DataFrame,
    slice: &DataFrame,
    merged: DataFrame,
    schema: &Schema,
) -> Result<DataFrame> {
    let untouched = by_slice_keys(model, kept, slice, schema, JoinType::LeftAnti)?;
    let merged = conform_merge(model, merged, schema)?;
    untouched
        .union(merged)
        .map_err(|e| crate::models::model_error(model, e))
}

/// The kept rows whose grain `slice` holds: what `merge` reads as `state`.
pub fn touched_state(model: &Model, kept: DataFrame, slice: &DataFrame) -> Result<DataFrame> {
    let schema = slice.schema().as_arrow().clone();
    by_slice_keys(model, kept, slice, &schema, JoinType::LeftSemi)
}

/// The kept rows, in `schema`'s columns and types, whose grain `slice` holds (`LeftSemi`)
/// or does not hold (`LeftAnti`).
fn by_slice_keys(
    model: &Model,
    kept: DataFrame,
    slice: &DataFrame,
    schema: &Schema,
    join: JoinType,
) -> Result<DataFrame> {
    let err = |e: datafusion::error::DataFusionError| crate::models::model_error(model, e);
    let grain: Vec<&str> = replaced_by(model).iter().map(String::as_str).collect();
    let keys = slice
        .clone()
        .select(grain.iter().map(|g| col(*g)).collect::<Vec<Expr>>())
        .and_then(|k| k.distinct())
        .map_err(err)?;
    let kept = crate::publish::stage::conform(kept, schema, &[]).map_err(err)?;
    // The kept rows of the touched customers first, by a join on the customer alone: the
    // kept state is bucketed by customer, so that join reads it where it lies, and the join
    // on the whole grain sees those rows only. (Joined on the whole grain at once, every
    // kept row was shuffled by it: 36 M rows at 100 M lines, spilling, for 72 k keys.)
    let kept = match join == JoinType::LeftSemi && grain.len() > 1 && grain.contains(&CUSTOMER) {
        true => {
            let customers = keys
                .clone()
                .select(vec![col(CUSTOMER)])
                .and_then(|k| k.distinct())
                .map_err(err)?;
            kept.join(
                customers,
                JoinType::LeftSemi,
                &[CUSTOMER],
                &[CUSTOMER],
                None,
            )
            .map_err(err)?
        }
        false => kept,
    };
    kept.join(keys, join, &grain, &grain, None).map_err(err)
}

/// The merge query's rows in the model's columns and types; a column it lacks, adds or
/// types differently is an error naming the model.
pub(crate) fn conform_merge(
    model: &Model,
    merged: DataFrame,
    schema: &Schema,
) -> Result<DataFrame> {
    let have = merged.schema().as_arrow().clone();
    let names =
        |s: &Schema| -> Vec<String> { s.fields().iter().map(|f| f.name().clone()).collect() };
    let (want_names, have_names) = (names(schema), names(&have));
    let missing: Vec<&String> = want_names
        .iter()
        .filter(|n| !have_names.contains(n))
        .collect();
    let extra: Vec<&String> = have_names
        .iter()
        .filter(|n| !want_names.contains(n))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(Error::Model {
            file: model.file.clone(),
            model: model.name.clone(),
            message: format!(
                "the merge query must give the model's columns{}{}",
                match missing.is_empty() {
                    true => String::new(),
                    false => format!("; it lacks {}", quoted(&missing)),
                },
                match extra.is_empty() {
                    true => String::new(),
                    false => format!("; it adds {}", quoted(&extra)),
                }
            ),
        });
    }
    for f in schema.fields() {
        let (_, h) = have.column_with_name(f.name()).expect("checked above");
        if h.data_type() != f.data_type() {
            return Err(Error::Model {
                file: model.file.clone(),
                model: model.name.clone(),
                message: format!(
                    "the merge query gives column `{}` as {}, the model as {}: cast it",
                    f.name(),
                    h.data_type(),
                    f.data_type()
                ),
            });
        }
    }
    merged
        .select(
            schema
                .fields()
                .iter()
                .map(|f| col(f.name()))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| crate::models::model_error(model, e))
}

fn quoted(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans `model`, incremental over other incremental models (see [`by_customer`]), over
/// its inputs' rows of the customers the run's new lines (`orders`) touch: the slice whose
/// rows replace those customers' kept rows.
pub async fn plan_touched(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
) -> Result<DataFrame> {
    let err = |e: DataFusionError| crate::models::model_error(model, e);
    let touched = crate::models::touched::touched_customers(ctx)
        .await
        .map_err(err)?;
    let mut restricted = Vec::new();
    for dep in &model.deps {
        let rows = ctx.table(dep.as_str()).await.map_err(err)?;
        let touched_only = |rows: DataFrame| crate::models::touched::restrict_to(&touched, rows);
        // A kept state table read over this run's delta: each layer restricted first.
        let provider = ctx.table_provider(dep.as_str()).await.map_err(err)?;
        let layered = provider
            .downcast_ref::<crate::publish::state::LayeredTable>()
            .and_then(|l| l.restricted(CUSTOMER, touched_only));
        let only = match layered {
            Some(only) => only,
            None => touched_only(rows),
        }
        .map_err(err)?;
        restricted.push((dep.as_str(), only.into_view()));
    }
    planned_with(
        ctx,
        model,
        restricted,
        crate::models::plan_model(ctx, model, params),
    )
    .await
}

/// Plans `model`'s merge query in `ctx` with `state` and `slice` registered for it.
pub async fn plan_merge(
    ctx: &SessionContext,
    model: &Model,
    state: DataFrame,
    slice: DataFrame,
) -> Result<DataFrame> {
    let merge = model.header.merge.as_deref().unwrap_or_default();
    let plan = async {
        let statement = parse_statement(&model.file, merge)?;
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| crate::models::model_error(model, e))?;
        Ok(DataFrame::new(ctx.state(), plan))
    };
    let tables = vec![
        (MERGE_TABLES[0], state.into_view()),
        (MERGE_TABLES[1], slice.into_view()),
    ];
    planned_with(ctx, model, tables, plan).await
}

/// Runs `plan` (a model's planning) with `tables` registered in `ctx` under their names,
/// for the planning only: a name registered before gets its table back after (models are
/// planned one at a time; a plan keeps the tables it resolved).
async fn planned_with<T>(
    ctx: &SessionContext,
    model: &Model,
    tables: Vec<(&str, Arc<dyn TableProvider>)>,
    plan: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut before = Vec::new();
    let mut registering = Ok(());
    for (name, table) in tables {
        let swapped = ctx
            .deregister_table(name)
            .and_then(|old| ctx.register_table(name, table).map(|_| old));
        match swapped {
            Ok(old) => before.push((name, old)),
            Err(e) => {
                registering = Err(crate::models::model_error(model, e));
                break;
            }
        }
    }
    let planned = match registering {
        Ok(()) => plan.await,
        Err(e) => Err(e),
    };
    for (name, old) in before.into_iter().rev() {
        let _ = ctx.deregister_table(name);
        if let Some(old) = old {
            let _ = ctx.register_table(name, old);
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use crate::models::parse_model;

    fn model(front: &str, query: &str) -> crate::error::Result<crate::models::Model> {
        let sql = format!("/*---\n{front}\n---*/\n{query}\n");
        parse_model("m", "models/m.sql", sql)
    }

    const MERGE: &str = "merge = \"\"\"\nselect k, sum(n) as n from (select * from state union all select * from slice) u group by k\n\"\"\"";

    fn error_of(front: &str, query: &str) -> String {
        match model(front, query) {
            Ok(_) => panic!("accepted:\n{front}\n{query}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_incremental_model_over_the_lines_with_a_merge_is_accepted() {
        let front =
            format!("grain = [\"k\"]\npublish = false\nmaterialized = \"incremental\"\n{MERGE}");
        let m = model(
            &front,
            "select customer_id as k, count(*) as n from orders group by 1",
        )
        .unwrap();
        assert!(m.incremental());
    }

    #[test]
    fn an_incremental_model_over_incremental_models_is_keyed_by_customer() {
        let front = "grain = [\"customer_id\"]\npublish = false\nmaterialized = \"incremental\"\nmerge = \"select * from slice\"";
        let totals = model(
            front,
            "select customer_id, count(*) as days from lines_by_day group by 1",
        )
        .unwrap();
        assert!(super::by_customer(&totals));
        let day_front = format!(
            "grain = [\"customer_id\"]\npublish = false\nmaterialized = \"incremental\"\n{MERGE}"
        );
        let days = crate::models::parse_model(
            "lines_by_day",
            "models/lines_by_day.sql",
            format!("/*---\n{day_front}\n---*/\nselect customer_id, count(*) as n from orders group by 1\n"),
        )
        .unwrap();
        assert!(!super::by_customer(&days));
        super::validate_reads(&[days.clone(), totals.clone()]).unwrap();
        // Over a table model: its rows of a customer may depend on other customers'.
        let table = crate::models::parse_model(
            "lines_by_day",
            "models/lines_by_day.sql",
            "select customer_id, count(*) as n from orders group by 1".into(),
        )
        .unwrap();
        let e = super::validate_reads(&[table, totals])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models/m.sql:4") && e.contains("`lines_by_day` is not incremental"),
            "{e}"
        );
    }

    #[test]
    fn each_broken_rule_is_named_with_the_file_and_line() {
        let head = "grain = [\"k\"]\npublish = false\nmaterialized = \"incremental\"";
        let lines = "select customer_id as k, count(*) as n from orders group by 1";
        let e = error_of(head, lines);
        assert!(
            e.contains("models/m.sql:4") && e.contains("needs a `merge`"),
            "{e}"
        );
        let e = error_of(
            &format!("{head}\n{MERGE}"),
            "select o.customer_id as k, count(*) as n from orders o join rfm r using (customer_id) group by 1",
        );
        assert!(
            e.contains("reads either the order lines (`orders`) or other incremental models")
                && e.contains("`rfm`"),
            "{e}"
        );
        let e = error_of(
            &format!("{head}\n{MERGE}"),
            "select customer_id as k, count(*) as n from orders where order_date <= $as_of group by 1",
        );
        assert!(e.contains("$as_of"), "{e}");
        let e = error_of("grain = [\"k\"]\npublish = false\nmaterialized = \"incremental\"\nmerge = \"select * from rfm\"", lines);
        assert!(
            e.contains("models/m.sql:5")
                && e.contains("reads only `state` and `slice`")
                && e.contains("`rfm`"),
            "{e}"
        );
        let e = error_of(&format!("{head}\n{MERGE}"), "select k, n from other_state");
        assert!(
            e.contains("models/m.sql:4") && e.contains("its grain includes `customer_id`"),
            "{e}"
        );
        let e = error_of(&format!("grain = [\"k\"]\n{MERGE}"), lines);
        assert!(e.contains("only for models with materialized"), "{e}");
        let e = error_of(
            &format!("grain = [\"k\"]\nmaterialized = \"incremental\"\n{MERGE}"),
            lines,
        );
        assert!(e.contains("internal"), "{e}");
        let e = error_of(
            &format!("publish = false\nmaterialized = \"incremental\"\n{MERGE}"),
            lines,
        );
        assert!(e.contains("needs a `grain`"), "{e}");
    }
}
