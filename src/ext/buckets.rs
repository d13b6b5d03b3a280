//! Internal tables bucketed by customer. An internal table with a `customer_id` column is
//! written as one file per bucket, `part-<i>.parquet` holding the rows whose key hashes to
//! `i` under DataFusion's own repartitioning hash (of the key as it reads back: strings as
//! string views), one bucket per target partition. Read back, a scan declares that hash
//! partitioning, so a GROUP BY or join whose keys include `customer_id` needs no shuffle
//! and no partial/final split (DataFusion's subset satisfaction: a hash partitioning on
//! `customer_id` serves a grouping by `customer_id, order_date`). At 10 M order lines the
//! three aggregations over the staged lines no longer hash every group twice.

use std::sync::Arc;

use std::borrow::Cow;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::{not_impl_err, Constraints, DFSchemaRef, Result, Statistics};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::dml::{InsertOp, MergeIntoClause};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

/// The column internal tables are bucketed by.
pub const KEY: &str = "customer_id";

/// How a table's files are bucketed: `count` buckets of the key hashed as `hashed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub count: usize,
    pub hashed: DataType,
}

/// The key of `schema` as it reads back from Parquet (strings as string views), or None when
/// the schema has no bucketing key.
fn key_expr(schema: &SchemaRef) -> Option<(Arc<dyn PhysicalExpr>, DataType)> {
    let (index, field) = schema.column_with_name(KEY)?;
    let hashed = hashed_as(field.data_type())?;
    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(KEY, index));
    let expr: Arc<dyn PhysicalExpr> = match field.data_type() == &hashed {
        true => column,
        false => Arc::new(CastExpr::new(column, hashed.clone(), None)),
    };
    Some((expr, hashed))
}

/// Whether `plan`'s output is already hash partitioned on the key alone, `count` ways.
fn partitioned_on_key(plan: &Arc<dyn ExecutionPlan>, count: usize) -> bool {
    match plan.output_partitioning() {
        Partitioning::Hash(exprs, n) if *n == count && exprs.len() == 1 => {
            exprs[0].downcast_ref::<Column>().is_some_and(|c| {
                c.name() == KEY && plan.schema().index_of(KEY).ok() == Some(c.index())
            })
        }
        _ => false,
    }
}

/// `plan` with its rows in `count` partitions by bucket (the repartition left out when they
/// already are), and how they are bucketed; None when the rows have no bucketing key.
pub fn by_bucket(
    plan: Arc<dyn ExecutionPlan>,
    count: usize,
) -> Result<(Arc<dyn ExecutionPlan>, Option<Buckets>)> {
    let Some((expr, hashed)) = key_expr(&plan.schema()) else {
        return Ok((plan, None));
    };
    let buckets = Buckets { count, hashed };
    // A plan partitioned on a string view key (or an integer) already hashed it as it
    // reads back.
    let is_view = matches!(
        plan.schema().field_with_name(KEY).map(|f| f.data_type()),
        Ok(t) if *t == buckets.hashed
    );
    if is_view && partitioned_on_key(&plan, count) {
        return Ok((plan, Some(buckets)));
    }
    let plan = Arc::new(RepartitionExec::try_new(
        plan,
        Partitioning::Hash(vec![expr], count),
    )?);
    Ok((plan, Some(buckets)))
}

/// The bucket a data file of a bucketed table holds: `i` of `part-<i>.parquet`, or of
/// `<run>-part-<i>.parquet` (a kept state file, named by the run that wrote it).
fn bucket_of(path: &str) -> Option<usize> {
    let name = path.rsplit('/').next()?;
    let (run, bucket) = name.rsplit_once("part-")?;
    if !(run.is_empty() || run.ends_with('-')) {
        return None;
    }
    bucket.strip_suffix(".parquet")?.parse().ok()
}

/// The type a key of `data_type` was hashed as when its table was bucketed (strings as
/// string views); None for a type tables are not bucketed by.
pub fn hashed_as(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8View),
        t @ (DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64) => Some(t.clone()),
        _ => None,
    }
}

/// A bucketed internal table: scans of `inner` (a listing of its files) read one bucket per
/// partition and declare the key's hash partitioning (DataFusion's `FileScanConfig`
/// output partitioning, projected through the columns read).
#[derive(Debug)]
pub struct BucketedTable {
    pub inner: Arc<dyn TableProvider>,
    pub buckets: Buckets,
}

