//! Section: channel value.

use datafusion::prelude::*;

use crate::error::{Error, Result};
use charts::Bars;

use super::*;

/// The acquisition channels of `channel_value` (its `channel` dimension), one entry per
/// channel in each column.
struct Channels {
    channel: Vec<Option<String>>,
    customers: Vec<Option<i64>>,
    repeat: Vec<Option<f64>>,
    value: Vec<Option<f64>>,
    v365: Vec<Option<f64>>,
    spend: Vec<Option<f64>>,
    cac: Vec<Option<f64>>,
    ltv_cac: Vec<Option<f64>>,
}

pub(super) async fn channel_value(tables: &Tables) -> Result<Option<Section>> {
    let Some(c) = read_channels(tables).await? else {
        return Ok(None);
    };
    let (idx, labels) = by_value_desc(&c.value, &c.channel);
    let with_spend = idx.iter().any(|&i| c.cac[i].is_some());
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
        section.figure(
            "channel_value",
            if with_spend {
                "Revenue per customer and acquisition cost by channel"
            } else {
                "Revenue per customer by acquisition channel"
            },
            value_chart(&c, &idx, &labels, with_spend)?,
        );
    }
    if let Some(svg) = ltv_cac_chart(&c, &idx)? {
        section.figure(
            "channel_ltv_cac",
            "LTV / CAC by channel (channels with spend)",
            svg,
        );
    }
    section
        .tables
        .push(channel_table(&c, &idx, &labels, with_spend));
    Ok(Some(section))
}

/// The channel rows of `channel_value`; None if the snapshot lacks the table or a column.
async fn read_channels(tables: &Tables) -> Result<Option<Channels>> {
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
    Ok(Some(Channels {
        channel: f.strs("value")?,
        customers: f.i64s("customers")?,
        repeat: f.f64s("repeat_rate")?,
        value: f.f64s("avg_revenue_per_customer")?,
        v365: f.f64s("avg_revenue_365d")?,
        spend: f.f64s("spend")?,
        cac: f.f64s("cac")?,
        ltv_cac: f.f64s("ltv_cac")?,
    }))
}

/// Revenue per customer of the channels `idx` (labelled `labels`), and their CAC next to it
/// `with_spend`.
fn value_chart(c: &Channels, idx: &[usize], labels: &[String], with_spend: bool) -> Result<String> {
    let mut series = vec![Bars {
        name: "revenue per customer",
        values: idx.iter().map(|&i| c.value[i].unwrap_or(0.0)).collect(),
    }];
    if with_spend {
        series.push(Bars {
            name: "CAC",
            values: idx.iter().map(|&i| c.cac[i].unwrap_or(0.0)).collect(),
        });
    }
    charts::bar_chart("channels", labels, &series, &fmt_axis)
}

/// LTV / CAC of those of the channels `idx` that have it; None when none has.
fn ltv_cac_chart(c: &Channels, idx: &[usize]) -> Result<Option<String>> {
    let spent: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| c.ltv_cac[i].is_some())
        .collect();
    if spent.is_empty() {
        return Ok(None);
    }
    let labels: Vec<String> = spent
        .iter()
        .map(|&i| c.channel[i].clone().unwrap_or_default())
        .collect();
    let svg = charts::bar_chart(
        "channels",
        &labels,
        &[Bars {
            name: "LTV / CAC",
            values: spent.iter().map(|&i| c.ltv_cac[i].unwrap_or(0.0)).collect(),
        }],
        &|v| format!("{v:.1}"),
    )?;
    Ok(Some(svg))
}

/// The table of the channels `idx`; spend, CAC and LTV / CAC columns only `with_spend`.
fn channel_table(c: &Channels, idx: &[usize], labels: &[String], with_spend: bool) -> DataTable {
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
    let rows = idx
        .iter()
        .zip(labels)
        .map(|(&i, label)| {
            let mut cells = vec![
                Value::i("customers", c.customers[i]),
                Value::f("repeat_rate", c.repeat[i], fmt_pct),
                Value::f("avg_revenue_per_customer", c.value[i], fmt_money),
                Value::f("avg_revenue_365d", c.v365[i], fmt_money),
            ];
            if with_spend {
                cells.push(Value::f("spend", c.spend[i], fmt_money));
                cells.push(Value::f("cac", c.cac[i], fmt_money));
                cells.push(Value::f("ltv_cac", c.ltv_cac[i], fmt_ratio));
            }
            Row::new(format!("channel|{label}"), label.clone(), cells)
        })
        .collect();
    DataTable::new(
        "channel_value",
        "By acquisition channel",
        &headers,
        rows,
        true,
    )
}
