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
    Array, ArrayRef, AsArray, BinaryBuilder, BinaryViewBuilder, BooleanArray, GenericByteViewArray,
    LargeBinaryBuilder, LargeStringBuilder, StringBuilder, StringViewBuilder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::datatypes::{ByteViewType, DataType, FieldRef};
use datafusion::common::{internal_err, Result, ScalarValue};
use datafusion::logical_expr::expr::{
    AggregateFunction, AggregateFunctionParams, WindowFunctionParams,
};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};

/// The `min` and `max` wrappers, registered in place of DataFusion's.
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    let min = datafusion::functions_aggregate::min_max::min_udaf();
    let max = datafusion::functions_aggregate::min_max::max_udaf();
    vec![
        AggregateUDF::new_from_impl(MinMax::new(min, true)),
        AggregateUDF::new_from_impl(MinMax::new(max, false)),
    ]
}

/// How many of `groups` groups `emit_to` emits.
pub(crate) fn emitted(emit_to: EmitTo, groups: usize) -> usize {
    match emit_to {
        EmitTo::All => groups,
        EmitTo::First(n) => n.min(groups),
    }
}

/// Every group's current value: values of up to 12 bytes inline in the group's 16-byte slot
/// (no buffer, compared as one integer), longer ones as a slice of one growing buffer.
/// Replacing a long value appends the new one (the old bytes become garbage); the buffer is
/// compacted when garbage outweighs live bytes.
#[derive(Debug, Default)]
pub(crate) struct ByteSlots {
    buf: Vec<u8>,
    /// Per group: bytes 0..12 hold the value (zero-padded) when it is at most [`INLINE`]
    /// bytes long, else its offset in `buf` (bytes 4..12); bytes 12..16 hold the length
    /// (big-endian; [`NONE`] marks a group without a value). Read big-endian as one `u128`,
    /// two inline slots compare like their values: bytes first, then length.
    slots: Vec<[u8; 16]>,
    /// Bytes of `buf` still referenced.
    live: usize,
}

const NONE: u32 = u32::MAX;
/// Longest value kept in its slot.
const INLINE: usize = 12;
const EMPTY: [u8; 16] = {
    let mut s = [0u8; 16];
    s[12] = 0xff;
    s[13] = 0xff;
    s[14] = 0xff;
    s[15] = 0xff;
    s
};

fn slot_len(slot: &[u8; 16]) -> u32 {
    u32::from_be_bytes([slot[12], slot[13], slot[14], slot[15]])
}

fn slot_offset(slot: &[u8; 16]) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&slot[4..12]);
    u64::from_le_bytes(b) as usize
}

/// The inline slot of a value of at most [`INLINE`] bytes.
fn inline_slot(value: &[u8]) -> [u8; 16] {
    let mut slot = [0u8; 16];
    slot[..value.len()].copy_from_slice(value);
    slot[12..].copy_from_slice(&(value.len() as u32).to_be_bytes());
    slot
}

/// The inline slot, as an integer, of the value of an inline string view (length <= 12; the
/// view holds the length in its low 32 bits and the bytes above, first byte lowest).
pub(crate) fn view_key(view: u128) -> u128 {
    (view >> 32).swap_bytes() | (view & 0xffff_ffff)
}

impl ByteSlots {
    pub(crate) fn resize(&mut self, groups: usize) {
        if self.slots.len() < groups {
            self.slots.resize(groups, EMPTY);
        }
    }

    pub(crate) fn get(&self, group: usize) -> Option<&[u8]> {
        let slot = &self.slots[group];
        let len = slot_len(slot);
        if len == NONE {
            None
        } else if len as usize <= INLINE {
            Some(&slot[..len as usize])
        } else {
            let start = slot_offset(slot);
            Some(&self.buf[start..start + len as usize])
        }
    }

    /// Forgets the value of `group`.
    pub(crate) fn clear(&mut self, group: usize) {
        let len = slot_len(&self.slots[group]);
        if len != NONE && len as usize > INLINE {
            self.live -= len as usize;
        }
        self.slots[group] = EMPTY;
    }

    /// Stores `value` for `group` (values of 4 GiB or more are refused).
    pub(crate) fn set(&mut self, group: usize, value: &[u8]) -> Result<()> {
        let Some(len) = u32::try_from(value.len()).ok().filter(|l| *l != NONE) else {
            return internal_err!("a value of {} bytes is too large to aggregate", value.len());
        };
        self.clear(group);
        if value.len() <= INLINE {
            self.slots[group] = inline_slot(value);
            return Ok(());
        }
        if self.worth_compacting() {
            self.compact();
        }
        let mut slot = [0u8; 16];
        slot[..4].copy_from_slice(&value[..4]);
        slot[4..12].copy_from_slice(&(self.buf.len() as u64).to_le_bytes());
        slot[12..].copy_from_slice(&len.to_be_bytes());
        self.slots[group] = slot;
        self.buf.extend_from_slice(value);
        self.live += value.len();
        Ok(())
    }

