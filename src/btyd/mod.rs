//! Buy-till-you-die numerics: the BG/NBD model of purchase counts (Fader, Hardie & Lee 2005)
//! and the Gamma-Gamma model of spend (Fader & Hardie 2013) — log-likelihoods, maximum
//! likelihood fits and per-customer predictions.
//!
//! Everything is computed in log space (`ln Γ` instead of Γ); parameters are fitted as their
//! logarithms so they stay positive; a fit reports whether it converged and never hides a
//! failure. Customers come as weighted tuples (identical `(x, t_x, T)` summaries counted
//! once), sorted before fitting, so the result does not depend on the order they arrived in.

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-15 on the range the
/// models use), with the recurrence for small x.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The digamma function ψ(x) = d/dx ln Γ(x) for x > 0: the recurrence up to x >= 6, then
/// the asymptotic series.
pub fn digamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    shift + x.ln()
        - 0.5 * inv
        - inv2
            * (1.0 / 12.0
                - inv2
                    * (1.0 / 120.0
                        - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 * (5.0 / 660.0)))))
}

/// Beyond this, a difference of two `ln Γ` (or two ψ) at `s` and `s + x` is taken from
/// Stirling's series of the difference instead: the two values agree in so many leading
/// digits that their difference would be rounding (at s = 1e21, `ln Γ(s)` is 5e22 and its
/// last bit is worth millions).
const STIRLING_FROM: f64 = 1e5;

/// Integer `x` up to this sums the logarithms (or reciprocals) term by term.
const TERMS_UP_TO: f64 = 16.0;

/// `ln Γ(s + x) - ln Γ(s)` (the logarithm of the rising factorial) for s > 0, x >= 0,
/// accurate where both `ln Γ` are large and nearly equal.
pub fn ln_rising(s: f64, x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    if x.fract() == 0.0 && x <= TERMS_UP_TO {
        return (0..x as u32).map(|k| (s + f64::from(k)).ln()).sum();
    }
    if s >= STIRLING_FROM {
        // (s + x - 1/2) ln(s + x) - (s - 1/2) ln s - x + 1/(12 (s + x)) - 1/(12 s) + O(s⁻³)
        return x * s.ln() + (s + x - 0.5) * (x / s).ln_1p() - x - x / (12.0 * s * (s + x));
    }
    ln_gamma(s + x) - ln_gamma(s)
}

/// `ψ(s + x) - ψ(s)` for s > 0, x >= 0, accurate where s is large (see [`ln_rising`]).
pub fn digamma_rising(s: f64, x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    if x.fract() == 0.0 && x <= TERMS_UP_TO {
        return (0..x as u32).map(|k| 1.0 / (s + f64::from(k))).sum();
    }
    if s >= STIRLING_FROM {
        // ln(s + x) - ln s - (1/(2 (s + x)) - 1/(2 s)) - (1/(12 (s + x)²) - 1/(12 s²)) + O(s⁻⁴)
        let u = s + x;
        return (x / s).ln_1p() + x / (2.0 * s * u) + x * (s + u) / (12.0 * s * s * u * u);
    }
    digamma(s + x) - digamma(s)
}

/// The Gauss hypergeometric function 2F1(a, b; c; z) for a, b, c > 0 and 0 <= z < 1, by its
/// series (every term positive); None when it has not converged after a million terms.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    let mut sum = [0.0];
    hyp2f1_at(a, b, c, &[z], &mut sum).then_some(sum[0])
}

/// 2F1(a, b; c; z) for each of `zs` into `sums`, the series summed side by side (they share
/// every coefficient but the power of z); false when one is out of range or has not
/// converged after a million terms.
fn hyp2f1_at(a: f64, b: f64, c: f64, zs: &[f64], sums: &mut [f64]) -> bool {
    const LANES: usize = 32;
    for (zs, sums) in zs.chunks(LANES).zip(sums.chunks_mut(LANES)) {
        if zs.iter().any(|z| !(0.0..1.0).contains(z)) {
            return false;
        }
        let mut terms = [1.0f64; LANES];
        sums.fill(1.0);
        let mut converged = false;
        for n in 0..1_000_000u32 {
            let n = f64::from(n);
            let ratio = (a + n) * (b + n) / ((c + n) * (n + 1.0));
            let mut all = true;
            for ((term, sum), z) in terms.iter_mut().zip(sums.iter_mut()).zip(zs) {
                *term *= ratio * z;
                *sum += *term;
                all &= term.abs() <= sum.abs() * 1e-17;
            }
            if all {
                converged = true;
                break;
            }
        }
        if !converged {
            return false;
        }
    }
    true
}

/// `ln(e^x + e^y)` without overflow.
fn log_add_exp(x: f64, y: f64) -> f64 {
    let m = x.max(y);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((x - m).exp() + (y - m).exp()).ln()
}

/// BG/NBD parameters: purchase rates Gamma(r, alpha), drop-out probabilities Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// A customer's summary: `x` repeat purchases (purchase days - 1), the last at `t_x` after
/// the first, observed for `t` since the first (same time unit throughout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rfm {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
}

impl BgNbd {
    /// The log-likelihood of one customer (FHL 2005, eq. 6), in the form that stays finite
    /// and accurate over every parameter vector a fit can visit: ratios of Γ functions as
    /// [`ln_rising`], `r ln alpha - (r + x) ln(alpha + T)` as `-r ln(1 + T/alpha) - x
    /// ln(alpha + T)`, and `b + x - 1` summed as `b + (x - 1)` (with x = 1 and b below 1e-16
    /// the other order gives 0, and a likelihood of +inf).
    pub fn ln_likelihood(&self, c: &Rfm) -> f64 {
        let BgNbd { r, a, b, .. } = *self;
        let x = c.x;
        let gammas = ln_rising(r, x) + ln_rising(b, x) - ln_rising(a + b, x);
        let (a3, a4) = self.ln_alive_terms(c);
        gammas + log_add_exp(a3, a4)
    }

    /// The two terms of a customer's likelihood that depend on t_x and T (FHL 2005's A3 and
    /// A4, with A1's `r ln alpha` taken into each; A4 is -inf without repeat purchases):
    /// still alive at T, or dropped out after t_x.
    fn ln_alive_terms(&self, c: &Rfm) -> (f64, f64) {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.x;
        let at = |v: f64| -r * (v / alpha).ln_1p() - x * (alpha + v).ln();
        let a3 = at(c.t);
        let a4 = if x > 0.0 {
            a.ln() - (b + (x - 1.0)).ln() + at(c.t_x)
        } else {
            f64::NEG_INFINITY
        };
        (a3, a4)
    }

    /// P(alive | x, t_x, T): 1 for a customer without repeat purchases.
    pub fn p_alive(&self, c: &Rfm) -> f64 {
        if c.x == 0.0 {
            return 1.0;
        }
        let BgNbd { r, alpha, a, b } = *self;
        let ln_odds_dead =
            (r + c.x) * ((alpha + c.t) / (alpha + c.t_x)).ln() + (a / (b + (c.x - 1.0))).ln();
        1.0 / (1.0 + ln_odds_dead.exp())
    }

    /// Expected purchases in the next `horizon` (FHL 2005, eq. 10); None when the
    /// hypergeometric series does not converge.
    pub fn expected_purchases(&self, c: &Rfm, horizon: f64) -> Option<f64> {
        let mut out = [0.0];
        self.expected_purchases_at(c, &[horizon], &mut out)
            .then_some(out[0])
    }

    /// Expected purchases up to each of `horizons` into `out`, the hypergeometric series of
    /// all of them summed in one pass (they share every coefficient but the power of z);
    /// false when a series does not converge.
    pub fn expected_purchases_at(&self, c: &Rfm, horizons: &[f64], out: &mut [f64]) -> bool {
        if !self.expected_purchases_numerators(c.x, c.t, horizons, out) {
            return false;
        }
        let denominator = self.expected_purchases_denominator(c);
        for e in out.iter_mut() {
            *e /= denominator;
        }
        true
    }

