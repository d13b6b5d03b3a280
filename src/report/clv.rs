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

/// Customers counted by predicted value: per bin of [`clv_edges`], and those without one.
struct Distribution {
    edges: Vec<f64>,
    /// Customers per bin; bin `b` runs from edge `b - 1` up to edge `b`.
    counts: Vec<i64>,
    no_value: i64,
}

impl Distribution {
    fn lower(&self, b: usize) -> Option<f64> {
        if b == 0 {
            None
        } else {
            Some(self.edges[b - 1])
        }
    }

    fn upper(&self, b: usize) -> Option<f64> {
        self.edges.get(b).copied()
    }

    /// The bin as shown: its range in short money figures.
    fn name(&self, b: usize) -> String {
        match (self.lower(b), self.upper(b)) {
            (None, Some(u)) => format!("< {}", fmt_axis(u)),
            (Some(l), Some(u)) => format!("{}–{}", fmt_axis(l), fmt_axis(u)),
            (Some(l), None) => format!("≥ {}", fmt_axis(l)),
            (None, None) => String::new(),
        }
    }

    /// The bins from the first to the last that has customers; empty when none has.
    fn range(&self) -> Vec<usize> {
        let first = self.counts.iter().position(|c| *c > 0);
        let last = self.counts.iter().rposition(|c| *c > 0);
        match (first, last) {
            (Some(first), Some(last)) => (first..=last).collect(),
            _ => vec![],
        }
    }
}

/// The customers of `clv` by churn risk (high, medium, low, then any other by name): how
/// many, their predicted value and mean P(alive).
struct RiskBands {
    /// Band rows in risk order, and their names.
    idx: Vec<usize>,
    labels: Vec<String>,
    customers: Vec<Option<i64>>,
    value: Vec<Option<f64>>,
    alive: Vec<Option<f64>>,
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
    let dist = value_distribution(&df).await?;
    let range = dist.range();
    if !range.is_empty() {
        let labels: Vec<String> = range.iter().map(|&b| dist.name(b)).collect();
        section.figure(
            "clv_distribution",
            "Customers by predicted 365-day value",
            distribution_chart(&dist, &range, &labels)?,
        );
        section
            .tables
            .push(distribution_table(&dist, &range, &labels));
    }
    if dist.no_value > 0 {
        section.notes.push(format!(
            "{} customer(s) have no predicted value.",
            fmt_int(dist.no_value)
        ));
    }
    let bands = risk_bands(df).await?;
    if !bands.idx.is_empty() {
        section.figure(
            "churn_risk",
            "Customers and predicted 365-day value by churn risk",
            risk_chart(&bands)?,
        );
    }
    section.tables.push(risk_table(&bands));
    if let Some(table) = backtest(tables).await? {
        section.tables.push(table);
    }
    Ok(Some(section))
}

/// Counts the customers of `clv` by `clv_365d` in one streaming pass over the column.
async fn value_distribution(df: &DataFrame) -> Result<Distribution> {
    let edges = clv_edges();
    let mut counts = vec![0i64; edges.len() + 1];
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
                Some(x) if x.is_finite() => counts[edges.partition_point(|e| *e <= x)] += 1,
                _ => no_value += 1,
            }
        }
    }
    Ok(Distribution {
        edges,
        counts,
        no_value,
    })
}

/// Customers per bin of `range`, labelled `labels`.
fn distribution_chart(dist: &Distribution, range: &[usize], labels: &[String]) -> Result<String> {
    charts::bar_chart(
        "clv",
        labels,
        &[Bars {
            name: "customers",
            values: range.iter().map(|&b| dist.counts[b] as f64).collect(),
        }],
        &|v| fmt_int(v as i64),
    )
}