    /// Offers `candidate` to `group`: stored when the group has no value or `candidate`
    /// compares to the current value (byte-wise) as `wanted`.
    pub(crate) fn offer(
        &mut self,
        group: usize,
        candidate: &[u8],
        wanted: std::cmp::Ordering,
    ) -> Result<()> {
        let slot = &self.slots[group];
        let len = slot_len(slot);
        if len != NONE {
            let order = if candidate.len() <= INLINE && len as usize <= INLINE {
                u128::from_be_bytes(inline_slot(candidate)).cmp(&u128::from_be_bytes(*slot))
            } else {
                candidate.cmp(self.get(group).unwrap_or_default())
            };
            if order != wanted {
                return Ok(());
            }
        }
        self.set(group, candidate)
    }

    /// [`ByteSlots::offer`] for the value of a string view (`view`; `value` its bytes).
    pub(crate) fn offer_view(
        &mut self,
        group: usize,
        view: u128,
        value: &[u8],
        wanted: std::cmp::Ordering,
    ) -> Result<()> {
        let slot = &self.slots[group];
        let len = slot_len(slot);
        if (view as u32) as usize > INLINE || (len != NONE && len as usize > INLINE) {
            return self.offer(group, value, wanted);
        }
        let key = view_key(view);
        if len == NONE || key.cmp(&u128::from_be_bytes(*slot)) == wanted {
            self.clear(group);
            self.slots[group] = key.to_be_bytes();
        }
        Ok(())
    }

    /// Whether garbage outweighs the live bytes of the buffer and is large enough to pay
    /// for a pass over every slot.
    fn worth_compacting(&self) -> bool {
        self.buf.len() > 2 * self.live + (1 << 20).max(16 * self.slots.len())
    }

    fn compact(&mut self) {
        let mut buf = Vec::with_capacity(self.live + self.live / 2);
        for slot in self.slots.iter_mut() {
            let len = slot_len(slot);
            if len != NONE && len as usize > INLINE {
                let from = slot_offset(slot);
                slot[4..12].copy_from_slice(&(buf.len() as u64).to_le_bytes());
                buf.extend_from_slice(&self.buf[from..from + len as usize]);
            }
        }
        self.buf = buf;
    }

    /// Calls `f` with the value of each emitted group, in group order, and forgets them.
    pub(crate) fn emit(&mut self, emit_to: EmitTo, mut f: impl FnMut(Option<&[u8]>)) {
        let n = self.emitted(emit_to);
        for group in 0..n {
            f(self.get(group));
        }
        self.forget(n);
    }

    /// How many groups `emit_to` emits.
    pub(crate) fn emitted(&self, emit_to: EmitTo) -> usize {
        emitted(emit_to, self.slots.len())
    }

