//! Section: lifecycle stages.

use arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::*;

use crate::error::{Error, Result};

use super::*;

pub(super) fn cast_i64(e: Expr) -> Expr {
    datafusion::logical_expr::cast(e, DataType::Int64)
}

pub(super) async fn lifecycle(tables: &Tables) -> Result<Option<Section>> {
    let Some(df) = tables.get("lifecycle", "lifecycle", &["stage"]) else {
        return Ok(None);
    };
    let counts = df
        .aggregate(vec![col("stage")], vec![count(lit(1)).alias("customers")])
        .map_err(|e| Error::engine("report: lifecycle stages of table lifecycle", e))?;
    let f = collect("lifecycle", counts).await?;
    let stage = f.strs("stage")?;
    let customers = f.i64s("customers")?;
    let mut idx: Vec<usize> = (0..f.len()).collect();
    idx.sort_by(|&a, &b| {
        let (sa, sb) = (
            stage[a].as_deref().unwrap_or(""),
            stage[b].as_deref().unwrap_or(""),
        );
        stage_rank(sa).cmp(&stage_rank(sb)).then(sa.cmp(sb))
    });
    let total: i64 = customers.iter().flatten().sum();
    let labels: Vec<String> = idx.iter().map(|&i| name_of(&stage[i])).collect();
    let values: Vec<f64> = idx
        .iter()
        .map(|&i| customers[i].unwrap_or(0) as f64)
        .collect();
    let share = |i: usize| (total > 0).then(|| customers[i].unwrap_or(0) as f64 / total as f64);
    let text: Vec<String> = idx
        .iter()
        .map(|&i| {
            format!(
                "{} ({})",
                fmt_int(customers[i].unwrap_or(0)),
                fmt_pct(share(i).unwrap_or(0.0))
            )
        })
        .collect();
    let mut section = Section::new(
        "lifecycle",
        "Lifecycle",
        "Where the customers stand at as_of: new, active, at risk, lapsed or churned, from \
         their first and last purchase.",
    );
    section.figure(
        "lifecycle_funnel",
        "Customers by lifecycle stage",
        charts::funnel("lifecycle", &labels, &values, &text)?,
    );
    section.tables.push(DataTable {
        source: "lifecycle".to_string(),
        caption: "Customers by stage".to_string(),
        headers: ["stage", "customers", "share"].map(String::from).to_vec(),
        rows: Row::per_label(&idx, &labels, |i| {
            vec![
                Value::i("customers", customers[i]).derived(),
                Value::f("share", share(i), fmt_pct).derived(),
            ]
        }),
        open: false,
    });
    Ok(Some(section))
}
