//! `min` and `max` over strings and binaries with many groups.
//!
//! DataFusion 55's grouped `min`/`max` for byte types keeps one heap allocation per group
//! and builds a hash map per batch (apache/datafusion#17897 shows it slowing as groups grow):
//! on 10 M order lines, three `min(<string>)` per order (3.6 M groups) took 2.3 s of a 3.5 s
//! aggregation. segflow registers `min` and `max` wrappers that keep DataFusion's functions
//! for everything (types, statistics, windows, single-group use) except the grouped
//! accumulator of string and binary arguments, which keeps every group's current value in
//! one shared buffer ([`ByteSlots`]). Results are the same: byte-wise comparison, NULLs
//! ignored, NULL for a group without a value.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BinaryViewBuilder, BooleanArray, LargeBinaryBuilder,
    LargeStringBuilder, StringBuilder, StringViewBuilder,
};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{internal_err, Result, ScalarValue};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};
use datafusion::prelude::SessionContext;

/// Registers the `min` and `max` wrappers in place of DataFusion's.
pub fn register(ctx: &SessionContext) {
    let min = datafusion::functions_aggregate::min_max::min_udaf();
    let max = datafusion::functions_aggregate::min_max::max_udaf();
    ctx.register_udaf(AggregateUDF::new_from_impl(MinMax::new(min, true)));
    ctx.register_udaf(AggregateUDF::new_from_impl(MinMax::new(max, false)));
}

/// Every group's current value as a slice of one growing buffer. Replacing a value appends
/// the new one (the old bytes become garbage); the buffer is compacted when garbage
/// outweighs live bytes.
#[derive(Debug, Default)]
pub(crate) struct ByteSlots {
    buf: Vec<u8>,
    /// (start, len) per group; `len == NONE` marks a group without a value.
    slots: Vec<(usize, u32)>,
    live: usize,
}

const NONE: u32 = u32::MAX;

impl ByteSlots {
    pub(crate) fn resize(&mut self, groups: usize) {
        if self.slots.len() < groups {
            self.slots.resize(groups, (0, NONE));
        }
    }

    pub(crate) fn get(&self, group: usize) -> Option<&[u8]> {
        let (start, len) = self.slots[group];
        (len != NONE).then(|| &self.buf[start..start + len as usize])
    }

    /// Stores `value` for `group` (values of 4 GiB or more are refused).
    pub(crate) fn set(&mut self, group: usize, value: &[u8]) -> Result<()> {
        let Some(len) = u32::try_from(value.len()).ok().filter(|l| *l != NONE) else {
            return internal_err!("a value of {} bytes is too large to aggregate", value.len());
        };
        let (_, old) = self.slots[group];
        if old != NONE {
            self.live -= old as usize;
        }
        if self.buf.len() > 2 * self.live + (1 << 20) {
            self.compact();
        }
        self.slots[group] = (self.buf.len(), len);
        self.buf.extend_from_slice(value);
        self.live += value.len();
        Ok(())
    }

    /// Offers `candidate` to `group`: stored when the group has no value or `better(candidate,
    /// current)` holds.
    pub(crate) fn offer(
        &mut self,
        group: usize,
        candidate: &[u8],
        better: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        match self.get(group) {
            Some(current) if !better(candidate, current) => Ok(()),
            _ => self.set(group, candidate),
        }
    }

    fn compact(&mut self) {
        let mut buf = Vec::with_capacity(self.live + self.live / 2);
        for (start, len) in self.slots.iter_mut() {
            if *len != NONE {
                let from = *start;
                *start = buf.len();
                buf.extend_from_slice(&self.buf[from..from + *len as usize]);
            }
        }
        self.buf = buf;
    }

