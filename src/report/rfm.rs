//! Section: the RFM grid.

use datafusion::functions_aggregate::expr_fn::{avg, count};
use datafusion::prelude::*;

use crate::error::{Error, Result};
use charts::Cell as HeatCell;

use super::*;

pub(super) async fn rfm_grid(tables: &Tables) -> Result<Option<Section>> {
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
