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

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::JoinType;
use datafusion::logical_expr::{col, Expr};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::resolve::resolve_table_references;

use crate::error::{Error, Result};
use crate::models::{line_of, parse_statement, Model};

/// The tables a `merge` query reads: the kept rows of the keys the new lines touch, and the
/// model's query over the new lines.
pub const MERGE_TABLES: [&str; 2] = ["state", "slice"];

/// The rules an incremental model's front matter and query must follow (before anything is
/// planned); a table model must not carry a `merge`.
pub fn validate(model: &Model) -> Result<()> {
    let fail = |line: Option<usize>, message: String| {
        let file = match line {
            Some(l) => format!("{}:{l}", model.file),
            None => model.file.clone(),
        };
        Err(Error::ModelFile { file, message })
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
    let others: Vec<&String> = model
        .deps
        .iter()
        .chain(model.previous_deps.iter())
        .chain(model.inputs.iter().filter(|i| i.as_str() != "orders"))
        .collect();
    if !others.is_empty() || !model.inputs.contains("orders") {
        return fail(
            at,
            format!(
                "an incremental model reads the order lines (`orders`) and nothing else; this one reads {}",
                match others.is_empty() {
                    true => "no `orders`".to_string(),
                    false => others
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
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
    let grain: Vec<&str> = model.header.grain.iter().map(String::as_str).collect();
    let keys = slice
        .clone()
        .select(grain.iter().map(|g| col(*g)).collect::<Vec<Expr>>())
        .and_then(|k| k.distinct())
        .map_err(err)?;
    crate::publish::stage::conform(kept, schema, &[])
        .and_then(|kept| kept.join(keys, join, &grain, &grain, None))
        .map_err(err)
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

/// Plans `model`'s merge query in `ctx` with `state` and `slice` registered for it (and
/// removed again: models are planned one at a time).
pub async fn plan_merge(
    ctx: &SessionContext,
    model: &Model,
    state: DataFrame,
    slice: DataFrame,
) -> Result<DataFrame> {
    let err = |e: datafusion::error::DataFusionError| crate::models::model_error(model, e);
    let merge = model.header.merge.as_deref().unwrap_or_default();
    ctx.register_table("state", state.into_view())
        .map_err(err)?;
    ctx.register_table("slice", slice.into_view())
        .map_err(err)?;
    let planned = async {
        let statement = parse_statement(&model.file, merge)?;
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(err)?;
        Ok(DataFrame::new(ctx.state(), plan))
    }
    .await;
    for t in MERGE_TABLES {
        let _ = ctx.deregister_table(t);
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
    fn each_broken_rule_is_named_with_the_file_and_line() {
        let head = "grain = [\"k\"]\npublish = false\nmaterialized = \"incremental\"";
        let lines = "select customer_id as k, count(*) as n from orders group by 1";
        let e = error_of(head, lines);
        assert!(
            e.contains("models/m.sql:4") && e.contains("needs a `merge`"),
            "{e}"
        );
        let e = error_of(&format!("{head}\n{MERGE}"), "select k, n from rfm");
        assert!(
            e.contains("reads the order lines (`orders`) and nothing else") && e.contains("`rfm`"),
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