// Every method is written out: the inner listing table's own (its constraints, statistics,
// filter pushdown) unless the buckets need otherwise, so a method a new DataFusion adds
// fails this lint until it is decided here. The scans are the buckets' own; the writes are
// refused (see `insert_into`).
#[deny(clippy::missing_trait_methods)]
#[async_trait::async_trait]
impl TableProvider for BucketedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    /// Forwarded (a listing table has none). A table with a logical plan is inlined by the
    /// planner and never scanned here, but such a table's scan is no file scan either, which
    /// [`bucket_scan`] would leave as it is.
    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    /// The inner scan regrouped by bucket.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        Ok(bucket_scan(plan, &self.buckets).unwrap_or_else(|plan| plan))
    }

    /// What DataFusion's planner calls: the inner scan (with every argument, as it would
    /// have had without the wrapper) regrouped by bucket, like [`Self::scan`]. Forwarding
    /// the inner plan unchanged would drop the buckets' partitioning.
    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let plan = self.inner.scan_with_args(state, args).await?.into_inner();
        Ok(bucket_scan(plan, &self.buckets)
            .unwrap_or_else(|plan| plan)
            .into())
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    /// Not forwarded: the listing table would write files of its own naming beside the
    /// buckets, rows not placed by bucket, and the scan would quietly stop declaring the
    /// hash partitioning. Bucketed tables are written only by the staging writer (one file
    /// per bucket); refused, as the trait's default refused it before.
    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("INSERT INTO a table bucketed by {KEY}: it is written one file per bucket")
    }

    /// Not forwarded, as `insert_into`: rewritten files would not be the buckets.
    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("DELETE from a table bucketed by {KEY}: it is written one file per bucket")
    }

    /// Not forwarded, as `insert_into`: rewritten files would not be the buckets.
    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("UPDATE of a table bucketed by {KEY}: it is written one file per bucket")
    }

    /// Not forwarded, as `insert_into`.
    async fn truncate(&self, _state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("TRUNCATE of a table bucketed by {KEY}: it is written one file per bucket")
    }

    /// Not forwarded, as `insert_into`: merged rows would not be placed by bucket.
    async fn merge_into(
        &self,
        _state: &dyn Session,
        _source: Arc<dyn ExecutionPlan>,
        _merge_schema: DFSchemaRef,
        _on: Expr,
        _clauses: Vec<MergeIntoClause>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        not_impl_err!("MERGE INTO a table bucketed by {KEY}: it is written one file per bucket")
    }
}