    /// Eq. 10 up to each of `horizons` but its denominator, into `out`: everything that
    /// depends on x and T only (the hypergeometric series among it), so customers who share
    /// them share it; false when a series does not converge.
    fn expected_purchases_numerators(
        &self,
        x: f64,
        t: f64,
        horizons: &[f64],
        out: &mut [f64],
    ) -> bool {
        let BgNbd { r, alpha, a, b } = *self;
        let zs: Vec<f64> = horizons.iter().map(|h| h / (alpha + t + h)).collect();
        if !hyp2f1_at(r + x, b + x, a + b + (x - 1.0), &zs, out) {
            return false;
        }
        let first = (a + b + (x - 1.0)) / (a - 1.0);
        for (e, h) in out.iter_mut().zip(horizons) {
            let second = 1.0 - (e.ln() + (r + x) * ((alpha + t) / (alpha + t + h)).ln()).exp();
            *e = first * second;
        }
        true
    }

    /// The denominator of eq. 10, the only part that depends on t_x.
    fn expected_purchases_denominator(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.x;
        if x > 0.0 {
            1.0 + (a / (b + (x - 1.0))) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + x)
        } else {
            1.0
        }
    }

    /// Discounted value of the purchases expected over `periods` equal periods of
    /// `period` each, every purchase worth `spend`, period k's purchases discounted by
    /// `(1 + rate)^k` (lifetimes' `customer_lifetime_value`, whose period is a month of 30
    /// days); None when the hypergeometric series does not converge.
    pub fn discounted_value(
        &self,
        c: &Rfm,
        spend: f64,
        periods: u32,
        period: f64,
        rate: f64,
    ) -> Option<f64> {
        let horizons: Vec<f64> = (1..=periods).map(|k| f64::from(k) * period).collect();
        let mut upto = vec![0.0; horizons.len()];
        if !self.expected_purchases_at(c, &horizons, &mut upto) {
            return None;
        }
        Some(discount(&upto, spend, rate))
    }

    /// The `clv` table's forecasts in one pass of the hypergeometric series: expected
    /// purchases in the next 30, 90 and 365 days and the discounted values over 90 days (3
    /// periods of 30) and 365 days (12 of 365/12), `unit_days` days to the time unit; the
    /// same numbers as [`BgNbd::expected_purchases`] and [`BgNbd::discounted_value`] give
    /// one by one (a lane summed further than it needs adds only terms below its last bit).
    pub fn forecast(&self, c: &Rfm, spend: f64, rate: f64, unit_days: f64) -> Option<Forecast> {
        let mut numerators = [0.0; FORECAST_HORIZONS];
        self.expected_purchases_numerators(c.x, c.t, &forecast_horizons(unit_days), &mut numerators)
            .then(|| self.forecast_from(c, &numerators, spend, rate))
    }

    /// [`BgNbd::forecast`] from the numerators of eq. 10 at [`forecast_horizons`], which
    /// customers with the same x and T share.
    fn forecast_from(
        &self,
        c: &Rfm,
        numerators: &[f64; FORECAST_HORIZONS],
        spend: f64,
        rate: f64,
    ) -> Forecast {
        let denominator = self.expected_purchases_denominator(c);
        let upto = numerators.map(|e| e / denominator);
        Forecast {
            expected_purchases: [upto[0], upto[1], upto[2]],
            clv_90d: discount(&upto[3..6], spend, rate),
            clv_365d: discount(&upto[6..], spend, rate),
        }
    }
}

/// How many horizons a forecast sums its series at.
const FORECAST_HORIZONS: usize = 18;

/// The horizons of [`BgNbd::forecast`], `unit_days` days to the time unit: 30, 90 and 365
/// days, the ends of 3 periods of 30 days and of 12 periods of 365/12 days.
fn forecast_horizons(unit_days: f64) -> [f64; FORECAST_HORIZONS] {
    let (quarter, year) = (90.0 / unit_days / 3.0, 365.0 / unit_days / 12.0);
    let mut horizons = [0.0; FORECAST_HORIZONS];
    horizons[0] = 30.0 / unit_days;
    horizons[1] = 90.0 / unit_days;
    horizons[2] = 365.0 / unit_days;
    for k in 0..3 {
        horizons[3 + k] = (k + 1) as f64 * quarter;
    }
    for k in 0..12 {
        horizons[6 + k] = (k + 1) as f64 * year;
    }
    horizons
}

/// What [`BgNbd::forecast`] gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// In the next 30, 90 and 365 days.
    pub expected_purchases: [f64; 3],
    pub clv_90d: f64,
    pub clv_365d: f64,
}

/// The value of purchases expected up to the end of each period (`upto`, cumulative), each
/// worth `spend`, period k's discounted by `(1 + rate)^k`.
fn discount(upto: &[f64], spend: f64, rate: f64) -> f64 {
    let mut value = 0.0;
    let mut before = 0.0;
    for (k, e) in upto.iter().enumerate() {
        value += spend * (e - before) / (1.0 + rate).powi(k as i32 + 1);
        before = *e;
    }
    value
}

/// Gamma-Gamma parameters: spend per transaction Gamma(p, nu), nu ~ Gamma(q, v).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

impl GammaGamma {
    /// The log-likelihood of a customer with `x` > 0 repeat purchases of mean value `m` > 0,
    /// in the form that stays accurate far out on the likelihood's ridges (q and v large
    /// together, or p large and v small): `ln Γ(px + q) - ln Γ(px)` as [`ln_rising`], and
    /// `q ln v + (px - 1) ln m + px ln x - (px + q) ln(x m + v)` as `-ln m - px ln(1 + v /
    /// (x m)) - q ln(1 + x m / v)` (the same, with no difference of large terms).
    pub fn ln_likelihood(&self, x: f64, m: f64) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let px = p * x;
        let xm = x * m;
        ln_rising(px, q) - ln_gamma(q) - m.ln() - px * (v / xm).ln_1p() - q * (xm / v).ln_1p()
    }

    /// The population mean spend per transaction, `p v / (q - 1)` (infinite for q <= 1).
    pub fn population_mean(&self) -> f64 {
        if self.q <= 1.0 {
            return f64::INFINITY;
        }
        self.p * self.v / (self.q - 1.0)
    }

    /// Expected average spend of a customer with `x` repeat purchases of mean `m`: a weighted
    /// mean of the population mean and the customer's (the population mean for x = 0).
    pub fn expected_spend(&self, x: f64, m: f64) -> f64 {
        let GammaGamma { p, q, .. } = *self;
        let weight = p * x / (p * x + q - 1.0);
        (1.0 - weight) * self.population_mean() + weight * m
    }
}

/// How a fit ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit<P> {
    pub params: P,
    /// The summed log-likelihood at `params` (without the penalty).
    pub ln_likelihood: f64,
    pub iterations: u32,
    /// Whether the fit converged to a maximum within bounds that identifies the model; a
    /// fit that did not never publishes its parameters.
    pub converged: bool,
    /// What converged (None when nothing did).
    pub method: Option<Method>,
    /// BFGS's last estimate of the inverse Hessian in the log-parameters (row-major), where
    /// a fit on more customers like these starts (see [`warm_start`]).
    inverse_hessian: Vec<f64>,
}

/// Minimises `f` by Nelder-Mead from `start`: (point, value, iterations, converged).
/// Converged when the simplex's values agree to 1e-12 (relative) and its points to 1e-10.
fn nelder_mead(
    f: impl Fn(&[f64]) -> f64,
    start: &[f64],
    max_iterations: u32,
) -> (Vec<f64>, f64, u32, bool) {
    let f = |p: &[f64]| finite_or_infinity(f(p));
    let n = start.len();
    let mut simplex: Vec<Vec<f64>> = vec![start.to_vec()];
    for i in 0..n {
        let mut p = start.to_vec();
        p[i] += 0.5;
        simplex.push(p);
    }
    let mut values: Vec<f64> = simplex.iter().map(|p| f(p)).collect();
    let mut iterations = 0;
    loop {
        // Order best to worst (NaN last).
        let mut order: Vec<usize> = (0..=n).collect();
        order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
        simplex = order.iter().map(|&i| simplex[i].clone()).collect();
        values = order.iter().map(|&i| values[i]).collect();
        let spread = (values[n] - values[0]).abs();
        let size = simplex[1..]
            .iter()
            .flat_map(|p| p.iter().zip(&simplex[0]).map(|(a, b)| (a - b).abs()))
            .fold(0.0, f64::max);
        if spread <= 1e-12 * (1.0 + values[0].abs()) && size <= 1e-10 {
            return (simplex[0].clone(), values[0], iterations, true);
        }
        if iterations >= max_iterations || !values[0].is_finite() {
            return (simplex[0].clone(), values[0], iterations, false);
        }
        iterations += 1;
        let centroid: Vec<f64> = (0..n)
            .map(|k| simplex[..n].iter().map(|p| p[k]).sum::<f64>() / n as f64)
            .collect();
        let towards = |t: f64| -> Vec<f64> {
            centroid
                .iter()
                .zip(&simplex[n])
                .map(|(c, w)| c + t * (w - c))
                .collect()
        };
        let reflected = towards(-1.0);
        let fr = f(&reflected);
        if fr < values[0] {
            let expanded = towards(-2.0);
            let fe = f(&expanded);
            if fe < fr {
                simplex[n] = expanded;
                values[n] = fe;
            } else {
                simplex[n] = reflected;
                values[n] = fr;
            }
        } else if fr < values[n - 1] {
            simplex[n] = reflected;
            values[n] = fr;
        } else {
            let (contracted, fc) = if fr < values[n] {
                let c = towards(-0.5);
                let v = f(&c);
                (c, v)
            } else {
                let c = towards(0.5);
                let v = f(&c);
                (c, v)
            };
            if fc < values[n].min(fr) {
                simplex[n] = contracted;
                values[n] = fc;
            } else {
                // Shrink towards the best point.
                for i in 1..=n {
                    simplex[i] = simplex[i]
                        .iter()
                        .zip(&simplex[0])
                        .map(|(p, b)| b + 0.5 * (p - b))
                        .collect();
                    values[i] = f(&simplex[i]);
                }
            }
        }
    }
}

