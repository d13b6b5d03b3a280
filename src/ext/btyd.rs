//! The BTYD models as SQL: per-customer predictions and forecasts as scalar functions, and
//! the fits as aggregates (`bgnbd_fit`, `gamma_gamma_fit`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::HashMap;
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::btyd::*;

/// The per-customer predictions as SQL functions of Float64 arguments (integers are
/// coerced); NULL when an argument is NULL:
/// - `bgnbd_p_alive(r, alpha, a, b, frequency, recency, t)`
/// - `bgnbd_expected_purchases(r, alpha, a, b, frequency, recency, t, horizon)`
/// - `gamma_gamma_expected_spend(p, q, v, frequency, monetary)`
/// - `bgnbd_clv(r, alpha, a, b, frequency, recency, t, spend, horizon, periods, rate)`: the
///   value of the purchases expected within `horizon`, split into `periods` equal periods,
///   each purchase worth `spend`, period k discounted by `(1 + rate)^k`
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Prediction {
    kind: PredictionKind,
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PredictionKind {
    PAlive,
    ExpectedPurchases,
    ExpectedSpend,
    Clv,
}

/// The most arguments a prediction function takes.
const MAX_ARITY: usize = 11;

impl PredictionKind {
    fn arity(self) -> usize {
        match self {
            PredictionKind::PAlive => 7,
            PredictionKind::ExpectedPurchases => 8,
            PredictionKind::ExpectedSpend => 5,
            PredictionKind::Clv => 11,
        }
    }
}

/// The prediction and forecast functions.
pub(crate) fn scalars() -> Vec<ScalarUDF> {
    let mut all: Vec<ScalarUDF> = [
        PredictionKind::PAlive,
        PredictionKind::ExpectedPurchases,
        PredictionKind::ExpectedSpend,
        PredictionKind::Clv,
    ]
    .into_iter()
    .map(|kind| {
        ScalarUDF::new_from_impl(Prediction {
            kind,
            signature: Signature::uniform(
                kind.arity(),
                vec![DataType::Float64],
                Volatility::Immutable,
            ),
        })
    })
    .collect();
    all.push(ScalarUDF::new_from_impl(ForecastFunction {
        signature: Signature::uniform(10, vec![DataType::Float64], Volatility::Immutable),
        memo: NumeratorMemo::default(),
    }));
    all
}

/// The fit aggregates.
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    [FitKind::BgNbd, FitKind::GammaGamma]
        .into_iter()
        .map(|kind| AggregateUDF::new_from_impl(FitAggregate::new(kind)))
        .collect()
}

