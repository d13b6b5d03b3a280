//! Canaries: what segflow's extensions assume about DataFusion and arrow that an upgrade can
//! break without failing anything else — a rewrite that stops matching, a hash that moves, an
//! error text that changes shape. Run `cargo test canary` after every DataFusion or arrow
//! upgrade. Each test is named for its assumption and says in its failure message what to
//! do. `README.md` beside this file lists which canary guards which extension.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::{cast, cast_with_options, concat, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::datasource::memory::{MemTable, MemorySourceConfig};
use datafusion::execution::FunctionRegistry;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{execute_stream_partitioned, ExecutionPlan, Partitioning};
use datafusion::prelude::{col, SessionConfig, SessionContext};
use futures::TryStreamExt;

use super::buckets::{by_bucket, KEY};

/// Deterministic pseudo-random numbers (xorshift).
fn xorshift(n: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
}

/// Customer-id-like strings around the 12-byte inline limit of string views, with NULLs,
/// empty and non-ASCII ones.
fn keys(n: usize) -> Vec<Option<String>> {
    xorshift(n)
        .into_iter()
        .enumerate()
        .map(|(i, x)| match x % 7 {
            0 if i % 3 == 0 => None,
            0 => Some(String::new()),
            1 => Some(format!("{}", x % 5000)),
            2 => Some(format!("c{}", x % 97)),
            3 => Some(format!("a-much-longer-customer-id-{}", x % 89)),
            4 => Some(format!("ünïcode-{}", x % 31)),
            5 => Some(format!("{:012}", x % 1_000_000)),
            _ => Some(format!("{:013}", x % 1_000_000)),
        })
        .collect()
}