/// Sorts weighted tuples so a fit sees them in one order whatever order they came in (by
/// the key, then the weight).
fn canonical<T: Copy>(mut data: Vec<(T, f64)>, key: impl Fn(&T) -> [f64; 3]) -> Vec<(T, f64)> {
    use crate::ext::stats::total_key;
    data.sort_unstable_by_key(|(t, w)| {
        let k = key(t);
        [
            total_key(k[0]),
            total_key(k[1]),
            total_key(k[2]),
            total_key(*w),
        ]
    });
    data
}

/// Customers above which a fit sums its likelihood in two halves on two threads.
const PARALLEL_FIT: usize = 20_000;

/// `f(0)` and `f(1)`, the two halves of a sum, on two threads when `parallel`. Callers add
/// the halves in a fixed order, so a fit's result does not depend on the threads (or on
/// `parallel`).
fn halves<T: Send>(parallel: bool, f: impl Fn(usize) -> T + Sync) -> [T; 2] {
    if !parallel {
        return [f(0), f(1)];
    }
    std::thread::scope(|scope| {
        let second = scope.spawn(|| f(1));
        let first = f(0);
        let second = second
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        [first, second]
    })
}

/// The two halves of `0..n` a fit sums over (rows sorted by x, so each half groups by x).
fn split(n: usize) -> [std::ops::Range<usize>; 2] {
    [0..n / 2, n / 2..n]
}

/// Distinct summaries from which a fit starts from a fit on a sample of them.
const WARM_START: usize = 65_536;

/// Rows of that sample.
const WARM_SAMPLE: usize = 16_384;

/// Where a fit starts.
#[derive(Debug, Clone)]
enum Start {
    /// All parameters 1; when BFGS stops short, Nelder-Mead continues from there.
    Origin,
    /// A sample's fit, which only gives a start: BFGS from the origin, nothing after.
    Sample,
    /// These log-parameters, with this estimate of the inverse Hessian (so the first step
    /// is about a Newton step, not a short one); when BFGS stops short from there, the fit
    /// starts over from the origin.
    At(Vec<f64>, Vec<f64>),
}

/// Where a fit of `data` (in canonical order) starts: for `WARM_START` rows or more, at the
/// log-parameters `fit` finds on every k-th row (weights times k, so the penalty keeps its
/// weight), at most `WARM_SAMPLE` rows — an even sample of the sorted summaries, fitted on
/// one thread at a fraction of the cost of an evaluation on all rows, and with the sample's
/// inverse Hessian (its weights make its likelihood the scale of the whole's). From there
/// the fit on all rows takes a few iterations (4 instead of 36 for BG/NBD and 28 for
/// Gamma-Gamma on 10 M order lines) and ends at the same maximum (to the convergence
/// tolerance). The origin for fewer rows, or when the sample's fit does not converge.
fn warm_start<T: Copy>(
    data: &[(T, f64)],
    fit: impl Fn(Vec<(T, f64)>) -> Option<(Vec<f64>, Vec<f64>)>,
) -> Start {
    if data.len() < WARM_START {
        return Start::Origin;
    }
    let k = data.len().div_ceil(WARM_SAMPLE);
    let sample = data
        .iter()
        .step_by(k)
        .map(|(t, w)| (*t, w * k as f64))
        .collect();
    // A converged fit is within bounds (`Fit::converged`).
    fit(sample).map_or(Start::Origin, |(p, h)| Start::At(p, h))
}

/// Fits BG/NBD by maximum likelihood (BFGS on the analytic gradient) to weighted customers (weight = how many customers
/// share the summary), with an optional L2 penalty on the parameters (as lifetimes'
/// `penalizer_coef`: `penalty * (r² + alpha² + a² + b²)` per customer).
pub fn fit_bgnbd(customers: Vec<(Rfm, f64)>, penalty: f64) -> Fit<BgNbd> {
    let data = canonical(customers, |c| [c.x, c.t_x, c.t]);
    let start = warm_start(&data, |sample| {
        let f = fit_bgnbd_from(sample, penalty, Start::Sample);
        let BgNbd { r, alpha, a, b } = f.params;
        f.converged
            .then(|| (vec![r.ln(), alpha.ln(), a.ln(), b.ln()], f.inverse_hessian))
    });
    fit_bgnbd_from(data, penalty, start)
}

