//! The run report: one self-contained HTML page per snapshot, `_report/as_of=D/index.html`,
//! staged with the tables and committed by the same manifest.
//!
//! Every number comes from the snapshot's tables, read back through the session after the
//! checks passed (the staged files this run publishes, or the published files of tables a
//! `--select` run keeps), and from the manifest (run facts). Charts are inline SVG drawn
//! when the report is made ([`charts`]); the page has no scripts and no external resources.
//! Each number shown in a table carries its exact value in `data-v` (and the table, row key
//! and column in `data-table`, `data-key`, `data-col`), so tests compare it with the tables.
//!
//! A section whose table is absent, or lacks a column the section needs, is left out (a
//! project without the built-in models gets a report with its run facts).

pub mod charts;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::{avg, count, sum};
use datafusion::prelude::*;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::publish::layout::{report_file_rel, report_rel, staged_report_rel};
use crate::publish::stage::open_dir;
use crate::publish::{Manifest, Output, ReportEntry};
use crate::storage::retrying;
use charts::{Bars, Cell as HeatCell, Line};

const TEMPLATE: &str = include_str!("report.html");

/// The order the scorecard lists segmentations in (others follow by name).
const SEGMENTATIONS: [&str; 6] = ["rfm", "lifecycle", "clv", "channel", "country", "device"];
/// Lifecycle stages from first purchase to churn.
const STAGES: [&str; 5] = ["new", "active", "at_risk", "lapsed", "churned"];
const RISKS: [&str; 3] = ["high", "medium", "low"];

fn report_err(section: &str, message: impl std::fmt::Display) -> Error {
    Error::Report {
        section: section.to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Reading tables back

/// A table's rows, read back whole (the report reads only small tables or aggregates).
struct Frame {
    table: String,
    batch: RecordBatch,
}

async fn collect(table: &str, df: DataFrame) -> Result<Frame> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| Error::engine(format!("report: read table {table}"), e))?;
    let batch = concat_batches(&schema, &batches)
        .map_err(|e| report_err(table, format!("cannot read the table: {e}")))?;
    Ok(Frame {
        table: table.to_string(),
        batch,
    })
}

impl Frame {
    fn len(&self) -> usize {
        self.batch.num_rows()
    }

    fn column(&self, name: &str, to: &DataType) -> Result<ArrayRef> {
        let a = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| report_err(&self.table, format!("no column `{name}`")))?;
        cast(a, to).map_err(|e| report_err(&self.table, format!("column `{name}`: {e}")))
    }

    fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let a = self.column(name, &DataType::Float64)?;
        Ok(a.as_primitive::<Float64Type>().iter().collect())
    }

    fn i64s(&self, name: &str) -> Result<Vec<Option<i64>>> {
        let a = self.column(name, &DataType::Int64)?;
        Ok(a.as_primitive::<Int64Type>().iter().collect())
    }

    fn strs(&self, name: &str) -> Result<Vec<Option<String>>> {
        let a = self.column(name, &DataType::Utf8)?;
        Ok(a.as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect())
    }

    fn bools(&self, name: &str) -> Result<Vec<Option<bool>>> {
        let a = self.column(name, &DataType::Boolean)?;
        Ok(a.as_boolean().iter().collect())
    }
}

/// The tables of the snapshot, by name, as the session reads them.
pub struct Tables(pub BTreeMap<String, DataFrame>);

impl Tables {
    /// `name` if the snapshot has it with every column in `columns`; otherwise the section
    /// is left out, and the log says why.
    fn get(&self, section: &str, name: &str, columns: &[&str]) -> Option<DataFrame> {
        let df = self.0.get(name)?;
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| df.schema().field_with_unqualified_name(c).is_err())
            .collect();
        if !missing.is_empty() {
            warn!(section, table = name, missing = %missing.join(", "),
                "report section left out: the table lacks columns it needs");
            return None;
        }
        Some(df.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Numbers as shown

fn thousands(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits),
    };
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn fmt_int(v: i64) -> String {
    thousands(&v.to_string())
}

fn fmt_money(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1000.0 {
        thousands(&format!("{v:.0}"))
    } else {
        format!("{v:.2}")
    }
}

fn fmt_pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn fmt_ratio(v: f64) -> String {
    format!("{v:.2}")
}

/// Axis ticks: short money figures.
fn fmt_axis(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1} M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if a >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

// ---------------------------------------------------------------------------------------
// What the template shows

/// A number cell: its text and its exact value (`data-v`; none for NULL).
#[derive(Serialize, Clone)]
struct Value {
    text: String,
    v: Option<String>,
    /// A value the report derived from the table's numbers (e.g. a share of a column).
    derived: bool,
    /// The row key of this cell where it differs from its row's (matrix tables).
    key: Option<String>,
    col: String,
    class: &'static str,
}

impl Value {
    fn new(col: &str, text: String, v: Option<String>) -> Value {
        Value {
            text,
            v,
            derived: false,
            key: None,
            col: col.to_string(),
            class: "",
        }
    }

