//! The kept state rows of the customers an incremental run's new lines touch, read once.
//!
//! An incremental run reads a kept base restricted to the customers its new lines touch
//! more than once: the merge of a model over the lines reads its kept rows of those
//! customers, and each model over it recomputed for them reads them again (customer_totals
//! reads purchase_orders and customer_days, customer_months customer_days, ...). Each such
//! read scans the whole base (36 M rows at 100 M lines) for a few hundred thousand rows. The
//! first read keeps the rows it finds in memory, reserved from the run's memory pool, and the
//! others read them there; rows the pool cannot hold are read from the base each time, as
//! before.
//!
//! "Touched" is one definition for every reader: the customers of the run's staged lines
//! (`orders`), whose rows are the only ones an incremental run recomputes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::JoinType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{cast, col, Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use tracing::debug;

/// The key by which an incremental run restricts rows to the customers its new lines touch
/// (and an incremental model over other incremental models is recomputed by).
pub const CUSTOMER: &str = "customer_id";

/// Each kept base's rows of the touched customers, by state table, for one incremental run.
#[derive(Debug, Default)]
pub struct TouchedRows {
    bases: Mutex<HashMap<String, Arc<TouchedBase>>>,
}

impl TouchedRows {
    /// The rows of state table `name`'s kept base `base` (as read from its files) of the
    /// customers the run's new lines touch: read from the base by the first reader, kept
    /// for the others. `base` is used by the first call for `name` only.
    pub async fn rows(
        &self,
        ctx: &SessionContext,
        name: &str,
        base: DataFrame,
    ) -> DfResult<DataFrame> {
        let known = self.bases.lock().ok().and_then(|b| b.get(name).cloned());
        let touched = match known {
            Some(t) => t,
            None => {
                let restricted = restrict(ctx, base).await?;
                let fresh = Arc::new(TouchedBase {
                    name: name.to_string(),
                    schema: restricted.schema().inner().clone(),
                    restricted,
                    held: tokio::sync::Mutex::new(Held::Unread),
                });
                match self.bases.lock() {
                    Ok(mut bases) => Arc::clone(bases.entry(name.to_string()).or_insert(fresh)),
                    Err(_) => fresh,
                }
            }
        };
        ctx.read_table(touched)
    }

    /// Lets go of every kept row (their memory returns to the pool): called once no model
    /// left to run reads them. A read after this reads the base.
    pub fn release(&self) {
        let bases: Vec<Arc<TouchedBase>> = match self.bases.lock() {
            Ok(bases) => bases.values().cloned().collect(),
            Err(_) => return,
        };
        for base in bases {
            if let Ok(mut held) = base.held.try_lock() {
                *held = Held::Released;
            }
        }
    }
}

/// `rows` of the customers the run's new lines (the staged `orders`) touch.
pub async fn restrict(ctx: &SessionContext, rows: DataFrame) -> DfResult<DataFrame> {
    restrict_to(&touched_customers(ctx).await?, rows)
}

/// The customers the run's new lines (the staged `orders`) touch, once each.
pub async fn touched_customers(ctx: &SessionContext) -> DfResult<DataFrame> {
    ctx.table("orders")
        .await?
        .select(vec![col(CUSTOMER)])?
        .distinct()
}

/// `rows` of the customers `touched` ([`touched_customers`]) holds.
pub fn restrict_to(touched: &DataFrame, rows: DataFrame) -> DfResult<DataFrame> {
    let key = rows
        .schema()
        .field_with_unqualified_name(CUSTOMER)?
        .data_type()
        .clone();
    touched
        .clone()
        .select(vec![cast(col(CUSTOMER), key).alias(TOUCHED)])?
        .join(rows, JoinType::RightSemi, &[TOUCHED], &[CUSTOMER], None)
}

/// The touched customers' key column while rows are restricted to them.
const TOUCHED: &str = "segflow_touched_customer";

/// The rows of incremental model `name` (its `grain`) that snapshot `base` keeps of the
/// customers the run's new lines touch: its base's read once for every model that reads
/// them (`touched`), its delta's restricted to them.
pub async fn kept_state(
    ctx: &SessionContext,
    output: &crate::publish::Output,
    base: &crate::publish::Manifest,
    name: &str,
    grain: &[String],
    touched: &TouchedRows,
) -> DfResult<DataFrame> {
    let (rows, delta) = output.open_state_layers(ctx, base, name).await?;
    let rows = touched.rows(ctx, name, rows).await?;
    match delta {
        Some(delta) => crate::publish::state::layered(rows, restrict(ctx, delta).await?, grain),
        None => Ok(rows),
    }
}

/// One kept base's rows of the touched customers: the plan that reads them from the base,
/// and, once the first reader ran it, the rows.
#[derive(Debug)]
struct TouchedBase {
    /// The state table's name, for the log.
    name: String,
    schema: SchemaRef,
    restricted: DataFrame,
    held: tokio::sync::Mutex<Held>,
}

/// What a kept base's touched rows are held as.
#[derive(Debug)]
enum Held {
    /// No model read them yet.
    Unread,
    Kept(Kept),
    /// More than the memory pool could hold, or let go of ([`TouchedRows::release`]): read
    /// from the base.
    Released,
}

#[derive(Debug)]
struct Kept {
    batches: Vec<RecordBatch>,
    /// Held while the rows are: they count against the run's memory limit.
    _reservation: MemoryReservation,
}

