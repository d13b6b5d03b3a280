//! The general accumulator of `arg_min` / `arg_max`: the best (keys, value) tuple per
//! group, encoded in arrow's row format so that a comparison is one `memcmp`.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use super::keys::GroupKeys;
use crate::ext::minmax::ByteSlots;

/// Whether a row takes part: its `keys` keys (after the value in `values`) non-NULL and the
/// filter (if any) true.
fn eligible(values: &[ArrayRef], keys: usize, filter: Option<&BooleanArray>, row: usize) -> bool {
    values[1..=keys].iter().all(|k| k.is_valid(row))
        && filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// The best encoded row per group.
pub(crate) struct State {
    converter: RowConverter,
    keys: usize,
    value_type: DataType,
    best: ByteSlots,
    /// When the first key is numeric or temporal: per group, the first key of a row already
    /// offered. It is never better than the first key of the group's stored row (states
    /// merged from another phase do not update it, which only lets more rows through), so a
    /// row whose first key is worse cannot win and is not encoded: in customer_facts, a
    /// customer's orders after the first (or before the last) mostly.
    first: Option<GroupKeys>,
}

impl State {
    /// `fields`: the sort fields of (keys..., value); `min` whether the function is
    /// `arg_min`; `first_key` the type of the first key.
    pub(crate) fn new(
        fields: Vec<SortField>,
        keys: usize,
        value_type: DataType,
        min: bool,
        first_key: &DataType,
    ) -> Result<Self> {
        let first = super::keys::key_supported(first_key).then(|| GroupKeys::new(min));
        Ok(Self {
            converter: RowConverter::new(fields)?,
            keys,
            value_type,
            best: ByteSlots::default(),
            first,
        })
    }

    /// Offers the rows of a batch that may win (per `first`): only those are encoded.
    /// None when there is no first-key filter or every row may win.
    fn offer_admitted(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<Option<()>> {
        let keys = self.keys;
        let Some(first) = self.first.as_mut() else {
            return Ok(None);
        };
        first.resize(total_num_groups);
        let firsts = super::keys::keys_of(values[1].as_ref())?;
        let mut admitted: Vec<u32> = Vec::with_capacity(group_indices.len());
        for (row, &group) in group_indices.iter().enumerate() {
            if eligible(values, keys, filter, row) && first.admits(group, firsts[row]) {
                admitted.push(row as u32);
            }
        }
        if admitted.len() == group_indices.len() {
            return Ok(None);
        }
        let indices = UInt32Array::from(admitted);
        let taken = values
            .iter()
            .map(|v| take(v.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rows = self.encode(&taken)?;
        for (i, row) in indices.values().iter().enumerate() {
            self.offer(group_indices[*row as usize], rows.row(i).data())?;
        }
        Ok(Some(()))
    }

    /// Encodes the arguments (value, keys...) as rows of (keys..., value).
    pub(crate) fn encode(&self, values: &[ArrayRef]) -> Result<Rows> {
        let mut columns: Vec<ArrayRef> = values[1..].to_vec();
        columns.push(Arc::clone(&values[0]));
        Ok(self.converter.convert_columns(&columns)?)
    }

    /// The non-NULL rows of encoded states and their columns (keys..., value).
    pub(crate) fn decode(&self, states: &BinaryArray) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
        let parser = self.converter.parser();
        let rows: Vec<usize> = (0..states.len()).filter(|&r| states.is_valid(r)).collect();
        let columns = self
            .converter
            .convert_rows(rows.iter().map(|&r| parser.parse(states.value(r))))?;
        Ok((rows, columns))
    }

    fn offer(&mut self, group: usize, candidate: &[u8]) -> Result<()> {
        self.best.offer(group, candidate, std::cmp::Ordering::Less)
    }

    /// The encoded best rows of the emitted groups (NULL where a group had no eligible row).
    fn take(&mut self, emit_to: EmitTo) -> BinaryArray {
        if let Some(first) = self.first.as_mut() {
            first.drain(self.best.emitted(emit_to));
        }
        let mut builder = BinaryBuilder::with_capacity(self.best.len(), 0);
        self.best.emit(emit_to, |v| builder.append_option(v));
        builder.finish()
    }

    /// Decodes the values of `encoded` (NULL where a group had no eligible row).
    fn values(&self, encoded: &BinaryArray) -> Result<ArrayRef> {
        if encoded.null_count() == encoded.len() {
            return Ok(new_null_array(&self.value_type, encoded.len()));
        }
        let parser = self.converter.parser();
        let present = encoded.iter().flatten().map(|bytes| parser.parse(bytes));
        let columns = self.converter.convert_rows(present)?;
        let decoded = &columns[self.keys];
        if decoded.len() == encoded.len() {
            return Ok(Arc::clone(decoded));
        }
        let mut next = 0u32;
        let indices: UInt32Array = encoded
            .iter()
            .map(|e| {
                e.map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        Ok(take(decoded.as_ref(), &indices, None)?)
    }
}

impl GroupsAccumulator for State {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.best.resize(total_num_groups);
        if self
            .offer_admitted(values, group_indices, opt_filter, total_num_groups)?
            .is_some()
        {
            return Ok(());
        }
        let rows = self.encode(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if eligible(values, self.keys, opt_filter, row) {
                self.offer(group, rows.row(row).data())?;
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.best.resize(total_num_groups);
        let Some(states) = values.first().and_then(|v| v.as_binary_opt::<i32>()) else {
            return exec_err!("arg_min/arg_max: partial state is not Binary");
        };
        for (row, &group) in group_indices.iter().enumerate() {
            if states.is_valid(row) {
                self.offer(group, states.value(row))?;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = self.take(emit_to);
        self.values(&taken)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![Arc::new(self.take(emit_to))])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = self.encode(values)?;
        let states: BinaryArray = (0..rows.num_rows())
            .map(|row| eligible(values, self.keys, opt_filter, row).then(|| rows.row(row).data()))
            .collect();
        Ok(vec![Arc::new(states)])
    }

    fn size(&self) -> usize {
        self.converter.size() + self.best.size() + self.first.as_ref().map_or(0, GroupKeys::size)
    }
}

/// The single-group form (no GROUP BY, window use).
pub(super) struct OneGroup(pub(super) State);

impl std::fmt::Debug for OneGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgBest").finish_non_exhaustive()
    }
}

impl OneGroup {
    /// The encoded best row so far (evaluating does not consume it: windows evaluate often).
    fn current(&mut self) -> Option<Vec<u8>> {
        self.0.best.resize(1);
        self.0.best.get(0).map(<[u8]>::to_vec)
    }

    fn current_array(&mut self) -> BinaryArray {
        BinaryArray::from(vec![self.current().as_deref()])
    }
}

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        GroupsAccumulator::update_batch(&mut self.0, values, &vec![0; n], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |v| v.len());
        GroupsAccumulator::merge_batch(&mut self.0, states, &vec![0; n], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let current = self.current_array();
        let values = self.0.values(&current)?;
        ScalarValue::try_from_array(values.as_ref(), 0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(self.current())])
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + GroupsAccumulator::size(&self.0)
    }
}