/// [`fit_bgnbd`] of customers in canonical order, from `start`.
fn fit_bgnbd_from(data: Vec<(Rfm, f64)>, penalty: f64, start: Start) -> Fit<BgNbd> {
    let weight: f64 = data.iter().map(|(_, w)| w).sum();
    let params = |p: &[f64]| BgNbd {
        r: p[0].exp(),
        alpha: p[1].exp(),
        a: p[2].exp(),
        b: p[3].exp(),
    };
    // The ln Γ terms depend on x only: summed once per distinct x (data is sorted by x).
    // The rest needs ln(alpha + T) and ln(alpha + t_x): T and t_x take few distinct values
    // (whole days or weeks), so an evaluation takes the logarithm of each distinct value
    // once and a customer costs one exp and one ln_1p.
    // Per half of the customers (see `halves`): (x, total weight, rows) per distinct x.
    let parallel = data.len() >= PARALLEL_FIT;
    let parts: [Vec<(f64, f64, std::ops::Range<usize>)>; 2] = split(data.len()).map(|half| {
        let mut by_x: Vec<(f64, f64, std::ops::Range<usize>)> = Vec::new();
        for i in half {
            let (c, w) = &data[i];
            match by_x.last_mut() {
                Some((x, total, range)) if *x == c.x => {
                    *total += w;
                    range.end = i + 1;
                }
                _ => by_x.push((c.x, *w, i..i + 1)),
            }
        }
        by_x
    });
    let mut times: Vec<f64> = data.iter().flat_map(|(c, _)| [c.t, c.t_x]).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let index = |v: f64| times.partition_point(|t| *t < v) as u32;
    let slots: Vec<(u32, u32)> = data
        .iter()
        .map(|(c, _)| (index(c.t), index(c.t_x)))
        .collect();
    // Per evaluation, for every distinct time v: ln(1 + v/alpha), ln(alpha + v) and
    // v / (alpha + v) (see `BgNbd::ln_likelihood` for why these forms).
    let tables = |alpha: f64| -> Vec<[f64; 3]> {
        times
            .iter()
            .map(|v| {
                let l1 = (v / alpha).ln_1p();
                [l1, (alpha + v).ln(), v / (alpha + v)]
            })
            .collect()
    };
    // Visits every customer with its weight, x, the x-only part of A4 (ln a - ln(b + x -
    // 1), or None without repeat purchases) and its two time slots.
    let each =
        |m: &BgNbd, by_x: &[(f64, f64, std::ops::Range<usize>)], mut visit: Box<Visit<'_>>| {
            for (x, _, range) in by_x {
                let cx = (*x > 0.0).then(|| m.a.ln() - (m.b + (x - 1.0)).ln());
                for i in range.clone() {
                    let (t, tx) = slots[i];
                    visit(data[i].1, *x, cx, t, tx);
                }
            }
        };
    // ln(e^A3 + e^A4) and the weight of A4 in it, from A3 and A4.
    let mix = |a3: f64, a4: Option<f64>| -> (f64, f64) {
        match a4 {
            None => (a3, 0.0),
            Some(a4) => {
                let e = (-(a4 - a3).abs()).exp();
                let big = 1.0 / (1.0 + e);
                if a4 > a3 {
                    (a4 + e.ln_1p(), big)
                } else {
                    (a3 + e.ln_1p(), 1.0 - big)
                }
            }
        }
    };
    // The log-likelihood and, when `with_gradient`, its derivatives in ln r, ln alpha, ln a
    // and ln b, in one pass: the two share every logarithm and exponential.
    let evaluate = |m: &BgNbd, with_gradient: bool| -> (f64, [f64; 4]) {
        let BgNbd { r, alpha: _, a, b } = *m;
        let table = tables(m.alpha);
        let [first, second] = halves(parallel, |k| {
            let gammas: f64 = parts[k]
                .iter()
                .map(|(x, w, _)| w * (ln_rising(r, *x) + ln_rising(b, *x) - ln_rising(a + b, *x)))
                .sum();
            let mut g = [0.0f64; 4];
            if with_gradient {
                for (x, w, _) in &parts[k] {
                    let ab = digamma_rising(a + b, *x);
                    g[0] += w * r * digamma_rising(r, *x);
                    g[2] -= w * a * ab;
                    g[3] += w * b * (digamma_rising(b, *x) - ab);
                }
            }
            let mut rest = 0.0;
            each(
                m,
                &parts[k],
                Box::new(|w, x, cx, t, tx| {
                    let ([l1t, lt, ut], [l1x, lx, ux]) = (table[t as usize], table[tx as usize]);
                    let a3 = -r * l1t - x * lt;
                    let a4 = cx.map(|c| c - r * l1x - x * lx);
                    // ln of the customer's likelihood but the ln Γ terms, and the weight of
                    // A4 in it.
                    let (ln_alive, w4) = mix(a3, a4);
                    rest += w * ln_alive;
                    if with_gradient {
                        let w3 = 1.0 - w4;
                        g[0] -= w * r * (w3 * l1t + w4 * l1x);
                        // alpha d/dalpha of -r ln(1 + v/alpha) - x ln(alpha + v).
                        g[1] +=
                            w * (w3 * (r * ut - x * (1.0 - ut)) + w4 * (r * ux - x * (1.0 - ux)));
                        if cx.is_some() {
                            g[2] += w * w4;
                            g[3] -= w * w4 * b / (b + (x - 1.0));
                        }
                    }
                }),
            );
            (gammas + rest, g)
        });
        let g = std::array::from_fn(|k| first.1[k] + second.1[k]);
        (first.0 + second.0, g)
    };
    let ll = |m: &BgNbd| evaluate(m, false).0;
    let penalised = |m: &BgNbd, ll: f64| {
        let pen = penalty * weight * (m.r.powi(2) + m.alpha.powi(2) + m.a.powi(2) + m.b.powi(2));
        finite_or_infinity(-ll + pen)
    };
    let objective = |p: &[f64]| {
        let m = params(p);
        penalised(&m, ll(&m))
    };
    // The objective and its gradient in the log-parameters.
    let with_gradient = |p: &[f64]| -> (f64, Vec<f64>) {
        let m = params(p);
        let (ll, g) = evaluate(&m, true);
        let theta = [m.r, m.alpha, m.a, m.b];
        let gradient = (0..4)
            .map(|k| -g[k] + 2.0 * penalty * weight * theta[k] * theta[k])
            .collect();
        (penalised(&m, ll), gradient)
    };
    let search = minimise(&objective, &with_gradient, start, &bgnbd_moments(&data));
    let m = params(&search.x);
    // Four parameters need four distinct summaries, and without a repeat purchase a and b
    // do not enter the likelihood at all.
    let identified = data.len() >= 4 && data.iter().any(|(c, _)| c.x > 0.0);
    let ln_likelihood = ll(&m);
    let method = search
        .method
        .filter(|_| identified && ln_likelihood.is_finite());
    Fit {
        params: m,
        ln_likelihood,
        iterations: search.iterations,
        converged: method.is_some(),
        method,
        inverse_hessian: search.inverse_hessian,
    }
}

/// A visitor of the customers of a BG/NBD fit: weight, x, the x-only part of A4 (None
/// without repeat purchases), and the slots of T and t_x in the table of distinct times.
type Visit<'a> = dyn FnMut(f64, f64, Option<f64>, u32, u32) + 'a;

/// A BG/NBD start from the data's moments, in log-parameters: the purchase rates x / T of
/// customers observed for some time have mean m and, less the Poisson noise of counting
/// (the mean of x / T²), variance s²; Gamma(r, alpha) with r / alpha = m and r / alpha² =
/// s² matches both (r = 1 when the rates vary no more than the noise). The drop-out
/// probabilities start at Beta(1, 3), a mean of 1/4.
fn bgnbd_moments(data: &[(Rfm, f64)]) -> Vec<f64> {
    let (mut w, mut m, mut m2, mut noise) = (0.0, 0.0, 0.0, 0.0);
    for (c, cw) in data.iter().filter(|(c, _)| c.t > 0.0) {
        let rate = c.x / c.t;
        w += cw;
        m += cw * rate;
        m2 += cw * rate * rate;
        noise += cw * rate / c.t;
    }
    if w == 0.0 || m == 0.0 {
        return vec![0.0, 0.0, 0.0, 3f64.ln()];
    }
    let (m, m2, noise) = (m / w, m2 / w, noise / w);
    let spread = m2 - m * m - noise;
    let r = if spread > 0.0 {
        (m * m / spread).clamp(1e-3, 1e3)
    } else {
        1.0
    };
    vec![r.ln(), (r / m).ln(), 0.0, 3f64.ln()]
}

/// A Gamma-Gamma start from the data's moments, in log-parameters: with q = 3 the mean M
/// and variance V of the customers' mean spends give p = 2 E[1/x] / (V / M² - 1) and v = 2
/// M / p (from E m = p v / (q - 1) and Var m = p E[1/ν²] E[1/x] + p² Var(1/ν)).
fn gamma_gamma_moments(data: &[((f64, f64), f64)]) -> Vec<f64> {
    let (mut w, mut m, mut m2, mut inv_x) = (0.0, 0.0, 0.0, 0.0);
    for ((x, spend), cw) in data {
        w += cw;
        m += cw * spend;
        m2 += cw * spend * spend;
        inv_x += cw / x;
    }
    if w == 0.0 || m <= 0.0 {
        return vec![0.0, 3f64.ln(), 0.0];
    }
    let (m, m2, inv_x) = (m / w, m2 / w, inv_x / w);
    let excess = m2 / (m * m) - 2.0;
    let p = if excess > 0.0 {
        (2.0 * inv_x / excess).clamp(1e-2, 1e2)
    } else {
        10.0
    };
    vec![p.ln(), 3f64.ln(), (2.0 * m / p).ln()]
}

/// Whether every log-parameter of a fit lies within ln(1e-15)..ln(1e15). Beyond, the
/// likelihood kept rising towards a boundary far past any population (a degenerate sample:
/// the maximum is not finite), and sums such as `b + (x - 1)` lose the parameter to
/// rounding. Within, the likelihood and the predictions are evaluated accurately, also on
/// a flat ridge towards a boundary (say a and b growing together when every customer drops
/// out with about the same probability), where a fit may stop far out.
fn within_bounds(log_params: &[f64]) -> bool {
    let bound = 15.0 * std::f64::consts::LN_10;
    log_params.iter().all(|p| p.abs() <= bound)
}

/// The optimiser whose end a fit accepted: BFGS or Nelder-Mead, from the origin (or a
/// sample's fit) or from a moment-based start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Bfgs,
    NelderMead,
    BfgsFromMoments,
    NelderMeadFromMoments,
}

impl Method {
    /// The name `clv_model`'s `*_method` columns publish.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bfgs => "bfgs",
            Method::NelderMead => "nelder-mead",
            Method::BfgsFromMoments => "bfgs from moments",
            Method::NelderMeadFromMoments => "nelder-mead from moments",
        }
    }
}

/// Where [`minimise`] ended.
struct Search {
    /// The accepted point, or the best point of every attempt when none was accepted.
    x: Vec<f64>,
    /// Of every attempt.
    iterations: u32,
    /// What converged to `x` (None: nothing did).
    method: Option<Method>,
    inverse_hessian: Vec<f64>,
}

