//! Maximum-likelihood fits of the two models over weighted customer summaries.

use super::*;

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

/// Sorts weighted tuples so a fit sees them in one order whatever order they came in (by
/// the key, then the weight).
pub(crate) fn canonical<T: Copy>(
    mut data: Vec<(T, f64)>,
    key: impl Fn(&T) -> [f64; 3],
) -> Vec<(T, f64)> {
    data.sort_unstable_by(|(a, wa), (b, wb)| {
        let (ka, kb) = (key(a), key(b));
        (ka[0].total_cmp(&kb[0]))
            .then(ka[1].total_cmp(&kb[1]))
            .then(ka[2].total_cmp(&kb[2]))
            .then(wa.total_cmp(wb))
    });
    data
}

/// Customers above which a fit sums its likelihood in two halves on two threads.
pub(crate) const PARALLEL_FIT: usize = 20_000;

/// `f(0)` and `f(1)`, the two halves of a sum, on two threads when `parallel`. Callers add
/// the halves in a fixed order, so a fit's result does not depend on the threads (or on
/// `parallel`).
pub(crate) fn halves<T: Send>(parallel: bool, f: impl Fn(usize) -> T + Sync) -> [T; 2] {
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
pub(crate) fn split(n: usize) -> [std::ops::Range<usize>; 2] {
    [0..n / 2, n / 2..n]
}

/// Distinct summaries from which a fit starts from a fit on a sample of them.
pub(crate) const WARM_START: usize = 65_536;

/// Rows of that sample.
pub(crate) const WARM_SAMPLE: usize = 16_384;

/// Where a fit starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
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
pub(crate) fn warm_start<T: Copy>(
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
pub(crate) fn fit_bgnbd_from(data: Vec<(Rfm, f64)>, penalty: f64, start: Start) -> Fit<BgNbd> {
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
pub(crate) fn bgnbd_moments(data: &[(Rfm, f64)]) -> Vec<f64> {
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
pub(crate) fn gamma_gamma_moments(data: &[((f64, f64), f64)]) -> Vec<f64> {
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
pub(crate) fn fit_gamma_gamma_from(
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
