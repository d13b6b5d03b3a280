//! The tables a report reads, collected into columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::*;
use tracing::warn;

use crate::error::{Error, Result};

use super::*;

// Reading tables back

/// A table's rows, read back whole (the report reads only small tables or aggregates).
pub(super) struct Frame {
    pub(super) table: String,
    pub(super) batch: RecordBatch,
}

pub(super) async fn collect(table: &str, df: DataFrame) -> Result<Frame> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| Error::engine(format!("report: read table {table}"), e))?;
    let batch = concat_batches(&schema, &batches)
        .map_err(|e| report_err(table, format!("cannot read the table: {e}")))?;
    Ok(Frame {
        table: table.to_string(),
        batch,
    })
}

impl Frame {
    pub(crate) fn len(&self) -> usize {
        self.batch.num_rows()
    }

    fn column(&self, name: &str, to: &DataType) -> Result<ArrayRef> {
        let a = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| report_err(&self.table, format!("no column `{name}`")))?;
        cast(a, to).map_err(|e| report_err(&self.table, format!("column `{name}`: {e}")))
    }

    pub(crate) fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let a = self.column(name, &DataType::Float64)?;
        Ok(a.as_primitive::<Float64Type>().iter().collect())
    }

    pub(crate) fn i64s(&self, name: &str) -> Result<Vec<Option<i64>>> {
        let a = self.column(name, &DataType::Int64)?;
        Ok(a.as_primitive::<Int64Type>().iter().collect())
    }

    pub(crate) fn strs(&self, name: &str) -> Result<Vec<Option<String>>> {
        let a = self.column(name, &DataType::Utf8)?;
        Ok(a.as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect())
    }

    pub(crate) fn bools(&self, name: &str) -> Result<Vec<Option<bool>>> {
        let a = self.column(name, &DataType::Boolean)?;
        Ok(a.as_boolean().iter().collect())
    }
}

/// The tables of the snapshot, by name, as the session reads them.
pub struct Tables(pub BTreeMap<String, DataFrame>);

impl Tables {
    /// `name` if the snapshot has it with every column in `columns`; otherwise the section
    /// is left out, and the log says why.
    pub(crate) fn get(&self, section: &str, name: &str, columns: &[&str]) -> Option<DataFrame> {
        let df = self.0.get(name)?;
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| df.schema().field_with_unqualified_name(c).is_err())
            .collect();
        if !missing.is_empty() {
            warn!(section, table = name, missing = %missing.join(", "),
                "report section left out: the table lacks columns it needs");
            return None;
        }
        Some(df.clone())
    }
}