    /// Calls `f` with the value of each emitted group, in group order, and forgets them.
    pub(crate) fn emit(&mut self, emit_to: EmitTo, mut f: impl FnMut(Option<&[u8]>)) {
        let n = match emit_to {
            EmitTo::All => self.slots.len(),
            EmitTo::First(n) => n.min(self.slots.len()),
        };
        for group in 0..n {
            f(self.get(group));
        }
        if n == self.slots.len() {
            self.slots.clear();
            self.buf.clear();
            self.live = 0;
        } else {
            for (_, len) in self.slots.drain(..n) {
                if len != NONE {
                    self.live -= len as usize;
                }
            }
            if self.buf.len() > 2 * self.live + (1 << 20) {
                self.compact();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn size(&self) -> usize {
        self.buf.capacity() + self.slots.capacity() * std::mem::size_of::<(usize, u32)>()
    }
}

/// DataFusion's `min` or `max` with a faster grouped accumulator for byte types.
#[derive(Debug)]
struct MinMax {
    inner: Arc<AggregateUDF>,
    is_min: bool,
}

impl MinMax {
    fn new(inner: Arc<AggregateUDF>, is_min: bool) -> Self {
        Self { inner, is_min }
    }

    fn imp(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }
}

impl PartialEq for MinMax {
    fn eq(&self, other: &Self) -> bool {
        self.is_min == other.is_min
    }
}

impl Eq for MinMax {}

impl std::hash::Hash for MinMax {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.is_min.hash(state);
    }
}

fn is_bytes(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

impl AggregateUDFImpl for MinMax {
    fn name(&self) -> &str {
        self.imp().name()
    }
    fn aliases(&self) -> &[String] {
        self.imp().aliases()
    }
    fn signature(&self) -> &Signature {
        self.imp().signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.imp().return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.imp().return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.imp().is_nullable()
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.imp().accumulator(args)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.imp().state_fields(args)
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        is_bytes(args.return_field.data_type()) || self.imp().groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let data_type = args.return_field.data_type().clone();
        if is_bytes(&data_type) {
            Ok(Box::new(BytesMinMax {
                slots: ByteSlots::default(),
                data_type,
                is_min: self.is_min,
            }))
        } else {
            self.imp().create_groups_accumulator(args)
        }
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.imp().create_sliding_accumulator(args)
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.imp().order_sensitivity()
    }
    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.imp().simplify()
    }
    fn simplify_expr_op_literal(
        &self,
        function: &AggregateFunction,
        arg: &Expr,
        op: datafusion::logical_expr::Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.imp()
            .simplify_expr_op_literal(function, arg, op, lit, arg_is_left)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.imp().supports_null_handling_clause()
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.imp().coerce_types(arg_types)
    }
    fn is_descending(&self) -> Option<bool> {
        self.imp().is_descending()
    }
    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.imp().value_from_stats(statistics_args)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.imp().default_value(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.imp().documentation()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.imp().set_monotonicity(data_type)
    }
}

/// Grouped `min`/`max` of a string or binary column; the partial state is the value itself.
#[derive(Debug)]
struct BytesMinMax {
    slots: ByteSlots,
    data_type: DataType,
    is_min: bool,
}

impl BytesMinMax {
    fn offer_all(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.slots.resize(total_num_groups);
        let rows = Rows {
            group_indices,
            opt_filter,
        };
        let is_min = self.is_min;
        let slots = &mut self.slots;
        // One loop per array type, so the per-row work is a slice and a comparison.
        match values.data_type() {
            DataType::Utf8 => {
                let a = values.as_string::<i32>();
                rows.offer(slots, is_min, a, |i| a.value(i).as_bytes())
            }
            DataType::LargeUtf8 => {
                let a = values.as_string::<i64>();
                rows.offer(slots, is_min, a, |i| a.value(i).as_bytes())
            }
            DataType::Utf8View => {
                let a = values.as_string_view();
                rows.offer(slots, is_min, a, |i| a.value(i).as_bytes())
            }
            DataType::Binary => {
                let a = values.as_binary::<i32>();
                rows.offer(slots, is_min, a, |i| a.value(i))
            }
            DataType::LargeBinary => {
                let a = values.as_binary::<i64>();
                rows.offer(slots, is_min, a, |i| a.value(i))
            }
            DataType::BinaryView => {
                let a = values.as_binary_view();
                rows.offer(slots, is_min, a, |i| a.value(i))
            }
            other => internal_err!(
                "{}: expected a string or binary column, got {other}",
                if is_min { "min" } else { "max" }
            ),
        }
    }

    fn build(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = match emit_to {
            EmitTo::All => self.slots.len(),
            EmitTo::First(n) => n,
        };
        let mut error = None;
        // Stored strings came from UTF-8 arrays; checking costs little and keeps this safe.
        let array: ArrayRef = match &self.data_type {
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(n, 0);
                self.slots
                    .emit(emit_to, |v| b.append_option(utf8(v, &mut error)));
                Arc::new(b.finish())
            }
            DataType::LargeUtf8 => {
                let mut b = LargeStringBuilder::with_capacity(n, 0);
                self.slots
                    .emit(emit_to, |v| b.append_option(utf8(v, &mut error)));
                Arc::new(b.finish())
            }
            DataType::Utf8View => {
                let mut b = StringViewBuilder::with_capacity(n);
                self.slots
                    .emit(emit_to, |v| b.append_option(utf8(v, &mut error)));
                Arc::new(b.finish())
            }
            DataType::Binary => {
                let mut b = BinaryBuilder::with_capacity(n, 0);
                self.slots.emit(emit_to, |v| b.append_option(v));
                Arc::new(b.finish())
            }
            DataType::LargeBinary => {
                let mut b = LargeBinaryBuilder::with_capacity(n, 0);
                self.slots.emit(emit_to, |v| b.append_option(v));
                Arc::new(b.finish())
            }
            DataType::BinaryView => {
                let mut b = BinaryViewBuilder::with_capacity(n);
                self.slots.emit(emit_to, |v| b.append_option(v));
                Arc::new(b.finish())
            }
            other => return internal_err!("min/max: unexpected type {other}"),
        };
        if let Some(e) = error {
            return internal_err!("min/max: a stored string is not UTF-8: {e}");
        }
        Ok(array)
    }
}

/// The rows of one batch: their groups and the FILTER clause, if any.
struct Rows<'a> {
    group_indices: &'a [usize],
    opt_filter: Option<&'a BooleanArray>,
}