    fn f(col: &str, v: Option<f64>, fmt: fn(f64) -> String) -> Value {
        match v {
            Some(x) => Value::new(col, fmt(x), Some(x.to_string())),
            None => Value::new(col, "–".to_string(), None),
        }
    }

    fn i(col: &str, v: Option<i64>) -> Value {
        match v {
            Some(x) => Value::new(col, fmt_int(x), Some(x.to_string())),
            None => Value::new(col, "–".to_string(), None),
        }
    }

    fn derived(mut self) -> Value {
        self.derived = true;
        self
    }
}

#[derive(Serialize)]
struct Row {
    key: String,
    label: String,
    cells: Vec<Value>,
    flag: Option<&'static str>,
}

#[derive(Serialize)]
struct DataTable {
    /// The table the numbers come from (`data-table`).
    source: String,
    caption: String,
    /// Header of the label column, then of each value column.
    headers: Vec<String>,
    rows: Vec<Row>,
    /// Shown open; otherwise folded under its caption.
    open: bool,
}

#[derive(Serialize)]
struct Figure {
    id: String,
    caption: String,
    svg: String,
}

#[derive(Serialize)]
struct Section {
    id: &'static str,
    title: &'static str,
    intro: String,
    figures: Vec<Figure>,
    tables: Vec<DataTable>,
    notes: Vec<String>,
}

impl Section {
    fn new(id: &'static str, title: &'static str, intro: impl Into<String>) -> Section {
        Section {
            id,
            title,
            intro: intro.into(),
            figures: vec![],
            tables: vec![],
            notes: vec![],
        }
    }

    fn figure(&mut self, id: &str, caption: impl Into<String>, svg: String) {
        self.figures.push(Figure {
            id: id.to_string(),
            caption: caption.into(),
            svg,
        });
    }
}

#[derive(Serialize)]
struct Fact {
    label: &'static str,
    text: String,
}

#[derive(Serialize)]
struct Page {
    as_of: String,
    generated: String,
    facts: Vec<Fact>,
    sections: Vec<Section>,
}

// ---------------------------------------------------------------------------------------
// Sections

/// A category as shown: its name, or `(none)` for NULL.
fn name_of(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "(none)".to_string())
}

/// Row order of a value table: by `value` descending, then by name; with the shown names.
fn by_value_desc(value: &[Option<f64>], names: &[Option<String>]) -> (Vec<usize>, Vec<String>) {
    let mut idx: Vec<usize> = (0..value.len()).collect();
    idx.sort_by(|&a, &b| {
        value[b]
            .unwrap_or(f64::MIN)
            .total_cmp(&value[a].unwrap_or(f64::MIN))
            .then_with(|| names[a].cmp(&names[b]))
    });
    let labels = idx.iter().map(|&i| name_of(&names[i])).collect();
    (idx, labels)
}

fn segmentation_rank(s: &str) -> (usize, String) {
    let i = SEGMENTATIONS
        .iter()
        .position(|x| *x == s)
        .unwrap_or(SEGMENTATIONS.len());
    (i, s.to_string())
}

fn stage_rank(s: &str) -> usize {
    STAGES.iter().position(|x| *x == s).unwrap_or(STAGES.len())
}

