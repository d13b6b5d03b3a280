//! Section: the segment scorecard.

use std::collections::BTreeMap;

use crate::error::Result;
use charts::Bars;

use super::*;

/// The rows of `segment_summary`, one entry per row in each column.
struct Summary {
    segmentation: Vec<Option<String>>,
    segment: Vec<Option<String>>,
    customers: Vec<Option<i64>>,
    share: Vec<Option<f64>>,
    revenue_share: Vec<Option<f64>>,
    margin: Vec<Option<f64>>,
    aov: Vec<Option<f64>>,
    orders: Vec<Option<f64>>,
    repeat: Vec<Option<f64>>,
    reachable: Vec<Option<f64>>,
    stability: Vec<Option<f64>>,
    small: Vec<Option<bool>>,
}

pub(super) async fn scorecard(tables: &Tables) -> Result<Option<Section>> {
    let Some(s) = read_summary(tables).await? else {
        return Ok(None);
    };
    let mut section = Section::new(
        "segments",
        "Segment scorecard",
        "Each segmentation splits the customers one way. Share is of customers; revenue and \
         margin share are of the segmentation's revenue and margin; reachable is the share \
         that opted in to e-mail; stability is the share still in the segment since the \
         previous snapshot.",
    );
    for ((_, name), mut idx) in s.segmentations() {
        s.order_segments(&name, &mut idx);
        let rows = s.segment_rows(&name, &idx);
        if name == "rfm" || (section.figures.is_empty() && name == "lifecycle") {
            let svg = s.shares_chart(&idx, &rows)?;
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
        section.tables.push(segment_table(&name, rows));
    }
    Ok(Some(section))
}

/// The rows of `segment_summary`; None if the snapshot lacks the table or a column.
async fn read_summary(tables: &Tables) -> Result<Option<Summary>> {
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
    Ok(Some(Summary {
        segmentation: f.strs("segmentation")?,
        segment: f.strs("segment")?,
        customers: f.i64s("customers")?,
        share: f.f64s("share")?,
        revenue_share: f.f64s("revenue_share")?,
        margin: f.f64s("margin")?,
        aov: f.f64s("aov")?,
        orders: f.f64s("orders_per_customer")?,
        repeat: f.f64s("repeat_rate")?,
        reachable: f.f64s("reachable_share")?,
        stability: f.f64s("stability")?,
        small: f.bools("below_min_size")?,
    }))
}

impl Summary {
    /// Row indices by segmentation, in [`segmentation_rank`] order.
    fn segmentations(&self) -> BTreeMap<(usize, String), Vec<usize>> {
        let mut groups: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
        for (i, s) in self.segmentation.iter().enumerate() {
            let s = s.clone().unwrap_or_default();
            groups.entry(segmentation_rank(&s)).or_default().push(i);
        }
        groups
    }

    /// Lifecycle stages in stage order; other segments by customers descending, then name.
    fn order_segments(&self, segmentation: &str, idx: &mut [usize]) {
        let segment = &self.segment;
        if segmentation == "lifecycle" {
            idx.sort_by_key(|&i| stage_rank(segment[i].as_deref().unwrap_or("")));
        } else {
            idx.sort_by(|&a, &b| {
                self.customers[b]
                    .cmp(&self.customers[a])
                    .then_with(|| segment[a].cmp(&segment[b]))
            });
        }
    }

    /// A row per segment of `idx`, segmentation `name`; margin share is of the segments'
    /// total margin.
    fn segment_rows(&self, name: &str, idx: &[usize]) -> Vec<Row> {
        let total_margin: f64 = idx.iter().filter_map(|&i| self.margin[i]).sum();
        idx.iter()
            .map(|&i| {
                let seg = self.segment[i].clone().unwrap_or_default();
                let margin_share = self.margin[i]
                    .filter(|_| total_margin != 0.0)
                    .map(|m| m / total_margin);
                let is_small = self.small[i] == Some(true);
                let mut flag_cell = Value::new(
                    "below_min_size",
                    String::new(),
                    self.small[i].map(|b| b.to_string()),
                );
                if is_small {
                    flag_cell.text = "small".to_string();
                    flag_cell.class = "warn";
                }
                Row {
                    key: format!("{name}|{seg}"),
                    label: seg,
                    cells: vec![
                        Value::i("customers", self.customers[i]),
                        Value::f("share", self.share[i], fmt_pct),
                        Value::f("revenue_share", self.revenue_share[i], fmt_pct),
                        Value::f("margin_share", margin_share, fmt_pct).derived(),
                        Value::f("aov", self.aov[i], fmt_money),
                        Value::f("orders_per_customer", self.orders[i], fmt_ratio),
                        Value::f("repeat_rate", self.repeat[i], fmt_pct),
                        Value::f("reachable_share", self.reachable[i], fmt_pct),
                        Value::f("stability", self.stability[i], fmt_pct),
                        flag_cell,
                    ],
                    flag: is_small.then_some("warn"),
                }
            })
            .collect()
    }

    /// Share of customers against share of revenue of the segments `idx` (their `rows`).
    fn shares_chart(&self, idx: &[usize], rows: &[Row]) -> Result<String> {
        let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
        let values = |v: &[Option<f64>]| idx.iter().map(|&i| v[i].unwrap_or(0.0)).collect();
        charts::bar_chart(
            "segments",
            &labels,
            &[
                Bars {
                    name: "share of customers",
                    values: values(&self.share),
                },
                Bars {
                    name: "share of revenue",
                    values: values(&self.revenue_share),
                },
            ],
            &fmt_pct_axis,
        )
    }
}

/// The table of segmentation `name`; the first three segmentations are shown open.
fn segment_table(name: &str, rows: Vec<Row>) -> DataTable {
    DataTable::new(
        "segment_summary",
        format!("By {name}"),
        &[
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
        ],
        rows,
        SEGMENTATIONS[..3].contains(&name),
    )
}