/// The partition of `plan` each row (by its `row` column) comes out of.
async fn partition_of_rows(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> Vec<usize> {
    let mut of = BTreeMap::new();
    for (partition, stream) in execute_stream_partitioned(plan, ctx.task_ctx())
        .expect("execute")
        .into_iter()
        .enumerate()
    {
        let batches: Vec<RecordBatch> = stream.try_collect().await.expect("collect");
        for b in &batches {
            let rows = b.column_by_name("row").expect("row column");
            for &row in rows.as_primitive::<Int64Type>().values() {
                assert!(of.insert(row, partition).is_none(), "row {row} twice");
            }
        }
    }
    of.into_values().collect()
}

/// `key` and a row number as a plan of two partitions.
fn source(key: ArrayRef) -> Arc<dyn ExecutionPlan> {
    let n = key.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new(KEY, key.data_type().clone(), true),
        Field::new("row", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![key, Arc::new(Int64Array::from_iter_values(0..n as i64))],
    )
    .expect("batch");
    let half = n / 2;
    let partitions = [
        vec![batch.slice(0, half)],
        vec![batch.slice(half, n - half)],
    ];
    MemorySourceConfig::try_new_exec(&partitions, schema, None).expect("plan")
}

/// Bucket `i` of an internal table is written from partition `i` of [`by_bucket`]'s plan;
/// read back (strings as string views), the scan declares `Hash([customer_id], n)` and
/// DataFusion joins it, unshuffled, with the other side's rows repartitioned by its own
/// `RepartitionExec`. So every key must land in the same partition both ways.
#[tokio::test]
async fn bucket_files_hold_the_rows_datafusions_hash_repartitioning_sends_to_their_partition() {
    let ctx = SessionContext::new();
    let strings = keys(2000);
    let ints: Vec<Option<i64>> = xorshift(2000)
        .into_iter()
        .enumerate()
        .map(|(i, x)| match i % 50 {
            0 => None,
            1 => Some(i64::MIN),
            2 => Some(i64::MAX),
            _ => Some((x % 100_000) as i64 - 50_000),
        })
        .collect();
    let utf8: ArrayRef = Arc::new(StringArray::from(strings));
    let int64: ArrayRef = Arc::new(Int64Array::from(ints));
    let inputs: Vec<(ArrayRef, DataType)> = vec![
        (utf8.clone(), DataType::Utf8View),
        (
            cast(&utf8, &DataType::LargeUtf8).expect("cast"),
            DataType::Utf8View,
        ),
        (
            cast(&utf8, &DataType::Utf8View).expect("cast"),
            DataType::Utf8View,
        ),
        (int64.clone(), DataType::Int64),
        (
            cast(&int64, &DataType::Int32).expect("cast"),
            DataType::Int32,
        ),
    ];
    for (key, read_back_as) in inputs {
        let written_as = key.data_type().clone();
        for n in [1, 2, 3, 5, 8, 16] {
            let (plan, buckets) = by_bucket(source(key.clone()), n).expect("by_bucket");
            let buckets = buckets.expect("a customer_id column is bucketed");
            assert_eq!(
                buckets.hashed, read_back_as,
                "a {written_as} customer_id is hashed as {} (expected {read_back_as}, the type it \
                 reads back from Parquet as): see buckets::key_expr and the \
                 strings_read_back_from_parquet_as_the_string_views_buckets_are_hashed_as canary",
                buckets.hashed
            );
            let written = partition_of_rows(plan, &ctx).await;

            let read_back = cast(&key, &buckets.hashed).expect("cast");
            let repartitioned: Arc<dyn ExecutionPlan> = Arc::new(
                RepartitionExec::try_new(
                    source(read_back),
                    Partitioning::Hash(vec![Arc::new(Column::new(KEY, 0))], n),
                )
                .expect("repartition"),
            );
            let datafusions = partition_of_rows(repartitioned, &ctx).await;
            assert_eq!(written.len(), key.len(), "every row written once");
            let moved: Vec<usize> = (0..key.len())
                .filter(|&row| written[row] != datafusions[row])
                .collect();
            if let Some(&row) = moved.first() {
                panic!(
                    "{written_as} customer_id, {n} buckets: {} of {} rows are written to another \
                     bucket than the partition DataFusion's RepartitionExec sends them to (row \
                     {row}, key {:?}: bucket {}, partition {}). Its hash or seed changed, or how \
                     it hashes a {} key: bucketed scans would declare a partitioning their files \
                     do not have and joins would miss rows. Make buckets::by_bucket hash exactly \
                     as RepartitionExec does, or stop declaring Partitioning::Hash in \
                     buckets::bucket_scan until it does",
                    moved.len(),
                    key.len(),
                    datafusion::arrow::util::display::array_value_to_string(&key, row)
                        .expect("display"),
                    written[row],
                    datafusions[row],
                    buckets.hashed
                );
            }
        }
    }
}

/// Strings in internal tables read back from Parquet as string views, the type
/// [`by_bucket`] hashes them as; otherwise `bucket_scan` quietly stops declaring the hash
/// partitioning (results stay right, the shuffles come back).
#[tokio::test]
async fn strings_read_back_from_parquet_as_the_string_views_buckets_are_hashed_as() {
    use datafusion::datasource::TableProvider;

    let dir = tempfile::tempdir().expect("temp dir");
    let schema = Arc::new(Schema::new(vec![Field::new(KEY, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![Some("c1"), None]))],
    )
    .expect("batch");
    let file = std::fs::File::create(dir.path().join("part-0.parquet")).expect("file");
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");

    let ctx = SessionContext::new();
    let table = super::tests::listing_table(&ctx, dir.path()).await;
    let read_as = table
        .schema()
        .field_with_name(KEY)
        .expect("key")
        .data_type()
        .clone();
    let (_, buckets) =
        by_bucket(source(Arc::new(StringArray::from(vec!["c1"]))), 2).expect("by_bucket");
    assert_eq!(
        read_as,
        buckets.expect("bucketed").hashed,
        "a Utf8 customer_id written to Parquet now reads back as {read_as}, not as the type \
         buckets.rs hashes it as: bucketed scans would stop declaring their partitioning. Hash \
         the key as it now reads back (buckets::key_expr) or set \
         datafusion.execution.parquet.schema_force_view_types in session.rs"
    );
}

/// Doubles with every kind of rounding the fast cast must do as arrow does, values past an
/// `i64` once scaled (arrow's path) in a batch of their own, and NULLs.
fn doubles() -> Vec<Float64Array> {
    vec![
        Float64Array::from(
            super::decimal::tests::doubles_to_round()
                .into_iter()
                .chain([
                    Some(0.000_001_5),
                    Some(9_223_372_036_854.775),
                    Some(-9_223_372_036_854.775),
                ])
                .collect::<Vec<_>>(),
        ),
        Float64Array::from(vec![Some(1e13), Some(-1e13), Some(1.5), None]),
    ]
}

/// `FloatDecimalRule` matches `Expr::Cast` of a Float64 to a Decimal128 in the optimized
/// logical plan, after DataFusion's own rules; if DataFusion stops leaving such casts as
/// `Expr::Cast` there (or runs extension rules elsewhere), the rule silently matches nothing.
#[tokio::test]
async fn casts_of_doubles_to_decimals_are_still_rewritten_to_the_fast_cast_with_arrows_results() {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    super::register(&ctx);
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
    let batches: Vec<RecordBatch> = doubles()
        .into_iter()
        .map(|a| RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).expect("batch"))
        .collect();
    let table = MemTable::try_new(schema, vec![batches.clone()]).expect("table");
    ctx.register_table("t", Arc::new(table)).expect("register");
    let input = concat(
        &batches
            .iter()
            .map(|b| b.column(0).as_ref())
            .collect::<Vec<_>>(),
    )
    .expect("concat");
    for (precision, scale) in [(38, 6), (38, 2), (20, 0)] {
        let sql = format!("select cast(x as decimal({precision}, {scale})) as d from t");
        let df = ctx.sql(&sql).await.expect("plan");
        let plan = df
            .clone()
            .into_optimized_plan()
            .expect("optimize")
            .display_indent()
            .to_string();
        assert!(
            plan.contains("segflow_float_to_decimal") && !plan.contains("CAST(t.x"),
            "`{sql}` is no longer rewritten by decimal::FloatDecimalRule (the cast is arrow's \
             again: 2.5 % of a 10 M-line run). See how DataFusion now plans the cast and make the \
             rule match it, or delete the rule if arrow's cast is now as fast:\n{plan}"
        );
        let got: Vec<ArrayRef> = df
            .collect()
            .await
            .expect("run")
            .iter()
            .map(|b| b.column(0).clone())
            .collect();
        let got = concat(&got.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).expect("concat");
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let arrows = cast_with_options(&input, &DataType::Decimal128(precision, scale), &options)
            .expect("arrow's cast");
        assert_eq!(
            got.as_ref(),
            arrows.as_ref(),
            "decimal({precision}, {scale}): the fast cast no longer gives arrow's values; arrow's \
             float-to-decimal rounding changed: make decimal::FloatDecimal round as it now does"
        );
    }
}

