//! Section: segment migration since the previous snapshot.

use std::collections::BTreeMap;

use crate::error::Result;
use charts::Cell as HeatCell;

use super::*;

pub(super) async fn migration(tables: &Tables) -> Result<Option<Section>> {
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