async fn scorecard(tables: &Tables) -> Result<Option<Section>> {
    const COLUMNS: [&str; 13] = [
        "segmentation",
        "segment",
        "customers",
        "share",
        "revenue",
        "revenue_share",
        "margin",
        "aov",
        "orders_per_customer",
        "repeat_rate",
        "reachable_share",
        "stability",
        "below_min_size",
    ];
    let Some(df) = tables.get("scorecard", "segment_summary", &COLUMNS) else {
        return Ok(None);
    };
    let f = collect("segment_summary", df).await?;
    let segmentation = f.strs("segmentation")?;
    let segment = f.strs("segment")?;
    let customers = f.i64s("customers")?;
    let share = f.f64s("share")?;
    let revenue_share = f.f64s("revenue_share")?;
    let margin = f.f64s("margin")?;
    let aov = f.f64s("aov")?;
    let orders = f.f64s("orders_per_customer")?;
    let repeat = f.f64s("repeat_rate")?;
    let reachable = f.f64s("reachable_share")?;
    let stability = f.f64s("stability")?;
    let small = f.bools("below_min_size")?;

    let mut groups: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
    for (i, s) in segmentation.iter().enumerate() {
        let s = s.clone().unwrap_or_default();
        groups.entry(segmentation_rank(&s)).or_default().push(i);
    }
    let mut section = Section::new(
        "segments",
        "Segment scorecard",
        "Each segmentation splits the customers one way. Share is of customers; revenue and \
         margin share are of the segmentation's revenue and margin; reachable is the share \
         that opted in to e-mail; stability is the share still in the segment since the \
         previous snapshot.",
    );
    for ((_, name), mut idx) in groups {
        if name == "lifecycle" {
            idx.sort_by_key(|&i| stage_rank(segment[i].as_deref().unwrap_or("")));
        } else {
            idx.sort_by(|&a, &b| {
                customers[b]
                    .cmp(&customers[a])
                    .then_with(|| segment[a].cmp(&segment[b]))
            });
        }
        let total_margin: f64 = idx.iter().filter_map(|&i| margin[i]).sum();
        let rows: Vec<Row> = idx
            .iter()
            .map(|&i| {
                let seg = segment[i].clone().unwrap_or_default();
                let margin_share = margin[i]
                    .filter(|_| total_margin != 0.0)
                    .map(|m| m / total_margin);
                let is_small = small[i] == Some(true);
                let mut flag_cell = Value::new(
                    "below_min_size",
                    String::new(),
                    small[i].map(|b| b.to_string()),
                );
                if is_small {
                    flag_cell.text = "small".to_string();
                    flag_cell.class = "warn";
                }
                Row {
                    key: format!("{name}|{seg}"),
                    label: seg,
                    cells: vec![
                        Value::i("customers", customers[i]),
                        Value::f("share", share[i], fmt_pct),
                        Value::f("revenue_share", revenue_share[i], fmt_pct),
                        Value::f("margin_share", margin_share, fmt_pct).derived(),
                        Value::f("aov", aov[i], fmt_money),
                        Value::f("orders_per_customer", orders[i], fmt_ratio),
                        Value::f("repeat_rate", repeat[i], fmt_pct),
                        Value::f("reachable_share", reachable[i], fmt_pct),
                        Value::f("stability", stability[i], fmt_pct),
                        flag_cell,
                    ],
                    flag: is_small.then_some("warn"),
                }
            })
            .collect();
        if name == "rfm" || (section.figures.is_empty() && name == "lifecycle") {
            let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
            let values = |v: &[Option<f64>]| idx.iter().map(|&i| v[i].unwrap_or(0.0)).collect();
            let svg = charts::bar_chart(
                "segments",
                &labels,
                &[
                    Bars {
                        name: "share of customers",
                        values: values(&share),
                    },
                    Bars {
                        name: "share of revenue",
                        values: values(&revenue_share),
                    },
                ],
                &|v| format!("{:.0} %", v * 100.0),
            )?;
            section.figure(
                "segment_shares",
                format!("{name} segments: share of customers against share of revenue"),
                svg,
            );
        }
        let small_ones = rows.iter().filter(|r| r.flag.is_some()).count();
        if small_ones > 0 {
            section.notes.push(format!(
                "{name}: {small_ones} segment(s) below the minimum size: their figures rest on \
                 few customers."
            ));
        }
        section.tables.push(DataTable {
            source: "segment_summary".to_string(),
            caption: format!("By {name}"),
            headers: [
                "segment",
                "customers",
                "share",
                "revenue share",
                "margin share",
                "AOV",
                "orders / customer",
                "repeat rate",
                "reachable",
                "stability",
                "",
            ]
            .map(String::from)
            .to_vec(),
            rows,
            open: SEGMENTATIONS[..3].contains(&name.as_str()),
        });
    }
    Ok(Some(section))
}

