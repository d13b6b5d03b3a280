//! Tests of the SQL functions through a session, with helpers the other extension tests share.

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};

async fn query(partitions: usize, sql: &str) -> String {
    query_with(SessionConfig::new().with_target_partitions(partitions), sql).await
}

async fn query_with(config: SessionConfig, sql: &str) -> String {
    let ctx = SessionContext::new_with_config(config.with_batch_size(2));
    super::register(&ctx);
    ctx.sql(
        "create view t(g, v, k1, k2) as values \
         (1, 'b', 5, 1), (1, 'a', 5, 1), (1, 'z', 3, 9), (1, 'y', 5, 0), \
         (2, 'q', null, 1), (2, null, 1, 1), (2, 'c', 1, 1), \
         (3, 'x', null, null), \
         (4, 'm', 2, 2), (4, 'n', 2, 2), (4, null, 2, 2)",
    )
    .await
    .expect("view");
    pretty(&ctx, sql).await
}

/// A directory of Parquet files as a listing table, as `publish::stage` opens internal
/// tables.
pub(crate) async fn listing_table(
    ctx: &SessionContext,
    dir: &std::path::Path,
) -> datafusion::datasource::listing::ListingTable {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    let url = ListingTableUrl::parse(dir.to_str().expect("path")).expect("url");
    let options = ListingOptions::new(std::sync::Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .expect("schema");
    ListingTable::try_new(config).expect("listing")
}

/// A session that skips every partial aggregation from the first batch on: each row
/// becomes its own state (`convert_to_state`) and the final stage merges them.
pub(crate) fn skipping_partial_aggregation(partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new().with_target_partitions(partitions);
    let execution = &mut config.options_mut().execution;
    execution.skip_partial_aggregation_probe_rows_threshold = 0;
    execution.skip_partial_aggregation_probe_ratio_threshold = 0.0;
    config
}

/// Fails unless the `explain analyze` output shows rows that skipped aggregation.
pub(crate) fn assert_partial_aggregation_skipped(explain: &str) {
    assert!(
        explain.contains("skipped_aggregation_rows=")
            && !explain.contains("skipped_aggregation_rows=0,"),
        "the partial aggregation was not skipped:\n{explain}"
    );
}

/// Runs `sql` and formats the result as a table.
pub(crate) async fn pretty(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    pretty_format_batches(&batches).expect("format").to_string()
}

#[tokio::test]
async fn arg_min_and_arg_max_pick_by_key_tuple_and_break_ties_by_smallest_value() {
    let sql = "select g, arg_max(v, k1) as max1, arg_max(v, k1, k2) as max2, \
               arg_min(v, k1) as min1, arg_min(v, k1, k2) as min2 \
               from t group by g order by g";
    // g=1: k1 max 5 (b, a, y) -> smallest value a; with k2: (5,1) beats (5,0) -> a.
    //      k1 min 3 -> z. g=2: the NULL-key row is skipped; (1,1) tie of NULL and 'c'
    //      -> 'c' (NULL last). g=3: no eligible row -> NULL. g=4: three-way tie -> m.
    let expected = [
        "+---+------+------+------+------+",
        "| g | max1 | max2 | min1 | min2 |",
        "+---+------+------+------+------+",
        "| 1 | a    | a    | z    | z    |",
        "| 2 | c    | c    | c    | c    |",
        "| 3 |      |      |      |      |",
        "| 4 | m    | m    | m    | m    |",
        "+---+------+------+------+------+",
    ]
    .join("\n");
    for partitions in [1, 3, 8] {
        assert_eq!(
            query(partitions, sql).await,
            expected,
            "{partitions} partitions"
        );
    }
}

#[tokio::test]
async fn arg_min_and_arg_max_give_the_same_rows_when_the_partial_aggregation_is_skipped() {
    // Every row becomes its own partial state (convert_to_state) and the final stage
    // merges them: the same answers as aggregating in both stages.
    let sql = "select g, arg_max(v, k1, k2) as top, arg_min(v, k1) as low, \
               arg_min(named_struct('v', v, 'k', k2), k1) ['v'] as first \
               from t group by g order by g";
    let skipping = skipping_partial_aggregation(3);
    assert_partial_aggregation_skipped(
        &query_with(skipping.clone(), &format!("explain analyze {sql}")).await,
    );
    assert_eq!(query_with(skipping, sql).await, query(1, sql).await);
    let expected = [
        "+---+-----+-----+-------+",
        "| g | top | low | first |",
        "+---+-----+-----+-------+",
        "| 1 | a   | z   | z     |",
        "| 2 | c   | c   | c     |",
        "| 3 |     |     |       |",
        "| 4 | m   | m   | m     |",
        "+---+-----+-----+-------+",
    ]
    .join("\n");
    assert_eq!(query(1, sql).await, expected);
}

#[tokio::test]
async fn arg_max_without_group_by_and_with_a_filter() {
    let sql = "select arg_max(v, k1, k2) as top, \
               arg_min(v, k2) filter (where g = 4) as low from t";
    let expected = [
        "+-----+-----+",
        "| top | low |",
        "+-----+-----+",
        "| a   | m   |",
        "+-----+-----+",
    ]
    .join("\n");
    assert_eq!(query(1, sql).await, expected);
    assert_eq!(query(4, sql).await, expected);
}

fn values_at(ts: &datafusion::arrow::array::TimestampMicrosecondArray, i: usize) -> Option<i64> {
    use datafusion::arrow::array::Array;
    ts.is_valid(i).then(|| ts.value(i))
}

#[tokio::test]
async fn local_date_equals_a_cast_through_the_zoned_timestamp_across_dst_changes() {
    use datafusion::arrow::array::{Array, Date32Array, TimestampMicrosecondArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::col;
    use std::sync::Arc;
    // every 7 minutes and 13 seconds over 2023-2024 (DST changes both ways), plus
    // timestamps before 1970 and a NULL
    let mut values: Vec<Option<i64>> = (0..150_000i64)
        .map(|i| Some(1_672_531_200_000_000 + i * 433_000_000))
        .collect();
    values.extend([
        Some(-1),
        Some(-86_400_000_001),
        Some(-2_208_988_800_000_000),
        None,
    ]);
    let ts = TimestampMicrosecondArray::from(values).with_timezone("UTC");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "ts",
            ts.data_type().clone(),
            true,
        )])),
        vec![Arc::new(ts.clone())],
    )
    .expect("batch");
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for tz in [
        None,
        Some(chrono_tz::Europe::Berlin),
        Some(chrono_tz::America::New_York),
        Some(chrono_tz::Australia::Lord_Howe),
        Some(chrono_tz::Asia::Kathmandu),
        Some(chrono_tz::Pacific::Chatham),
    ] {
        let zone = tz.map_or("UTC".to_string(), |t| t.name().to_string());
        let expected = cast(
            &cast(
                &ts,
                &DataType::Timestamp(TimeUnit::Microsecond, Some(zone.clone().into())),
            )
            .expect("zoned"),
            &DataType::Date32,
        )
        .expect("date");
        let got = ctx
            .read_batch(batch.clone())
            .expect("read")
            .select(vec![super::scalars::local_date(col("ts"), tz).alias("d")])
            .expect("select")
            .collect()
            .await
            .expect("run");
        let got: Vec<Option<i32>> = got
            .iter()
            .flat_map(|b| {
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .expect("date32");
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected = expected
            .as_any()
            .downcast_ref::<Date32Array>()
            .expect("date32");
        let expected: Vec<Option<i32>> = (0..expected.len())
            .map(|i| expected.is_valid(i).then(|| expected.value(i)))
            .collect();
        let diff: Vec<_> = got
            .iter()
            .zip(&expected)
            .enumerate()
            .filter(|(_, (g, e))| g != e)
            .take(3)
            .map(|(i, (g, e))| (values_at(&ts, i), *g, *e))
            .collect();
        assert!(diff.is_empty(), "{zone}: (ts, got, expected) {diff:?}");
    }
}

#[tokio::test]
async fn local_date_by_name_takes_its_zone_as_an_argument_and_rejects_an_unknown_zone() {
    // 2024-03-31 23:30 UTC: already April 1st in Berlin (UTC+2 since that morning).
    let ts = "timestamp '2024-03-31T23:30:00Z'";
    let got = query(
        1,
        &format!(
            "select segflow_local_date({ts}, 'Europe/Berlin') as berlin, \
             segflow_local_date({ts}, null) as utc_null, segflow_local_date({ts}) as utc"
        ),
    )
    .await;
    let expected = "+------------+------------+------------+\n\
                    | berlin     | utc_null   | utc        |\n\
                    +------------+------------+------------+\n\
                    | 2024-04-01 | 2024-03-31 | 2024-03-31 |\n\
                    +------------+------------+------------+";
    assert_eq!(got, expected);
    let ctx = SessionContext::new();
    super::register(&ctx);
    let err = match ctx
        .sql(&format!("select segflow_local_date({ts}, 'Mars/Olympus')"))
        .await
    {
        Ok(df) => df.collect().await.expect_err("an unknown zone is an error"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("unknown time zone `Mars/Olympus`"),
        "{err}"
    );
}

#[tokio::test]
async fn integer_text_equals_the_cast_to_text_for_every_integer_type() {
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::col;
    use std::sync::Arc;
    // around the 12-character inline limit of views, signs, extremes, NULLs
    let values: Vec<Option<i64>> = vec![
        Some(0),
        Some(-1),
        Some(7),
        Some(999_999_999_999),
        Some(1_000_000_000_000),
        Some(-99_999_999_999),
        Some(-999_999_999_999),
        Some(i64::MAX),
        Some(i64::MIN),
        None,
        Some(255),
        Some(-128),
    ];
    let wide: ArrayRef = Arc::new(Int64Array::from(values));
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for t in [
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt16,
        DataType::UInt32,
        DataType::UInt64,
    ] {
        // values a type cannot hold become NULL
        let input = datafusion::arrow::compute::cast_with_options(
            &wide,
            &t,
            &datafusion::arrow::compute::CastOptions::default(),
        )
        .expect("narrow");
        let expected = cast(&input, &DataType::Utf8).expect("cast");
        let batch = RecordBatch::try_from_iter([("n", input)]).expect("batch");
        let got = ctx
            .read_batch(batch)
            .expect("read")
            .select(vec![super::scalars::integer_text(col("n")).alias("t")])
            .expect("select")
            .collect()
            .await
            .expect("run");
        assert_eq!(got[0].column(0).data_type(), &DataType::Utf8View);
        // the views are made without the builder: they must pass arrow's full validation
        got[0]
            .column(0)
            .to_data()
            .validate_full()
            .expect("valid views");
        let got = cast(got[0].column(0), &DataType::Utf8).expect("to utf8");
        let (got, expected) = (
            got.as_any().downcast_ref::<StringArray>().expect("strings"),
            expected
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("strings"),
        );
        assert_eq!(got, expected, "{t}");
        assert!(expected.null_count() >= 1, "{t}");
    }
}

#[tokio::test]
async fn utc_timestamp_equals_the_cast_to_a_utc_timestamp_for_naive_and_zoned_input() {
    use datafusion::arrow::array::{
        Array, ArrayRef, TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::col;
    use std::sync::Arc;
    let ms: Vec<Option<i64>> = vec![Some(1_700_000_000_123), Some(-1), None, Some(0)];
    let inputs: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(ms.clone())),
        Arc::new(
            TimestampNanosecondArray::from(
                ms.iter()
                    .map(|v| v.map(|x| x * 1_000_000 + 7))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("Europe/Berlin"),
        ),
    ];
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for input in inputs {
        let expected = cast(&input, &utc).expect("cast");
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "ts",
                input.data_type().clone(),
                true,
            )])),
            vec![input],
        )
        .expect("batch");
        let got = ctx
            .read_batch(batch)
            .expect("read")
            .select(vec![super::scalars::utc_timestamp(col("ts")).alias("t")])
            .expect("select")
            .collect()
            .await
            .expect("run");
        assert_eq!(got[0].column(0).as_ref(), expected.as_ref());
        assert_eq!(got[0].column(0).data_type(), &utc);
    }
}

#[tokio::test]
async fn arg_max_with_one_argument_is_a_plan_error_naming_the_function() {
    let ctx = SessionContext::new();
    super::register(&ctx);
    let err = ctx
        .sql("select arg_max(1)")
        .await
        .expect_err("one argument");
    assert!(err.to_string().contains("arg_max(value, key"), "{err}");
}