    /// Forgets the first `n` groups (all of them: the memory is freed, as after a spill).
    pub(crate) fn forget(&mut self, n: usize) {
        if n >= self.slots.len() {
            *self = Self::default();
        } else {
            for slot in self.slots.drain(..n) {
                let len = slot_len(&slot);
                if len != NONE && len as usize > INLINE {
                    self.live -= len as usize;
                }
            }
            if self.worth_compacting() {
                self.compact();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn size(&self) -> usize {
        self.buf.capacity() + self.slots.capacity() * 16
    }
}

/// DataFusion's `min` or `max` with a faster grouped accumulator for byte types.
#[derive(Debug)]
pub(super) struct MinMax {
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

// Every method is written out, forwarded to DataFusion's function but for the grouped
// accumulator of byte types and `reverse_expr`: a default method would quietly differ from
// DataFusion's own `min`/`max` (a name, a statistic, a window accumulator), and a method a
// new DataFusion adds fails this lint until it is decided here.
#[deny(clippy::missing_trait_methods)]
impl AggregateUDFImpl for MinMax {
    fn name(&self) -> &str {
        self.imp().name()
    }
    fn aliases(&self) -> &[String] {
        self.imp().aliases()
    }
    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().schema_name(params)
    }
    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().human_display(params)
    }
    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.imp().window_function_schema_name(params)
    }
    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().display_name(params)
    }
    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.imp().window_function_display_name(params)
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
    // Overridden: the point of the wrapper (the grouped accumulator of byte types).
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        is_bytes(args.return_field.data_type()) || self.imp().groups_accumulator_supported(args)
    }
    // Overridden: the point of the wrapper.
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
    /// Forwarded; a function DataFusion's returns in its place is wrapped again, or the
    /// plan would lose the faster grouped accumulator (`min`/`max` are order-insensitive,
    /// so DataFusion 55's return `None` and this changes nothing today).
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let replaced =
            Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial_ordering)?;
        Ok(replaced.map(|inner| {
            Arc::new(MinMax::new(
                Arc::new(AggregateUDF::new_from_shared_impl(inner)),
                self.is_min,
            )) as Arc<dyn AggregateUDFImpl>
        }))
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
    fn supports_within_group_clause(&self) -> bool {
        self.imp().supports_within_group_clause()
    }
    /// Not forwarded: `min` and `max` of a reversed input are themselves (what DataFusion's
    /// also say), and `Identical` keeps this wrapper, where a `Reversed(udf)` forwarded from
    /// DataFusion's function would put DataFusion's own accumulator back in the plan.
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
            DataType::Utf8View => rows.offer_views(slots, is_min, values.as_string_view()),
            DataType::Binary => {
                let a = values.as_binary::<i32>();
                rows.offer(slots, is_min, a, |i| a.value(i))
            }
            DataType::LargeBinary => {
                let a = values.as_binary::<i64>();
                rows.offer(slots, is_min, a, |i| a.value(i))
            }
            DataType::BinaryView => rows.offer_views(slots, is_min, values.as_binary_view()),
            other => internal_err!(
                "{}: expected a string or binary column, got {other}",
                if is_min { "min" } else { "max" }
            ),
        }
    }

    fn build(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        emit_array(&mut self.slots, &self.data_type, emit_to)
    }
}

/// The emitted groups' values of `slots` as an array of `data_type` (a string or binary
/// type; NULL for a group without a value), forgetting them.
pub(crate) fn emit_array(
    slots: &mut ByteSlots,
    data_type: &DataType,
    emit_to: EmitTo,
) -> Result<ArrayRef> {
    let n = slots.emitted(emit_to);
    let array = array_of(slots, data_type, 0..n)?;
    slots.forget(n);
    Ok(array)
}

/// The values of the groups in `groups` as an array of `data_type` (a string or binary
/// type; NULL for a group without a value).
pub(crate) fn array_of(
    slots: &ByteSlots,
    data_type: &DataType,
    groups: std::ops::Range<usize>,
) -> Result<ArrayRef> {
    let n = groups.len();
    let values = groups.map(|g| slots.get(g));
    let mut error = None;
    // Stored strings came from UTF-8 arrays; checking costs little and keeps this safe.
    let array: ArrayRef = match data_type {
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(n, 0);
            values.for_each(|v| b.append_option(utf8(v, &mut error)));
            Arc::new(b.finish())
        }
        DataType::LargeUtf8 => {
            let mut b = LargeStringBuilder::with_capacity(n, 0);
            values.for_each(|v| b.append_option(utf8(v, &mut error)));
            Arc::new(b.finish())
        }
        DataType::Utf8View => {
            let mut b = StringViewBuilder::with_capacity(n);
            values.for_each(|v| b.append_option(utf8(v, &mut error)));
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::with_capacity(n, 0);
            values.for_each(|v| b.append_option(v));
            Arc::new(b.finish())
        }
        DataType::LargeBinary => {
            let mut b = LargeBinaryBuilder::with_capacity(n, 0);
            values.for_each(|v| b.append_option(v));
            Arc::new(b.finish())
        }
        DataType::BinaryView => {
            let mut b = BinaryViewBuilder::with_capacity(n);
            values.for_each(|v| b.append_option(v));
            Arc::new(b.finish())
        }
        other => return internal_err!("grouped string aggregate: unexpected type {other}"),
    };
    if let Some(e) = error {
        return internal_err!("grouped string aggregate: a stored string is not UTF-8: {e}");
    }
    Ok(array)
}

/// The rows of one batch: their groups and the FILTER clause, if any.
struct Rows<'a> {
    group_indices: &'a [usize],
    opt_filter: Option<&'a BooleanArray>,
}

