use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::ext::tests::{assert_partial_aggregation_skipped, pretty, skipping_partial_aggregation};

/// Deterministic pseudo-random rows over 200 groups: keys with many ties and NULLs,
/// values around the 12-byte inline limit with NULLs, and a filter column.
fn table(rows: usize) -> RecordBatch {
    let (mut g, mut k, mut v, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g.push(Some((x % 200) as i64));
        // few distinct keys per group: ties are common; negative ones too
        k.push((!x.is_multiple_of(13)).then(|| ((x >> 20) % 9) as i64 - 3));
        v.push((!(x >> 7).is_multiple_of(9)).then(|| {
            let len = (x >> 30) % 17;
            (0..len)
                .map(|j| (b'a' + ((x >> (j * 3 % 40)) % 4) as u8) as char)
                .collect::<String>()
        }));
        f.push(Some(i % 3 == 0));
    }
    RecordBatch::try_from_iter([
        ("g", Arc::new(Int64Array::from(g)) as ArrayRef),
        ("k", Arc::new(Int64Array::from(k)) as ArrayRef),
        ("v", Arc::new(StringArray::from(v)) as ArrayRef),
        ("f", Arc::new(BooleanArray::from(f)) as ArrayRef),
    ])
    .expect("batch")
}

async fn query(config: SessionConfig, sql: &str) -> String {
    let ctx = SessionContext::new_with_config(config.with_batch_size(16));
    crate::ext::register(&ctx);
    // Many small batches, dealt round robin to the partitions.
    let all = table(6000);
    let batches = (0..all.num_rows())
        .step_by(16)
        .map(|at| all.slice(at, 16.min(all.num_rows() - at)))
        .collect();
    let table = MemTable::try_new(all.schema(), vec![batches]).expect("table");
    ctx.register_table("t", Arc::new(table)).expect("register");
    pretty(&ctx, sql).await
}

/// Rows of 150,000 groups in two batches: float keys with ties, -0.0 and +0.0, NaN and
/// NULL; values around the 12-byte inline limit and NULL.
fn many_groups() -> (Vec<[ArrayRef; 2]>, Vec<Vec<usize>>) {
    let groups = 150_000usize;
    let mut batches = Vec::new();
    let mut indices = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..2 {
        let (mut v, mut k, mut g) = (Vec::new(), Vec::new(), Vec::new());
        for row in 0..2 * groups {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.push((row * 7919) % groups);
            k.push(match x % 7 {
                0 => None,
                1 => Some(-0.0),
                2 => Some(0.0),
                3 => Some(f64::NAN),
                _ => Some(((x >> 8) % 3) as f64 - 1.5),
            });
            v.push((!(x >> 20).is_multiple_of(5)).then(|| "v".repeat(((x >> 24) % 16) as usize)));
        }
        batches.push([
            Arc::new(StringArray::from(v)) as ArrayRef,
            Arc::new(Float64Array::from(k)) as ArrayRef,
        ]);
        indices.push(g);
    }
    (batches, indices)
}

#[test]
fn partial_states_and_partial_emits_of_many_groups_equal_the_general_accumulators() {
    use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
    let types = [DataType::Utf8, DataType::Float64];
    let (batches, indices) = many_groups();
    let groups = 150_000;
    for min in [false, true] {
        let general = || crate::ext::argbest::general_state(min, &types).expect("state");
        let mut typed = super::typed::TextByKey::new(min, &types, general());
        let mut reference = general();
        for (batch, g) in batches.iter().zip(&indices) {
            typed.update_batch(batch, g, None, groups).expect("update");
            reference
                .update_batch(batch, g, None, groups)
                .expect("update");
        }
        // the same encoded states (chunked past 65,536 groups)
        let state = typed.state(EmitTo::All).expect("state");
        assert_eq!(
            state[0].as_ref(),
            reference.state(EmitTo::All).expect("state")[0].as_ref()
        );
        // merged into a fresh accumulator, emitted in two parts
        let mut merged = super::typed::TextByKey::new(min, &types, general());
        let all: Vec<usize> = (0..groups).collect();
        merged.merge_batch(&state, &all, groups).expect("merge");
        let first = merged.evaluate(EmitTo::First(70_000)).expect("first");
        let rest = merged.evaluate(EmitTo::All).expect("rest");
        let mut reference = general();
        for (batch, g) in batches.iter().zip(&indices) {
            reference
                .update_batch(batch, g, None, groups)
                .expect("update");
        }
        let expected = reference.evaluate(EmitTo::All).expect("evaluate");
        assert_eq!(
            first.as_ref(),
            expected.slice(0, 70_000).as_ref(),
            "min {min}"
        );
        assert_eq!(
            rest.as_ref(),
            expected.slice(70_000, 80_000).as_ref(),
            "min {min}"
        );
    }
}

/// Each aggregate by one integer-like key (this accumulator), written three ways: with a
/// constant second key (the general accumulator) and as DataFusion's ordered
/// `first_value` (an independent implementation).
fn forms(value: &str, key: &str, max: bool, filter: &str) -> [String; 3] {
    let (f, dir) = if max {
        ("arg_max", "desc")
    } else {
        ("arg_min", "asc")
    };
    let and = if filter.is_empty() {
        String::new()
    } else {
        format!(" and {filter}")
    };
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" filter (where {filter})")
    };
    [
        format!("{f}({value}, {key}){filter}"),
        format!("{f}({value}, {key}, 0){filter}"),
        format!(
            "first_value({value} order by {key} {dir}, {value} asc nulls last) \
             filter (where {key} is not null{and})"
        ),
    ]
}

