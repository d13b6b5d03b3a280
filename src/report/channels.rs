//! Section: channel value.

use datafusion::prelude::*;

use crate::error::{Error, Result};
use charts::Bars;

use super::*;

pub(super) async fn channel_value(tables: &Tables) -> Result<Option<Section>> {
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