impl Rows<'_> {
    /// Whether `row` is NULL or the FILTER clause drops it.
    fn skips(&self, nulls: Option<&NullBuffer>, row: usize) -> bool {
        nulls.is_some_and(|n| n.is_null(row))
            || self
                .opt_filter
                .is_some_and(|f| !(f.is_valid(row) && f.value(row)))
    }

    fn offer<'v>(
        &self,
        slots: &mut ByteSlots,
        is_min: bool,
        array: &dyn Array,
        value: impl Fn(usize) -> &'v [u8],
    ) -> Result<()> {
        let nulls = array.logical_nulls();
        for (row, &group) in self.group_indices.iter().enumerate() {
            if self.skips(nulls.as_ref(), row) {
                continue;
            }
            slots.offer(group, value(row), wanted(is_min))?;
        }
        Ok(())
    }

    /// [`Rows::offer`] for string or binary views: short values are compared as integers
    /// straight from their views.
    fn offer_views<T: ByteViewType + ?Sized>(
        &self,
        slots: &mut ByteSlots,
        is_min: bool,
        array: &GenericByteViewArray<T>,
    ) -> Result<()> {
        let nulls = array.logical_nulls();
        let views = array.views();
        let wanted = wanted(is_min);
        for (row, &group) in self.group_indices.iter().enumerate() {
            if self.skips(nulls.as_ref(), row) {
                continue;
            }
            slots.offer_view(group, views[row], array.value(row).as_ref(), wanted)?;
        }
        Ok(())
    }
}

/// The order a candidate must have against the current value to replace it.
fn wanted(is_min: bool) -> std::cmp::Ordering {
    if is_min {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Greater
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
    use datafusion::prelude::SessionContext;

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
            crate::ext::register(&ctx);
        }
        ctx.sql(&table_sql(3000))
            .await
            .expect("table")
            .collect()
            .await
            .expect("create");
        crate::ext::tests::pretty(&ctx, sql).await
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
        use crate::ext::tests::{assert_partial_aggregation_skipped, skipping_partial_aggregation};
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
        let long = |i: u32| [&i.to_be_bytes()[..], b"-a-long-value"].concat();
        let mut slots = ByteSlots::default();
        slots.resize(4);
        // Many replacements of group 0 with values too long to be inline make garbage and
        // force compactions.
        for i in 0..200_000u32 {
            slots.set(0, &long(i)).expect("set");
        }
        slots.set(2, b"two").expect("set");
        slots.set(3, &long(7)).expect("set");
        slots.set(3, b"short again").expect("set");
        assert_eq!(slots.get(0), Some(&long(199_999)[..]));
        assert_eq!(slots.get(1), None);
        assert!(slots.buf.len() < 4 << 20, "buffer compacted");
        assert_eq!(slots.live, 17, "only group 0 is in the buffer");
        let mut first = Vec::new();
        slots.emit(EmitTo::First(2), |v| first.push(v.map(<[u8]>::to_vec)));
        assert_eq!(first, vec![Some(long(199_999)), None]);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.get(0), Some(&b"two"[..]));
        assert_eq!(slots.get(1), Some(&b"short again"[..]));
        assert_eq!(slots.live, 0);
    }

    /// Byte-wise order of every pair among values around the 12-byte inline limit, with
    /// zero bytes and prefixes of each other, offered as slices and as string views.
    #[test]
    fn offers_keep_the_byte_wise_smallest_and_largest_inline_or_not() {
        let values: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"a\0\0",
            b"ab",
            b"b",
            b"abcdefghijkl",
            b"abcdefghijk",
            b"abcdefghijkl\0",
            b"abcdefghijklm",
            b"abcdefghijkm",
            b"\xff",
            b"\xff\xff\xff\xff\xff",
            b"zzzzzzzzzzzzzzzz",
            b"zzzz",
        ];
        let views = datafusion::arrow::array::BinaryViewArray::from_iter_values(values.iter());
        for a in 0..values.len() {
            for b in 0..values.len() {
                for wanted in [std::cmp::Ordering::Less, std::cmp::Ordering::Greater] {
                    let expected = if values[b].cmp(values[a]) == wanted {
                        b
                    } else {
                        a
                    };
                    let mut slots = ByteSlots::default();
                    slots.resize(2);
                    slots.set(0, values[a]).expect("set");
                    slots.offer(0, values[b], wanted).expect("offer");
                    slots.set(1, values[a]).expect("set");
                    slots
                        .offer_view(1, views.views()[b], values[b], wanted)
                        .expect("offer");
                    for group in 0..2 {
                        assert_eq!(
                            slots.get(group),
                            Some(values[expected]),
                            "{:?} then {:?}, keeping {wanted:?}, group {group}",
                            values[a],
                            values[b]
                        );
                    }
                }
            }
        }
    }
}
