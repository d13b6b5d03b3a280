//! Section: the audiences — members now, and who entered and left since the previous
//! snapshot.

use std::collections::BTreeMap;

use datafusion::functions_aggregate::expr_fn::count;

use crate::error::Result;

use super::*;

pub(super) async fn audiences(tables: &Tables) -> Result<Option<Section>> {
    let columns = ["audience", "change"];
    let Some(df) = tables.get("audiences", "audience_members", &columns) else {
        return Ok(None);
    };
    let df = df
        .aggregate(
            vec![col("audience"), col("change")],
            vec![count(lit(1)).alias("n")],
        )
        .map_err(|e| Error::engine("report: count audience_members", e))?;
    let f = collect("audience_members", df).await?;
    let (audience, change, n) = (f.strs("audience")?, f.strs("change")?, f.i64s("n")?);
    let mut by: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for i in 0..audience.len() {
        let counts = by.entry(name_of(&audience[i])).or_default();
        let slot = match change[i].as_deref() {
            Some("entered") => 0,
            Some("stayed") => 1,
            _ => 2,
        };
        counts[slot] += n[i].unwrap_or(0);
    }
    let mut section = Section::new(
        "audiences",
        "Audiences",
        "Each audience's members now (consented customers of its segments, with an email \
         address), who entered since the previous snapshot and who left (the upload files \
         hold the members; a tool removes those who left).",
    );
    if by.is_empty() {
        section
            .notes
            .push("No audience has members in this snapshot.".to_string());
    }
    section.tables.push(DataTable {
        source: "audience_members".to_string(),
        caption: "members by audience".to_string(),
        headers: ["audience", "members", "entered", "stayed", "left"]
            .map(String::from)
            .to_vec(),
        rows: by
            .iter()
            .map(|(name, [entered, stayed, left])| Row {
                key: name.clone(),
                label: name.clone(),
                cells: vec![
                    Value::i("members", Some(entered + stayed)).derived(),
                    Value::i("entered", Some(*entered)).derived(),
                    Value::i("stayed", Some(*stayed)).derived(),
                    Value::i("left", Some(*left)).derived(),
                ],
                flag: None,
            })
            .collect(),
        open: true,
    });
    Ok(Some(section))
}