/// Many groups of strings (NULLs, values around the 12-byte inline limit), integers and
/// doubles (NULLs, NaN, -0.0), in four partitions.
fn minmax_table() -> MemTable {
    let n = 12_000;
    let strings = keys(n);
    let randoms = xorshift(n);
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("v", DataType::Utf8View, true),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
    ]));
    let s: ArrayRef = Arc::new(StringArray::from(strings));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            // every group in several batches and partitions
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|k| (k * 7 % 2500) as i64),
            )),
            s.clone(),
            cast(&s, &DataType::Utf8View).expect("cast"),
            Arc::new(Int64Array::from_iter(randoms.iter().enumerate().map(
                |(k, x)| (k % 13 != 0).then_some((*x >> 20) as i64 - (1 << 43)),
            ))),
            Arc::new(Float64Array::from_iter(randoms.iter().enumerate().map(
                |(k, x)| match k % 101 {
                    0 => None,
                    1 => Some(f64::NAN),
                    2 => Some(-0.0),
                    _ => Some((*x % 1_000_000) as f64 / 7.0 - 70_000.0),
                },
            ))),
        ],
    )
    .expect("batch");
    // Four partitions of batches of 500 rows.
    let mut partitions = vec![Vec::new(); 4];
    for (k, start) in (0..n).step_by(500).enumerate() {
        partitions[k % 4].push(batch.slice(start, 500.min(n - start)));
    }
    MemTable::try_new(schema, partitions).expect("table")
}