impl Rows<'_> {
    fn offer<'v>(
        &self,
        slots: &mut ByteSlots,
        is_min: bool,
        array: &dyn Array,
        value: impl Fn(usize) -> &'v [u8],
    ) -> Result<()> {
        let nulls = array.logical_nulls();
        for (row, &group) in self.group_indices.iter().enumerate() {
            if nulls.as_ref().is_some_and(|n| n.is_null(row))
                || self
                    .opt_filter
                    .is_some_and(|f| !(f.is_valid(row) && f.value(row)))
            {
                continue;
            }
            let candidate = value(row);
            if is_min {
                slots.offer(group, candidate, |new, old| new < old)?;
            } else {
                slots.offer(group, candidate, |new, old| new > old)?;
            }
        }
        Ok(())
    }
}

/// `v` as text; an invalid value is noted in `error` and read as NULL.
fn utf8<'a>(v: Option<&'a [u8]>, error: &mut Option<std::str::Utf8Error>) -> Option<&'a str> {
    match std::str::from_utf8(v?) {
        Ok(s) => Some(s),
        Err(e) => {
            error.get_or_insert(e);
            None
        }
    }
}

impl GroupsAccumulator for BytesMinMax {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.offer_all(&values[0], group_indices, opt_filter, total_num_groups)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.offer_all(&values[0], group_indices, None, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.build(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.build(emit_to)?])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = &values[0];
        match opt_filter {
            None => Ok(vec![Arc::clone(values)]),
            Some(filter) => {
                // Rows the filter rejects (false or NULL) become NULL states.
                let keep: BooleanArray = filter.iter().map(|f| Some(f == Some(true))).collect();
                let nulls = datafusion::arrow::array::new_null_array(values.data_type(), 1);
                let nulls = ScalarValue::try_from_array(&nulls, 0)?.to_scalar()?;
                Ok(vec![zip(&keep, values, &nulls)?])
            }
        }
    }

    fn size(&self) -> usize {
        self.slots.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionConfig;

    /// Deterministic pseudo-random strings with NULLs, over many groups.
    fn table_sql(rows: usize) -> String {
        let mut values = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..rows {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let g = x % 97;
            let s = if x.is_multiple_of(11) {
                "NULL".to_string()
            } else {
                // lengths 0..20 around the 12-byte inline limit of string views
                let len = (x >> 8) % 21;
                let word: String = (0..len)
                    .map(|k| (b'a' + ((x >> (k % 50)) % 26) as u8) as char)
                    .collect();
                format!("'{word}'")
            };
            let f = if i.is_multiple_of(3) { "true" } else { "false" };
            values.push(format!("({g}, {s}, {f})"));
        }
        format!(
            "create table t(g bigint, s varchar, f boolean) as values {}",
            values.join(", ")
        )
    }

    async fn results(fast: bool, partitions: usize, sql: &str) -> String {
        results_with(
            fast,
            SessionConfig::new().with_target_partitions(partitions),
            sql,
        )
        .await
    }

    async fn results_with(fast: bool, config: SessionConfig, sql: &str) -> String {
        let ctx = SessionContext::new_with_config(config.with_batch_size(7));
        if fast {
            register(&ctx);
        }
        ctx.sql(&table_sql(3000))
            .await
            .expect("table")
            .collect()
            .await
            .expect("create");
        crate::functions::tests::pretty(&ctx, sql).await
    }

    #[tokio::test]
    async fn string_min_max_equal_datafusions_own_over_many_groups_nulls_and_filters() {
        let sql = "select g, min(s) as mn, max(s) as mx, \
                   min(s) filter (where f) as mnf, max(s) filter (where f) as mxf, \
                   min(arrow_cast(s, 'LargeUtf8')) as mnl, max(arrow_cast(s, 'Utf8View')) as mxv, \
                   min(arrow_cast(s, 'Binary')) as mnb, \
                   min(case when g = 5 then s end) as only5 \
                   from t group by g order by g";
        for partitions in [1, 3] {
            let expected = results(false, partitions, sql).await;
            let got = results(true, partitions, sql).await;
            assert_eq!(got, expected, "target_partitions {partitions}");
        }
        // Partial aggregation skipped: every row becomes a state (convert_to_state, the
        // FILTER clause turning rows into NULL states) and the final stage merges them.
        use crate::functions::tests::{
            assert_partial_aggregation_skipped, skipping_partial_aggregation,
        };
        let skipping = skipping_partial_aggregation(3);
        assert_partial_aggregation_skipped(
            &results_with(true, skipping.clone(), &format!("explain analyze {sql}")).await,
        );
        assert_eq!(
            results_with(true, skipping, sql).await,
            results(false, 1, sql).await
        );
    }

    #[tokio::test]
    async fn numeric_and_ungrouped_min_max_still_work() {
        let sql = "select min(g) as a, max(g) as b, min(s) as c, max(s) as d from t";
        assert_eq!(results(true, 2, sql).await, results(false, 2, sql).await);
        let sql = "select g % 3 as k, min(g) as a, max(g) as b from t group by g % 3 order by k";
        assert_eq!(results(true, 2, sql).await, results(false, 2, sql).await);
    }

    #[test]
    fn slots_survive_compaction_and_partial_emits() {
        let mut slots = ByteSlots::default();
        slots.resize(3);
        // Many replacements of group 0 make garbage and force compactions.
        for i in 0..200_000u32 {
            slots.set(0, &i.to_be_bytes()).expect("set");
        }
        slots.set(2, b"two").expect("set");
        assert_eq!(slots.get(0), Some(&199_999u32.to_be_bytes()[..]));
        assert_eq!(slots.get(1), None);
        assert!(slots.buf.len() < 4 << 20, "buffer compacted");
        let mut first = Vec::new();
        slots.emit(EmitTo::First(2), |v| first.push(v.map(<[u8]>::to_vec)));
        assert_eq!(first, vec![Some(199_999u32.to_be_bytes().to_vec()), None]);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots.get(0), Some(&b"two"[..]));
        assert_eq!(slots.live, 3);
    }
}