async fn rfm_grid(tables: &Tables) -> Result<Option<Section>> {
    let Some(df) = tables.get("rfm", "rfm", &["r_score", "f_score", "monetary"]) else {
        return Ok(None);
    };
    let grid = df
        .aggregate(
            vec![
                cast_i64(col("r_score")).alias("r"),
                cast_i64(col("f_score")).alias("f"),
            ],
            vec![
                count(lit(1)).alias("customers"),
                avg(col("monetary")).alias("avg_monetary"),
            ],
        )
        .and_then(|g| {
            g.sort(vec![
                col("r").sort(false, false),
                col("f").sort(true, false),
            ])
        })
        .map_err(|e| Error::engine("report: RFM grid of table rfm", e))?;
    let f = collect("rfm", grid).await?;
    let (r, fr) = (f.i64s("r")?, f.i64s("f")?);
    let customers = f.i64s("customers")?;
    let m = f.f64s("avg_monetary")?;
    let mut rs: Vec<i64> = r.iter().flatten().copied().collect();
    let mut fs: Vec<i64> = fr.iter().flatten().copied().collect();
    rs.sort_unstable_by(|a, b| b.cmp(a));
    rs.dedup();
    fs.sort_unstable();
    fs.dedup();
    let mut cells = vec![];
    let mut rows = vec![];
    for i in 0..f.len() {
        let (Some(ri), Some(fi)) = (r[i], fr[i]) else {
            continue;
        };
        let (Some(y), Some(x)) = (
            rs.iter().position(|v| *v == ri),
            fs.iter().position(|v| *v == fi),
        ) else {
            continue;
        };
        cells.push(HeatCell {
            x,
            y,
            value: m[i].unwrap_or(f64::NAN),
            text: fmt_int(customers[i].unwrap_or(0)),
        });
        rows.push(Row {
            key: format!("{ri}|{fi}"),
            label: format!("R{ri} F{fi}"),
            cells: vec![
                Value::i("customers", customers[i]).derived(),
                Value::f("avg_monetary", m[i], fmt_money).derived(),
            ],
            flag: None,
        });
    }
    let mut section = Section::new(
        "rfm",
        "RFM grid",
        "Customers by recency score (rows, 5 = bought most recently) and frequency score \
         (columns, 5 = buys most often); the colour is the mean monetary value of the cell, \
         the number its customers.",
    );
    let svg = charts::heat_map(
        "rfm",
        &fs.iter().map(|f| format!("F{f}")).collect::<Vec<_>>(),
        &rs.iter().map(|r| format!("R{r}")).collect::<Vec<_>>(),
        &cells,
        ("frequency score", "recency score"),
        &fmt_money,
    )?;
    section.figure(
        "rfm_grid",
        "Recency × frequency, coloured by mean monetary value",
        svg,
    );
    section.tables.push(DataTable {
        source: "rfm".to_string(),
        caption: "Cells of the grid".to_string(),
        headers: ["cell", "customers", "mean monetary"]
            .map(String::from)
            .to_vec(),
        rows,
        open: false,
    });
    Ok(Some(section))
}

fn cast_i64(e: Expr) -> Expr {
    datafusion::logical_expr::cast(e, DataType::Int64)
}

async fn lifecycle(tables: &Tables) -> Result<Option<Section>> {
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
        rows: idx
            .iter()
            .zip(&labels)
            .map(|(&i, label)| Row {
                key: label.clone(),
                label: label.clone(),
                cells: vec![
                    Value::i("customers", customers[i]).derived(),
                    Value::f("share", share(i), fmt_pct).derived(),
                ],
                flag: None,
            })
            .collect(),
        open: false,
    });
    Ok(Some(section))
}

