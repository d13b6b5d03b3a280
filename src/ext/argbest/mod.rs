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

mod general;
mod keys;
#[cfg(test)]
mod tests;
mod typed;

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::row::SortField;
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, Signature, Volatility,
};

use general::{OneGroup, State};

/// `arg_min` and `arg_max`.
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(ArgBest::new(Direction::Min)),
        AggregateUDF::from(ArgBest::new(Direction::Max)),
    ]
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
        if keys::supported(&types) {
            Ok(Box::new(typed::TextByKey::new(
                self.direction == Direction::Min,
                &types,
                state,
            )))
        } else {
            Ok(Box::new(state))
        }
    }
}
