//! Section: predicted lifetime value and the model's backtest.

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use datafusion::functions_aggregate::expr_fn::{avg, count, sum};
use datafusion::prelude::*;
use futures::StreamExt;

use crate::error::{Error, Result};
use charts::Bars;

use super::*;

/// Upper edges of the CLV histogram's bins: 1, 2, 5, 10, 20, 50, ... (the first bin holds
/// everything below 1, the last everything from its lower edge up).
pub(super) fn clv_edges() -> Vec<f64> {
    let mut edges = vec![];
    let mut decade = 1.0;
    while decade < 1e12 {
        edges.extend([decade, 2.0 * decade, 5.0 * decade]);
        decade *= 10.0;
    }
    edges
}

pub(super) async fn clv(tables: &Tables) -> Result<Option<Section>> {
    let Some(df) = tables.get("clv", "clv", &["clv_365d", "churn_risk", "p_alive"]) else {
        return Ok(None);
    };
    let mut section = Section::new(
        "clv",
        "Customer lifetime value",
        "Predicted value of each customer over the next 365 days (BG/NBD purchases × \
         Gamma-Gamma spend) and the risk that the customer has stopped buying.",
    );
    // Histogram: one streaming pass over the column.
    let edges = clv_edges();
    let mut bins = vec![0i64; edges.len() + 1];
    let mut no_value = 0i64;
    let mut stream = df
        .clone()
        .select_columns(&["clv_365d"])
        .map_err(|e| Error::engine("report: read table clv", e))?
        .execute_stream()
        .await
        .map_err(|e| Error::engine("report: read table clv", e))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| Error::engine("report: read table clv", e))?;
        let a = cast(batch.column(0), &DataType::Float64)
            .map_err(|e| report_err("clv", format!("column `clv_365d`: {e}")))?;
        for v in a.as_primitive::<Float64Type>().iter() {
            match v {
                Some(x) if x.is_finite() => bins[edges.partition_point(|e| *e <= x)] += 1,
                _ => no_value += 1,
            }
        }
    }
    let first = bins.iter().position(|c| *c > 0);
    let last = bins.iter().rposition(|c| *c > 0);
    if let (Some(first), Some(last)) = (first, last) {
        let lower = |b: usize| if b == 0 { None } else { Some(edges[b - 1]) };
        let upper = |b: usize| edges.get(b).copied();
        let name = |b: usize| match (lower(b), upper(b)) {
            (None, Some(u)) => format!("< {}", fmt_axis(u)),
            (Some(l), Some(u)) => format!("{}–{}", fmt_axis(l), fmt_axis(u)),
            (Some(l), None) => format!("≥ {}", fmt_axis(l)),
            (None, None) => String::new(),
        };
        let range: Vec<usize> = (first..=last).collect();
        let labels: Vec<String> = range.iter().map(|&b| name(b)).collect();
        section.figure(
            "clv_distribution",
            "Customers by predicted 365-day value",
            charts::bar_chart(
                "clv",
                &labels,
                &[Bars {
                    name: "customers",
                    values: range.iter().map(|&b| bins[b] as f64).collect(),
                }],
                &|v| fmt_int(v as i64),
            )?,
        );
        section.tables.push(DataTable {
            source: "clv".to_string(),
            caption: "Customers by predicted 365-day value (from ≤ clv_365d < to)".to_string(),
            headers: ["value", "from", "to", "customers"]
                .map(String::from)
                .to_vec(),
            rows: range
                .iter()
                .zip(&labels)
                .map(|(&b, label)| Row {
                    key: format!(
                        "{}|{}",
                        lower(b).map(|x| x.to_string()).unwrap_or_default(),
                        upper(b).map(|x| x.to_string()).unwrap_or_default()
                    ),
                    label: label.clone(),
                    cells: vec![
                        Value::f("from", lower(b), fmt_money),
                        Value::f("to", upper(b), fmt_money),
                        Value::i("customers", Some(bins[b])).derived(),
                    ],
                    flag: None,
                })
                .collect(),
            open: false,
        });
    }
    if no_value > 0 {
        section.notes.push(format!(
            "{} customer(s) have no predicted value.",
            fmt_int(no_value)
        ));
    }
    // Churn-risk bands.
    let bands = df
        .aggregate(
            vec![col("churn_risk")],
            vec![
                count(lit(1)).alias("customers"),
                sum(col("clv_365d")).alias("clv_365d"),
                avg(col("p_alive")).alias("p_alive"),
            ],
        )
        .map_err(|e| Error::engine("report: churn risk of table clv", e))?;
    let f = collect("clv", bands).await?;
    let risk = f.strs("churn_risk")?;
    let customers = f.i64s("customers")?;
    let value = f.f64s("clv_365d")?;
    let alive = f.f64s("p_alive")?;
    let total: i64 = customers.iter().flatten().sum();
    let mut idx: Vec<usize> = (0..f.len()).collect();
    let rank = |s: &Option<String>| {
        let s = s.as_deref().unwrap_or("");
        (
            RISKS.iter().position(|r| *r == s).unwrap_or(RISKS.len()),
            s.to_string(),
        )
    };
    idx.sort_by_key(|&i| rank(&risk[i]));
    let labels: Vec<String> = idx.iter().map(|&i| name_of(&risk[i])).collect();
    if !idx.is_empty() {
        section.figure(
            "churn_risk",
            "Customers and predicted 365-day value by churn risk",
            charts::bar_chart(
                "clv",
                &labels,
                &[
                    Bars {
                        name: "share of customers",
                        values: idx
                            .iter()
                            .map(|&i| customers[i].unwrap_or(0) as f64 / total.max(1) as f64)
                            .collect(),
                    },
                    Bars {
                        name: "share of predicted value",
                        values: {
                            let all: f64 = value.iter().flatten().sum();
                            idx.iter()
                                .map(|&i| {
                                    if all > 0.0 {
                                        value[i].unwrap_or(0.0) / all
                                    } else {
                                        0.0
                                    }
                                })
                                .collect()
                        },
                    },
                ],
                &|v| format!("{:.0} %", v * 100.0),
            )?,
        );
    }
    section.tables.push(DataTable {
        source: "clv".to_string(),
        caption: "By churn risk".to_string(),
        headers: [
            "churn risk",
            "customers",
            "predicted 365-day value",
            "mean P(alive)",
        ]
        .map(String::from)
        .to_vec(),
        rows: idx
            .iter()
            .zip(&labels)
            .map(|(&i, label)| Row {
                key: label.clone(),
                label: label.clone(),
                cells: vec![
                    Value::i("customers", customers[i]).derived(),
                    Value::f("clv_365d", value[i], fmt_money).derived(),
                    Value::f("p_alive", alive[i], fmt_pct).derived(),
                ],
                flag: None,
            })
            .collect(),
        open: true,
    });
    if let Some(table) = backtest(tables).await? {
        section.tables.push(table);
    }
    Ok(Some(section))
}