async fn cohorts(tables: &Tables) -> Result<Option<Section>> {
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

async fn product_value(tables: &Tables) -> Result<Option<Section>> {
    let columns = [
        "first_category",
        "customers",
        "repeat_rate",
        "avg_revenue_per_customer",
        "avg_revenue_365d",
        "avg_margin_365d",
    ];
    let Some(df) = tables.get("products", "product_value", &columns) else {
        return Ok(None);
    };
    let f = collect("product_value", df).await?;
    let category = f.strs("first_category")?;
    let customers = f.i64s("customers")?;
    let repeat = f.f64s("repeat_rate")?;
    let value = f.f64s("avg_revenue_per_customer")?;
    let v365 = f.f64s("avg_revenue_365d")?;
    let m365 = f.f64s("avg_margin_365d")?;
    let (idx, labels) = by_value_desc(&value, &category);
    let mut section = Section::new(
        "products",
        "Products that bring customers",
        "Customers by the category of their first purchase: how much they are worth since, \
         and in the first year.",
    );
    if !idx.is_empty() {
        section.figure(
            "product_value",
            "Revenue per customer by first-purchase category",
            charts::bar_chart(
                "products",
                &labels,
                &[Bars {
                    name: "revenue per customer",
                    values: idx.iter().map(|&i| value[i].unwrap_or(0.0)).collect(),
                }],
                &fmt_axis,
            )?,
        );
    }
    section.tables.push(DataTable {
        source: "product_value".to_string(),
        caption: "By first-purchase category".to_string(),
        headers: [
            "category",
            "customers",
            "repeat rate",
            "revenue / customer",
            "revenue / customer, first 365 d",
            "margin / customer, first 365 d",
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
                    Value::i("customers", customers[i]),
                    Value::f("repeat_rate", repeat[i], fmt_pct),
                    Value::f("avg_revenue_per_customer", value[i], fmt_money),
                    Value::f("avg_revenue_365d", v365[i], fmt_money),
                    Value::f("avg_margin_365d", m365[i], fmt_money),
                ],
                flag: None,
            })
            .collect(),
        open: true,
    });
    Ok(Some(section))
}

async fn channel_value(tables: &Tables) -> Result<Option<Section>> {
    let columns = [
        "dimension",
        "value",
        "customers",
        "repeat_rate",
        "avg_revenue_per_customer",
        "avg_revenue_365d",
        "spend",
        "cac",
        "ltv_cac",
    ];
    let Some(df) = tables.get("channels", "channel_value", &columns) else {
        return Ok(None);
    };
    let df = df
        .filter(col("dimension").eq(lit("channel")))
        .map_err(|e| Error::engine("report: channels of table channel_value", e))?;
    let f = collect("channel_value", df).await?;
    let channel = f.strs("value")?;
    let customers = f.i64s("customers")?;
    let repeat = f.f64s("repeat_rate")?;
    let value = f.f64s("avg_revenue_per_customer")?;
    let v365 = f.f64s("avg_revenue_365d")?;
    let spend = f.f64s("spend")?;
    let cac = f.f64s("cac")?;
    let ltv_cac = f.f64s("ltv_cac")?;
    let (idx, labels) = by_value_desc(&value, &channel);
    let with_spend = idx.iter().any(|&i| cac[i].is_some());
    let mut section = Section::new(
        "channels",
        "Acquisition channels",
        if with_spend {
            "Customers by the channel of their first order: what they are worth, what one \
             cost to acquire (CAC: the channel's spend over its new customers) and the ratio \
             of the two."
        } else {
            "Customers by the channel of their first order and what they are worth (no \
             marketing spend is configured, so no CAC)."
        },
    );
    if !idx.is_empty() {
        let mut series = vec![Bars {
            name: "revenue per customer",
            values: idx.iter().map(|&i| value[i].unwrap_or(0.0)).collect(),
        }];
        if with_spend {
            series.push(Bars {
                name: "CAC",
                values: idx.iter().map(|&i| cac[i].unwrap_or(0.0)).collect(),
            });
        }
        section.figure(
            "channel_value",
            if with_spend {
                "Revenue per customer and acquisition cost by channel"
            } else {
                "Revenue per customer by acquisition channel"
            },
            charts::bar_chart("channels", &labels, &series, &fmt_axis)?,
        );
    }
    let spent: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| ltv_cac[i].is_some())
        .collect();
    if !spent.is_empty() {
        section.figure(
            "channel_ltv_cac",
            "LTV / CAC by channel (channels with spend)",
            charts::bar_chart(
                "channels",
                &spent
                    .iter()
                    .map(|&i| channel[i].clone().unwrap_or_default())
                    .collect::<Vec<_>>(),
                &[Bars {
                    name: "LTV / CAC",
                    values: spent.iter().map(|&i| ltv_cac[i].unwrap_or(0.0)).collect(),
                }],
                &|v| format!("{v:.1}"),
            )?,
        );
    }
    let mut headers = vec![
        "channel",
        "customers",
        "repeat rate",
        "revenue / customer",
        "revenue / customer, first 365 d",
    ];
    if with_spend {
        headers.extend(["spend", "CAC", "LTV / CAC"]);
    }
    section.tables.push(DataTable {
        source: "channel_value".to_string(),
        caption: "By acquisition channel".to_string(),
        headers: headers.into_iter().map(String::from).collect(),
        rows: idx
            .iter()
            .zip(&labels)
            .map(|(&i, label)| {
                let mut cells = vec![
                    Value::i("customers", customers[i]),
                    Value::f("repeat_rate", repeat[i], fmt_pct),
                    Value::f("avg_revenue_per_customer", value[i], fmt_money),
                    Value::f("avg_revenue_365d", v365[i], fmt_money),
                ];
                if with_spend {
                    cells.push(Value::f("spend", spend[i], fmt_money));
                    cells.push(Value::f("cac", cac[i], fmt_money));
                    cells.push(Value::f("ltv_cac", ltv_cac[i], fmt_ratio));
                }
                Row {
                    key: format!("channel|{label}"),
                    label: label.clone(),
                    cells,
                    flag: None,
                }
            })
            .collect(),
        open: true,
    });
    Ok(Some(section))
}

