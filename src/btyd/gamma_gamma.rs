//! The Gamma-Gamma model of spend per purchase.

use super::*;

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
    /// together, or p large and v small): `ln Γ(px + q) - ln Γ(px) - ln Γ(q)` as
    /// [`ln_inverse_beta`], and `q ln v + (px - 1) ln m + px ln x - (px + q) ln(x m + v)` as
    /// `-ln m - px ln(1 + v / (x m)) - q ln(1 + x m / v)` (the same, with no difference of
    /// large terms).
    pub fn ln_likelihood(&self, x: f64, m: f64) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let px = p * x;
        let xm = x * m;
        ln_inverse_beta(px, q) - m.ln() - px * (v / xm).ln_1p() - q * (xm / v).ln_1p()
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