/// Minimises `f` from `start` by BFGS with the analytic `gradient` (tens of evaluations
/// instead of Nelder-Mead's thousand). An attempt is accepted when it converged (the
/// gradient below 1e-9 relative to f, or below 1e-6 while steps no longer gain more than
/// f's rounding; for Nelder-Mead a collapsed simplex) at a point [`within_bounds`]. When
/// BFGS from the origin (or from `start`'s point) is not accepted, Nelder-Mead continues
/// from where it stopped, then BFGS and Nelder-Mead try again from `moments` (a start
/// computed from the data's moments); a sample's fit ([`Start::Sample`]) tries BFGS only.
/// A value that is not finite is a failed step for both optimisers, never an improvement.
fn minimise(
    f: &dyn Fn(&[f64]) -> f64,
    with_gradient: &WithGradient<'_>,
    start: Start,
    moments: &[f64],
) -> Search {
    let origin = vec![0.0; moments.len()];
    let accepted = |x: &[f64], converged: bool| converged && within_bounds(x);
    let mut iterations = 0;
    // The best point so far, by f: what a fit that nothing accepted reports.
    let mut best: Option<(f64, Vec<f64>, Vec<f64>)> = None;
    let mut keep = |x: &[f64], h: &[f64]| {
        let fx = f(x);
        if best.as_ref().is_none_or(|(b, _, _)| fx < *b) {
            best = Some((fx, x.to_vec(), h.to_vec()));
        }
    };
    let (from, h) = match start {
        Start::Sample => {
            let (x, iterations, converged, h) = bfgs(with_gradient, &origin, None, 500);
            let method = accepted(&x, converged).then_some(Method::Bfgs);
            return Search {
                x,
                iterations,
                method,
                inverse_hessian: h,
            };
        }
        Start::At(x, h) => (x, Some(h)),
        Start::Origin => (origin.clone(), None),
    };
    let mut attempts: Vec<(Vec<f64>, Option<Vec<f64>>, bool)> = vec![(from.clone(), h, false)];
    if from != origin {
        attempts.push((origin, None, false));
    }
    attempts.push((moments.to_vec(), None, true));
    for (at, h, from_moments) in attempts {
        let (x, n, converged, h) = bfgs(with_gradient, &at, h.as_deref(), 500);
        iterations += n;
        let (mut x, mut converged, mut by_bfgs) = (x, converged, true);
        if !accepted(&x, converged) {
            keep(&x, &h);
            let (y, _, n, c) = nelder_mead(f, &x, 20_000);
            iterations += n;
            (x, converged, by_bfgs) = (y, c, false);
        }
        if accepted(&x, converged) {
            let method = match (by_bfgs, from_moments) {
                (true, false) => Method::Bfgs,
                (false, false) => Method::NelderMead,
                (true, true) => Method::BfgsFromMoments,
                (false, true) => Method::NelderMeadFromMoments,
            };
            return Search {
                x,
                iterations,
                method: Some(method),
                inverse_hessian: h,
            };
        }
        keep(&x, &h);
    }
    let (_, x, inverse_hessian) = best.unwrap_or_default();
    Search {
        x,
        iterations,
        method: None,
        inverse_hessian,
    }
}

/// `v`, or +inf when it is not finite: what an optimiser sees of an objective, so that
/// neither NaN nor an overflow to -inf ever counts as an improvement.
fn finite_or_infinity(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        f64::INFINITY
    }
}

/// A function to minimise, giving its value and gradient at a point.
type WithGradient<'a> = dyn Fn(&[f64]) -> (f64, Vec<f64>) + 'a;

/// BFGS from `start`; `with_gradient` gives f and its gradient at a point (one pass over
/// the customers for both; the line search's rejected points compute a gradient unused).
fn bfgs(
    with_gradient: &WithGradient<'_>,
    start: &[f64],
    inverse_hessian: Option<&[f64]>,
    max_iterations: u32,
) -> (Vec<f64>, u32, bool, Vec<f64>) {
    let n = start.len();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut x = start.to_vec();
    let (mut fx, mut g) = with_gradient(&x);
    // The inverse Hessian estimate, row-major.
    // The first step is at most 0.1 long in the log-parameters; after it, the curvature
    // seen along it sets the scale.
    let identity = |scale: f64| -> Vec<f64> {
        (0..n * n)
            .map(|i| if i % (n + 1) == 0 { scale } else { 0.0 })
            .collect()
    };
    let short = |g: &[f64]| 0.1 / g.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    // Given an estimate, the first step is a quasi-Newton step at once.
    let mut h = inverse_hessian.map_or_else(|| identity(short(&g)), <[f64]>::to_vec);
    let mut first_update = inverse_hessian.is_none();
    for iteration in 0..max_iterations {
        if !fx.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return (x, iteration, false, h);
        }
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) <= 1e-9 * (1.0 + fx.abs()) {
            return (x, iteration, true, h);
        }
        let d: Vec<f64> = (0..n).map(|i| -dot(&h[i * n..(i + 1) * n], &g)).collect();
        let slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: restart from a short gradient step.
            h = identity(short(&g));
            first_update = true;
            continue;
        }
        // Backtracking (Armijo) line search.
        let mut t = 1.0;
        let mut next: Vec<f64>;
        let (mut f_next, mut g_next);
        let mut tries = 0;
        loop {
            next = x.iter().zip(&d).map(|(xi, di)| xi + t * di).collect();
            (f_next, g_next) = with_gradient(&next);
            if f_next.is_finite() && f_next <= fx + 1e-4 * t * slope {
                break;
            }
            t *= 0.5;
            tries += 1;
            if tries > 60 {
                return (x, iteration, false, h);
            }
        }
        // At the optimum the last steps change f by rounding only: when a step gains no
        // more than a few ulps and the gradient is small (relative to f), f's precision
        // is reached.
        let gain = fx - f_next;
        let g_max = g_next.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if gain <= 8.0 * f64::EPSILON * fx.abs() && g_max <= 1e-6 * (1.0 + f_next.abs()) {
            return (next, iteration + 1, true, h);
        }
        let s: Vec<f64> = next.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if first_update {
                h = identity(sy / dot(&y, &y));
                first_update = false;
            }
            // H' = (I - ρ s yᵀ) H (I - ρ y sᵀ) + ρ s sᵀ
            let rho = 1.0 / sy;
            let hy: Vec<f64> = (0..n).map(|i| dot(&h[i * n..(i + 1) * n], &y)).collect();
            let yhy = dot(&y, &hy);
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += -rho * (hy[i] * s[j] + s[i] * hy[j])
                        + (rho * rho * yhy + rho) * s[i] * s[j];
                }
            }
        }
        x = next;
        fx = f_next;
        g = g_next;
    }
    (x, max_iterations, false, h)
}

/// Repeat buyers of one frequency x in a Gamma-Gamma fit: x, their total weight, the sum of
/// w ln m, their rows.
type GgGroup = (f64, f64, f64, std::ops::Range<usize>);

/// Fits Gamma-Gamma (BFGS on the analytic gradient) to weighted `(x, m)` pairs; pairs with x <= 0 or m <= 0 (refunds) take no
/// part.
pub fn fit_gamma_gamma(customers: Vec<((f64, f64), f64)>, penalty: f64) -> Fit<GammaGamma> {
    let data = canonical(
        customers
            .into_iter()
            .filter(|((x, m), _)| *x > 0.0 && *m > 0.0)
            .collect(),
        |(x, m)| [*x, *m, 0.0],
    );
    let start = warm_start(&data, |sample| {
        let f = fit_gamma_gamma_from(sample, penalty, Start::Sample);
        let GammaGamma { p, q, v } = f.params;
        f.converged
            .then(|| (vec![p.ln(), q.ln(), v.ln()], f.inverse_hessian))
    });
    fit_gamma_gamma_from(data, penalty, start)
}

