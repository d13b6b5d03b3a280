//! The BG/NBD model of purchase counts: its likelihood, gradients and predictions, and the
//! forecast of purchases over future horizons.

use super::*;

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
            (r + c.x) * ((c.t - c.t_x) / (alpha + c.t_x)).ln_1p() + (a / (b + (c.x - 1.0))).ln();
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
    pub(crate) fn expected_purchases_numerators(
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
            // 1 - 2F1 * ((alpha + T) / (alpha + T + h))^(r + x), as -expm1 of its log with
            // the ratio's log taken by ln_1p: when the fit drifts to the Poisson limit (r
            // and alpha huge, a tiny, b huge) the two logs nearly cancel and `first` is
            // huge, and ln of the ratio itself lost every digit of the difference
            // (expected purchases came out negative, or smaller over 90 days than over 30).
            let ln_ratio = (-h / (alpha + t + h)).ln_1p();
            let second = -(e.ln() + (r + x) * ln_ratio).exp_m1();
            *e = first * second;
        }
        true
    }

    /// The denominator of eq. 10, the only part that depends on t_x.
    fn expected_purchases_denominator(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.x;
        if x > 0.0 {
            1.0 + (a / (b + (x - 1.0)))
                * ((r + x) * ((c.t - c.t_x) / (alpha + c.t_x)).ln_1p()).exp()
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
    pub(crate) fn forecast_from(
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
pub(crate) const FORECAST_HORIZONS: usize = 18;

/// The horizons of [`BgNbd::forecast`], `unit_days` days to the time unit: 30, 90 and 365
/// days, the ends of 3 periods of 30 days and of 12 periods of 365/12 days.
pub(crate) fn forecast_horizons(unit_days: f64) -> [f64; FORECAST_HORIZONS] {
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
pub(crate) fn discount(upto: &[f64], spend: f64, rate: f64) -> f64 {
    let mut value = 0.0;
    let mut before = 0.0;
    for (k, e) in upto.iter().enumerate() {
        value += spend * (e - before) / (1.0 + rate).powi(k as i32 + 1);
        before = *e;
    }
    value
}