impl ScalarUDFImpl for Prediction {
    fn name(&self) -> &str {
        match self.kind {
            PredictionKind::PAlive => "bgnbd_p_alive",
            PredictionKind::ExpectedPurchases => "bgnbd_expected_purchases",
            PredictionKind::ExpectedSpend => "gamma_gamma_expected_spend",
            PredictionKind::Clv => "bgnbd_clv",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns = float_columns(self.name(), &args.args)?;
        let mut out = Float64Builder::with_capacity(rows);
        let mut row = vec![0.0; columns.len()];
        // Rows with the same arguments (customers with the same summary: most of those
        // without repeat purchases differ only in T) are computed once per batch; the
        // hypergeometric series behind them is the cost.
        let memoise = matches!(
            self.kind,
            PredictionKind::ExpectedPurchases | PredictionKind::Clv
        );
        let mut memo: HashMap<[u64; MAX_ARITY], f64> = HashMap::new();
        let mut key = [0u64; MAX_ARITY];
        for i in 0..rows {
            if columns.iter().any(|c| c.is_null(i)) {
                out.append_null();
                continue;
            }
            for (v, c) in row.iter_mut().zip(&columns) {
                *v = c.value(i);
            }
            if memoise {
                for (k, v) in key.iter_mut().zip(&row) {
                    *k = v.to_bits();
                }
                if let Some(value) = memo.get(&key) {
                    out.append_value(*value);
                    continue;
                }
            }
            // BG/NBD parameters and the customer: the first seven arguments of the
            // bgnbd_* functions.
            let bgnbd = || {
                (
                    BgNbd {
                        r: row[0],
                        alpha: row[1],
                        a: row[2],
                        b: row[3],
                    },
                    Rfm {
                        x: row[4],
                        t_x: row[5],
                        t: row[6],
                    },
                )
            };
            let diverged = |m: &BgNbd, c: &Rfm, horizon: f64| {
                datafusion::error::DataFusionError::Execution(format!(
                    "{}: the hypergeometric series does not converge for {c:?}, horizon {horizon} with {m:?}",
                    self.name()
                ))
            };
            let value = match self.kind {
                PredictionKind::PAlive => {
                    let (m, c) = bgnbd();
                    m.p_alive(&c)
                }
                PredictionKind::ExpectedPurchases => {
                    let (m, c) = bgnbd();
                    m.expected_purchases(&c, row[7])
                        .ok_or_else(|| diverged(&m, &c, row[7]))?
                }
                PredictionKind::ExpectedSpend => GammaGamma {
                    p: row[0],
                    q: row[1],
                    v: row[2],
                }
                .expected_spend(row[3], row[4]),
                PredictionKind::Clv => {
                    let (m, c) = bgnbd();
                    let (spend, horizon, periods, rate) = (row[7], row[8], row[9], row[10]);
                    if !((1.0..=100_000.0).contains(&periods) && periods.fract() == 0.0) {
                        return datafusion::common::exec_err!(
                            "bgnbd_clv: periods must be a whole number from 1 to 100000, got {periods}"
                        );
                    }
                    if !(horizon >= 0.0 && horizon.is_finite() && rate > -1.0) {
                        return datafusion::common::exec_err!(
                            "bgnbd_clv: horizon must be >= 0 and the discount rate > -1, got horizon {horizon}, rate {rate}"
                        );
                    }
                    m.discounted_value(&c, spend, periods as u32, horizon / periods, rate)
                        .ok_or_else(|| diverged(&m, &c, horizon))?
                }
            };
            if memoise {
                memo.insert(key, value);
            }
            out.append_value(value);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `bgnbd_forecast(r, alpha, a, b, frequency, recency, t, spend, rate, unit_days)`: the
/// `clv` table's forecasts as a struct, from one pass of the series ([`BgNbd::forecast`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ForecastFunction {
    signature: Signature,
    memo: NumeratorMemo,
}

/// The numerators of eq. 10 at the forecast horizons ([`BgNbd::forecast_from`]) by x and T,
/// kept from batch to batch for one set of parameters and time unit: customers who share x
/// and T (tens of thousands of pairs among hundreds of thousands of customers) sum the
/// hypergeometric series once. Not part of the function's identity.
#[derive(Default)]
struct NumeratorMemo(std::sync::Mutex<Numerators>);

/// Only the size: a plan's debug text would otherwise print every memoised value.
impl std::fmt::Debug for NumeratorMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs = self.0.lock().map_or(0, |m| m.values.len());
        write!(f, "NumeratorMemo({pairs} pairs)")
    }
}

#[derive(Default)]
struct Numerators {
    /// r, alpha, a, b and unit_days, as bits.
    model: [u64; 5],
    /// By x and T (as bits); None when the series does not converge.
    values: HashMap<[u64; 2], Option<[f64; FORECAST_HORIZONS]>>,
}

/// Pairs above which the memo starts again (~170 bytes each).
const NUMERATOR_MEMO_PAIRS: usize = 200_000;

impl NumeratorMemo {
    /// Takes the memo for a batch (another batch computed meanwhile starts its own).
    fn take(&self) -> Numerators {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps the larger of `numerators` and the memo in place.
    fn put(&self, numerators: Numerators) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if numerators.values.len() >= kept.values.len() {
            *kept = numerators;
        }
    }
}

impl PartialEq for NumeratorMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NumeratorMemo {}

impl std::hash::Hash for NumeratorMemo {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

const FORECAST_FIELDS: [&str; 5] = [
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "clv_90d",
    "clv_365d",
];

fn forecast_fields() -> datafusion::arrow::datatypes::Fields {
    FORECAST_FIELDS
        .iter()
        .map(|n| datafusion::arrow::datatypes::Field::new(*n, DataType::Float64, true))
        .collect()
}

impl ScalarUDFImpl for ForecastFunction {
    fn name(&self) -> &str {
        "bgnbd_forecast"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Struct(forecast_fields()))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        use datafusion::arrow::array::StructArray;
        let rows = args.number_rows;
        let columns = float_columns(self.name(), &args.args)?;
        let mut out: Vec<Float64Builder> = (0..FORECAST_FIELDS.len())
            .map(|_| Float64Builder::with_capacity(rows))
            .collect();
        let mut memo = self.memo.take();
        let filled = (0..rows).try_for_each(|i| {
            let value = |k: usize| (!columns[k].is_null(i)).then(|| columns[k].value(i));
            let row: [Option<f64>; 10] = std::array::from_fn(value);
            for (b, v) in out.iter_mut().zip(forecast_row(&row, &mut memo)?) {
                b.append_option(v);
            }
            Ok::<_, datafusion::error::DataFusionError>(())
        });
        self.memo.put(memo);
        filled?;
        let arrays = out
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as datafusion::arrow::array::ArrayRef)
            .collect();
        let array = StructArray::try_new(forecast_fields(), arrays, None)?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// One row of `bgnbd_forecast`: all NULL when a BG/NBD argument is, the values NULL when
/// the spend is; the numerators of customers with the same x and T from `memo`.
fn forecast_row(
    row: &[Option<f64>; 10],
    memo: &mut Numerators,
) -> datafusion::error::Result<[Option<f64>; 5]> {
    let (Some(rate), Some(unit_days)) = (row[8], row[9]) else {
        return Ok([None; 5]);
    };
    if !(rate > -1.0 && unit_days > 0.0 && unit_days.is_finite()) {
        return datafusion::common::exec_err!(
            "bgnbd_forecast: the discount rate must be > -1 and unit_days > 0, got rate {rate}, unit_days {unit_days}"
        );
    }
    let [Some(r), Some(alpha), Some(a), Some(b), Some(x), Some(t_x), Some(t)] =
        [row[0], row[1], row[2], row[3], row[4], row[5], row[6]]
    else {
        return Ok([None; 5]);
    };
    let (m, c) = (BgNbd { r, alpha, a, b }, Rfm { x, t_x, t });
    // `+ 0.0` turns -0 into 0.
    let bits = |v: f64| (v + 0.0).to_bits();
    let model = [bits(r), bits(alpha), bits(a), bits(b), bits(unit_days)];
    if memo.model != model || memo.values.len() >= NUMERATOR_MEMO_PAIRS {
        memo.model = model;
        memo.values.clear();
    }
    let numerators = *memo.values.entry([bits(x), bits(t)]).or_insert_with(|| {
        let mut numerators = [0.0; FORECAST_HORIZONS];
        m.expected_purchases_numerators(x, t, &forecast_horizons(unit_days), &mut numerators)
            .then_some(numerators)
    });
    let Some(numerators) = numerators else {
        return datafusion::common::exec_err!(
            "bgnbd_forecast: the hypergeometric series does not converge for {c:?} with {m:?}"
        );
    };
    // Any spend gives the same purchases; the values are NULL without one.
    let f = m.forecast_from(&c, &numerators, row[7].unwrap_or(0.0), rate);
    let spent = |v: f64| row[7].map(|_| v);
    Ok([
        Some(f.expected_purchases[0]),
        Some(f.expected_purchases[1]),
        Some(f.expected_purchases[2]),
        spent(f.clv_90d),
        spent(f.clv_365d),
    ])
}

/// The arguments of a prediction function as Float64 arrays.
fn float_columns(
    name: &str,
    args: &[ColumnarValue],
) -> datafusion::error::Result<Vec<Float64Array>> {
    ColumnarValue::values_to_arrays(args)?
        .iter()
        .map(|a| {
            a.as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "{name}: an argument is {}",
                        a.data_type()
                    ))
                })
        })
        .collect()
}