/// [`fit_gamma_gamma`] of repeat buyers in canonical order, from `start`.
fn fit_gamma_gamma_from(
    data: Vec<((f64, f64), f64)>,
    penalty: f64,
    start: Start,
) -> Fit<GammaGamma> {
    let weight: f64 = data.iter().map(|(_, w)| w).sum();
    let params = |p: &[f64]| GammaGamma {
        p: p[0].exp(),
        q: p[1].exp(),
        v: p[2].exp(),
    };
    // Everything but ln(x m + v) depends on x alone: per distinct x (data is sorted by x)
    // the weight W, the sum S of w ln m, and per evaluation the sums L of w ln(x m + v) and
    // R of w / (x m + v) over its customers: one logarithm per customer.
    // Per half of the customers (see `halves`).
    let parallel = data.len() >= PARALLEL_FIT;
    let parts: [Vec<GgGroup>; 2] = split(data.len()).map(|half| {
        let mut by_x: Vec<GgGroup> = Vec::new();
        for i in half {
            let ((x, m), w) = &data[i];
            match by_x.last_mut() {
                Some((bx, total, logs, range)) if *bx == *x => {
                    *total += w;
                    *logs += w * m.ln();
                    range.end = i + 1;
                }
                _ => by_x.push((*x, *w, w * m.ln(), i..i + 1)),
            }
        }
        by_x
    });
    // Per x, the sums over its customers of w ln(1 + x m / v), w ln(1 + v / (x m)) and
    // w x m / (x m + v) (see `GammaGamma::ln_likelihood` for why these forms).
    let sums = |x_range: &std::ops::Range<usize>, v: f64, with_gradient: bool| -> [f64; 3] {
        let mut l = [0.0; 3];
        for ((x, m), w) in &data[x_range.clone()] {
            let xm = x * m;
            l[0] += w * (xm / v).ln_1p();
            l[1] += w * (v / xm).ln_1p();
            if with_gradient {
                l[2] += w * xm / (xm + v);
            }
        }
        l
    };
    // The log-likelihood and, when `with_gradient`, its derivatives in ln p, ln q and ln v,
    // in one pass: the two share every logarithm.
    let evaluate = |g: &GammaGamma, with_gradient: bool| -> (f64, [f64; 3]) {
        let GammaGamma { p, q, v } = *g;
        let [first, second] = halves(parallel, |k| {
            let mut d = [0.0f64; 3];
            let value = parts[k]
                .iter()
                .map(|(x, w, s, range)| {
                    let px = p * x;
                    let [la, lb, u] = sums(range, v, with_gradient);
                    if with_gradient {
                        d[0] += px * (w * digamma_rising(px, q) - lb);
                        d[1] += q * (w * digamma_rising(q, px) - la);
                        d[2] += (px + q) * u - w * px;
                    }
                    w * (ln_rising(px, q) - ln_gamma(q)) - s - px * lb - q * la
                })
                .sum::<f64>();
            (value, d)
        });
        let d = std::array::from_fn(|k| first.1[k] + second.1[k]);
        (first.0 + second.0, d)
    };
    let ll = |g: &GammaGamma| evaluate(g, false).0;
    let penalised = |g: &GammaGamma, ll: f64| {
        finite_or_infinity(-ll + penalty * weight * (g.p.powi(2) + g.q.powi(2) + g.v.powi(2)))
    };
    let objective = |p: &[f64]| {
        let g = params(p);
        penalised(&g, ll(&g))
    };
    // The objective and its gradient in the log-parameters.
    let with_gradient = |p: &[f64]| -> (f64, Vec<f64>) {
        let g = params(p);
        let (ll, d) = evaluate(&g, true);
        let theta = [g.p, g.q, g.v];
        let gradient = (0..3)
            .map(|k| -d[k] + 2.0 * penalty * weight * theta[k] * theta[k])
            .collect();
        (penalised(&g, ll), gradient)
    };
    let search = minimise(
        &objective,
        &with_gradient,
        start,
        &gamma_gamma_moments(&data),
    );
    let g = params(&search.x);
    // Three parameters need three distinct (frequency, monetary) summaries.
    let identified = data.len() >= 3;
    let ln_likelihood = ll(&g);
    let method = search
        .method
        .filter(|_| identified && ln_likelihood.is_finite());
    Fit {
        params: g,
        ln_likelihood,
        iterations: search.iterations,
        converged: method.is_some(),
        method,
        inverse_hessian: search.inverse_hessian,
    }
}

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