/// segflow's `min`/`max` replace DataFusion's by name (`register_udaf`) and forward all but
/// the grouped accumulator of strings; their answers must stay DataFusion's own.
#[tokio::test]
async fn segflow_min_max_equal_datafusions_own_on_strings_and_numbers() {
    use datafusion::functions_aggregate::expr_fn;
    for partitions in [1, 4] {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(256),
        );
        super::register(&ctx);
        let (min, max) = (ctx.udaf("min").expect("min"), ctx.udaf("max").expect("max"));
        assert!(
            min.inner().is::<super::minmax::MinMax>() && max.inner().is::<super::minmax::MinMax>(),
            "SQL's min/max no longer resolve to segflow's (ext::minmax::MinMax) after \
             ext::register: registering a UDAF no longer replaces DataFusion's function of the \
             same name, and the faster string accumulator is silently unused"
        );
        ctx.register_table("t", Arc::new(minmax_table()))
            .expect("register");
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for c in ["s", "v", "i", "f"] {
            ours.push(min.call(vec![col(c)]).alias(format!("min_{c}")));
            theirs.push(expr_fn::min(col(c)).alias(format!("df_min_{c}")));
            ours.push(max.call(vec![col(c)]).alias(format!("max_{c}")));
            theirs.push(expr_fn::max(col(c)).alias(format!("df_max_{c}")));
        }
        let width = ours.len();
        for group_by in [vec![col("g")], vec![]] {
            let grouped = !group_by.is_empty();
            let batches = ctx
                .table("t")
                .await
                .expect("table")
                .aggregate(group_by, ours.iter().chain(&theirs).cloned().collect())
                .expect("aggregate")
                .collect()
                .await
                .expect("run");
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, if grouped { 2500 } else { 1 });
            let first = usize::from(grouped);
            for b in &batches {
                for k in 0..width {
                    let (a, d) = (b.column(first + k), b.column(first + width + k));
                    let Some(row) = (0..b.num_rows()).find(|&r| a.slice(r, 1) != d.slice(r, 1))
                    else {
                        continue;
                    };
                    let show = |x: &ArrayRef| {
                        datafusion::arrow::util::display::array_value_to_string(x, row)
                            .expect("display")
                    };
                    panic!(
                        "{} (grouped: {grouped}, {partitions} partitions): segflow's gives {:?} \
                         where DataFusion's min/max gives {:?} (group {}). If DataFusion changed \
                         its semantics (NULLs, NaN, ordering), follow it in ext::minmax; for a \
                         string column, first see whether DataFusion's own accumulator is now \
                         fast enough to delete ext::minmax (README.md there)",
                        b.schema().field(first + k).name(),
                        show(a),
                        show(d),
                        if grouped {
                            show(b.column(0))
                        } else {
                            "-".into()
                        }
                    );
                }
            }
        }
    }
}

/// The message `segflow check` shows for a model that fails to plan, through
/// `models::model_error`: the location, and the message.
async fn planning_error(ctx: &SessionContext, sql: &str) -> (String, String) {
    let model = crate::models::parse_model("typo", "models/typo.sql", sql.to_string())
        .expect("parse model");
    match crate::models::plan_model(ctx, &model, &BTreeMap::new()).await {
        Err(crate::error::Error::Model { file, message, .. }) => (file, message),
        Err(e) => panic!("`{sql}`: not a model error: {e}"),
        Ok(_) => panic!("`{sql}` planned"),
    }
}

/// DataFusion's error text, which `models::model_error` searches for "Did you mean" (the
/// suggestion is not in the diagnostic), and the diagnostic's message.
async fn datafusion_error(ctx: &SessionContext, sql: &str) -> (String, Option<String>) {
    let e = ctx.sql(sql).await.expect_err("a planning error");
    let diagnostic = e
        .iter()
        .find_map(|e| e.diagnostic())
        .map(|d| d.message.clone());
    (e.strip_backtrace(), diagnostic)
}

