//! Section: the segment scorecard.

use std::collections::BTreeMap;

use crate::error::Result;
use charts::Bars;

use super::*;

pub(super) async fn scorecard(tables: &Tables) -> Result<Option<Section>> {
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