#[test]
fn strings_by_one_numeric_or_temporal_key_take_this_accumulator() {
    use datafusion::arrow::datatypes::TimeUnit::Microsecond;
    use DataType::*;
    #[allow(non_upper_case_globals)]
    const TimestampMicrosecond: DataType = Timestamp(Microsecond, None);
    assert!(super::keys::supported(&[Utf8View, Int64]));
    assert!(super::keys::supported(&[Utf8, Decimal128(38, 6)]));
    assert!(super::keys::supported(&[LargeUtf8, Date32]));
    assert!(super::keys::supported(&[Utf8, Float64]));
    assert!(!super::keys::supported(&[Utf8, UInt64]));
    assert!(super::keys::supported(&[
        Utf8View,
        TimestampMicrosecond,
        Utf8View
    ]));
    assert!(super::keys::supported(&[Utf8, Int64, LargeUtf8]));
    assert!(!super::keys::supported(&[Utf8, Int64, Int64]));
    assert!(!super::keys::supported(&[Utf8, Utf8, Utf8]));
    assert!(!super::keys::supported(&[Utf8, Int64, Utf8, Utf8]));
    assert!(!super::keys::supported(&[Int64, Int64]));
}

#[tokio::test]
async fn string_by_one_key_equals_the_general_accumulator_and_ordered_first_value() {
    let cases = [
        ("v", "k", true, ""),
        ("v", "k", false, ""),
        ("v", "k", true, "f"),
        ("arrow_cast(v, 'Utf8View')", "k", true, ""),
        ("arrow_cast(v, 'LargeUtf8')", "k", false, ""),
        ("v", "cast(k as decimal(10, 2)) / 3", true, ""),
        ("v", "cast(k as double) / 3 + 0.25", true, ""),
        ("v", "cast(k as double) * -1.5", false, "f"),
        ("v", "arrow_cast(k - 0.5, 'Float32')", true, ""),
        ("v", "cast(k as int)", false, "f"),
        ("v", "arrow_cast(k, 'Int16')", true, ""),
        ("v", "arrow_cast(k + 3, 'UInt32')", false, ""),
        (
            "v",
            "to_timestamp_micros(k * 1000000) at time zone 'Europe/Berlin'",
            true,
            "",
        ),
        // groups without an eligible row in some partitions: their partial state is NULL
        ("v", "k + 10", false, "f"),
        ("v", "to_timestamp_micros(k * 1000000)", true, ""),
        ("v", "cast(k + 20000 as date)", false, ""),
        ("coalesce(v, 'unknown')", "k", true, ""),
    ];
    for (value, key, max, filter) in cases {
        let [fast, general, ordered] = forms(value, key, max, filter);
        let sql = three_forms_agree(&fast, &general, &ordered).await;
        assert_partial_aggregation_skipped(
            &query(
                skipping_partial_aggregation(3),
                &format!("explain analyze {sql}"),
            )
            .await,
        );
    }
}

/// Asserts that the three forms of an aggregate give every group the same value, on one and
/// three partitions and with every row its own partial state (merged by the final stage);
/// returns the query.
async fn three_forms_agree(fast: &str, general: &str, ordered: &str) -> String {
    let sql = format!(
        "select g, {fast} as a, {general} as b, {ordered} as c from t group by g order by g"
    );
    let check = |out: &str| {
        for line in out.lines().skip(3).filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(
                cells[2] == cells[3] && cells[3] == cells[4],
                "{fast} / {general} / {ordered} differ: {line}"
            );
        }
    };
    for partitions in [1, 3] {
        let config = SessionConfig::new().with_target_partitions(partitions);
        let out = query(config, &sql).await;
        assert!(out.lines().count() > 200, "every group: {out}");
        check(&out);
    }
    check(&query(skipping_partial_aggregation(3), &sql).await);
    sql
}

/// `arg_min` / `arg_max` by a numeric key and a string key breaking its ties (this
/// accumulator) equal the general accumulator (a third, constant key) and DataFusion's
/// ordered `first_value`; rows whose tie key is NULL take no part.
#[tokio::test]
async fn string_by_a_key_and_a_string_tie_key_equals_the_general_accumulator_and_first_value() {
    let cases = [
        ("v", "k", "substr(v, 1, 2)", true, ""),
        ("v", "k", "substr(v, 1, 2)", false, ""),
        (
            "v",
            "k",
            "arrow_cast(substr(v, 2, 14), 'Utf8View')",
            true,
            "f",
        ),
        (
            "arrow_cast(v, 'Utf8View')",
            "to_timestamp_micros(k * 1000000)",
            "concat(v, 'x')",
            false,
            "",
        ),
        (
            "coalesce(v, 'unknown')",
            "cast(k as double) / 3",
            "arrow_cast(coalesce(substr(v, 3), ''), 'LargeUtf8')",
            true,
            "f",
        ),
        (
            "v",
            "k + 10",
            "coalesce(substr(v, 1, 1), 'long tie key past the inline limit')",
            false,
            "f",
        ),
    ];
    for (value, key, tie, max, filter) in cases {
        let (f, dir) = if max {
            ("arg_max", "desc")
        } else {
            ("arg_min", "asc")
        };
        let (with, and) = match filter {
            "" => (String::new(), String::new()),
            f => (format!(" filter (where {f})"), format!(" and {f}")),
        };
        let fast = format!("{f}({value}, {key}, {tie}){with}");
        let general = format!("{f}({value}, {key}, {tie}, 0){with}");
        let ordered = format!(
            "first_value({value} order by {key} {dir}, {tie} {dir}, {value} asc nulls last) \
             filter (where {key} is not null and {tie} is not null{and})"
        );
        three_forms_agree(&fast, &general, &ordered).await;
    }
}