/// Registers the prediction functions and the fit aggregates in a session.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for kind in [
        PredictionKind::PAlive,
        PredictionKind::ExpectedPurchases,
        PredictionKind::ExpectedSpend,
        PredictionKind::Clv,
    ] {
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            Prediction {
                kind,
                signature: Signature::uniform(
                    kind.arity(),
                    vec![DataType::Float64],
                    Volatility::Immutable,
                ),
            },
        ));
    }
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        ForecastFunction {
            signature: Signature::uniform(10, vec![DataType::Float64], Volatility::Immutable),
            memo: NumeratorMemo::default(),
        },
    ));
    for kind in [FitKind::BgNbd, FitKind::GammaGamma] {
        ctx.register_udaf(datafusion::logical_expr::AggregateUDF::new_from_impl(
            FitAggregate::new(kind),
        ));
    }
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
mod property_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// fixtures/cdnow/summary.csv: (x, t_x, T in weeks, mean repeat spend).
    fn cdnow() -> Vec<(Rfm, f64)> {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cdnow/summary.csv"),
        )
        .unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let v: Vec<f64> = l.split(',').skip(1).map(|s| s.parse().unwrap()).collect();
                (
                    Rfm {
                        x: v[0],
                        t_x: v[1],
                        t: v[2],
                    },
                    v[3],
                )
            })
            .collect()
    }

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut f = 1.0f64;
        for n in 1..30 {
            assert!(
                (ln_gamma(n as f64) - f.ln()).abs() < 1e-12 * f.ln().max(1.0),
                "{n}"
            );
            f *= n as f64;
        }
        let sqrt_pi = std::f64::consts::PI.sqrt();
        assert!((ln_gamma(0.5) - sqrt_pi.ln()).abs() < 1e-14);
        assert!((ln_gamma(2.5) - (0.75 * sqrt_pi).ln()).abs() < 1e-14);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-13);
    }

    #[test]
    fn digamma_matches_known_values_and_the_derivative_of_ln_gamma() {
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-13);
        assert!((digamma(0.5) + euler + 2.0 * 2f64.ln()).abs() < 1e-13);
        for x in [0.3, 1.7, 4.2, 12.5, 80.0] {
            let h = 1e-5 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!((digamma(x) - numeric).abs() < 1e-7, "{x}");
        }
    }

    #[test]
    fn hyp2f1_matches_closed_forms() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z; 2F1(a, b; b; z) = (1 - z)^-a.
        for z in [0.1, 0.5, 0.9, 0.99] {
            let got = hyp2f1(1.0, 1.0, 2.0, z).unwrap();
            assert!((got - (-(1.0 - z).ln() / z)).abs() < 1e-12 * got, "{z}");
            let got = hyp2f1(0.7, 3.2, 3.2, z).unwrap();
            assert!((got - (1.0 - z).powf(-0.7)).abs() < 1e-12 * got, "{z}");
        }
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), None);
    }

    /// Fader, Hardie & Lee (2005): r = 0.243, alpha = 4.414, a = 0.793, b = 2.426,
    /// LL = -9582.4, each to the last published digit.
    #[test]
    fn bgnbd_fit_on_cdnow_matches_the_published_estimates() {
        let customers: Vec<(Rfm, f64)> = cdnow().into_iter().map(|(c, _)| (c, 1.0)).collect();
        let fit = fit_bgnbd(customers, 0.0);
        assert!(fit.converged, "{fit:?}");
        let BgNbd { r, alpha, a, b } = fit.params;
        let near = |got: f64, want: f64, unit: f64| (got - want).abs() <= unit;
        assert!(near(r, 0.243, 0.001), "r = {r}");
        assert!(near(alpha, 4.414, 0.001), "alpha = {alpha}");
        assert!(near(a, 0.793, 0.001), "a = {a}");
        assert!(near(b, 2.426, 0.001), "b = {b}");
        assert!(
            near(fit.ln_likelihood, -9582.4, 0.1),
            "LL = {}",
            fit.ln_likelihood
        );
        // BFGS on the analytic gradient: tens of iterations, not Nelder-Mead's hundreds.
        assert!(fit.iterations < 100, "{} iterations", fit.iterations);
    }

    #[test]
    fn the_fitted_log_likelihood_is_the_sum_over_customers() {
        let customers: Vec<(Rfm, f64)> = cdnow().into_iter().map(|(c, _)| (c, 1.0)).collect();
        let fit = fit_bgnbd(customers.clone(), 0.0);
        let direct: f64 = customers
            .iter()
            .map(|(c, _)| fit.params.ln_likelihood(c))
            .sum();
        assert!((fit.ln_likelihood - direct).abs() < 1e-8 * direct.abs());
    }

    /// The SQL functions give the same values as the methods (lifetimes' numbers above),
    /// NULL for a NULL argument.
    #[tokio::test]
    async fn prediction_functions_work_in_sql() {
        // Registered with every session's functions.
        let ctx = datafusion::prelude::SessionContext::new();
        crate::ext::functions::register(&ctx);
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
        crate::ext::functions::register(&ctx);
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

    fn batches_schema(
        partitions: &[Vec<datafusion::arrow::array::RecordBatch>],
    ) -> datafusion::arrow::datatypes::SchemaRef {
        partitions
            .iter()
            .flatten()
            .next()
            .map(|b| b.schema())
            .unwrap()
    }

    /// A small deterministic generator for simulations (splitmix64).
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        pub(super) fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }

        /// Gamma(shape, scale 1), Marsaglia & Tsang.
        pub(super) fn gamma(&mut self, shape: f64) -> f64 {
            if shape < 1.0 {
                return self.gamma(shape + 1.0) * self.uniform().powf(1.0 / shape);
            }
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let x = self.normal();
                let v = (1.0 + c * x).powi(3);
                if v > 0.0 && self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }
    }

    /// The true BG/NBD and Gamma-Gamma parameters of [`simulated`] customers.
    const TRUTH: BgNbd = BgNbd {
        r: 0.5,
        alpha: 6.0,
        a: 0.9,
        b: 3.0,
    };
    const SPEND: GammaGamma = GammaGamma {
        p: 5.0,
        q: 4.0,
        v: 20.0,
    };

    /// Simulated customers: their summaries, and their repeat buyers' (frequency, mean spend).
    type Simulated = (Vec<(Rfm, f64)>, Vec<((f64, f64), f64)>);

    /// 120 k customers drawn from [`TRUTH`] and [`SPEND`], observed 20..60 weeks (drawn once
    /// for the tests that fit them).
    fn simulated() -> &'static Simulated {
        static CUSTOMERS: std::sync::OnceLock<Simulated> = std::sync::OnceLock::new();
        CUSTOMERS.get_or_init(|| simulate(120_000))
    }

    fn simulate(n: usize) -> Simulated {
        let (truth, spend) = (TRUTH, SPEND);
        let mut rng = Rng(42);
        let mut rfm = Vec::new();
        let mut monetary = Vec::new();
        for _ in 0..n {
            let t = 20.0 + 40.0 * rng.uniform();
            let lambda = rng.gamma(truth.r) / truth.alpha;
            let ga = rng.gamma(truth.a);
            let p = ga / (ga + rng.gamma(truth.b));
            let nu = rng.gamma(spend.q) / spend.v;
            let (mut now, mut x, mut t_x, mut total) = (0.0, 0.0, 0.0, 0.0);
            loop {
                now += -rng.uniform().ln() / lambda;
                if now > t {
                    break;
                }
                x += 1.0;
                t_x = now;
                total += rng.gamma(spend.p) / nu;
                if rng.uniform() < p {
                    break;
                }
            }
            rfm.push((Rfm { x, t_x, t }, 1.0));
            if x > 0.0 {
                monetary.push(((x, total / x), 1.0));
            }
        }
        (rfm, monetary)
    }

    /// Data simulated from the BG/NBD and Gamma-Gamma processes with known parameters
    /// (120 k customers, observed 20..60 weeks): the fits recover them.
    #[test]
    fn fits_recover_the_parameters_of_simulated_customers() {
        let (truth, spend) = (TRUTH, SPEND);
        let (rfm, monetary) = simulated().clone();
        let fit = fit_bgnbd(rfm, 0.0);
        assert!(fit.converged, "{fit:?}");
        let got = fit.params;
        for (name, g, want) in [
            ("r", got.r, truth.r),
            ("alpha", got.alpha, truth.alpha),
            ("a", got.a, truth.a),
            ("b", got.b, truth.b),
        ] {
            assert!(
                (g - want).abs() <= 0.05 * want,
                "{name} = {g}, truth {want}"
            );
        }
        let fit = fit_gamma_gamma(monetary, 0.0);
        assert!(fit.converged, "{fit:?}");
        let got = fit.params;
        for (name, g, want) in [
            ("p", got.p, spend.p),
            ("q", got.q, spend.q),
            ("v", got.v, spend.v),
        ] {
            assert!(
                (g - want).abs() <= 0.05 * want,
                "{name} = {g}, truth {want}"
            );
        }
    }

    /// From `WARM_START` distinct summaries a fit starts where a fit on a sample of them
    /// ended: it reaches the maximum the fit from the origin reaches (the log-likelihood
    /// equal to 1e-12, the parameters within 1e-5: near the maximum the likelihood is flat
    /// along a and b, which move by 1e-6 at equal likelihood) in fewer iterations on all rows.
    #[test]
    fn fits_started_from_a_sample_reach_the_same_maximum_in_fewer_iterations() {
        let near = |got: &[f64], want: &[f64]| {
            for (x, y) in got.iter().zip(want) {
                assert!((x - y).abs() < 1e-5 * y.abs(), "{x} vs {y}");
            }
        };
        let (rfm, monetary) = simulated().clone();
        let rows = canonical(rfm.clone(), |c| [c.x, c.t_x, c.t]);
        assert!(rows.len() >= WARM_START);
        let warm = fit_bgnbd(rfm.clone(), 0.0);
        let cold = fit_bgnbd_from(rows, 0.0, Start::Origin);
        assert!(warm.converged && cold.converged, "{warm:?} {cold:?}");
        let params = |m: &BgNbd| [m.r, m.alpha, m.a, m.b];
        near(&params(&warm.params), &params(&cold.params));
        assert!(
            (warm.ln_likelihood - cold.ln_likelihood).abs() <= 1e-12 * cold.ln_likelihood.abs(),
            "{warm:?} {cold:?}"
        );
        assert!(warm.iterations < cold.iterations, "{warm:?} {cold:?}");
        // With a penalty (the sample's weights scaled to the whole, so is its penalty).
        let rows = canonical(rfm.clone(), |c| [c.x, c.t_x, c.t]);
        let warm = fit_bgnbd(rfm, 1e-3);
        let cold = fit_bgnbd_from(rows, 1e-3, Start::Origin);
        assert!(warm.converged && cold.converged, "{warm:?} {cold:?}");
        near(&params(&warm.params), &params(&cold.params));

        // Gamma-Gamma on the repeat buyers, copied to pass the bound (distinct mean spends).
        let pairs: Vec<((f64, f64), f64)> = (0..2)
            .flat_map(|k| {
                monetary
                    .iter()
                    .map(move |((x, m), w)| ((*x, m * (1.0 + f64::from(k) * 1e-9)), *w))
            })
            .collect();
        let rows = canonical(pairs.clone(), |(x, m)| [*x, *m, 0.0]);
        assert!(rows.len() >= WARM_START, "{}", rows.len());
        let warm = fit_gamma_gamma(pairs, 0.0);
        let cold = fit_gamma_gamma_from(rows, 0.0, Start::Origin);
        assert!(warm.converged && cold.converged, "{warm:?} {cold:?}");
        let params = |g: &GammaGamma| [g.p, g.q, g.v];
        near(&params(&warm.params), &params(&cold.params));
        assert!(
            (warm.ln_likelihood - cold.ln_likelihood).abs() <= 1e-12 * cold.ln_likelihood.abs(),
            "{warm:?} {cold:?}"
        );
        assert!(warm.iterations < cold.iterations, "{warm:?} {cold:?}");
    }

    /// Weights stand for repeated customers, and the input order does not matter.
    /// Samples that cannot identify the parameters end `converged = false`, never with
    /// parameters that only look fitted.
    #[test]
    fn samples_too_small_or_without_repeat_buyers_do_not_converge() {
        let c = |x: f64, t_x: f64, t: f64| (Rfm { x, t_x, t }, 1.0);
        assert!(!fit_bgnbd(vec![c(1.0, 5.0, 10.0), c(0.0, 0.0, 3.0)], 0.0).converged);
        let one_timers: Vec<_> = (1..200).map(|t| c(0.0, 0.0, f64::from(t))).collect();
        assert!(!fit_bgnbd(one_timers, 0.0).converged);
        assert!(!fit_gamma_gamma(vec![((1.0, 20.0), 5.0), ((2.0, 30.0), 1.0)], 0.0).converged);
        // CDNOW is identified.
        assert!(fit_bgnbd(cdnow(), 0.0).converged);
    }

    #[test]
    fn bgnbd_fit_is_the_same_with_weights_and_in_any_order() {
        let customers: Vec<(Rfm, f64)> = cdnow().into_iter().map(|(c, _)| (c, 1.0)).collect();
        let mut compressed: Vec<(Rfm, f64)> = Vec::new();
        for (c, _) in &customers {
            match compressed.iter_mut().find(|(k, _)| k == c) {
                Some((_, w)) => *w += 1.0,
                None => compressed.push((*c, 1.0)),
            }
        }
        assert!(compressed.len() < customers.len());
        let mut reversed = customers.clone();
        reversed.reverse();
        let a = fit_bgnbd(customers, 0.0);
        let b = fit_bgnbd(reversed, 0.0);
        assert_eq!(a, b, "order changed the fit");
        let c = fit_bgnbd(compressed, 0.0);
        assert_close(
            &[a.params.r, a.params.alpha, a.params.a, a.params.b],
            &[c.params.r, c.params.alpha, c.params.a, c.params.b],
        );
    }

    /// Each pair of fitted parameters agrees to 1e-6 (relative).
    fn assert_close(got: &[f64], want: &[f64]) {
        for (x, y) in got.iter().zip(want) {
            assert!((x - y).abs() < 1e-6 * x, "{x} vs {y}");
        }
    }

    /// Above `PARALLEL_FIT` customers the sums run in two halves on two threads: the fit is
    /// bit-identical from run to run, and equal (to rounding) to the same customers given as
    /// weights, which are fitted on one thread.
    #[test]
    fn fits_on_two_threads_repeat_bit_for_bit_and_match_the_weighted_fit() {
        let base = cdnow();
        let many: Vec<(Rfm, f64)> = (0..10)
            .flat_map(|_| base.iter().map(|(c, _)| (*c, 1.0)))
            .collect();
        assert!(many.len() >= PARALLEL_FIT);
        let weighted: Vec<(Rfm, f64)> = base.iter().map(|(c, _)| (*c, 10.0)).collect();
        let (a, b) = (fit_bgnbd(many.clone(), 0.0), fit_bgnbd(many, 0.0));
        assert_eq!(a, b, "two-thread BG/NBD fits differ");
        let w = fit_bgnbd(weighted, 0.0);
        assert_close(
            &[a.params.r, a.params.alpha, a.params.a, a.params.b],
            &[w.params.r, w.params.alpha, w.params.a, w.params.b],
        );
        // Gamma-Gamma: only repeat buyers enter (946 of CDNOW's); 30 copies pass the bound.
        let pairs: Vec<((f64, f64), f64)> = base.iter().map(|(c, m)| ((c.x, *m), 1.0)).collect();
        let many: Vec<((f64, f64), f64)> = (0..30).flat_map(|_| pairs.iter().copied()).collect();
        assert!(
            many.iter()
                .filter(|((x, m), _)| *x > 0.0 && *m > 0.0)
                .count()
                >= PARALLEL_FIT
        );
        let weighted: Vec<((f64, f64), f64)> = pairs.iter().map(|(k, _)| (*k, 30.0)).collect();
        let (a, b) = (
            fit_gamma_gamma(many.clone(), 0.0),
            fit_gamma_gamma(many, 0.0),
        );
        assert_eq!(a, b, "two-thread Gamma-Gamma fits differ");
        let w = fit_gamma_gamma(weighted, 0.0);
        assert_close(
            &[a.params.p, a.params.q, a.params.v],
            &[w.params.p, w.params.q, w.params.v],
        );
    }

    /// Fader & Hardie (2013): p = 6.25, q = 3.74, v = 15.44 over the 946 customers with
    /// repeat purchases.
    #[test]
    fn gamma_gamma_fit_on_cdnow_matches_the_published_estimates() {
        let pairs: Vec<((f64, f64), f64)> =
            cdnow().into_iter().map(|(c, m)| ((c.x, m), 1.0)).collect();
        let fit = fit_gamma_gamma(pairs, 0.0);
        assert!(fit.converged, "{fit:?}");
        assert!(fit.iterations < 100, "{} iterations", fit.iterations);
        let GammaGamma { p, q, v } = fit.params;
        assert!((p - 6.25).abs() <= 0.01, "p = {p}");
        assert!((q - 3.74).abs() <= 0.01, "q = {q}");
        assert!((v - 15.44).abs() <= 0.01, "v = {v}");
    }

    /// lifetimes 0.11.3's `customer_lifetime_value` (monthly steps of 4.345 weeks, 1 % per
    /// step) at the published parameters, through the SQL function: 3 and 12 months.
    #[tokio::test]
    async fn discounted_value_equals_lifetimes_customer_lifetime_value() {
        let ctx = datafusion::prelude::SessionContext::new();
        crate::ext::functions::register(&ctx);
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

    /// lifetimes 0.11.3 at the published parameters: P(alive), expected purchases in 39 and
    /// 52 weeks, expected average spend; equal to 1e-6 relative.
    #[test]
    fn predictions_equal_lifetimes_at_the_same_parameters() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        let cases = [
            (
                0.0,
                0.0,
                38.86,
                1.0,
                0.19509805201125396,
                0.2520730222824504,
            ),
            (
                2.0,
                30.43,
                38.86,
                0.72657857,
                1.226028174767135,
                1.5587208064320972,
            ),
            (
                1.0,
                1.71,
                38.86,
                0.21210099,
                0.20318698707975183,
                0.25982346486862234,
            ),
            (
                7.0,
                29.43,
                32.0,
                0.86213389,
                5.15188029825833,
                6.441330022711442,
            ),
            (
                14.0,
                35.0,
                38.0,
                0.87249005,
                8.900730970255625,
                11.149283809289795,
            ),
            (
                30.0,
                37.5,
                38.5,
                0.95103717,
                20.154664825128364,
                25.19667857558711,
            ),
        ];
        let close = |got: f64, want: f64, tol: f64| (got - want).abs() <= tol * want.abs();
        for (x, t_x, t, alive, e39, e52) in cases {
            let c = Rfm { x, t_x, t };
            // lifetimes printed P(alive) to 8 digits.
            assert!(
                close(m.p_alive(&c), alive, 1e-7),
                "{c:?}: {}",
                m.p_alive(&c)
            );
            let got = m.expected_purchases(&c, 39.0).unwrap();
            assert!(close(got, e39, 1e-6), "{c:?}: {got}");
            let got = m.expected_purchases(&c, 52.0).unwrap();
            assert!(close(got, e52, 1e-6), "{c:?}: {got}");
        }
        let g = GammaGamma {
            p: 6.25,
            q: 3.74,
            v: 15.44,
        };
        for (x, mean, want) in [
            (1.0, 20.0, 24.6384872080089),
            (2.0, 30.43, 31.291010498687665),
            (6.0, 50.0, 48.99353876739563),
            (10.0, 12.5, 13.4541692213366),
        ] {
            let got = g.expected_spend(x, mean);
            assert!(close(got, want, 1e-9), "({x}, {mean}): {got}");
        }
    }

    #[test]
    fn one_pass_forecast_is_bit_equal_to_the_predictions_one_by_one() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        for unit_days in [1.0, 7.0] {
            for (x, t_x, t) in [
                (0.0, 0.0, 0.5),
                (0.0, 0.0, 38.86),
                (1.0, 1.71, 38.86),
                (7.0, 29.43, 32.0),
                (30.0, 37.5, 38.5),
                (3.0, 2.0, 400.0),
            ] {
                let c = Rfm { x, t_x, t };
                let f = m.forecast(&c, 21.5, 0.01, unit_days).unwrap();
                for (days, got) in [30.0, 90.0, 365.0].iter().zip(f.expected_purchases) {
                    let want = m.expected_purchases(&c, days / unit_days).unwrap();
                    assert_eq!(got.to_bits(), want.to_bits(), "{c:?} {days} days");
                }
                let want = m.discounted_value(&c, 21.5, 3, 90.0 / unit_days / 3.0, 0.01);
                assert_eq!(Some(f.clv_90d.to_bits()), want.map(f64::to_bits), "{c:?}");
                let want = m.discounted_value(&c, 21.5, 12, 365.0 / unit_days / 12.0, 0.01);
                assert_eq!(Some(f.clv_365d.to_bits()), want.map(f64::to_bits), "{c:?}");
            }
        }
    }
}
