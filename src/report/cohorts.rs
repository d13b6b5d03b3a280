//! Section: cohort retention.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use charts::{Cell as HeatCell, Line};

use super::*;

pub(super) async fn cohorts(tables: &Tables) -> Result<Option<Section>> {
    let columns = [
        "cohort_month",
        "period",
        "cohort_customers",
        "retention",
        "cumulative_revenue_per_customer",
    ];
    let Some(df) = tables.get("cohorts", "cohort_retention", &columns) else {
        return Ok(None);
    };
    let df = df
        .select_columns(&columns)
        .map_err(|e| Error::engine("report: read table cohort_retention", e))?;
    let f = collect("cohort_retention", df).await?;
    let month = f.strs("cohort_month")?;
    let period = f.i64s("period")?;
    let size = f.i64s("cohort_customers")?;
    let retention = f.f64s("retention")?;
    let ltv = f.f64s("cumulative_revenue_per_customer")?;
    let mut months: Vec<String> = month.iter().flatten().cloned().collect();
    months.sort();
    months.dedup();
    let max_period = period.iter().flatten().copied().filter(|p| *p >= 0).max();
    let Some(max_period) = max_period else {
        let mut s = Section::new("cohorts", "Cohorts", "");
        s.notes.push("No cohort has any period yet.".to_string());
        return Ok(Some(s));
    };
    let periods: Vec<i64> = (0..=max_period).collect();
    // (month, period) -> row index
    let mut at: BTreeMap<(usize, i64), usize> = BTreeMap::new();
    let mut sizes: BTreeMap<usize, i64> = BTreeMap::new();
    for i in 0..f.len() {
        let (Some(m), Some(p)) = (&month[i], period[i]) else {
            continue;
        };
        if let Ok(y) = months.binary_search(m) {
            if p >= 0 {
                at.insert((y, p), i);
                if let Some(s) = size[i] {
                    sizes.insert(y, s);
                }
            }
        }
    }
    let cells: Vec<HeatCell> = at
        .iter()
        .filter(|((_, p), _)| *p > 0)
        .map(|(&(y, p), &i)| HeatCell {
            x: p as usize - 1,
            y,
            value: retention[i].unwrap_or(f64::NAN),
            text: retention[i]
                .map(|r| format!("{:.0}", r * 100.0))
                .unwrap_or_default(),
        })
        .collect();
    let mut section = Section::new(
        "cohorts",
        "Cohorts",
        "Customers grouped by the month of their first purchase (rows). Retention is the \
         share of a cohort buying again in each month after the first (columns); the curves \
         show revenue per customer accumulating with the cohort's age.",
    );
    if max_period > 0 {
        section.figure(
            "cohort_retention",
            "Retention by cohort and month since the first purchase (%)",
            charts::heat_map(
                "cohorts",
                &periods[1..]
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
                &months,
                &cells,
                ("months since the first purchase", "cohort"),
                &fmt_pct,
            )?,
        );
    }
    let lines: Vec<Line> = months
        .iter()
        .enumerate()
        .map(|(y, m)| Line {
            name: m.clone(),
            points: periods
                .iter()
                .filter_map(|p| {
                    at.get(&(y, *p))
                        .and_then(|&i| ltv[i].map(|v| (*p as f64, v)))
                })
                .collect(),
        })
        .collect();
    section.figure(
        "cohort_ltv",
        "Cumulative revenue per customer by cohort (light: oldest, dark: newest)",
        charts::line_chart(
            "cohorts",
            &lines,
            "months since the first purchase",
            &fmt_axis,
        )?,
    );
    let matrix = |col: &str, fmt: fn(f64) -> String, values: &[Option<f64>]| -> Vec<Row> {
        months
            .iter()
            .enumerate()
            .map(|(y, m)| {
                let mut cells = vec![Value::i("cohort_customers", sizes.get(&y).copied())];
                cells.extend(periods.iter().map(|p| match at.get(&(y, *p)) {
                    Some(&i) => {
                        let mut v = Value::f(col, values[i], fmt);
                        v.key = Some(format!("{m}|{p}"));
                        v
                    }
                    None => Value::new("", String::new(), None),
                }));
                Row {
                    key: m.clone(),
                    label: m.clone(),
                    cells,
                    flag: None,
                }
            })
            .collect()
    };
    let headers = |first: &str| {
        let mut h = vec![first.to_string(), "customers".to_string()];
        h.extend(periods.iter().map(|p| p.to_string()));
        h
    };
    section.tables.push(DataTable {
        source: "cohort_retention".to_string(),
        caption: "Retention by months since the first purchase".to_string(),
        headers: headers("cohort"),
        rows: matrix("retention", fmt_pct, &retention),
        open: false,
    });
    section.tables.push(DataTable {
        source: "cohort_retention".to_string(),
        caption: "Cumulative revenue per customer by months since the first purchase".to_string(),
        headers: headers("cohort"),
        rows: matrix("cumulative_revenue_per_customer", fmt_money, &ltv),
        open: false,
    });
    Ok(Some(section))
}
