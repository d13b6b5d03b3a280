//! What each chart of the report must draw, worked out from the published tables (read back
//! as any reader would) and the report's documented rules: which rows, in which order, how
//! many bars, cells, lines and points, with which labels. The SVG is only read to compare.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::svg::{self, Chart, Heat};
use crate::util::{read_table, DEMO_AS_OF};

type Row = BTreeMap<String, Option<String>>;

/// Lifecycle stages from first purchase to churn, the order the funnel shows them in.
const STAGES: [&str; 5] = ["new", "active", "at_risk", "lapsed", "churned"];
/// Churn-risk bands, the order their bars are shown in.
const RISKS: [&str; 3] = ["high", "medium", "low"];

fn text(r: &Row, col: &str) -> String {
    r[col].clone().unwrap_or_else(|| "(none)".to_string())
}

fn num(r: &Row, col: &str) -> Option<f64> {
    r[col].as_deref().map(|v| v.parse().unwrap())
}

fn int(r: &Row, col: &str) -> i64 {
    r[col].as_deref().unwrap().parse().unwrap()
}

/// Position in a fixed order, unknown names after the known ones, by name.
fn rank(order: &[&str], name: &str) -> (usize, String) {
    let i = order.iter().position(|s| *s == name).unwrap_or(order.len());
    (i, name.to_string())
}

/// Rows by `value` descending (NULL last), then by `name`.
fn by_value_desc<'a>(rows: impl Iterator<Item = &'a Row>, value: &str, name: &str) -> Vec<&'a Row> {
    let mut rows: Vec<&Row> = rows.collect();
    rows.sort_by(|a, b| {
        let v = |r: &Row| num(r, value).unwrap_or(f64::MIN);
        v(b).total_cmp(&v(a)).then_with(|| a[name].cmp(&b[name]))
    });
    rows
}

/// An amount as the axes write it: `0.5`, `20`, `1500`, `25 k`, `1.2 M`.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.1} M", v / 1e6),
        a if a >= 1e4 => format!("{:.0} k", v / 1e3),
        a if a >= 10.0 || v == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

/// Every chart of the demo report, in page order, draws what the tables hold.
pub(super) async fn assert_demo_charts(html: &str, out: &Path) {
    let charts = svg::charts(html);
    let ids: Vec<&str> = charts.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "segment_shares",
            "rfm_grid",
            "lifecycle_funnel",
            "cohort_retention",
            "cohort_ltv",
            "product_value",
            "channel_value",
            "channel_ltv_cac",
            "clv_distribution",
            "churn_risk"
        ]
    );
    let chart = |id: &str| charts.iter().find(|c| c.id == id).unwrap();
    let table = |name: &'static str| read_table(out, name, DEMO_AS_OF);
    segment_shares(chart("segment_shares"), &table("segment_summary").await);
    rfm_grid(chart("rfm_grid"), &table("rfm").await);
    lifecycle_funnel(chart("lifecycle_funnel"), &table("lifecycle").await);
    let cohorts = table("cohort_retention").await;
    cohort_retention(chart("cohort_retention"), &cohorts);
    cohort_ltv(chart("cohort_ltv"), &cohorts);
    product_value(chart("product_value"), &table("product_value").await);
    let channels = table("channel_value").await;
    channel_value(chart("channel_value"), chart("channel_ltv_cac"), &channels);
    let clv = table("clv").await;
    clv_distribution(chart("clv_distribution"), &clv);
    churn_risk(chart("churn_risk"), &clv);
}

/// The RFM segments, most customers first: share of customers beside share of revenue.
fn segment_shares(chart: &Chart, summary: &[Row]) {
    let mut rfm: Vec<&Row> = summary
        .iter()
        .filter(|r| text(r, "segmentation") == "rfm")
        .collect();
    rfm.sort_by_key(|r| (-int(r, "customers"), text(r, "segment")));
    assert_eq!(rfm.len(), 11, "the 11 rules of sql/rfm_segments.sql");
    let labels: Vec<String> = rfm.iter().map(|r| text(r, "segment")).collect();
    let values = |col| rfm.iter().map(|r| num(r, col).unwrap_or(0.0)).collect();
    svg::assert_bar_chart(
        chart,
        &labels,
        &[
            ("share of customers", values("share")),
            ("share of revenue", values("revenue_share")),
        ],
    );
}

