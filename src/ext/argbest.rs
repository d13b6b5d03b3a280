//! The grouped `arg_min(value, key)` / `arg_max(value, key)` of a string by one numeric or
//! temporal key (integers, floats, decimals, dates, timestamps) — the shape of "the category of the
//! highest-revenue line". Same results as the general accumulator in [`crate::ext::functions`]
//! (rows with a NULL key skipped, ties to the smallest value, NULL after every value), but
//! each group keeps its best key as an integer and its value in a [`ByteSlots`] slot, so a
//! row costs one integer comparison instead of encoding (key, value) in arrow's row format
//! and comparing byte strings: on 10 M order lines, encoding every row took 8 % of a run.
//! The partial state between aggregation phases is the general accumulator's (the encoded
//! row), so the two agree.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Float32Array, Float64Array,
    PrimitiveArray,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use datafusion::common::{exec_err, internal_err, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use crate::ext::functions::State;
use crate::ext::minmax::{array_of, emit_array, ByteSlots};

/// Calls `$body` with `$t` bound to the arrow type of an integer-like key type (floats are
/// handled apart), `$other` for any other type.
macro_rules! with_key_type {
    ($data_type:expr, $t:ident, $body:expr, $other:expr) => {
        with_key_type!(@arms $data_type, $t, $body, $other;
            DataType::Int8 => Int8Type,
            DataType::Int16 => Int16Type,
            DataType::Int32 => Int32Type,
            DataType::Int64 => Int64Type,
            DataType::UInt8 => UInt8Type,
            DataType::UInt16 => UInt16Type,
            DataType::UInt32 => UInt32Type,
            DataType::Date32 => Date32Type,
            DataType::Date64 => Date64Type,
            DataType::Timestamp(TimeUnit::Second, _) => TimestampSecondType,
            DataType::Timestamp(TimeUnit::Millisecond, _) => TimestampMillisecondType,
            DataType::Timestamp(TimeUnit::Microsecond, _) => TimestampMicrosecondType,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => TimestampNanosecondType,
            DataType::Decimal128(..) => Decimal128Type)
    };
    (@arms $data_type:expr, $t:ident, $body:expr, $other:expr; $($pattern:pat => $arrow:ty),*) => {
        match $data_type {
            $($pattern => {
                #[allow(dead_code)] // a body may not name the type
                type $t = $arrow;
                $body
            })*
            _ => $other,
        }
    };
}

/// Whether `arg_min`/`arg_max` over arguments of these types (value, keys...) can use
/// [`TextByKey`].
pub(crate) fn supported(types: &[DataType]) -> bool {
    matches!(
        types,
        [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, key] if key_supported(key)
    )
}

/// Whether [`keys_of`] maps keys of this type to integers of the same order.
pub(crate) fn key_supported(key: &DataType) -> bool {
    with_key_type!(
        key,
        T,
        true,
        matches!(key, DataType::Float32 | DataType::Float64)
    )
}

/// A float as an integer in the order of `total_cmp` (-NaN < -inf < -0 < +0 < inf < NaN),
/// the order arrow's row format gives floats.
fn float_key(bits: i64) -> i64 {
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// [`float_key`] for 32-bit floats.
fn float32_key(bits: i32) -> i32 {
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The key of every row as an integer of the same order (NULL rows hold any value).
#[allow(clippy::useless_conversion)] // the identity for decimal keys
pub(crate) fn keys_of(array: &dyn Array) -> Result<Vec<i128>> {
    match array.data_type() {
        DataType::Float64 => {
            return Ok(array
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|v| i128::from(float_key(v.to_bits() as i64)))
                .collect())
        }
        DataType::Float32 => {
            return Ok(array
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|v| i128::from(float32_key(v.to_bits() as i32)))
                .collect())
        }
        _ => {}
    }
    with_key_type!(
        array.data_type(),
        T,
        Ok(array
            .as_primitive::<T>()
            .values()
            .iter()
            .map(|v| i128::from(*v))
            .collect()),
        internal_err!("arg_min/arg_max: unexpected key type {}", array.data_type())
    )
}

/// An array of `data_type` holding `keys` where `seen`, NULL elsewhere.
fn key_array(keys: &[i128], seen: &[bool], data_type: &DataType) -> Result<ArrayRef> {
    // float_key is its own inverse
    let present = keys.iter().zip(seen).map(|(k, s)| s.then_some(*k));
    match data_type {
        DataType::Float64 => {
            let floats = present.map(|k| k.map(|k| f64::from_bits(float_key(k as i64) as u64)));
            return Ok(Arc::new(Float64Array::from_iter(floats)));
        }
        DataType::Float32 => {
            let floats = present.map(|k| k.map(|k| f32::from_bits(float32_key(k as i32) as u32)));
            return Ok(Arc::new(Float32Array::from_iter(floats)));
        }
        _ => {}
    }
    with_key_type!(
        data_type,
        T,
        {
            let mut values = Vec::with_capacity(keys.len());
            for (k, s) in keys.iter().zip(seen) {
                values.push(match s {
                    true => Some(
                        <T as datafusion::arrow::datatypes::ArrowPrimitiveType>::Native::try_from(
                            *k,
                        )
                        .map_err(|_| {
                            datafusion::error::DataFusionError::Internal(format!(
                                "arg_min/arg_max: key {k} does not fit {data_type}"
                            ))
                        })?,
                    ),
                    false => None,
                });
            }
            let array = PrimitiveArray::<T>::from(values).with_data_type(data_type.clone());
            Ok(Arc::new(array) as ArrayRef)
        },
        internal_err!("arg_min/arg_max: unexpected key type {data_type}")
    )
}

/// Per group, the best key offered so far as an integer of the same order ([`keys_of`]),
/// if any.
pub(crate) struct GroupKeys {
    /// How a better key compares to a worse one: `Less` for `arg_min`.
    better: Ordering,
    seen: Vec<bool>,
    keys: Vec<i128>,
}

impl GroupKeys {
    pub(crate) fn new(min: bool) -> Self {
        Self {
            better: if min {
                Ordering::Less
            } else {
                Ordering::Greater
            },
            seen: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub(crate) fn resize(&mut self, groups: usize) {
        if self.seen.len() < groups {
            self.seen.resize(groups, false);
            self.keys.resize(groups, 0);
        }
    }

    /// How `key` compares with the group's key (`better` when the group has none).
    fn compare(&self, group: usize, key: i128) -> Ordering {
        if self.seen[group] {
            key.cmp(&self.keys[group])
        } else {
            self.better
        }
    }

    fn set(&mut self, group: usize, key: i128) {
        self.seen[group] = true;
        self.keys[group] = key;
    }

    /// Whether a row of `group` with `key` may win: its key is not worse than the group's
    /// (which it replaces when better).
    pub(crate) fn admits(&mut self, group: usize, key: i128) -> bool {
        let order = self.compare(group, key);
        if order == self.better {
            self.set(group, key);
        }
        order != self.better.reverse()
    }

    /// How many groups `emit_to` emits.
    pub(crate) fn emitted(&self, emit_to: EmitTo) -> usize {
        crate::ext::minmax::emitted(emit_to, self.seen.len())
    }

    /// Forgets the first `n` groups; all of them frees the memory, as after a spill.
    pub(crate) fn drain(&mut self, n: usize) {
        if n >= self.seen.len() {
            self.seen = Vec::new();
            self.keys = Vec::new();
        } else {
            self.seen.drain(..n);
            self.keys.drain(..n);
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.seen.capacity() + self.keys.capacity() * std::mem::size_of::<i128>()
    }
}

/// The grouped accumulator: per group the best key, and the value of the best row (ties:
/// the smallest; none for NULL).
pub(crate) struct TextByKey {
    key_type: DataType,
    value_type: DataType,
    best: GroupKeys,
    values: ByteSlots,
    /// The general accumulator, for the encoded partial state.
    rows: State,
}

impl TextByKey {
    /// `types`: (value, key) as accepted by [`supported`]; `rows` the general accumulator
    /// for the same arguments.
    pub(crate) fn new(min: bool, types: &[DataType], rows: State) -> Self {
        Self {
            key_type: types[1].clone(),
            value_type: types[0].clone(),
            best: GroupKeys::new(min),
            values: ByteSlots::default(),
            rows,
        }
    }

    fn resize(&mut self, groups: usize) {
        self.best.resize(groups);
        self.values.resize(groups);
    }

    /// Offers the rows of (value, key) to their groups; `eligible(row)` says whether the
    /// FILTER clause keeps a row.
    fn offer_all(
        &mut self,
        value: &ArrayRef,
        key: &ArrayRef,
        group_indices: &[usize],
        eligible: impl Fn(usize) -> bool,
    ) -> Result<()> {
        let keys = keys_of(key.as_ref())?;
        let key_nulls = key.logical_nulls();
        let eligible =
            |row: usize| key_nulls.as_ref().is_none_or(|n| n.is_valid(row)) && eligible(row);
        match value.data_type() {
            DataType::Utf8 => {
                let a = value.as_string::<i32>();
                self.offer_rows(&keys, group_indices, eligible, |r| {
                    a.is_valid(r).then(|| a.value(r).as_bytes())
                })
            }
            DataType::LargeUtf8 => {
                let a = value.as_string::<i64>();
                self.offer_rows(&keys, group_indices, eligible, |r| {
                    a.is_valid(r).then(|| a.value(r).as_bytes())
                })
            }
            DataType::Utf8View => {
                let a = value.as_string_view();
                self.offer_rows(&keys, group_indices, eligible, |r| {
                    a.is_valid(r).then(|| a.value(r).as_bytes())
                })
            }
            other => internal_err!("arg_min/arg_max: unexpected value type {other}"),
        }
    }

    fn offer_rows<'v>(
        &mut self,
        keys: &[i128],
        group_indices: &[usize],
        eligible: impl Fn(usize) -> bool,
        value: impl Fn(usize) -> Option<&'v [u8]>,
    ) -> Result<()> {
        for (row, &group) in group_indices.iter().enumerate() {
            if !eligible(row) {
                continue;
            }
            let key = keys[row];
            let order = self.best.compare(group, key);
            if order == self.best.better {
                self.best.set(group, key);
                match value(row) {
                    Some(v) => self.values.set(group, v)?,
                    None => self.values.clear(group),
                }
            } else if order == Ordering::Equal {
                // A tie goes to the smallest value; NULL loses to every value.
                if let Some(v) = value(row) {
                    self.values.offer(group, v, Ordering::Less)?;
                }
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for TextByKey {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        self.offer_all(&values[0], &values[1], group_indices, |row| {
            opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
        })
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        let Some(states) = values.first().and_then(|v| v.as_binary_opt::<i32>()) else {
            return exec_err!("arg_min/arg_max: partial state is not Binary");
        };
        let (rows, columns) = self.rows.decode(states)?;
        let groups: Vec<usize> = rows.iter().map(|&r| group_indices[r]).collect();
        // columns: the key, then the value
        self.offer_all(&columns[1], &columns[0], &groups, |_| true)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.best.drain(self.best.emitted(emit_to));
        emit_array(&mut self.values, &self.value_type, emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        // Encoded a chunk of groups at a time: a spill emits every group, and encoding
        // them all at once took a second copy of them all (at 100 M lines, 0.8 GiB
        // beyond the memory limit).
        const CHUNK: usize = 65_536;
        let n = self.best.emitted(emit_to);
        let mut states = BinaryBuilder::with_capacity(n, 0);
        for start in (0..n).step_by(CHUNK) {
            let end = n.min(start + CHUNK);
            let seen = &self.best.seen[start..end];
            let keys = key_array(&self.best.keys[start..end], seen, &self.key_type)?;
            let values = array_of(&self.values, &self.value_type, start..end)?;
            let encoded = self.rows.encode(&[values, keys])?;
            for (row, seen) in seen.iter().enumerate() {
                states.append_option(seen.then(|| encoded.row(row).data()));
            }
        }
        self.best.drain(n);
        self.values.forget(n);
        Ok(vec![Arc::new(states.finish())])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.rows.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.best.size() + self.values.size() + GroupsAccumulator::size(&self.rows)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use crate::ext::functions::tests::{
        assert_partial_aggregation_skipped, pretty, skipping_partial_aggregation,
    };

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
        crate::ext::functions::register(&ctx);
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
                v.push(
                    (!(x >> 20).is_multiple_of(5)).then(|| "v".repeat(((x >> 24) % 16) as usize)),
                );
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
            let general = || crate::ext::functions::general_state(min, &types).expect("state");
            let mut typed = super::TextByKey::new(min, &types, general());
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
            let mut merged = super::TextByKey::new(min, &types, general());
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
        use DataType::*;
        assert!(super::supported(&[Utf8View, Int64]));
        assert!(super::supported(&[Utf8, Decimal128(38, 6)]));
        assert!(super::supported(&[LargeUtf8, Date32]));
        assert!(super::supported(&[Utf8, Float64]));
        assert!(!super::supported(&[Utf8, UInt64]));
        assert!(!super::supported(&[Utf8, Int64, Utf8]));
        assert!(!super::supported(&[Int64, Int64]));
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
            // Every row its own partial state, merged by the final stage.
            let skipping = skipping_partial_aggregation(3);
            let out = query(skipping.clone(), &sql).await;
            check(&out);
            assert_partial_aggregation_skipped(
                &query(skipping, &format!("explain analyze {sql}")).await,
            );
        }
    }
}