/// The holdout check of the CLV model, if `clv_backtest` is in the snapshot.
pub(super) async fn backtest(tables: &Tables) -> Result<Option<DataTable>> {
    let columns = [
        "scope",
        "customers",
        "predicted_purchases",
        "actual_purchases",
        "purchases_mae",
        "predicted_revenue",
        "actual_revenue",
        "revenue_mae",
    ];
    let Some(df) = tables.get("clv", "clv_backtest", &columns) else {
        return Ok(None);
    };
    let df = df
        .filter(col("scope").eq(lit("total")))
        .map_err(|e| Error::engine("report: read table clv_backtest", e))?;
    let f = collect("clv_backtest", df).await?;
    let n = f.i64s("customers")?;
    let fl = |c: &str| f.f64s(c);
    let (pp, ap, pm) = (
        fl("predicted_purchases")?,
        fl("actual_purchases")?,
        fl("purchases_mae")?,
    );
    let (pr, ar, rm) = (
        fl("predicted_revenue")?,
        fl("actual_revenue")?,
        fl("revenue_mae")?,
    );
    Ok(Some(DataTable {
        source: "clv_backtest".to_string(),
        caption: "Backtest: the model refitted before a holdout period, its predictions \
                  against what the customers then did"
            .to_string(),
        headers: [
            "scope",
            "customers",
            "predicted purchases",
            "actual purchases",
            "purchases MAE",
            "predicted revenue",
            "actual revenue",
            "revenue MAE",
        ]
        .map(String::from)
        .to_vec(),
        rows: (0..f.len())
            .map(|i| Row {
                key: "total".to_string(),
                label: "all customers".to_string(),
                cells: vec![
                    Value::i("customers", n[i]),
                    Value::f("predicted_purchases", pp[i], fmt_money),
                    Value::f("actual_purchases", ap[i], fmt_money),
                    Value::f("purchases_mae", pm[i], fmt_ratio),
                    Value::f("predicted_revenue", pr[i], fmt_money),
                    Value::f("actual_revenue", ar[i], fmt_money),
                    Value::f("revenue_mae", rm[i], fmt_money),
                ],
                flag: None,
            })
            .collect(),
        open: true,
    }))
}
