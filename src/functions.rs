//! SQL functions segflow adds to DataFusion for model files.
//!
//! `arg_min(value, key1 [, key2 ...])` and `arg_max(value, key1 [, key2 ...])`: the `value`
//! of the row with the smallest (largest) key tuple in the group, compared left to right.
//! Rows with a NULL key are skipped; when several rows share the winning keys the smallest
//! value wins (NULL after every value), so the result never depends on the scan order; a
//! group without a row whose keys are all non-NULL gives NULL. They replace the ordered
//! `first_value(v ORDER BY ...)` aggregate and `row_number() ... = 1` windows, which sort or
//! buffer every row of a group: these keep one encoded row per group.
//!
//! The tuple (keys, value) of each row is encoded with arrow's row format, whose bytes
//! compare like the tuple (keys descending for `arg_max`), so the state of a group is one
//! byte string and updating it is one `memcmp`. The partial state between aggregation phases
//! is that byte string (Binary); the encoding depends only on the argument types and the
//! direction, so the partial and final accumulators agree on it.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers segflow's functions on a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(ArgBest::new(Direction::Min)));
    ctx.register_udaf(AggregateUDF::from(ArgBest::new(Direction::Max)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    Min,
    Max,
}

/// `arg_min` / `arg_max`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArgBest {
    direction: Direction,
    signature: Signature,
}

impl ArgBest {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// Sort fields of the encoded tuple: the keys in the function's direction, then the value
    /// ascending with NULL last (ties go to the smallest value).
    fn sort_fields(&self, arg_types: &[DataType]) -> Vec<SortField> {
        let descending = self.direction == Direction::Max;
        let mut fields: Vec<SortField> = arg_types[1..]
            .iter()
            .map(|t| {
                SortField::new_with_options(
                    t.clone(),
                    SortOptions {
                        descending,
                        nulls_first: false,
                    },
                )
            })
            .collect();
        fields.push(SortField::new_with_options(
            arg_types[0].clone(),
            SortOptions {
                descending: false,
                nulls_first: false,
            },
        ));
        fields
    }

    fn state(&self, args: &AccumulatorArgs) -> Result<State> {
        let types = args
            .exprs
            .iter()
            .map(|e| e.data_type(args.schema))
            .collect::<Result<Vec<_>>>()?;
        State::new(self.sort_fields(&types), types.len() - 1, types[0].clone())
    }
}

impl AggregateUDFImpl for ArgBest {
    fn name(&self) -> &str {
        match self.direction {
            Direction::Min => "arg_min",
            Direction::Max => "arg_max",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() < 2 {
            return plan_err!(
                "{}(value, key [, key ...]) takes a value and at least one key, got {} argument(s)",
                self.name(),
                arg_types.len()
            );
        }
        // Dictionary-encoded arguments are compared by value.
        Ok(arg_types
            .iter()
            .map(|t| match t {
                DataType::Dictionary(_, value) => value.as_ref().clone(),
                other => other.clone(),
            })
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => plan_err!("{} needs arguments", self.name()),
        }
    }

    fn is_nullable(&self) -> bool {
        true
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[best]", args.name),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(self.state(&args)?)))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.state(&args)?))
    }
}

/// The best encoded row per group.
struct State {
    converter: RowConverter,
    keys: usize,
    value_type: DataType,
    best: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

impl State {
    fn new(fields: Vec<SortField>, keys: usize, value_type: DataType) -> Result<Self> {
        Ok(Self {
            converter: RowConverter::new(fields)?,
            keys,
            value_type,
            best: Vec::new(),
            bytes: 0,
        })
    }

    /// Encodes the arguments (value, keys...) as rows of (keys..., value).
    fn encode(&self, values: &[ArrayRef]) -> Result<Rows> {
        let mut columns: Vec<ArrayRef> = values[1..].to_vec();
        columns.push(Arc::clone(&values[0]));
        Ok(self.converter.convert_columns(&columns)?)
    }

    /// Rows that take part: every key non-NULL and the filter (if any) true.
    fn eligible(&self, values: &[ArrayRef], filter: Option<&BooleanArray>, row: usize) -> bool {
        values[1..=self.keys].iter().all(|k| k.is_valid(row))
            && filter.is_none_or(|f| f.is_valid(row) && f.value(row))
    }

    fn offer(&mut self, group: usize, candidate: &[u8]) {
        match &mut self.best[group] {
            Some(current) if current.as_slice() <= candidate => {}
            Some(current) => {
                self.bytes = self.bytes + candidate.len() - current.len();
                current.clear();
                current.extend_from_slice(candidate);
            }
            slot @ None => {
                self.bytes += candidate.len();
                *slot = Some(candidate.to_vec());
            }
        }
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Option<Vec<u8>>> {
        let taken = emit_to.take_needed(&mut self.best);
        self.bytes -= taken.iter().flatten().map(Vec::len).sum::<usize>();
        taken
    }

    /// Decodes the values of `encoded` (NULL where a group had no eligible row).
    fn values(&self, encoded: &[Option<Vec<u8>>]) -> Result<ArrayRef> {
        if encoded.iter().all(Option::is_none) {
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
                e.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        Ok(take(decoded.as_ref(), &indices, None)?)
    }

    fn binary(encoded: &[Option<Vec<u8>>]) -> ArrayRef {
        let mut builder = BinaryBuilder::with_capacity(
            encoded.len(),
            encoded.iter().flatten().map(Vec::len).sum(),
        );
        for e in encoded {
            builder.append_option(e.as_deref());
        }
        Arc::new(builder.finish())
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
        self.best.resize(total_num_groups, None);
        let rows = self.encode(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if self.eligible(values, opt_filter, row) {
                self.offer(group, rows.row(row).data());
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
        self.best.resize(total_num_groups, None);
        let Some(states) = values.first().and_then(|v| v.as_binary_opt::<i32>()) else {
            return exec_err!("arg_min/arg_max: partial state is not Binary");
        };
        for (row, &group) in group_indices.iter().enumerate() {
            if states.is_valid(row) {
                self.offer(group, states.value(row));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = self.take(emit_to);
        self.values(&taken)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let taken = self.take(emit_to);
        Ok(vec![Self::binary(&taken)])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = self.encode(values)?;
        let states: BinaryArray = (0..rows.num_rows())
            .map(|row| {
                self.eligible(values, opt_filter, row)
                    .then(|| rows.row(row).data())
            })
            .collect();
        Ok(vec![Arc::new(states)])
    }

    fn size(&self) -> usize {
        self.converter.size()
            + self.best.capacity() * std::mem::size_of::<Option<Vec<u8>>>()
            + self.bytes
    }
}

/// The single-group form (no GROUP BY, window use).
struct OneGroup(State);

impl std::fmt::Debug for OneGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgBest").finish_non_exhaustive()
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
        if self.0.best.is_empty() {
            self.0.best.push(None);
        }
        let values = self.0.values(&self.0.best)?;
        ScalarValue::try_from_array(values.as_ref(), 0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let best = self.0.best.first().cloned().flatten();
        Ok(vec![ScalarValue::Binary(best)])
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + GroupsAccumulator::size(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::{SessionConfig, SessionContext};

    async fn query(partitions: usize, sql: &str) -> String {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(2),
        );
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
}
