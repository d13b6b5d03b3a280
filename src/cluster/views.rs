//! Compact string views before a shuffle write.
//!
//! A string-view array keeps the buffers of the batch it was cut from: a batch of 8192 rows
//! out of the Parquet reader or an aggregation can hold megabytes of someone else's strings.
//! Arrow's IPC writer writes every buffer an array holds, so Ballista's shuffle files grew
//! to ~1.4 kB per `purchase_orders` row at 10 M lines (2.5 GB for 1.8 M rows), and the
//! executor's Flight service, which re-encodes a shuffle file in 2 MB slices of each batch,
//! wrote those buffers again for every slice (LZ4-compressing them): fetching that table's
//! result took minutes. [`CompactViews`] sits under each stage's shuffle writer and
//! rewrites every view column of a batch into buffers of its own strings (`gc`).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

/// `input`'s batches with their string and binary views compacted (same schema, same rows).
#[derive(Debug)]
pub struct CompactViews {
    input: Arc<dyn ExecutionPlan>,
}

impl CompactViews {
    /// `input` under a compaction when its output has a view column, else `input`.
    pub fn over(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let has_views = input
            .schema()
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView));
        if has_views {
            Arc::new(Self { input })
        } else {
            input
        }
    }
}

/// `batch` with every top-level view column holding only its own strings (also for rows
/// kept in memory: see [`crate::models::touched`]).
pub(crate) fn compact(batch: RecordBatch) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

impl DisplayAs for CompactViews {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CompactViews")
    }
}

impl ExecutionPlan for CompactViews {
    fn name(&self) -> &'static str {
        "CompactViews"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self { input })),
            _ => datafusion::common::internal_err!("CompactViews takes one child"),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map(|batch| batch.and_then(compact)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn a_slice_of_a_view_array_keeps_only_its_own_strings_and_values() {
        let long: Vec<String> = (0..10_000).map(|i| format!("customer-{i:0>40}")).collect();
        let all = StringViewArray::from_iter_values(long.iter());
        let slice = all.slice(100, 10);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "id",
            DataType::Utf8View,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(slice.clone())]).unwrap();
        let held = |b: &RecordBatch| -> usize {
            b.column(0)
                .as_string_view()
                .data_buffers()
                .iter()
                .map(|d| d.len())
                .sum()
        };
        assert!(held(&batch) > 400_000, "{}", held(&batch));
        let compacted = compact(batch).unwrap();
        assert!(held(&compacted) <= 10 * 49, "{}", held(&compacted));
        let values: Vec<&str> = compacted
            .column(0)
            .as_string_view()
            .iter()
            .flatten()
            .collect();
        assert_eq!(
            values,
            long[100..110]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
    }
}
