//! Minimisers of a negative log-likelihood over log-parameters: BFGS with a line search,
//! Nelder-Mead, and the chain of attempts a fit makes before it gives up.

use super::*;

/// Minimises `f` by Nelder-Mead from `start`: (point, value, iterations, converged).
/// Converged when the simplex's values agree to 1e-12 (relative) and its points to 1e-10.
pub(crate) fn nelder_mead(
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

/// Whether every log-parameter of a fit lies within ln(1e-15)..ln(1e15). Beyond, the
/// likelihood kept rising towards a boundary far past any population (a degenerate sample:
/// the maximum is not finite), and sums such as `b + (x - 1)` lose the parameter to
/// rounding. Within, the likelihood and the predictions are evaluated accurately, also on
/// a flat ridge towards a boundary (say a and b growing together when every customer drops
/// out with about the same probability), where a fit may stop far out.
pub(crate) fn within_bounds(log_params: &[f64]) -> bool {
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
pub(crate) struct Search {
    /// The accepted point, or the best point of every attempt when none was accepted.
    pub(crate) x: Vec<f64>,
    /// Of every attempt.
    pub(crate) iterations: u32,
    /// What converged to `x` (None: nothing did).
    pub(crate) method: Option<Method>,
    pub(crate) inverse_hessian: Vec<f64>,
}

/// Minimises `f` from `start` by BFGS with the analytic `gradient` (tens of evaluations
/// instead of Nelder-Mead's thousand). An attempt is accepted when it converged (the
/// gradient below 1e-9 relative to f, or below 1e-6 while steps no longer gain more than
/// f's rounding; for Nelder-Mead a collapsed simplex) at a point [`within_bounds`]. When
/// BFGS from the origin (or from `start`'s point) is not accepted, Nelder-Mead continues
/// from where it stopped, then BFGS and Nelder-Mead try again from `moments` (a start
/// computed from the data's moments); a sample's fit ([`Start::Sample`]) tries BFGS only.
/// A value that is not finite is a failed step for both optimisers, never an improvement.
pub(crate) fn minimise(
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
pub(crate) fn finite_or_infinity(v: f64) -> f64 {
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
pub(crate) fn bfgs(
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