/// Which model an aggregate fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FitKind {
    BgNbd,
    GammaGamma,
}

impl FitKind {
    /// Data columns (without the optional penalty).
    fn arity(self) -> usize {
        match self {
            FitKind::BgNbd => 3,
            FitKind::GammaGamma => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FitKind::BgNbd => "bgnbd_fit",
            FitKind::GammaGamma => "gamma_gamma_fit",
        }
    }

    fn fields(self) -> datafusion::arrow::datatypes::Fields {
        use datafusion::arrow::datatypes::Field;
        let params: &[&str] = match self {
            FitKind::BgNbd => &["r", "alpha", "a", "b"],
            FitKind::GammaGamma => &["p", "q", "v"],
        };
        let mut fields: Vec<Field> = params
            .iter()
            .map(|p| Field::new(*p, DataType::Float64, true))
            .collect();
        fields.push(Field::new("ln_likelihood", DataType::Float64, true));
        fields.push(Field::new("customers", DataType::Float64, true));
        fields.push(Field::new("iterations", DataType::Int64, true));
        fields.push(Field::new("converged", DataType::Boolean, true));
        fields.push(Field::new("method", DataType::Utf8, true));
        fields.into()
    }
}

/// Maximum likelihood fits as aggregates, returning a struct of the parameters, the
/// log-likelihood, the customers fitted, the iterations and whether the fit converged:
/// - `bgnbd_fit(frequency, recency, t [, penalty])` → {r, alpha, a, b, ...}
/// - `gamma_gamma_fit(frequency, monetary [, penalty])` → {p, q, v, ...}; rows with
///   frequency or monetary <= 0 (no repeat purchase, refunds) take no part.
///
/// The state is the distinct input tuples with their counts (memory grows with distinct
/// summaries, not customers); partial states merge in any order and the fit sorts the
/// tuples first, so the result is the same whatever order partitions arrive in.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FitAggregate {
    kind: FitKind,
    signature: Signature,
}

