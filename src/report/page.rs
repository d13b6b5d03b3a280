//! The page model the template renders: sections of facts, tables and figures, and the
//! orderings sections share.

use serde::Serialize;

use super::*;

// What the template shows

/// A number cell: its text and its exact value (`data-v`; none for NULL).
#[derive(Serialize, Clone)]
pub(super) struct Value {
    pub(super) text: String,
    pub(super) v: Option<String>,
    /// A value the report derived from the table's numbers (e.g. a share of a column).
    pub(super) derived: bool,
    /// The row key of this cell where it differs from its row's (matrix tables).
    pub(super) key: Option<String>,
    pub(super) col: String,
    pub(super) class: &'static str,
}

impl Value {
    pub(crate) fn new(col: &str, text: String, v: Option<String>) -> Value {
        Value {
            text,
            v,
            derived: false,
            key: None,
            col: col.to_string(),
            class: "",
        }
    }

    pub(crate) fn f(col: &str, v: Option<f64>, fmt: fn(f64) -> String) -> Value {
        match v {
            Some(x) => Value::new(col, fmt(x), Some(x.to_string())),
            None => Value::new(col, "–".to_string(), None),
        }
    }

    pub(crate) fn i(col: &str, v: Option<i64>) -> Value {
        match v {
            Some(x) => Value::new(col, fmt_int(x), Some(x.to_string())),
            None => Value::new(col, "–".to_string(), None),
        }
    }

    pub(crate) fn derived(mut self) -> Value {
        self.derived = true;
        self
    }
}

#[derive(Serialize)]
pub(super) struct Row {
    pub(super) key: String,
    pub(super) label: String,
    pub(super) cells: Vec<Value>,
    pub(super) flag: Option<&'static str>,
}

impl Row {
    /// One row per label, keyed by it: the cells of the `n`-th label from the `n`-th of
    /// `idx` (row indices into the columns `cells` reads).
    pub(crate) fn per_label(
        idx: &[usize],
        labels: &[String],
        cells: impl Fn(usize) -> Vec<Value>,
    ) -> Vec<Row> {
        idx.iter()
            .zip(labels)
            .map(|(&i, label)| Row::new(label.clone(), label.clone(), cells(i)))
            .collect()
    }

    /// A row without a flag.
    pub(crate) fn new(key: String, label: String, cells: Vec<Value>) -> Row {
        Row {
            key,
            label,
            cells,
            flag: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct DataTable {
    /// The table the numbers come from (`data-table`).
    pub(super) source: String,
    pub(super) caption: String,
    /// Header of the label column, then of each value column.
    pub(super) headers: Vec<String>,
    pub(super) rows: Vec<Row>,
    /// Shown open; otherwise folded under its caption.
    pub(super) open: bool,
}

impl DataTable {
    pub(crate) fn new(
        source: &str,
        caption: impl Into<String>,
        headers: &[&str],
        rows: Vec<Row>,
        open: bool,
    ) -> DataTable {
        DataTable {
            source: source.to_string(),
            caption: caption.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows,
            open,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Figure {
    pub(super) id: String,
    pub(super) caption: String,
    pub(super) svg: String,
}

#[derive(Serialize)]
pub(super) struct Section {
    pub(super) id: &'static str,
    pub(super) title: &'static str,
    pub(super) intro: String,
    pub(super) figures: Vec<Figure>,
    pub(super) tables: Vec<DataTable>,
    pub(super) notes: Vec<String>,
}

impl Section {
    pub(crate) fn new(id: &'static str, title: &'static str, intro: impl Into<String>) -> Section {
        Section {
            id,
            title,
            intro: intro.into(),
            figures: vec![],
            tables: vec![],
            notes: vec![],
        }
    }

    pub(crate) fn figure(&mut self, id: &str, caption: impl Into<String>, svg: String) {
        self.figures.push(Figure {
            id: id.to_string(),
            caption: caption.into(),
            svg,
        });
    }
}

#[derive(Serialize)]
pub(super) struct Fact {
    pub(super) label: &'static str,
    pub(super) text: String,
}

#[derive(Serialize)]
pub(super) struct Page {
    pub(super) as_of: String,
    pub(super) generated: String,
    pub(super) facts: Vec<Fact>,
    pub(super) sections: Vec<Section>,
}

// ---------------------------------------------------------------------------------------
// Sections

/// A category as shown: its name, or `(none)` for NULL.
pub(super) fn name_of(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "(none)".to_string())
}

/// Row order of a value table: by `value` descending, then by name; with the shown names.
pub(super) fn by_value_desc(
    value: &[Option<f64>],
    names: &[Option<String>],
) -> (Vec<usize>, Vec<String>) {
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

pub(super) fn segmentation_rank(s: &str) -> (usize, String) {
    let i = SEGMENTATIONS
        .iter()
        .position(|x| *x == s)
        .unwrap_or(SEGMENTATIONS.len());
    (i, s.to_string())
}

pub(super) fn stage_rank(s: &str) -> usize {
    STAGES.iter().position(|x| *x == s).unwrap_or(STAGES.len())
}
