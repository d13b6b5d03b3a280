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

use crate::ext::argbest::GroupKeys;
use crate::ext::minmax::ByteSlots;

/// Registers segflow's functions on a session.
pub fn register(ctx: &SessionContext) {
    crate::ext::minmax::register(ctx);
    ctx.add_optimizer_rule(Arc::new(crate::ext::decimal::FloatDecimalRule));
    crate::btyd::register(ctx);
    crate::ext::stats::register(ctx);
    ctx.register_udf(raise_error());
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
        let types = arg_types(args)?;
        State::new(
            self.sort_fields(&types),
            types.len() - 1,
            types[0].clone(),
            self.direction == Direction::Min,
            &types[1],
        )
    }
}

/// The general accumulator of `arg_min` (`min`) or `arg_max` over arguments of `types`.
#[cfg(test)]
pub(crate) fn general_state(min: bool, types: &[DataType]) -> Result<State> {
    let f = ArgBest::new(if min { Direction::Min } else { Direction::Max });
    State::new(
        f.sort_fields(types),
        types.len() - 1,
        types[0].clone(),
        min,
        &types[1],
    )
}

/// The types of the arguments (value, keys...).
fn arg_types(args: &AccumulatorArgs) -> Result<Vec<DataType>> {
    args.exprs
        .iter()
        .map(|e| e.data_type(args.schema))
        .collect()
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
        let types = arg_types(&args)?;
        let state = self.state(&args)?;
        if crate::ext::argbest::supported(&types) {
            Ok(Box::new(crate::ext::argbest::TextByKey::new(
                self.direction == Direction::Min,
                &types,
                state,
            )))
        } else {
            Ok(Box::new(state))
        }
    }
}

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
    fn new(
        fields: Vec<SortField>,
        keys: usize,
        value_type: DataType,
        min: bool,
        first_key: &DataType,
    ) -> Result<Self> {
        let first = crate::ext::argbest::key_supported(first_key).then(|| GroupKeys::new(min));
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
        let firsts = crate::ext::argbest::keys_of(values[1].as_ref())?;
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
struct OneGroup(State);

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

#[cfg(test)]
pub(crate) mod tests {
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

    fn values_at(
        ts: &datafusion::arrow::array::TimestampMicrosecondArray,
        i: usize,
    ) -> Option<i64> {
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
                .select(vec![super::local_date(col("ts"), tz).alias("d")])
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
                .select(vec![super::integer_text(col("n")).alias("t")])
                .expect("select")
                .collect()
                .await
                .expect("run");
            assert_eq!(got[0].column(0).data_type(), &DataType::Utf8View);
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
                .select(vec![super::utc_timestamp(col("ts")).alias("t")])
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
}

/// The calendar date of UTC timestamps in a time zone (UTC when `None`), as an expression
/// for the input mapping. Exact like a cast through a zoned timestamp, but each offset is
/// looked up once per quarter hour of UTC time instead of once per row: a quarter hour
/// whose two ends have the same offset has it throughout (time zones change offset months
/// apart); one with a change inside is converted row by row.
pub fn local_date(
    ts: datafusion::prelude::Expr,
    tz: Option<chrono_tz::Tz>,
) -> datafusion::prelude::Expr {
    datafusion::logical_expr::ScalarUDF::new_from_impl(LocalDate::new(tz)).call(vec![ts])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LocalDate {
    tz: Option<chrono_tz::Tz>,
    signature: Signature,
}

impl LocalDate {
    fn new(tz: Option<chrono_tz::Tz>) -> Self {
        Self {
            tz,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

const QUARTER_HOUR_US: i64 = 900 * 1_000_000;
const DAY_US: i64 = 86_400 * 1_000_000;

/// UTC offset (seconds) of `tz` at `utc_us` microseconds.
fn offset_at(tz: chrono_tz::Tz, utc_us: i64) -> Option<i64> {
    use chrono::{Offset, TimeZone};
    let t = chrono::DateTime::from_timestamp_micros(utc_us)?;
    Some(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc() as i64,
    )
}

impl datafusion::logical_expr::ScalarUDFImpl for LocalDate {
    fn name(&self) -> &str {
        "segflow_local_date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{Date32Array, TimestampMicrosecondArray};
        use datafusion::arrow::datatypes::TimeUnit;
        use datafusion::logical_expr::ColumnarValue;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("segflow_local_date takes one argument");
        };
        let micros = datafusion::arrow::compute::cast(
            input,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?;
        let Some(micros) = micros.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return exec_err!("segflow_local_date: not a timestamp");
        };
        let days: Date32Array = match self.tz {
            None => micros.unary(|us| us.div_euclid(DAY_US) as i32),
            Some(tz) => {
                // (quarter hour, its offset when constant over it)
                let mut memo: Option<(i64, Option<i64>)> = None;
                let mut cache: std::collections::HashMap<i64, Option<i64>> =
                    std::collections::HashMap::new();
                let mut out = Vec::with_capacity(micros.len());
                for us in micros.iter() {
                    let Some(us) = us else {
                        out.push(None);
                        continue;
                    };
                    let quarter = us.div_euclid(QUARTER_HOUR_US);
                    let constant = match memo {
                        Some((q, off)) if q == quarter => off,
                        _ => {
                            let off = *cache.entry(quarter).or_insert_with(|| {
                                let start = offset_at(tz, quarter * QUARTER_HOUR_US);
                                let end = offset_at(tz, (quarter + 1) * QUARTER_HOUR_US - 1);
                                if start == end {
                                    start
                                } else {
                                    None
                                }
                            });
                            memo = Some((quarter, off));
                            off
                        }
                    };
                    let offset = match constant {
                        Some(o) => Some(o),
                        None => offset_at(tz, us),
                    };
                    out.push(offset.map(|o| (us + o * 1_000_000).div_euclid(DAY_US) as i32));
                }
                Date32Array::from(out)
            }
        };
        Ok(ColumnarValue::Array(Arc::new(days)))
    }
}

/// A timestamp column as `Timestamp(Microsecond, "UTC")`, a naive one read as UTC wall time.
/// The same values as `CAST(ts AS TIMESTAMP WITH TIME ZONE 'UTC')`, whose kernel converts
/// every naive value through the time zone database; here only the unit changes.
pub fn utc_timestamp(ts: datafusion::prelude::Expr) -> datafusion::prelude::Expr {
    datafusion::logical_expr::ScalarUDF::new_from_impl(UtcTimestamp {
        signature: Signature::any(1, Volatility::Immutable),
    })
    .call(vec![ts])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcTimestamp {
    signature: Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for UtcTimestamp {
    fn name(&self) -> &str {
        "segflow_utc_timestamp"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        ))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::TimestampMicrosecondArray;
        use datafusion::arrow::datatypes::TimeUnit;
        use datafusion::logical_expr::ColumnarValue;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("segflow_utc_timestamp takes one argument");
        };
        let naive = match input.data_type() {
            DataType::Timestamp(_, Some(_)) => datafusion::arrow::compute::cast(
                input,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )?,
            DataType::Timestamp(_, None) => datafusion::arrow::compute::cast(
                input,
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )?,
            other => return exec_err!("segflow_utc_timestamp: {other} is not a timestamp"),
        };
        let Some(micros) = naive.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return exec_err!("segflow_utc_timestamp: cast failed");
        };
        Ok(ColumnarValue::Array(Arc::new(
            micros.clone().with_timezone("UTC"),
        )))
    }
}

/// The decimal text of an integer column, as string views: what a cast to text gives, but
/// written with `itoa` into views (a number of up to 12 characters lives in its view, no
/// data buffer) instead of through `Display` into a string array — customer and order ids
/// of integer sources are converted for every line staged.
pub fn integer_text(value: datafusion::prelude::Expr) -> datafusion::prelude::Expr {
    datafusion::logical_expr::ScalarUDF::new_from_impl(IntegerText {
        signature: Signature::any(1, Volatility::Immutable),
    })
    .call(vec![value])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntegerText {
    signature: Signature,
}

/// `values` as decimal text views, NULL where `nulls` says so.
fn integer_views<T: itoa::Integer + Copy>(
    values: &[T],
    nulls: Option<&datafusion::arrow::buffer::NullBuffer>,
) -> datafusion::arrow::array::StringViewArray {
    let mut builder = datafusion::arrow::array::StringViewBuilder::with_capacity(values.len());
    let mut text = itoa::Buffer::new();
    for (i, v) in values.iter().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            builder.append_null();
        } else {
            builder.append_value(text.format(*v));
        }
    }
    builder.finish()
}

impl datafusion::logical_expr::ScalarUDFImpl for IntegerText {
    fn name(&self) -> &str {
        "segflow_integer_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8View)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<FieldRef> {
        // NULL exactly where the input is, like the cast it replaces
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Utf8View,
            nullable,
        )))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::datatypes::{
            Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
            UInt8Type,
        };
        use datafusion::logical_expr::ColumnarValue;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("segflow_integer_text takes one argument");
        };
        let nulls = input.logical_nulls();
        let nulls = nulls.as_ref();
        let text = match input.data_type() {
            DataType::Int8 => integer_views(input.as_primitive::<Int8Type>().values(), nulls),
            DataType::Int16 => integer_views(input.as_primitive::<Int16Type>().values(), nulls),
            DataType::Int32 => integer_views(input.as_primitive::<Int32Type>().values(), nulls),
            DataType::Int64 => integer_views(input.as_primitive::<Int64Type>().values(), nulls),
            DataType::UInt8 => integer_views(input.as_primitive::<UInt8Type>().values(), nulls),
            DataType::UInt16 => integer_views(input.as_primitive::<UInt16Type>().values(), nulls),
            DataType::UInt32 => integer_views(input.as_primitive::<UInt32Type>().values(), nulls),
            DataType::UInt64 => integer_views(input.as_primitive::<UInt64Type>().values(), nulls),
            other => return exec_err!("segflow_integer_text: {other} is not an integer type"),
        };
        Ok(ColumnarValue::Array(Arc::new(text)))
    }
}

/// `raise_error(message)`: fails the query with `message` when a row reaches it, e.g. in
/// the `else` of a `case` that validates a parameter. Volatile, so the planner never folds
/// it into a constant (which would fail the query even when no row takes that branch); its
/// type is NULL, which any other branch's type absorbs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RaiseError {
    signature: Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for RaiseError {
    fn name(&self) -> &str {
        "raise_error"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Null)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        if args.number_rows == 0 {
            return Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                ScalarValue::Null,
            ));
        }
        let message = match args.args.first() {
            Some(datafusion::logical_expr::ColumnarValue::Scalar(s)) => s.to_string(),
            Some(datafusion::logical_expr::ColumnarValue::Array(a)) => {
                ScalarValue::try_from_array(a, 0)?.to_string()
            }
            None => String::new(),
        };
        exec_err!("{message}")
    }
}

pub(crate) fn raise_error() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(RaiseError {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Volatile),
    })
}