async fn migration(tables: &Tables) -> Result<Option<Section>> {
    let columns = ["segmentation", "from_segment", "to_segment", "customers"];
    let Some(df) = tables.get("migration", "segment_migration", &columns) else {
        return Ok(None);
    };
    let f = collect("segment_migration", df).await?;
    let mut section = Section::new(
        "migration",
        "Segment migration",
        "Where the customers of each segment at the previous snapshot are now: rows are the \
         segment then, columns the segment now.",
    );
    if f.len() == 0 {
        section.notes.push(
            "No previous snapshot to compare with: migration shows from the second snapshot on."
                .to_string(),
        );
        return Ok(Some(section));
    }
    let segmentation = f.strs("segmentation")?;
    let from = f.strs("from_segment")?;
    let to = f.strs("to_segment")?;
    let customers = f.i64s("customers")?;
    let label = name_of;
    let mut groups: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
    for (i, s) in segmentation.iter().enumerate() {
        groups
            .entry(segmentation_rank(&label(s)))
            .or_default()
            .push(i);
    }
    for ((_, name), idx) in groups {
        let mut froms: Vec<String> = idx.iter().map(|&i| label(&from[i])).collect();
        let mut tos: Vec<String> = idx.iter().map(|&i| label(&to[i])).collect();
        froms.sort();
        froms.dedup();
        tos.sort();
        tos.dedup();
        let cells: Vec<HeatCell> = idx
            .iter()
            .filter_map(|&i| {
                Some(HeatCell {
                    x: tos.iter().position(|t| *t == label(&to[i]))?,
                    y: froms.iter().position(|t| *t == label(&from[i]))?,
                    value: customers[i].unwrap_or(0) as f64,
                    text: fmt_int(customers[i].unwrap_or(0)),
                })
            })
            .collect();
        section.figure(
            &format!("migration_{name}"),
            format!(
                "{name}: customers from the previous segment (rows) to the current one (columns)"
            ),
            charts::heat_map(
                "migration",
                &tos,
                &froms,
                &cells,
                ("segment now", "segment before"),
                &|v| fmt_int(v as i64),
            )?,
        );
        let mut sorted = idx.clone();
        sorted.sort_by_key(|&i| (label(&from[i]), label(&to[i])));
        section.tables.push(DataTable {
            source: "segment_migration".to_string(),
            caption: format!("{name}: customers from → to"),
            headers: ["from → to", "customers"].map(String::from).to_vec(),
            rows: sorted
                .iter()
                .map(|&i| Row {
                    key: format!("{name}|{}|{}", label(&from[i]), label(&to[i])),
                    label: format!("{} → {}", label(&from[i]), label(&to[i])),
                    cells: vec![Value::i("customers", customers[i])],
                    flag: None,
                })
                .collect(),
            open: false,
        });
    }
    Ok(Some(section))
}

