//! Numeric and temporal keys as integers of the same order, and the best key per group.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, PrimitiveArray,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use datafusion::common::{internal_err, Result};
use datafusion::logical_expr::EmitTo;

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
/// [`TextByKey`]: a string by one numeric or temporal key, and maybe a string key after it.
pub(crate) fn supported(types: &[DataType]) -> bool {
    let text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    match types {
        [value, key] => text(value) && key_supported(key),
        [value, key, tie] => text(value) && key_supported(key) && text(tie),
        _ => false,
    }
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
pub(super) fn key_array(keys: &[i128], seen: &[bool], data_type: &DataType) -> Result<ArrayRef> {
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
    pub(crate) better: Ordering,
    pub(crate) seen: Vec<bool>,
    pub(crate) keys: Vec<i128>,
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
    pub(crate) fn compare(&self, group: usize, key: i128) -> Ordering {
        if self.seen[group] {
            key.cmp(&self.keys[group])
        } else {
            self.better
        }
    }

    pub(crate) fn set(&mut self, group: usize, key: i128) {
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