/// The bins of `range` with their edges and customers.
fn distribution_table(dist: &Distribution, range: &[usize], labels: &[String]) -> DataTable {
    let rows = range
        .iter()
        .zip(labels)
        .map(|(&b, label)| {
            let edge = |e: Option<f64>| e.map(|x| x.to_string()).unwrap_or_default();
            Row::new(
                format!("{}|{}", edge(dist.lower(b)), edge(dist.upper(b))),
                label.clone(),
                vec![
                    Value::f("from", dist.lower(b), fmt_money),
                    Value::f("to", dist.upper(b), fmt_money),
                    Value::i("customers", Some(dist.counts[b])).derived(),
                ],
            )
        })
        .collect();
    DataTable::new(
        "clv",
        "Customers by predicted 365-day value (from ≤ clv_365d < to)",
        &["value", "from", "to", "customers"],
        rows,
        false,
    )
}

/// Aggregates `clv` by churn risk.
async fn risk_bands(df: DataFrame) -> Result<RiskBands> {
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
    let mut idx: Vec<usize> = (0..f.len()).collect();
    let rank = |s: &Option<String>| {
        let s = s.as_deref().unwrap_or("");
        (
            RISKS.iter().position(|r| *r == s).unwrap_or(RISKS.len()),
            s.to_string(),
        )
    };
    idx.sort_by_key(|&i| rank(&risk[i]));
    let labels = idx.iter().map(|&i| name_of(&risk[i])).collect();
    Ok(RiskBands {
        idx,
        labels,
        customers,
        value,
        alive,
    })
}

/// Each band's share of the customers against its share of the predicted value.
fn risk_chart(bands: &RiskBands) -> Result<String> {
    let total: i64 = bands.customers.iter().flatten().sum();
    let all: f64 = bands.value.iter().flatten().sum();
    let customer_share = bands
        .idx
        .iter()
        .map(|&i| bands.customers[i].unwrap_or(0) as f64 / total.max(1) as f64)
        .collect();
    let value_share = bands
        .idx
        .iter()
        .map(|&i| {
            if all > 0.0 {
                bands.value[i].unwrap_or(0.0) / all
            } else {
                0.0
            }
        })
        .collect();
    charts::bar_chart(
        "clv",
        &bands.labels,
        &[
            Bars {
                name: "share of customers",
                values: customer_share,
            },
            Bars {
                name: "share of predicted value",
                values: value_share,
            },
        ],
        &fmt_pct_axis,
    )
}

/// A row per churn-risk band.
fn risk_table(bands: &RiskBands) -> DataTable {
    let rows = bands
        .idx
        .iter()
        .zip(&bands.labels)
        .map(|(&i, label)| {
            Row::new(
                label.clone(),
                label.clone(),
                vec![
                    Value::i("customers", bands.customers[i]).derived(),
                    Value::f("clv_365d", bands.value[i], fmt_money).derived(),
                    Value::f("p_alive", bands.alive[i], fmt_pct).derived(),
                ],
            )
        })
        .collect();
    DataTable::new(
        "clv",
        "By churn risk",
        &[
            "churn risk",
            "customers",
            "predicted 365-day value",
            "mean P(alive)",
        ],
        rows,
        true,
    )
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
    let rows = (0..f.len())
        .map(|i| {
            Row::new(
                "total".to_string(),
                "all customers".to_string(),
                vec![
                    Value::i("customers", n[i]),
                    Value::f("predicted_purchases", pp[i], fmt_money),
                    Value::f("actual_purchases", ap[i], fmt_money),
                    Value::f("purchases_mae", pm[i], fmt_ratio),
                    Value::f("predicted_revenue", pr[i], fmt_money),
                    Value::f("actual_revenue", ar[i], fmt_money),
                    Value::f("revenue_mae", rm[i], fmt_money),
                ],
            )
        })
        .collect();
    Ok(Some(DataTable::new(
        "clv_backtest",
        "Backtest: the model refitted before a holdout period, its predictions \
         against what the customers then did",
        &[
            "scope",
            "customers",
            "predicted purchases",
            "actual purchases",
            "purchases MAE",
            "predicted revenue",
            "actual revenue",
            "revenue MAE",
        ],
        rows,
        true,
    )))
}