impl TouchedBase {
    /// Runs the restricted read, keeping its rows while the pool grants their memory.
    async fn read(&self) -> DfResult<Option<Kept>> {
        let task = Arc::new(self.restricted.task_ctx());
        let plan = self.restricted.clone().create_physical_plan().await?;
        let reservation = MemoryConsumer::new("kept state rows of the touched customers")
            .register(task.memory_pool());
        let batch_size = task.session_config().batch_size();
        let mut stream = datafusion::physical_plan::execute_stream(plan, task)?;
        // The restricted read yields a few rows per batch of the base: kept in batches of
        // the session's size.
        let mut coalescer = BatchCoalescer::new(Arc::clone(&self.schema), batch_size);
        let mut batches = Vec::new();
        let mut ended = false;
        while !ended {
            match stream.next().await {
                Some(batch) => coalescer.push_batch(batch?)?,
                None => {
                    coalescer.finish_buffered_batch()?;
                    ended = true;
                }
            }
            while let Some(batch) = coalescer.next_completed_batch() {
                // Its string views in buffers of their own: kept rows would otherwise hold
                // every Parquet page their views point into.
                let batch = crate::cluster::views::compact(batch)?;
                if reservation.try_grow(batch.get_array_memory_size()).is_err() {
                    debug!(table = %self.name, "the touched customers' kept rows exceed the memory pool; each model reads them from the base");
                    return Ok(None);
                }
                batches.push(batch);
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        debug!(table = %self.name, rows, bytes = reservation.size(), "kept rows of the touched customers");
        Ok(Some(Kept {
            batches,
            _reservation: reservation,
        }))
    }
}

#[async_trait::async_trait]
impl TableProvider for TouchedBase {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut held = self.held.lock().await;
        if matches!(*held, Held::Unread) {
            *held = match self.read().await? {
                Some(kept) => Held::Kept(kept),
                None => Held::Released,
            };
        }
        match &*held {
            Held::Kept(kept) => Ok(MemorySourceConfig::try_new_exec(
                std::slice::from_ref(&kept.batches),
                self.schema(),
                projection.cloned(),
            )?),
            Held::Unread | Held::Released => {
                let rows = match projection {
                    Some(p) => {
                        let names: Vec<&str> = p
                            .iter()
                            .map(|i| self.schema.field(*i).name().as_str())
                            .collect();
                        self.restricted.clone().select_columns(&names)?
                    }
                    None => self.restricted.clone(),
                };
                rows.create_physical_plan().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::SessionConfig;

    fn table(rows: &[(&str, i64)]) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("amount", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("table"))
    }

    fn context(pool: usize) -> SessionContext {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(pool)))
            .build_arc()
            .expect("runtime");
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(1),
            runtime,
        );
        ctx.register_table("orders", table(&[("b", 1), ("c", 1), ("b", 2)]))
            .expect("orders");
        ctx
    }

    async fn sorted(df: DataFrame) -> Vec<String> {
        let batches = df.collect().await.expect("collect");
        let mut rows: Vec<String> =
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .expect("format")
                .to_string()
                .lines()
                .filter(|l| l.starts_with("| ") && !l.contains("customer_id"))
                .map(str::to_string)
                .collect();
        rows.sort();
        rows
    }

    /// The first reader reads the base; a later one gets the same rows, kept, even when the
    /// base it would have read is gone.
    #[tokio::test]
    async fn the_touched_customers_rows_are_read_once_and_kept_for_later_readers() {
        let ctx = context(64 << 20);
        let touched = TouchedRows::default();
        let base = ctx
            .read_table(table(&[
                ("a", 10),
                ("b", 20),
                ("b", 21),
                ("c", 30),
                ("d", 40),
            ]))
            .expect("base");
        let first = sorted(touched.rows(&ctx, "spend", base).await.expect("rows")).await;
        assert_eq!(
            first,
            [
                "| b           | 20     |",
                "| b           | 21     |",
                "| c           | 30     |"
            ]
        );
        // A later call's base is not read: the kept rows are.
        let other = ctx.read_table(table(&[("b", 99)])).expect("other");
        let again = touched.rows(&ctx, "spend", other).await.expect("rows");
        assert_eq!(sorted(again.clone()).await, first);
        let amounts = again
            .clone()
            .select_columns(&["amount"])
            .expect("projection");
        assert_eq!(amounts.count().await.expect("count"), 3);
        // Let go of: read from the first base again, the same rows.
        touched.release();
        assert_eq!(sorted(again).await, first);
    }

    /// Rows the memory pool cannot hold are read from the base by each reader, and are the
    /// same rows.
    #[tokio::test]
    async fn rows_beyond_the_memory_pool_are_read_from_the_base_each_time() {
        // 100 k rows of the touched customers (~2 MB kept) against a 256 kB pool.
        let ctx = context(256 << 10);
        let touched = TouchedRows::default();
        let many: Vec<(&str, i64)> = (0..300_000)
            .map(|i| (["a", "b", "c"][i % 3], i as i64))
            .collect();
        let base = ctx.read_table(table(&many)).expect("base");
        let rows = touched.rows(&ctx, "spend", base).await.expect("rows");
        let b = |df: DataFrame| async move {
            df.filter(col("customer_id").eq(datafusion::prelude::lit("b")))
                .expect("filter")
                .count()
                .await
                .expect("count")
        };
        assert_eq!(b(rows.clone()).await, 100_000);
        assert_eq!(rows.clone().count().await.expect("count"), 200_000);
        // Not kept: a second reader reads the base again.
        let base = Arc::clone(&touched.bases.lock().expect("lock")["spend"]);
        assert!(matches!(*base.held.lock().await, Held::Released));
        assert_eq!(b(rows).await, 100_000);
    }
}
