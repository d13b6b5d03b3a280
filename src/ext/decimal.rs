//! A faster `CAST(<double> AS DECIMAL(p, s))`.
//!
//! Exact money sums are written `sum(cast(revenue AS decimal(38, 6)))`: on 10 M order lines
//! that cast runs 30 M times, and arrow's kernel converts each scaled float to a 128-bit
//! integer in software (`__fixdfti`) and checks the precision of each: 2.5 % of a run. The
//! optimizer rule [`FloatDecimalRule`] replaces such casts (in projections, filters,
//! aggregates and windows, not in grouping sets; only of columns without field metadata) by [`FloatDecimal`], which rounds the same way (`(x * 10^s)
//! .round()`) but converts through `i64` when the result fits in one, where no precision of
//! 19 digits or more can be exceeded; anything else (NaN, infinities, larger values, a
//! smaller precision) goes to arrow's cast, errors included, so the results are the same.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// `segflow_float_to_decimal(x, precision, scale)`: `CAST(x AS DECIMAL(precision, scale))`
/// for a Float64 `x`, with `precision` a UInt8 and `scale` an Int8 literal. The type is in
/// the arguments, not in the function, so that one function, known by its name, serves every
/// decimal type: plans sent to a Ballista cluster carry functions by name only.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FloatDecimal {
    signature: Signature,
}

/// The function [`FloatDecimalRule`] calls (registered like every segflow function).
pub fn float_decimal_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FloatDecimal {
        signature: Signature::exact(
            vec![DataType::Float64, DataType::UInt8, DataType::Int8],
            Volatility::Immutable,
        ),
    })
}

/// A call of [`float_decimal_udf`] casting `x` to `DECIMAL(precision, scale)`.
fn float_to_decimal(x: Expr, precision: u8, scale: i8) -> Expr {
    float_decimal_udf().call(vec![
        x,
        Expr::Literal(ScalarValue::UInt8(Some(precision)), None),
        Expr::Literal(ScalarValue::Int8(Some(scale)), None),
    ])
}

/// The decimal type of a call: its literal precision and scale.
fn decimal_type(precision: Option<&ScalarValue>, scale: Option<&ScalarValue>) -> Result<DataType> {
    match (precision, scale) {
        (Some(ScalarValue::UInt8(Some(p))), Some(ScalarValue::Int8(Some(s)))) => {
            Ok(DataType::Decimal128(*p, *s))
        }
        _ => exec_err!("segflow_float_to_decimal(x, precision, scale): precision and scale must be UInt8 and Int8 literals"),
    }
}

/// Arrow's cast to `to`, as `CAST` runs it (an overflow is an error).
fn arrow_cast(input: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(cast_with_options(input, to, &options)?)
}

/// Scaled values at or beyond this are left to arrow (2^63: what fits in an `i64`).
const I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

