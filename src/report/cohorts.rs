//! Section: cohort retention.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use charts::{Cell as HeatCell, Line};

use super::*;

/// The rows of `cohort_retention`, one entry per row in each column.
struct CohortRows {
    month: Vec<Option<String>>,
    period: Vec<Option<i64>>,
    size: Vec<Option<i64>>,
    retention: Vec<Option<f64>>,
    ltv: Vec<Option<f64>>,
}

/// The rows laid out as a matrix: cohorts (months) by periods since the first purchase.
struct Grid {
    /// Cohort months, sorted: the matrix rows.
    months: Vec<String>,
    /// 0 to the largest period: the matrix columns.
    periods: Vec<i64>,
    /// (month, period) -> row index
    at: BTreeMap<(usize, i64), usize>,
    /// Customers of each cohort, by month.
    sizes: BTreeMap<usize, i64>,
}

pub(super) async fn cohorts(tables: &Tables) -> Result<Option<Section>> {
    let Some(rows) = read_cohorts(tables).await? else {
        return Ok(None);
    };
    let Some(grid) = Grid::of(&rows) else {
        let mut s = Section::new("cohorts", "Cohorts", "");
        s.notes.push("No cohort has any period yet.".to_string());
        return Ok(Some(s));
    };
    let mut section = Section::new(
        "cohorts",
        "Cohorts",
        "Customers grouped by the month of their first purchase (rows). Retention is the \
         share of a cohort buying again in each month after the first (columns); the curves \
         show revenue per customer accumulating with the cohort's age.",
    );
    if grid.periods.len() > 1 {
        section.figure(
            "cohort_retention",
            "Retention by cohort and month since the first purchase (%)",
            retention_heat_map(&grid, &rows.retention)?,
        );
    }
    section.figure(
        "cohort_ltv",
        "Cumulative revenue per customer by cohort (light: oldest, dark: newest)",
        ltv_chart(&grid, &rows.ltv)?,
    );
    section.tables.push(grid.table(
        "Retention by months since the first purchase",
        "retention",
        fmt_pct,
        &rows.retention,
    ));
    section.tables.push(grid.table(
        "Cumulative revenue per customer by months since the first purchase",
        "cumulative_revenue_per_customer",
        fmt_money,
        &rows.ltv,
    ));
    Ok(Some(section))
}

/// The rows of `cohort_retention`; None if the snapshot lacks the table or a column.
async fn read_cohorts(tables: &Tables) -> Result<Option<CohortRows>> {
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
    Ok(Some(CohortRows {
        month: f.strs("cohort_month")?,
        period: f.i64s("period")?,
        size: f.i64s("cohort_customers")?,
        retention: f.f64s("retention")?,
        ltv: f.f64s("cumulative_revenue_per_customer")?,
    }))
}

impl Grid {
    /// The matrix of `rows` (rows without a month or with a negative period left out); None
    /// when no row has a period.
    fn of(rows: &CohortRows) -> Option<Grid> {
        let mut months: Vec<String> = rows.month.iter().flatten().cloned().collect();
        months.sort();
        months.dedup();
        let max_period = rows
            .period
            .iter()
            .flatten()
            .copied()
            .filter(|p| *p >= 0)
            .max()?;
        let mut at: BTreeMap<(usize, i64), usize> = BTreeMap::new();
        let mut sizes: BTreeMap<usize, i64> = BTreeMap::new();
        for i in 0..rows.month.len() {
            let (Some(m), Some(p)) = (&rows.month[i], rows.period[i]) else {
                continue;
            };
            if let Ok(y) = months.binary_search(m) {
                if p >= 0 {
                    at.insert((y, p), i);
                    if let Some(s) = rows.size[i] {
                        sizes.insert(y, s);
                    }
                }
            }
        }
        Some(Grid {
            months,
            periods: (0..=max_period).collect(),
            at,
            sizes,
        })
    }

    /// A matrix table of `values` (column `col`, written with `fmt`): a row per cohort with
    /// its customers, then a cell per period.
    fn table(
        &self,
        caption: &str,
        col: &str,
        fmt: fn(f64) -> String,
        values: &[Option<f64>],
    ) -> DataTable {
        let rows = self
            .months
            .iter()
            .enumerate()
            .map(|(y, m)| {
                let mut cells = vec![Value::i("cohort_customers", self.sizes.get(&y).copied())];
                cells.extend(self.periods.iter().map(|p| match self.at.get(&(y, *p)) {
                    Some(&i) => {
                        let mut v = Value::f(col, values[i], fmt);
                        v.key = Some(format!("{m}|{p}"));
                        v
                    }
                    None => Value::new("", String::new(), None),
                }));
                Row::new(m.clone(), m.clone(), cells)
            })
            .collect();
        let mut headers = vec!["cohort".to_string(), "customers".to_string()];
        headers.extend(self.periods.iter().map(|p| p.to_string()));
        DataTable {
            source: "cohort_retention".to_string(),
            caption: caption.to_string(),
            headers,
            rows,
            open: false,
        }
    }
}

/// Retention of each cohort (rows) in each period after the first (columns).
fn retention_heat_map(grid: &Grid, retention: &[Option<f64>]) -> Result<String> {
    let cells: Vec<HeatCell> = grid
        .at
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
    charts::heat_map(
        "cohorts",
        &grid.periods[1..]
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        &grid.months,
        &cells,
        ("months since the first purchase", "cohort"),
        &fmt_pct,
    )
}

/// One line per cohort: its cumulative revenue per customer by period.
fn ltv_chart(grid: &Grid, ltv: &[Option<f64>]) -> Result<String> {
    let lines: Vec<Line> = grid
        .months
        .iter()
        .enumerate()
        .map(|(y, m)| Line {
            name: m.clone(),
            points: grid
                .periods
                .iter()
                .filter_map(|p| {
                    grid.at
                        .get(&(y, *p))
                        .and_then(|&i| ltv[i].map(|v| (*p as f64, v)))
                })
                .collect(),
        })
        .collect();
    charts::line_chart(
        "cohorts",
        &lines,
        "months since the first purchase",
        &fmt_axis,
    )
}
