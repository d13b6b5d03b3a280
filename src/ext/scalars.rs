//! Scalar functions: `local_date`, `utc_timestamp` and `integer_text` (used by the input
//! mapping) and `raise_error` (for model files).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{Signature, Volatility};

/// The calendar date of UTC timestamps in a time zone (UTC when `None`), as an expression
/// for the input mapping: `segflow_local_date(ts, 'Europe/Berlin')` (the zone a literal,
/// NULL or left out for UTC). Exact like a cast through a zoned timestamp, but each offset
/// is looked up once per quarter hour of UTC time instead of once per row: a quarter hour
/// whose two ends have the same offset has it throughout (time zones change offset months
/// apart); one with a change inside is converted row by row.
pub fn local_date(
    ts: datafusion::prelude::Expr,
    tz: Option<chrono_tz::Tz>,
) -> datafusion::prelude::Expr {
    let zone = ScalarValue::Utf8(tz.map(|tz| tz.name().to_string()));
    local_date_udf().call(vec![ts, datafusion::prelude::lit(zone)])
}

/// `segflow_local_date(ts [, zone])`: see [`local_date`]. The zone is an argument, not a
/// setting of the function, so that a plan using it names only registered functions.
pub(crate) fn local_date_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(LocalDate {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LocalDate {
    signature: Signature,
}

/// The time zone argument of `segflow_local_date`: a string literal, NULL or absent (UTC).
fn zone_argument(
    args: &[datafusion::logical_expr::ColumnarValue],
) -> Result<Option<chrono_tz::Tz>> {
    use datafusion::logical_expr::ColumnarValue;
    match args {
        [_] => Ok(None),
        [_, ColumnarValue::Scalar(zone)] if zone.is_null() => Ok(None),
        [_, ColumnarValue::Scalar(zone)] => match zone.try_as_str() {
            Some(None) => Ok(None),
            Some(Some(name)) => match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => Ok(Some(tz)),
                Err(_) => exec_err!("segflow_local_date: unknown time zone `{name}`"),
            },
            None => exec_err!("segflow_local_date: the time zone must be a string"),
        },
        [_, _] => exec_err!("segflow_local_date: the time zone must be a literal"),
        _ => exec_err!("segflow_local_date takes a timestamp and a time zone"),
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
        let tz = zone_argument(&args.args)?;
        let Some(input) = args.args.first() else {
            return exec_err!("segflow_local_date takes a timestamp and a time zone");
        };
        let input = input.to_array(args.number_rows)?;
        let micros = datafusion::arrow::compute::cast(
            &input,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?;
        let Some(micros) = micros.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return exec_err!("segflow_local_date: not a timestamp");
        };
        let days: Date32Array = match tz {
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
    utc_timestamp_udf().call(vec![ts])
}

/// `segflow_utc_timestamp(ts)`: see [`utc_timestamp`].
pub(crate) fn utc_timestamp_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(UtcTimestamp {
        signature: Signature::any(1, Volatility::Immutable),
    })
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
    integer_text_udf().call(vec![value])
}

/// `segflow_integer_text(value)`: see [`integer_text`].
pub(crate) fn integer_text_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(IntegerText {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntegerText {
    signature: Signature,
}

/// `values` as decimal text views, NULL where `nulls` says so. The views are made
/// directly (a number of up to 12 digits inside its view, a longer one in the one data
/// buffer): the view builder's per-value bookkeeping cost as much as formatting the digits.
fn integer_views<T: itoa::Integer + Copy>(
    values: &[T],
    nulls: Option<&datafusion::arrow::buffer::NullBuffer>,
) -> Result<datafusion::arrow::array::StringViewArray> {
    use datafusion::arrow::array::builder::make_view;
    use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
    let mut views: Vec<u128> = Vec::with_capacity(values.len());
    let mut data: Vec<u8> = Vec::new();
    let mut text = itoa::Buffer::new();
    for v in values {
        // A NULL slot gets the text of whatever value it holds: a valid view all the same.
        let digits = text.format(*v).as_bytes();
        let offset = u32::try_from(data.len()).map_err(|_| {
            datafusion::error::DataFusionError::Execution(
                "segflow_integer_text: batch text over 4 GiB".into(),
            )
        })?;
        views.push(make_view(digits, 0, offset));
        if digits.len() > 12 {
            data.extend_from_slice(digits);
        }
    }
    let buffers = match data.is_empty() {
        true => vec![],
        false => vec![Buffer::from_vec(data)],
    };
    // SAFETY: every view is made by `make_view` from ASCII digits (valid UTF-8), inline
    // or pointing at those digits in `buffers[0]` (buffer 0, the offset they were copied
    // to), and `nulls` (if any) has one bit per value: what `try_new` would check.
    Ok(unsafe {
        datafusion::arrow::array::StringViewArray::new_unchecked(
            ScalarBuffer::from(views),
            buffers,
            nulls.cloned(),
        )
    })
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
            DataType::Int8 => integer_views(input.as_primitive::<Int8Type>().values(), nulls)?,
            DataType::Int16 => integer_views(input.as_primitive::<Int16Type>().values(), nulls)?,
            DataType::Int32 => integer_views(input.as_primitive::<Int32Type>().values(), nulls)?,
            DataType::Int64 => integer_views(input.as_primitive::<Int64Type>().values(), nulls)?,
            DataType::UInt8 => integer_views(input.as_primitive::<UInt8Type>().values(), nulls)?,
            DataType::UInt16 => integer_views(input.as_primitive::<UInt16Type>().values(), nulls)?,
            DataType::UInt32 => integer_views(input.as_primitive::<UInt32Type>().values(), nulls)?,
            DataType::UInt64 => integer_views(input.as_primitive::<UInt64Type>().values(), nulls)?,
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