impl FitAggregate {
    fn new(kind: FitKind) -> Self {
        let n = kind.arity();
        FitAggregate {
            kind,
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Uniform(n, vec![DataType::Float64]),
                    datafusion::logical_expr::TypeSignature::Uniform(
                        n + 1,
                        vec![DataType::Float64],
                    ),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::AggregateUDFImpl for FitAggregate {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Struct(self.kind.fields()))
    }

    fn state_fields(
        &self,
        args: datafusion::logical_expr::function::StateFieldsArgs,
    ) -> datafusion::error::Result<Vec<datafusion::arrow::datatypes::FieldRef>> {
        Ok(vec![Arc::new(datafusion::arrow::datatypes::Field::new(
            format!("{}[tuples]", args.name),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(
        &self,
        args: datafusion::logical_expr::function::AccumulatorArgs,
    ) -> datafusion::error::Result<Box<dyn datafusion::logical_expr::Accumulator>> {
        let penalty = match args.exprs.get(self.kind.arity()) {
            None => 0.0,
            Some(e) => match e
                .downcast_ref::<datafusion::physical_expr::expressions::Literal>()
                .map(|l| l.value().clone())
            {
                Some(datafusion::scalar::ScalarValue::Float64(Some(p))) if p >= 0.0 => p,
                _ => {
                    return datafusion::common::plan_err!(
                        "{}: the penalty must be a constant >= 0",
                        self.kind.name()
                    )
                }
            },
        };
        Ok(Box::new(FitAccumulator {
            kind: self.kind,
            penalty,
            tuples: HashMap::new(),
        }))
    }
}

/// Distinct input tuples (as f64 bits) with their counts, hashed; the fit sorts them, so
/// neither the arrival order nor the map's order changes the result.
#[derive(Debug)]
struct FitAccumulator {
    kind: FitKind,
    penalty: f64,
    /// Keys of up to three values (unused places 0); `+ 0.0` turns -0 into 0.
    tuples: HashMap<[u64; 3], f64>,
}

impl FitAccumulator {
    fn add(&mut self, values: &[f64], weight: f64) {
        let mut key = [0u64; 3];
        for (k, v) in key.iter_mut().zip(values) {
            *k = (v + 0.0).to_bits();
        }
        *self.tuples.entry(key).or_insert(0.0) += weight;
    }
}

impl datafusion::logical_expr::Accumulator for FitAccumulator {
    fn update_batch(
        &mut self,
        values: &[datafusion::arrow::array::ArrayRef],
    ) -> datafusion::error::Result<()> {
        let n = self.kind.arity();
        let columns: Vec<&Float64Array> = values[..n]
            .iter()
            .map(|a| {
                a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "{}: an argument is {}",
                        self.kind.name(),
                        a.data_type()
                    ))
                })
            })
            .collect::<datafusion::error::Result<_>>()?;
        let rows = columns.first().map_or(0, |c| c.len());
        for i in 0..rows {
            if columns.iter().any(|c| c.is_null(i)) {
                continue;
            }
            let mut row = [0.0f64; 3];
            for (v, c) in row.iter_mut().zip(&columns) {
                *v = c.value(i);
            }
            let row = &row[..n];
            let bad = match self.kind {
                FitKind::BgNbd => row.iter().any(|v| !v.is_finite() || *v < 0.0) || row[1] > row[2],
                // Monetary values <= 0 (refunds) are allowed and take no part.
                FitKind::GammaGamma => row.iter().any(|v| !v.is_finite()) || row[0] < 0.0,
            };
            if bad {
                return datafusion::common::exec_err!(
                    "{}: invalid customer summary {row:?} ({})",
                    self.kind.name(),
                    match self.kind {
                        FitKind::BgNbd => "values must be finite and >= 0, recency <= t",
                        FitKind::GammaGamma => "values must be finite, frequency >= 0",
                    }
                );
            }
            if self.kind == FitKind::GammaGamma && (row[0] == 0.0 || row[1] <= 0.0) {
                continue;
            }
            self.add(row, 1.0);
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        states: &[datafusion::arrow::array::ArrayRef],
    ) -> datafusion::error::Result<()> {
        let Some(blobs) = states.first().and_then(|s| {
            s.as_any()
                .downcast_ref::<datafusion::arrow::array::BinaryArray>()
        }) else {
            return datafusion::common::internal_err!("{}: state is not binary", self.kind.name());
        };
        let width = self.kind.arity() + 1;
        for blob in blobs.iter().flatten() {
            let numbers: Vec<f64> = blob
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect();
            for t in numbers.chunks_exact(width) {
                self.add(&t[..width - 1], t[width - 1]);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<datafusion::scalar::ScalarValue>> {
        let mut blob = Vec::with_capacity(self.tuples.len() * (self.kind.arity() + 1) * 8);
        let n = self.kind.arity();
        for (key, weight) in &self.tuples {
            for bits in &key[..n] {
                blob.extend_from_slice(&f64::from_bits(*bits).to_le_bytes());
            }
            blob.extend_from_slice(&weight.to_le_bytes());
        }
        Ok(vec![datafusion::scalar::ScalarValue::Binary(Some(blob))])
    }

    fn evaluate(&mut self) -> datafusion::error::Result<datafusion::scalar::ScalarValue> {
        use datafusion::common::scalar::ScalarStructBuilder;
        use datafusion::scalar::ScalarValue as S;
        let fields = self.kind.fields();
        let tuples: Vec<(Vec<f64>, f64)> = self
            .tuples
            .iter()
            .map(|(k, w)| (k.iter().map(|b| f64::from_bits(*b)).collect(), *w))
            .collect();
        // A fit that did not converge publishes neither its parameters nor its likelihood.
        let outcome = |params: Vec<f64>, fit_ll: f64, method: Option<Method>| -> Vec<S> {
            let number = |v: f64| S::Float64(method.map(|_| v));
            let mut values: Vec<S> = params.into_iter().map(number).collect();
            values.push(number(fit_ll));
            values
        };
        let (mut values, customers, iterations, method) = match self.kind {
            FitKind::BgNbd => {
                let data: Vec<(Rfm, f64)> = tuples
                    .iter()
                    .map(|(v, w)| {
                        (
                            Rfm {
                                x: v[0],
                                t_x: v[1],
                                t: v[2],
                            },
                            *w,
                        )
                    })
                    .collect();
                let customers: f64 = data.iter().map(|(_, w)| w).sum();
                if data.is_empty() {
                    return Ok(ScalarStructBuilder::new_null(fields));
                }
                let f = fit_bgnbd(data, self.penalty);
                let BgNbd { r, alpha, a, b } = f.params;
                let values = outcome(vec![r, alpha, a, b], f.ln_likelihood, f.method);
                (values, customers, f.iterations, f.method)
            }
            FitKind::GammaGamma => {
                let data: Vec<((f64, f64), f64)> = tuples
                    .iter()
                    .filter(|(v, _)| v[0] > 0.0 && v[1] > 0.0)
                    .map(|(v, w)| ((v[0], v[1]), *w))
                    .collect();
                let customers: f64 = data.iter().map(|(_, w)| w).sum();
                if data.is_empty() {
                    return Ok(ScalarStructBuilder::new_null(fields));
                }
                let f = fit_gamma_gamma(data, self.penalty);
                let GammaGamma { p, q, v } = f.params;
                let values = outcome(vec![p, q, v], f.ln_likelihood, f.method);
                (values, customers, f.iterations, f.method)
            }
        };
        values.push(S::Float64(Some(customers)));
        values.push(S::Int64(Some(i64::from(iterations))));
        values.push(S::Boolean(Some(method.is_some())));
        values.push(S::Utf8(method.map(|m| m.name().to_string())));
        let mut builder = ScalarStructBuilder::new();
        for (field, value) in fields.iter().zip(values) {
            builder = builder.with_scalar(field.as_ref().clone(), value);
        }
        builder.build()
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.tuples.len() * (std::mem::size_of::<([u64; 3], f64)>() + 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btyd::tests::*;

    /// The SQL functions give the same values as the methods (lifetimes' numbers above),
    /// NULL for a NULL argument.
    #[tokio::test]
    async fn prediction_functions_work_in_sql() {
        // Registered with every session's functions.
        let ctx = datafusion::prelude::SessionContext::new();
        crate::ext::register(&ctx);
        let sql = "select \
            bgnbd_p_alive(0.243, 4.414, 0.793, 2.426, 2, 30.43, 38.86) as alive, \
            bgnbd_expected_purchases(0.243, 4.414, 0.793, 2.426, 2, 30.43, 38.86, 39) as e39, \
            gamma_gamma_expected_spend(6.25, 3.74, 15.44, 2, 30.43) as spend, \
            bgnbd_p_alive(0.243, 4.414, 0.793, 2.426, null, 30.43, 38.86) as missing, \
            bgnbd_forecast(0.243, 4.414, 0.793, 2.426, 2, 30.43, 38.86, null, 0.01, 30.0 / 39)['expected_purchases_30d'] as f39, \
            bgnbd_forecast(0.243, 4.414, 0.793, 2.426, 2, 30.43, 38.86, null, 0.01, 30.0 / 39)['clv_90d'] as no_spend";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let value = |i: usize| {
            let c = batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            (!c.is_null(0)).then(|| c.value(0))
        };
        let close = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= 1e-7 * want;
        assert!(close(value(0), 0.72657857), "{:?}", value(0));
        assert!(close(value(1), 1.226028174767135), "{:?}", value(1));
        assert!(close(value(2), 31.291010498687665), "{:?}", value(2));
        assert_eq!(value(3), None);
        // 30 days of 30/39 days each are 39 weeks; without a spend only the values are NULL.
        assert!(close(value(4), 1.226028174767135), "{:?}", value(4));
        assert_eq!(value(5), None);
    }

    /// The fit aggregates over the CDNOW summary in SQL, split over partitions: the same
    /// estimates as the fit functions; penalty, NULL and invalid rows handled.
    #[tokio::test]
    async fn fit_aggregates_work_in_sql_over_partitions() {
        use datafusion::arrow::array::{RecordBatch, StructArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let rows = cdnow();
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("t_x", DataType::Float64, true),
            Field::new("t", DataType::Float64, true),
            Field::new("m", DataType::Float64, true),
        ]));
        // Four partitions, plus a row with a NULL that takes no part.
        let partitions: Vec<Vec<RecordBatch>> = rows
            .chunks(rows.len() / 4 + 1)
            .map(|chunk| {
                let col = |f: &dyn Fn(&(Rfm, f64)) -> Option<f64>| -> Arc<dyn Array> {
                    Arc::new(Float64Array::from(chunk.iter().map(f).collect::<Vec<_>>()))
                };
                let mut batch = vec![RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        col(&|r| Some(r.0.x)),
                        col(&|r| Some(r.0.t_x)),
                        col(&|r| Some(r.0.t)),
                        col(&|r| Some(r.1)),
                    ],
                )
                .unwrap()];
                batch.push(
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Float64Array::from(vec![None])),
                            Arc::new(Float64Array::from(vec![Some(1.0)])),
                            Arc::new(Float64Array::from(vec![Some(2.0)])),
                            Arc::new(Float64Array::from(vec![Some(3.0)])),
                        ],
                    )
                    .unwrap(),
                );
                batch
            })
            .collect();
        let ctx = datafusion::prelude::SessionContext::new();
        crate::ext::register(&ctx);
        let table = datafusion::datasource::MemTable::try_new(schema, partitions).unwrap();
        ctx.register_table("cdnow", Arc::new(table)).unwrap();
        let batches = ctx
            .sql("select bgnbd_fit(x, t_x, t) as bg, gamma_gamma_fit(x, m) as gg, bgnbd_fit(x, t_x, t, 0.01) as penalised from cdnow")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let field = |col: usize, name: &str| -> f64 {
            let s = batches[0]
                .column(col)
                .as_any()
                .downcast_ref::<StructArray>()
                .unwrap();
            let c = s.column_by_name(name).unwrap();
            match c.as_any().downcast_ref::<Float64Array>() {
                Some(f) => f.value(0),
                None => c
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map(|i| i.value(0) as f64)
                    .unwrap_or_else(|| {
                        let b = c
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                            .unwrap();
                        f64::from(u8::from(b.value(0)))
                    }),
            }
        };
        // Repeated summaries are counted once, so the fit sums in another order than over
        // single customers: the same estimates to 1e-6.
        let direct = fit_bgnbd(rows.iter().map(|(c, _)| (*c, 1.0)).collect(), 0.0);
        for (name, want) in [
            ("r", direct.params.r),
            ("b", direct.params.b),
            ("ln_likelihood", direct.ln_likelihood),
        ] {
            assert!(
                (field(0, name) - want).abs() <= 1e-6 * want.abs(),
                "{name}: {} vs {want}",
                field(0, name)
            );
        }
        assert_eq!(field(0, "customers"), 2357.0);
        assert_eq!(field(0, "converged"), 1.0);
        assert!((field(1, "p") - 6.25).abs() <= 0.01 && (field(1, "v") - 15.44).abs() <= 0.01);
        assert_eq!(field(1, "customers"), 946.0);
        // The penalty pulls the parameters towards zero.
        assert!(field(2, "alpha") < field(0, "alpha"));
        // The partitions in reverse order: bit-identical results.
        let reversed = {
            let t = ctx
                .table("cdnow")
                .await
                .unwrap()
                .collect_partitioned()
                .await
                .unwrap();
            let mut t = t;
            t.reverse();
            datafusion::datasource::MemTable::try_new(batches_schema(&t), t).unwrap()
        };
        ctx.register_table("cdnow_reversed", Arc::new(reversed))
            .unwrap();
        let again = ctx
            .sql("select bgnbd_fit(x, t_x, t) as bg, gamma_gamma_fit(x, m) as gg from cdnow_reversed")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(again[0].column(0), batches[0].column(0));
        assert_eq!(again[0].column(1), batches[0].column(1));

        // Fit and score in one query, as the README shows.
        let scored = ctx
            .sql(
                "with fit as (select bgnbd_fit(x, t_x, t) as fitted from cdnow) \
                  select count(bgnbd_p_alive(fitted['r'], fitted['alpha'], fitted['a'], fitted['b'], x, t_x, t)) as n \
                  from cdnow, fit",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = scored[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 2357);

        let err = ctx
            .sql("select bgnbd_fit(x, t, t_x) from cdnow")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("recency <= t"), "{err}");
    }

    /// lifetimes 0.11.3's `customer_lifetime_value` (monthly steps of 4.345 weeks, 1 % per
    /// step) at the published parameters, through the SQL function: 3 and 12 months.
    #[tokio::test]
    async fn discounted_value_equals_lifetimes_customer_lifetime_value() {
        let ctx = datafusion::prelude::SessionContext::new();
        crate::ext::register(&ctx);
        let cases = [
            (0.0, 0.0, 38.86, 20.0, 1.3748187488389125, 4.752553770661411),
            (
                2.0,
                30.43,
                38.86,
                31.291010498687665,
                14.064652595545347,
                46.040352658517506,
            ),
            (
                7.0,
                29.43,
                32.0,
                48.99,
                96.90204000831055,
                298.32993719615007,
            ),
            (
                14.0,
                35.0,
                38.0,
                13.45,
                45.69168288777228,
                141.74314443980816,
            ),
        ];
        for (x, t_x, t, spend, three, twelve) in cases {
            let sql = format!(
                "select bgnbd_clv(0.243, 4.414, 0.793, 2.426, {x}, {t_x}, {t}, {spend}, 3 * 4.345, 3, 0.01), \
                        bgnbd_clv(0.243, 4.414, 0.793, 2.426, {x}, {t_x}, {t}, {spend}, 12 * 4.345, 12, 0.01)"
            );
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            for (i, want) in [three, twelve].into_iter().enumerate() {
                let got = batches[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .value(0);
                assert!(
                    (got - want).abs() <= 1e-6 * want,
                    "({x}, {t_x}, {t}) {i}: {got}"
                );
            }
        }
        let bad = ctx
            .sql("select bgnbd_clv(0.243, 4.414, 0.793, 2.426, 1, 1, 2, 10, 90, 2.5, 0.01)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(bad.contains("periods must be a whole number"), "{bad}");
    }
}
