//! Section: product value (first categories).

use crate::error::Result;
use charts::Bars;

use super::*;

pub(super) async fn product_value(tables: &Tables) -> Result<Option<Section>> {
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
        rows: Row::per_label(&idx, &labels, |i| {
            vec![
                Value::i("customers", customers[i]),
                Value::f("repeat_rate", repeat[i], fmt_pct),
                Value::f("avg_revenue_per_customer", value[i], fmt_money),
                Value::f("avg_revenue_365d", v365[i], fmt_money),
                Value::f("avg_margin_365d", m365[i], fmt_money),
            ]
        }),
        open: true,
    });
    Ok(Some(section))
}