/// Recency score rows (5 on top) by frequency score columns: customers per cell, coloured
/// by their mean monetary value.
fn rfm_grid(chart: &Chart, rfm: &[Row]) {
    // (r, f) -> (customers, sum of monetary, customers with a monetary value)
    let mut cells: BTreeMap<(i64, i64), (i64, f64, f64)> = BTreeMap::new();
    for r in rfm {
        let cell = cells
            .entry((int(r, "r_score"), int(r, "f_score")))
            .or_default();
        cell.0 += 1;
        if let Some(m) = num(r, "monetary") {
            cell.1 += m;
            cell.2 += 1.0;
        }
    }
    let rs: Vec<i64> = cells
        .keys()
        .map(|k| k.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .rev()
        .collect();
    let fs: Vec<i64> = cells
        .keys()
        .map(|k| k.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let at = |r: i64, f: i64| {
        let row = rs.iter().position(|x| *x == r).unwrap();
        (row, fs.iter().position(|x| *x == f).unwrap())
    };
    let heat = Heat {
        columns: fs.iter().map(|f| format!("F{f}")).collect(),
        rows: rs.iter().map(|r| format!("R{r}")).collect(),
        cells: cells
            .iter()
            .map(|(&(r, f), &(n, sum, valued))| (at(r, f), (sum / valued, svg::thousands(n))))
            .collect(),
        axes: ("frequency score", "recency score"),
    };
    svg::assert_heat_map(chart, &heat);
}

/// One bar per lifecycle stage, first purchase to churn, with its customers and share.
fn lifecycle_funnel(chart: &Chart, lifecycle: &[Row]) {
    let mut stages: BTreeMap<(usize, String), i64> = BTreeMap::new();
    for r in lifecycle {
        *stages.entry(rank(&STAGES, &text(r, "stage"))).or_default() += 1;
    }
    let total: i64 = stages.values().sum();
    let labels: Vec<String> = stages.keys().map(|(_, s)| s.clone()).collect();
    let values: Vec<f64> = stages.values().map(|n| *n as f64).collect();
    let shares: Vec<String> = stages
        .values()
        .map(|n| {
            let share = 100.0 * *n as f64 / total as f64;
            format!("{} ({share:.1} %)", svg::thousands(*n))
        })
        .collect();
    svg::assert_funnel(chart, &labels, &values, &shares);
}

/// Cohort months (oldest on top) by months since the first purchase (1 on): one cell per
/// row of cohort_retention after period 0, coloured by retention, numbered in percent.
fn cohort_retention(chart: &Chart, cohorts: &[Row]) {
    let months: Vec<String> = cohorts
        .iter()
        .map(|r| text(r, "cohort_month"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let last = cohorts.iter().map(|r| int(r, "period")).max().unwrap();
    let cells = cohorts
        .iter()
        .filter(|r| int(r, "period") > 0)
        .map(|r| {
            let row = months.binary_search(&text(r, "cohort_month")).unwrap();
            let retention = num(r, "retention");
            let shown = retention.map(|v| format!("{:.0}", v * 100.0));
            let cell = (row, int(r, "period") as usize - 1);
            (
                cell,
                (retention.unwrap_or(f64::NAN), shown.unwrap_or_default()),
            )
        })
        .collect();
    let heat = Heat {
        columns: (1..=last).map(|p| p.to_string()).collect(),
        rows: months,
        cells,
        axes: ("months since the first purchase", "cohort"),
    };
    svg::assert_heat_map(chart, &heat);
}

/// One line per cohort, oldest first: cumulative revenue per customer at each period.
fn cohort_ltv(chart: &Chart, cohorts: &[Row]) {
    let mut lines: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for r in cohorts {
        let line = lines.entry(text(r, "cohort_month")).or_default();
        if let Some(v) = num(r, "cumulative_revenue_per_customer") {
            line.push((int(r, "period"), v));
        }
    }
    let lines: Vec<(String, Vec<(i64, f64)>)> = lines
        .into_iter()
        .map(|(month, mut points)| {
            points.sort_by_key(|p| p.0);
            (month, points)
        })
        .collect();
    svg::assert_line_chart(chart, "months since the first purchase", &lines);
}

/// One bar per first-purchase category, most revenue per customer first.
fn product_value(chart: &Chart, products: &[Row]) {
    let rows = by_value_desc(
        products.iter(),
        "avg_revenue_per_customer",
        "first_category",
    );
    let labels: Vec<String> = rows.iter().map(|r| text(r, "first_category")).collect();
    let values = rows
        .iter()
        .map(|r| num(r, "avg_revenue_per_customer").unwrap_or(0.0))
        .collect();
    svg::assert_bar_chart(chart, &labels, &[("revenue per customer", values)]);
}

/// Channels, most revenue per customer first: revenue per customer beside CAC (the demo
/// has marketing spend), and LTV / CAC for the channels with spend.
fn channel_value(value_chart: &Chart, ratio_chart: &Chart, channel_value: &[Row]) {
    let channels = channel_value
        .iter()
        .filter(|r| text(r, "dimension") == "channel");
    let rows = by_value_desc(channels, "avg_revenue_per_customer", "value");
    assert!(rows.iter().any(|r| num(r, "cac").is_some()), "no spend");
    let labels: Vec<String> = rows.iter().map(|r| text(r, "value")).collect();
    let values = |rows: &[&Row], col| rows.iter().map(|r| num(r, col).unwrap_or(0.0)).collect();
    svg::assert_bar_chart(
        value_chart,
        &labels,
        &[
            (
                "revenue per customer",
                values(&rows, "avg_revenue_per_customer"),
            ),
            ("CAC", values(&rows, "cac")),
        ],
    );
    let spent: Vec<&Row> = rows
        .into_iter()
        .filter(|r| num(r, "ltv_cac").is_some())
        .collect();
    let labels: Vec<String> = spent.iter().map(|r| text(r, "value")).collect();
    svg::assert_bar_chart(
        ratio_chart,
        &labels,
        &[("LTV / CAC", values(&spent, "ltv_cac"))],
    );
}

/// Customers by predicted 365-day value in bins with edges 1, 2, 5, 10, 20, 50, ... (the
/// first below 1), from the lowest bin holding a customer to the highest.
fn clv_distribution(chart: &Chart, clv: &[Row]) {
    let mut edges = vec![];
    let mut decade = 1.0;
    while decade < 1e12 {
        edges.extend([decade, 2.0 * decade, 5.0 * decade]);
        decade *= 10.0;
    }
    let mut bins = vec![0i64; edges.len() + 1];
    for v in clv.iter().filter_map(|r| num(r, "clv_365d")) {
        if v.is_finite() {
            bins[edges.iter().filter(|e| **e <= v).count()] += 1;
        }
    }
    let first = bins.iter().position(|n| *n > 0).unwrap();
    let last = bins.iter().rposition(|n| *n > 0).unwrap();
    let labels: Vec<String> = (first..=last)
        .map(|b| match b {
            0 => format!("< {}", short(edges[0])),
            b if b == edges.len() => format!("≥ {}", short(edges[b - 1])),
            b => format!("{}–{}", short(edges[b - 1]), short(edges[b])),
        })
        .collect();
    let counts = bins[first..=last].iter().map(|n| *n as f64).collect();
    svg::assert_bar_chart(chart, &labels, &[("customers", counts)]);
}

/// One row per churn-risk band, high to low: its share of customers beside its share of
/// the predicted value.
fn churn_risk(chart: &Chart, clv: &[Row]) {
    // band -> (customers, predicted value)
    let mut bands: BTreeMap<(usize, String), (f64, f64)> = BTreeMap::new();
    for r in clv {
        let band = bands
            .entry(rank(&RISKS, &text(r, "churn_risk")))
            .or_default();
        band.0 += 1.0;
        band.1 += num(r, "clv_365d").unwrap_or(0.0);
    }
    let customers: f64 = bands.values().map(|b| b.0).sum();
    let value: f64 = bands.values().map(|b| b.1).sum();
    let labels: Vec<String> = bands.keys().map(|(_, b)| b.clone()).collect();
    svg::assert_bar_chart(
        chart,
        &labels,
        &[
            (
                "share of customers",
                bands.values().map(|b| b.0 / customers).collect(),
            ),
            (
                "share of predicted value",
                bands.values().map(|b| b.1 / value).collect(),
            ),
        ],
    );
}

/// One heat map per segmentation of segment_migration: segment before (rows) by segment now
/// (columns), each cell its customers.
pub(super) fn assert_migration_charts(html: &str, migration: &[Row]) {
    let mut by_segmentation: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in migration {
        by_segmentation
            .entry(text(r, "segmentation"))
            .or_default()
            .push(r);
    }
    let charts = svg::charts(html);
    let drawn: BTreeSet<&str> = charts
        .iter()
        .filter_map(|c| c.id.strip_prefix("migration_"))
        .collect();
    let segmentations: BTreeSet<&str> = by_segmentation.keys().map(String::as_str).collect();
    assert_eq!(drawn, segmentations);
    for (segmentation, rows) in by_segmentation {
        let labels = |col| -> Vec<String> {
            let set: BTreeSet<String> = rows.iter().map(|r| text(r, col)).collect();
            set.into_iter().collect()
        };
        let (froms, tos) = (labels("from_segment"), labels("to_segment"));
        let cells = rows
            .iter()
            .map(|r| {
                let row = froms.binary_search(&text(r, "from_segment")).unwrap();
                let column = tos.binary_search(&text(r, "to_segment")).unwrap();
                let n = int(r, "customers");
                ((row, column), (n as f64, svg::thousands(n)))
            })
            .collect();
        let id = format!("migration_{segmentation}");
        let heat = Heat {
            columns: tos,
            rows: froms,
            cells,
            axes: ("segment now", "segment before"),
        };
        svg::assert_heat_map(charts.iter().find(|c| c.id == id).unwrap(), &heat);
    }
}