/// Upper edges of the CLV histogram's bins: 1, 2, 5, 10, 20, 50, ... (the first bin holds
/// everything below 1, the last everything from its lower edge up).
fn clv_edges() -> Vec<f64> {
    let mut edges = vec![];
    let mut decade = 1.0;
    while decade < 1e12 {
        edges.extend([decade, 2.0 * decade, 5.0 * decade]);
        decade *= 10.0;
    }
    edges
}

async fn clv(tables: &Tables) -> Result<Option<Section>> {
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
async fn backtest(tables: &Tables) -> Result<Option<DataTable>> {
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

/// Run facts from the manifest: inputs, gates, models, versions.
fn run_facts(manifest: &Manifest) -> Section {
    let mut section = Section::new(
        "run",
        "Run",
        format!(
            "Run {} of segflow {} on DataFusion {}, config hash {}.",
            manifest.run_id,
            manifest.segflow_version,
            manifest.datafusion_version,
            manifest.config_hash
        ),
    );
    let int = |col: &str, v: u64| Value::i(col, i64::try_from(v).ok());
    if let Some(input) = &manifest.input {
        let rows = [
            ("files", "files read", input.files as u64),
            ("rows_read", "rows read", input.rows_read),
            (
                "rows_dropped_status",
                "dropped by status",
                input.rows_dropped_status,
            ),
            ("rows_after_as_of", "after as_of", input.rows_after_as_of),
            ("rows_rejected", "rejected by gates", input.rows_rejected),
            ("rows_visible", "rows the models read", input.rows_visible),
        ];
        section.tables.push(DataTable {
            source: "manifest:input".to_string(),
            caption: "Order lines".to_string(),
            headers: vec!["".to_string(), "rows".to_string()],
            rows: rows
                .iter()
                .map(|(key, label, v)| Row {
                    key: key.to_string(),
                    label: label.to_string(),
                    cells: vec![int(key, *v)],
                    flag: None,
                })
                .collect(),
            open: true,
        });
        section.tables.push(DataTable {
            source: "manifest:gates".to_string(),
            caption: "Input gates".to_string(),
            headers: ["gate", "policy", "rows"].map(String::from).to_vec(),
            rows: input
                .gates
                .iter()
                .map(|(gate, stat)| {
                    let policy = stat.policy.as_str().to_string();
                    Row {
                        key: gate.clone(),
                        label: gate.clone(),
                        cells: vec![
                            Value::new("policy", policy.clone(), Some(policy)),
                            int("rows", stat.rows),
                        ],
                        flag: (stat.rows > 0).then_some("warn"),
                    }
                })
                .collect(),
            open: true,
        });
    }
    section.tables.push(DataTable {
        source: "manifest:models".to_string(),
        caption: "Models in run order of their names".to_string(),
        headers: ["model", "rows", "seconds", "published"]
            .map(String::from)
            .to_vec(),
        rows: manifest
            .models
            .iter()
            .map(|(name, m)| Row {
                key: name.clone(),
                label: name.clone(),
                cells: vec![
                    int("rows", m.rows),
                    Value::new(
                        "duration_ms",
                        format!("{:.2}", m.duration_ms as f64 / 1000.0),
                        Some(m.duration_ms.to_string()),
                    ),
                    Value::new(
                        "published",
                        if m.published { "yes" } else { "internal" }.to_string(),
                        Some(m.published.to_string()),
                    ),
                ],
                flag: None,
            })
            .collect(),
        open: false,
    });
    section
}

// ---------------------------------------------------------------------------------------

/// Renders the report of the snapshot `manifest` describes and stages it under
/// `_staging/<run_id>/_report/as_of=D/index.html`; the commit publishes it with the tables.
/// `computed` are the tables this run staged (registered in `ctx` under their names); the
/// manifest's other tables (kept by a `--select` run) are read from their published files.
pub async fn stage(
    ctx: &SessionContext,
    output: &Output,
    manifest: &Manifest,
    computed: &std::collections::BTreeSet<String>,
) -> Result<ReportEntry> {
    let mut map = BTreeMap::new();
    for (name, entry) in &manifest.tables {
        let df = if computed.contains(name) {
            ctx.table(name.as_str()).await
        } else {
            open_dir(ctx, &output.loc, &entry.path, &entry.partition_by).await
        }
        .map_err(|e| Error::engine(format!("report: read table {name}"), e))?;
        map.insert(name.clone(), df);
    }
    let html = render(&Tables(map), manifest).await?;
    let rel = staged_report_rel(&manifest.run_id, manifest.as_of);
    let path = output.loc.path(&rel);
    let bytes = html.len() as u64;
    let payload = PutPayload::from(html.into_bytes());
    retrying("put", || output.loc.store.put(&path, payload.clone()))
        .await
        .map_err(|e| output.err(format!("write {rel}"), e))?;
    Ok(ReportEntry {
        files: vec![report_file_rel(manifest.as_of)],
        path: report_rel(manifest.as_of),
        bytes,
    })
}

/// The report of `manifest`'s snapshot as one HTML page.
pub async fn render(tables: &Tables, manifest: &Manifest) -> Result<String> {
    let started = std::time::Instant::now();
    let mut sections = vec![];
    if !manifest.warnings.is_empty() {
        let mut section = Section::new(
            "warnings",
            "Warnings",
            "Checks of severity warn that failed in this run: the tables were published, \
             but these need a look.",
        );
        section.notes.clone_from(&manifest.warnings);
        sections.push(section);
    }
    for section in [
        scorecard(tables).await?,
        rfm_grid(tables).await?,
        lifecycle(tables).await?,
        cohorts(tables).await?,
        product_value(tables).await?,
        channel_value(tables).await?,
        migration(tables).await?,
        clv(tables).await?,
    ]
    .into_iter()
    .flatten()
    {
        sections.push(section);
    }
    sections.push(run_facts(manifest));

    let mut facts = vec![Fact {
        label: "as of",
        text: manifest.as_of.to_string(),
    }];
    if let Some(t) = manifest.tables.get("customer_facts") {
        facts.push(Fact {
            label: "customers",
            text: fmt_int(t.rows as i64),
        });
    }
    if let Some(input) = &manifest.input {
        facts.push(Fact {
            label: "order lines",
            text: fmt_int(input.rows_visible as i64),
        });
    }
    facts.push(Fact {
        label: "tables",
        text: manifest.tables.len().to_string(),
    });
    let page = Page {
        as_of: manifest.as_of.to_string(),
        generated: manifest.started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        facts,
        sections,
    };
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| report_err("template", e))?;
    let html = env
        .get_template("report.html")
        .and_then(|t| t.render(minijinja::value::Serde(&page)))
        .map_err(|e| report_err("template", e))?;
    info!(
        sections = page.sections.len(),
        bytes = html.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "report rendered"
    );
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_shown_with_thousands_separators_and_kept_exact() {
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_int(-1234), "-1,234");
        assert_eq!(fmt_int(12), "12");
        assert_eq!(fmt_money(12345.678), "12,346");
        assert_eq!(fmt_money(12.345), "12.35");
        assert_eq!(fmt_pct(0.1234), "12.3 %");
        let v = Value::f("share", Some(0.1 + 0.2), fmt_pct);
        assert_eq!(v.v.as_deref(), Some("0.30000000000000004"));
        assert_eq!(Value::f("share", None, fmt_pct).v, None);
    }

    #[test]
    fn clv_bins_run_one_two_five() {
        let e = clv_edges();
        assert_eq!(&e[..7], &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        // A value on an edge belongs to the bin above it.
        assert_eq!(e.partition_point(|x| *x <= 10.0), 4);
        assert_eq!(e.partition_point(|x| *x <= 0.5), 0);
    }
}