impl ScalarUDFImpl for FloatDecimal {
    fn name(&self) -> &str {
        "segflow_float_to_decimal"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        exec_err!("segflow_float_to_decimal: the type comes from its literal arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let data_type = decimal_type(
            args.scalar_arguments.get(1).copied().flatten(),
            args.scalar_arguments.get(2).copied().flatten(),
        )?;
        // NULL exactly where the input is, like the cast it replaces
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(self.name(), data_type, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let to = args.return_field.data_type().clone();
        let DataType::Decimal128(precision, scale) = to else {
            return exec_err!("segflow_float_to_decimal returns {to}");
        };
        let Some(input) = args.args.first() else {
            return exec_err!("segflow_float_to_decimal takes three arguments");
        };
        let input = input.to_array(args.number_rows)?;
        if input.data_type() != &DataType::Float64 || precision < 19 {
            return Ok(ColumnarValue::Array(arrow_cast(&input, &to)?));
        }
        let floats = input.as_primitive::<Float64Type>();
        let nulls = floats.nulls();
        let mul = 10_f64.powi(scale as i32);
        let mut scaled = Vec::with_capacity(floats.len());
        for (i, x) in floats.values().iter().enumerate() {
            if nulls.is_some_and(|n| n.is_null(i)) {
                scaled.push(0);
                continue;
            }
            let r = (mul * x).round();
            // false for NaN too
            if !(r > -I64_LIMIT && r < I64_LIMIT) {
                return Ok(ColumnarValue::Array(arrow_cast(&input, &to)?));
            }
            scaled.push(i128::from(r as i64));
        }
        let decimals = Decimal128Array::new(scaled.into(), nulls.cloned())
            .with_precision_and_scale(precision, scale)?;
        Ok(ColumnarValue::Array(Arc::new(decimals)))
    }
}

/// Replaces `CAST(<Float64> AS DECIMAL(p, s))` by [`FloatDecimal`], keeping column names.
#[derive(Debug, Default)]
pub struct FloatDecimalRule;

impl OptimizerRule for FloatDecimalRule {
    fn name(&self) -> &str {
        "segflow_float_to_decimal"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Window(_)
        ) {
            return Ok(Transformed::no(plan));
        }
        let schema = merge_schema(&plan.inputs());
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            // A grouping set must stay a bare grouping set (restoring its name would alias
            // it): left as it is.
            if matches!(expr, Expr::GroupingSet(_)) {
                return Ok(Transformed::no(expr));
            }
            let name = names.save(&expr);
            let rewritten = expr.transform_up(|e| match &e {
                // Only a plain cast (a type, no field metadata) of a Float64 without metadata:
                // the function's field carries none.
                Expr::Cast(Cast { expr: inner, field })
                    if field.metadata().is_empty()
                        && matches!(
                            inner.to_field(&schema),
                            Ok((_, f)) if f.data_type() == &DataType::Float64
                                && f.metadata().is_empty()
                        ) =>
                {
                    match field.data_type() {
                        DataType::Decimal128(precision, scale) => Ok(Transformed::yes(
                            float_to_decimal(inner.as_ref().clone(), *precision, *scale),
                        )),
                        _ => Ok(Transformed::no(e)),
                    }
                }
                _ => Ok(Transformed::no(e)),
            })?;
            Ok(rewritten.update_data(|e| name.restore(e)))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::array::Float64Array;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Doubles with every kind of rounding a cast to a decimal does (halves both ways, tiny
    /// and large values, a sum with a binary tail) and a NULL.
    pub(crate) fn doubles_to_round() -> Vec<Option<f64>> {
        vec![
            Some(0.0),
            Some(-0.0),
            Some(12.345_678_5),
            Some(-12.345_678_5),
            Some(0.000_000_5),
            Some(-0.000_000_5),
            Some(1e-7),
            Some(19.99),
            Some(-1234.56),
            None,
            Some(9_223_372_036_854.0),
            Some(f64::MIN_POSITIVE),
            Some(0.1 + 0.2),
        ]
    }

    fn floats() -> ArrayRef {
        Arc::new(Float64Array::from(doubles_to_round()))
    }

    fn run(to: &DataType, input: &ArrayRef) -> Result<ArrayRef> {
        let DataType::Decimal128(p, s) = to else {
            panic!("{to}")
        };
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::clone(input)),
                ColumnarValue::Scalar(ScalarValue::UInt8(Some(*p))),
                ColumnarValue::Scalar(ScalarValue::Int8(Some(*s))),
            ],
            arg_fields: vec![
                Arc::new(Field::new("x", DataType::Float64, true)),
                Arc::new(Field::new("p", DataType::UInt8, false)),
                Arc::new(Field::new("s", DataType::Int8, false)),
            ],
            number_rows: input.len(),
            return_field: Arc::new(Field::new("d", to.clone(), true)),
            config_options: Arc::new(Default::default()),
        };
        match float_decimal_udf().invoke_with_args(args)? {
            ColumnarValue::Array(a) => Ok(a),
            ColumnarValue::Scalar(s) => s.to_array(),
        }
    }

    #[test]
    fn the_fast_cast_equals_arrows_values_and_errors() {
        let extra: [Vec<Option<f64>>; 5] = [
            vec![Some(1e13), Some(-1e13)], // beyond an i64 at scale 6: arrow's path
            vec![Some(f64::NAN)],
            vec![Some(f64::INFINITY)],
            vec![Some(1e30)],
            vec![Some(123_456.0)], // too many digits for decimal(10, 6)
        ];
        let mut inputs = vec![floats()];
        inputs.extend(
            extra
                .iter()
                .map(|v| Arc::new(Float64Array::from(v.clone())) as ArrayRef),
        );
        for (precision, scale) in [
            (38, 6),
            (38, 2),
            (38, 0),
            (38, 12),
            (19, 6),
            (10, 6),
            (38, -2),
        ] {
            let to = DataType::Decimal128(precision, scale);
            for input in &inputs {
                let fast = run(&to, input).map_err(|e| e.to_string());
                let arrow = arrow_cast(input, &to).map_err(|e| e.to_string());
                match (&fast, &arrow) {
                    (Ok(f), Ok(a)) => assert_eq!(f.as_ref(), a.as_ref(), "({precision}, {scale})"),
                    (Err(f), Err(a)) => assert!(f.contains(a.as_str()), "{f} vs {a}"),
                    _ => panic!("({precision}, {scale}) {input:?}: {fast:?} vs {arrow:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn casts_of_doubles_to_decimals_are_rewritten_keeping_names_and_results() {
        let batch = RecordBatch::try_from_iter([("x", floats())]).expect("batch");
        let sql = "select cast(x as decimal(38, 6)) as d, sum(cast(x * 2 as decimal(38, 6))) \
                   over () as w, cast(x as decimal(18, 2)) as small, cast(x as double) as same \
                   from t where cast(x as decimal(38, 6)) >= -2000 order by d";
        let agg = "select sum(cast(x as decimal(38, 6))), count(cast(x as decimal(38, 2))) from t";
        let rollup = "select cast(x as decimal(38, 2)) as k, sum(cast(x as decimal(38, 6))) as s \
                      from t group by rollup (cast(x as decimal(38, 2))) order by k nulls first";
        let mut outputs = Vec::new();
        for with_rule in [false, true] {
            let ctx =
                SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            if with_rule {
                ctx.add_optimizer_rule(Arc::new(FloatDecimalRule));
            }
            ctx.register_batch("t", batch.clone()).expect("register");
            let mut out = Vec::new();
            for q in [sql, agg, rollup] {
                let df = ctx.sql(q).await.expect("plan");
                let plan = format!(
                    "{}",
                    df.clone()
                        .into_optimized_plan()
                        .expect("optimize")
                        .display_indent()
                );
                assert_eq!(
                    plan.contains("segflow_float_to_decimal"),
                    with_rule,
                    "{plan}"
                );
                let batches = df.collect().await.expect("run");
                out.push(
                    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                        .expect("format")
                        .to_string(),
                );
            }
            outputs.push(out);
        }
        assert_eq!(outputs[0], outputs[1]);
        assert!(
            outputs[1][1].contains("sum(t.x)"),
            "names kept: {}",
            outputs[1][1]
        );
    }
}