/// The file scan `plan` regrouped to one bucket per partition, declaring the key's hash
/// partitioning (which also keeps DataFusion from splitting the files into byte ranges or
/// letting partitions steal each other's files), or `plan` unchanged when it is not a
/// whole-file scan of bucket files whose key reads back as the type it was hashed as.
fn bucket_scan(
    plan: Arc<dyn ExecutionPlan>,
    buckets: &Buckets,
) -> std::result::Result<Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>> {
    let Some(config) = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
    else {
        return Err(plan);
    };
    let table_schema = config.file_source.table_schema().table_schema().clone();
    let Some((index, field)) = table_schema.column_with_name(KEY) else {
        return Err(plan);
    };
    if *field.data_type() != buckets.hashed {
        return Err(plan);
    }
    let mut groups = vec![FileGroup::default(); buckets.count];
    for file in config.file_groups.iter().flat_map(|g| g.files()) {
        match bucket_of(file.object_meta.location.as_ref()) {
            Some(i) if i < buckets.count && file.range.is_none() => groups[i].push(file.clone()),
            _ => return Err(plan),
        }
    }
    let config = FileScanConfigBuilder::from(config.clone())
        .with_file_groups(groups)
        .with_output_partitioning(Some(Partitioning::Hash(
            vec![Arc::new(Column::new(KEY, index))],
            buckets.count,
        )))
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_plan::{collect, displayable, execute_stream_partitioned};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::StreamExt;

    /// 3 partitions (not a power of two), customer ids as plain strings, some repeated.
    fn session() -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(3);
        config.options_mut().optimizer.subset_repartition_threshold = 1;
        // Joins partitioned by hash on both sides, not one side collected.
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold = 0;
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold_rows = 0;
        SessionContext::new_with_config(config)
    }

    fn lines() -> RecordBatch {
        let ids: Vec<String> = (0..500)
            .map(|i| match i % 3 {
                0 => format!("c{}", i % 97),
                1 => format!("a-much-longer-customer-id-{}", i % 89),
                _ => format!("{}", i % 13),
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new(KEY, DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from_iter_values(0..500)),
            ],
        )
        .expect("batch")
    }

    /// The physical plan of `sql` and its indented text.
    async fn planned(ctx: &SessionContext, sql: &str) -> (Arc<dyn ExecutionPlan>, String) {
        let plan = ctx
            .sql(sql)
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        let text = displayable(plan.as_ref()).indent(true).to_string();
        (plan, text)
    }

    #[tokio::test]
    async fn bucketed_files_serve_groupings_and_partitioned_joins_as_datafusion_hashes_them() {
        let ctx = session();
        ctx.register_batch("lines", lines()).expect("register");
        let dir = std::env::temp_dir().join(format!("segflow-buckets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Written as write_internal writes: a file per partition of the bucketed plan.
        let plan = ctx
            .sql("select customer_id, n from lines")
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        let (plan, buckets) = by_bucket(plan, 3).expect("by_bucket");
        let buckets = buckets.expect("bucketed by customer_id");
        assert_eq!(buckets.hashed, DataType::Utf8View);
        for (i, mut stream) in execute_stream_partitioned(plan, ctx.task_ctx())
            .expect("execute")
            .into_iter()
            .enumerate()
        {
            let file = std::fs::File::create(dir.join(format!("part-{i}.parquet"))).expect("file");
            let mut writer = None;
            while let Some(batch) = stream.next().await {
                let batch = batch.expect("batch");
                writer
                    .get_or_insert_with(|| {
                        parquet::arrow::ArrowWriter::try_new(
                            file.try_clone().expect("file"),
                            batch.schema(),
                            None,
                        )
                        .expect("writer")
                    })
                    .write(&batch)
                    .expect("write");
            }
            if let Some(w) = writer {
                w.close().expect("close");
            }
        }
        let inner = Arc::new(crate::ext::tests::listing_table(&ctx, &dir).await);
        ctx.register_table("bucketed", Arc::new(BucketedTable { inner, buckets }))
            .expect("register");

        // Grouping by the key needs no shuffle, and counts as over the lines themselves.
        let grouped = "select customer_id, count(*) as c, sum(n) as s from {} group by customer_id order by customer_id";
        let (plan, text) = planned(&ctx, &grouped.replace("{}", "bucketed")).await;
        assert!(
            text.contains("output_partitioning=Hash([customer_id@0], 3)"),
            "{text}"
        );
        assert!(
            !text.contains("RepartitionExec: partitioning=Hash"),
            "{text}"
        );
        let got = collect(plan, ctx.task_ctx()).await.expect("collect");
        let want = ctx
            .sql(&grouped.replace("{}", "lines"))
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect");
        let rows = |b: &[RecordBatch]| {
            datafusion::arrow::util::pretty::pretty_format_batches(b)
                .expect("format")
                .to_string()
        };
        assert_eq!(rows(&got), rows(&want));

        // A join partitioned by hash on both sides, the other side repartitioned by
        // DataFusion and the bucketed side not: as many matches as a join of the lines with
        // themselves, so each bucket holds the keys DataFusion's hash sends to it.
        let count = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let (plan, text) = planned(&ctx, sql).await;
                let batches = collect(plan, ctx.task_ctx()).await.expect("collect");
                let n = batches[0]
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(0);
                (n, text)
            }
        };
        let (n, text) = count(
            "select count(*) from bucketed b \
             join (select arrow_cast(customer_id, 'Utf8View') as customer_id from lines) l \
             on b.customer_id = l.customer_id",
        )
        .await;
        assert!(text.contains("mode=Partitioned"), "{text}");
        assert_eq!(
            text.matches("RepartitionExec: partitioning=Hash").count(),
            1,
            "{text}"
        );
        let (want, _) =
            count("select count(*) from lines a join lines b on a.customer_id = b.customer_id")
                .await;
        assert!(want > 500);
        assert_eq!(n, want);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bucket_files_are_named_by_their_index() {
        assert_eq!(
            bucket_of("out/_staging/r/_internal/orders/part-0.parquet"),
            Some(0)
        );
        assert_eq!(bucket_of("part-12.parquet"), Some(12));
        assert_eq!(bucket_of("part-x.parquet"), None);
        assert_eq!(bucket_of("other-1.parquet"), None);
        // Kept state files carry the id of the run that wrote them.
        assert_eq!(
            bucket_of("_state/as_of=2026-11-21/customer_days/0196f-a1-part-3.parquet"),
            Some(3)
        );
        assert_eq!(bucket_of("_state/as_of=2026-11-21/m/xpart-3.parquet"), None);
    }
}