/// `models::model_error` takes DataFusion's diagnostic for the message and location, and
/// appends the line starting "Did you mean" from the error text (else the text after "Valid
/// fields are "), as `segflow check` prints it (tests/analyst expects these lines).
#[tokio::test]
async fn unknown_column_table_and_function_errors_keep_the_did_you_mean_shape_check_parses() {
    let mut config = SessionConfig::new();
    config.options_mut().sql_parser.collect_spans = true; // as session.rs sets it
    let ctx = SessionContext::new_with_config(config);
    ctx.sql("create table orders(customer_id varchar, revenue double) as values ('c1', 1.0)")
        .await
        .expect("table")
        .collect()
        .await
        .expect("create");
    let fix = "update models::model_error (src/models/plan.rs) to find the suggestion where \
               DataFusion now puts it, then this canary and tests/analyst's expected output";

    // An unknown column close to a known one.
    let (text, diagnostic) = datafusion_error(&ctx, "select revenu from orders").await;
    assert_eq!(
        (text.as_str(), diagnostic.as_deref()),
        (
            "Schema error: No field named revenu. Did you mean 'orders.revenue'?\n\
             Valid fields are orders.customer_id, orders.revenue.",
            Some("column 'revenu' not found")
        ),
        "DataFusion's unknown-column error changed shape: {fix}"
    );
    assert_eq!(
        planning_error(&ctx, "select customer_id,\n       revenu\nfrom orders").await,
        (
            "models/typo.sql:2:8".to_string(),
            "column 'revenu' not found (help: Did you mean 'orders.revenue'?)".to_string()
        ),
        "{fix}"
    );

    // An unknown column close to none: the valid fields instead.
    let (text, _) = datafusion_error(&ctx, "select nope from orders").await;
    assert_eq!(
        text,
        "Schema error: No field named nope.\nValid fields are orders.customer_id, orders.revenue.",
        "DataFusion's unknown-column error changed shape: {fix}"
    );
    assert_eq!(
        planning_error(&ctx, "select nope from orders").await,
        (
            "models/typo.sql:1:8".to_string(),
            "column 'nope' not found (valid fields: orders.customer_id, orders.revenue)"
                .to_string()
        ),
        "{fix}"
    );

    // An unknown function close to a known one.
    let (text, diagnostic) = datafusion_error(&ctx, "select sumx(revenue) from orders").await;
    assert_eq!(
        (text.as_str(), diagnostic.as_deref()),
        (
            "Error during planning: Invalid function 'sumx'.\nDid you mean 'sum'?",
            Some("Invalid function 'sumx'")
        ),
        "DataFusion's unknown-function error changed shape: {fix}"
    );
    assert_eq!(
        planning_error(
            &ctx,
            "select customer_id, sumx(revenue) as r\nfrom orders group by 1"
        )
        .await,
        (
            "models/typo.sql:1:21".to_string(),
            "Invalid function 'sumx' (help: Did you mean 'sum'?)".to_string()
        ),
        "{fix}"
    );

    // An unknown table: DataFusion suggests nothing (check names unknown tables itself, with
    // the known ones, before planning: models::order_models).
    let (text, diagnostic) = datafusion_error(&ctx, "select * from orderz").await;
    assert_eq!(
        (text.as_str(), diagnostic.as_deref()),
        (
            "Error during planning: table 'datafusion.public.orderz' not found",
            Some("table 'orderz' not found")
        ),
        "DataFusion's unknown-table error changed shape (a suggestion now? then check's own \
         unknown-table finding and this one may say it twice): {fix}"
    );
    assert_eq!(
        planning_error(&ctx, "select *\nfrom orderz").await,
        (
            "models/typo.sql:2:6".to_string(),
            "table 'orderz' not found".to_string()
        ),
        "{fix}"
    );
}
