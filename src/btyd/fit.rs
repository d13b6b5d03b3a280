//! Maximum-likelihood fits of the two models over weighted customer summaries.

use std::ops::Range;

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
pub(crate) fn warm_start<T: Copy, P: Parameters<N>, const N: usize>(
    data: &[(T, f64)],
    fit: impl Fn(Vec<(T, f64)>) -> Fit<P>,
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
    let f = fit(sample);
    // A converged fit is within bounds (`Fit::converged`).
    if f.converged {
        let logs = f.params.values().map(f64::ln).to_vec();
        Start::At(logs, f.inverse_hessian)
    } else {
        Start::Origin
    }
}

/// A model's parameters, which a fit searches for as their logarithms (so they stay
/// positive).
pub(crate) trait Parameters<const N: usize>: Copy {
    /// The parameters at these log-parameters.
    fn from_logs(logs: &[f64]) -> Self;
    /// The parameters, in the order of the log-parameters.
    fn values(&self) -> [f64; N];
}

impl Parameters<4> for BgNbd {
    fn from_logs(p: &[f64]) -> Self {
        BgNbd {
            r: p[0].exp(),
            alpha: p[1].exp(),
            a: p[2].exp(),
            b: p[3].exp(),
        }
    }

    fn values(&self) -> [f64; 4] {
        [self.r, self.alpha, self.a, self.b]
    }
}

impl Parameters<3> for GammaGamma {
    fn from_logs(p: &[f64]) -> Self {
        GammaGamma {
            p: p[0].exp(),
            q: p[1].exp(),
            v: p[2].exp(),
        }
    }

    fn values(&self) -> [f64; 3] {
        [self.p, self.q, self.v]
    }
}

/// Fits a model by maximum likelihood: [`minimise`]s, from `start` (then from the data's
/// `moments`), the negative log-likelihood that `evaluate` gives (with, when asked, its
/// derivatives in the log-parameters) plus the L2 penalty: `penalty` times the customers'
/// total `weight` times the sum of the squared parameters. A fit of data that cannot
/// identify the model (`identified` false) never converges.
fn maximise_likelihood<P: Parameters<N>, const N: usize>(
    evaluate: impl Fn(&P, bool) -> (f64, [f64; N]),
    penalty: f64,
    weight: f64,
    start: Start,
    moments: &[f64],
    identified: bool,
) -> Fit<P> {
    let ll = |m: &P| evaluate(m, false).0;
    let penalised = |m: &P, ll: f64| {
        let squares: f64 = m.values().iter().map(|t| t.powi(2)).sum();
        finite_or_infinity(-ll + penalty * weight * squares)
    };
    let objective = |p: &[f64]| {
        let m = P::from_logs(p);
        penalised(&m, ll(&m))
    };
    // The objective and its gradient in the log-parameters.
    let with_gradient = |p: &[f64]| -> (f64, Vec<f64>) {
        let m = P::from_logs(p);
        let (ll, g) = evaluate(&m, true);
        let theta = m.values();
        let gradient = (0..N)
            .map(|k| -g[k] + 2.0 * penalty * weight * theta[k] * theta[k])
            .collect();
        (penalised(&m, ll), gradient)
    };
    let search = minimise(&objective, &with_gradient, start, moments);
    let params = P::from_logs(&search.x);
    let ln_likelihood = ll(&params);
    let method = search
        .method
        .filter(|_| identified && ln_likelihood.is_finite());
    Fit {
        params,
        ln_likelihood,
        iterations: search.iterations,
        converged: method.is_some(),
        method,
        inverse_hessian: search.inverse_hessian,
    }
}

/// The customers' total weight.
fn total_weight<T>(data: &[(T, f64)]) -> f64 {
    data.iter().map(|(_, w)| w).sum()
}

/// A log-likelihood and its gradient, summed over the two halves of the customers (see
/// `halves`): the first half's plus the second's.
fn sum_halves<const N: usize>(
    parallel: bool,
    half: impl Fn(usize) -> (f64, [f64; N]) + Sync,
) -> (f64, [f64; N]) {
    let [first, second] = halves(parallel, half);
    let g = std::array::from_fn(|k| first.1[k] + second.1[k]);
    (first.0 + second.0, g)
}

/// Per half of `data` (see `halves`), the runs of rows of one x (data is sorted by x).
fn runs_of_x<T>(data: &[(T, f64)], x: impl Fn(&T) -> f64) -> [Vec<Range<usize>>; 2] {
    split(data.len()).map(|half| {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for i in half {
            match runs.last_mut() {
                Some(run) if x(&data[run.start].0) == x(&data[i].0) => run.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    })
}

/// `term` summed over the rows of `run`, in order.
fn run_sum<T>(data: &[T], run: &Range<usize>, term: impl Fn(&T) -> f64) -> f64 {
    data[run.start + 1..run.end]
        .iter()
        .fold(term(&data[run.start]), |sum, row| sum + term(row))
}

/// Fits BG/NBD by maximum likelihood (BFGS on the analytic gradient) to weighted customers (weight = how many customers
/// share the summary), with an optional L2 penalty on the parameters (as lifetimes'
/// `penalizer_coef`: `penalty * (r² + alpha² + a² + b²)` per customer).
pub fn fit_bgnbd(customers: Vec<(Rfm, f64)>, penalty: f64) -> Fit<BgNbd> {
    let data = canonical(customers, |c| [c.x, c.t_x, c.t]);
    let start = warm_start(&data, |sample| {
        fit_bgnbd_from(sample, penalty, Start::Sample)
    });
    fit_bgnbd_from(data, penalty, start)
}

/// [`fit_bgnbd`] of customers in canonical order, from `start`.
pub(crate) fn fit_bgnbd_from(data: Vec<(Rfm, f64)>, penalty: f64, start: Start) -> Fit<BgNbd> {
    let customers = BgNbdCustomers::new(&data);
    // Four parameters need four distinct summaries, and without a repeat purchase a and b
    // do not enter the likelihood at all.
    let identified = data.len() >= 4 && data.iter().any(|(c, _)| c.x > 0.0);
    maximise_likelihood(
        |m, with_gradient| customers.evaluate(m, with_gradient),
        penalty,
        total_weight(&data),
        start,
        &bgnbd_moments(&data),
        identified,
    )
}

/// Customers of one frequency x in a BG/NBD fit: x, their total weight, their rows.
type BgNbdGroup = (f64, f64, Range<usize>);

/// The customers of a BG/NBD fit (in canonical order), arranged for evaluating the
/// likelihood. The ln Γ terms depend on x only: summed once per distinct x (data is sorted
/// by x). The rest needs ln(alpha + T) and ln(alpha + t_x): T and t_x take few distinct
/// values (whole days or weeks), so an evaluation takes the logarithm of each distinct
/// value once and a customer costs one exp and one ln_1p.
struct BgNbdCustomers<'a> {
    data: &'a [(Rfm, f64)],
    /// Whether the halves are summed on two threads (see `halves`).
    parallel: bool,
    /// Per half of the customers: their groups by x.
    parts: [Vec<BgNbdGroup>; 2],
    /// The distinct values of T and t_x, ascending.
    times: Vec<f64>,
    /// Per customer, the slots of its T and t_x in `times`.
    slots: Vec<(u32, u32)>,
}

impl<'a> BgNbdCustomers<'a> {
    fn new(data: &'a [(Rfm, f64)]) -> Self {
        let parts = runs_of_x(data, |c| c.x).map(|runs| {
            let group =
                |run: Range<usize>| (data[run.start].0.x, run_sum(data, &run, |(_, w)| *w), run);
            runs.into_iter().map(group).collect()
        });
        let mut times: Vec<f64> = data.iter().flat_map(|(c, _)| [c.t, c.t_x]).collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        let index = |v: f64| times.partition_point(|t| *t < v) as u32;
        let slots = data
            .iter()
            .map(|(c, _)| (index(c.t), index(c.t_x)))
            .collect();
        BgNbdCustomers {
            data,
            parallel: data.len() >= PARALLEL_FIT,
            parts,
            times,
            slots,
        }
    }

    /// For every distinct time v: ln(1 + v/alpha), ln(alpha + v) and v / (alpha + v) (see
    /// `BgNbd::ln_likelihood` for why these forms).
    fn tables(&self, alpha: f64) -> Vec<[f64; 3]> {
        self.times
            .iter()
            .map(|v| {
                let l1 = (v / alpha).ln_1p();
                [l1, (alpha + v).ln(), v / (alpha + v)]
            })
            .collect()
    }

    /// Visits every customer of `by_x` with its weight, x, the x-only part of A4 (ln a -
    /// ln(b + x - 1), or None without repeat purchases) and its two time slots.
    fn each(
        &self,
        m: &BgNbd,
        by_x: &[BgNbdGroup],
        mut visit: impl FnMut(f64, f64, Option<f64>, u32, u32),
    ) {
        for (x, _, range) in by_x {
            let cx = (*x > 0.0).then(|| m.a.ln() - (m.b + (x - 1.0)).ln());
            for i in range.clone() {
                let (t, tx) = self.slots[i];
                visit(self.data[i].1, *x, cx, t, tx);
            }
        }
    }

    /// The log-likelihood and, when `with_gradient`, its derivatives in ln r, ln alpha, ln a
    /// and ln b, in one pass: the two share every logarithm and exponential.
    fn evaluate(&self, m: &BgNbd, with_gradient: bool) -> (f64, [f64; 4]) {
        let table = self.tables(m.alpha);
        sum_halves(self.parallel, |k| {
            self.evaluate_half(&self.parts[k], m, &table, with_gradient)
        })
    }

    /// [`Self::evaluate`] on the customers of `by_x`, with the `table` of `tables`.
    fn evaluate_half(
        &self,
        by_x: &[BgNbdGroup],
        m: &BgNbd,
        table: &[[f64; 3]],
        with_gradient: bool,
    ) -> (f64, [f64; 4]) {
        let BgNbd { r, alpha: _, a, b } = *m;
        let gammas: f64 = by_x
            .iter()
            .map(|(x, w, _)| w * (ln_rising(r, *x) + ln_rising(b, *x) - ln_rising(a + b, *x)))
            .sum();
        let mut g = [0.0f64; 4];
        if with_gradient {
            for (x, w, _) in by_x {
                let ab = digamma_rising(a + b, *x);
                g[0] += w * r * digamma_rising(r, *x);
                g[2] -= w * a * ab;
                g[3] += w * b * (digamma_rising(b, *x) - ab);
            }
        }
        let mut rest = 0.0;
        self.each(m, by_x, |w, x, cx, t, tx| {
            let ([l1t, lt, ut], [l1x, lx, ux]) = (table[t as usize], table[tx as usize]);
            let a3 = -r * l1t - x * lt;
            let a4 = cx.map(|c| c - r * l1x - x * lx);
            // ln of the customer's likelihood but the ln Γ terms, and the weight of A4 in it.
            let (ln_alive, w4) = mix(a3, a4);
            rest += w * ln_alive;
            if with_gradient {
                let w3 = 1.0 - w4;
                g[0] -= w * r * (w3 * l1t + w4 * l1x);
                // alpha d/dalpha of -r ln(1 + v/alpha) - x ln(alpha + v).
                g[1] += w * (w3 * (r * ut - x * (1.0 - ut)) + w4 * (r * ux - x * (1.0 - ux)));
                if cx.is_some() {
                    g[2] += w * w4;
                    g[3] -= w * w4 * b / (b + (x - 1.0));
                }
            }
        });
        (gammas + rest, g)
    }
}

/// ln(e^A3 + e^A4) and the weight of A4 in it, from A3 and A4 (None: no A4).
fn mix(a3: f64, a4: Option<f64>) -> (f64, f64) {
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
}

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
        fit_gamma_gamma_from(sample, penalty, Start::Sample)
    });
    fit_gamma_gamma_from(data, penalty, start)
}

/// [`fit_gamma_gamma`] of repeat buyers in canonical order, from `start`.
pub(crate) fn fit_gamma_gamma_from(
    data: Vec<((f64, f64), f64)>,
    penalty: f64,
    start: Start,
) -> Fit<GammaGamma> {
    let buyers = GammaGammaBuyers::new(&data);
    // Three parameters need three distinct (frequency, monetary) summaries.
    let identified = data.len() >= 3;
    maximise_likelihood(
        |g, with_gradient| buyers.evaluate(g, with_gradient),
        penalty,
        total_weight(&data),
        start,
        &gamma_gamma_moments(&data),
        identified,
    )
}

/// Repeat buyers of one frequency x in a Gamma-Gamma fit: x, their total weight, the sum of
/// w ln m, their rows.
type GgGroup = (f64, f64, f64, Range<usize>);

/// The repeat buyers of a Gamma-Gamma fit (in canonical order), arranged for evaluating the
/// likelihood. Everything but ln(x m + v) depends on x alone: per distinct x (data is sorted
/// by x) the weight W, the sum S of w ln m, and per evaluation the sums L of w ln(x m + v)
/// and R of w / (x m + v) over its customers: one logarithm per customer.
struct GammaGammaBuyers<'a> {
    data: &'a [((f64, f64), f64)],
    /// Per buyer (in the order of `data`): z = x m, 1 / z and ln z, which every evaluation
    /// needs and no parameter changes.
    spends: Vec<[f64; 3]>,
    /// Whether the halves are summed on two threads (see `halves`).
    parallel: bool,
    /// Per half of the buyers: their groups by x.
    parts: [Vec<GgGroup>; 2],
}

impl<'a> GammaGammaBuyers<'a> {
    fn new(data: &'a [((f64, f64), f64)]) -> Self {
        let parts = runs_of_x(data, |(x, _)| *x).map(|runs| {
            let group = |run: Range<usize>| {
                let ((x, _), _) = data[run.start];
                let total = run_sum(data, &run, |(_, w)| *w);
                let logs = run_sum(data, &run, |((_, m), w)| w * m.ln());
                (x, total, logs, run)
            };
            runs.into_iter().map(group).collect()
        });
        let spends = data
            .iter()
            .map(|((x, m), _)| {
                let z = x * m;
                [z, 1.0 / z, z.ln()]
            })
            .collect();
        GammaGammaBuyers {
            data,
            spends,
            parallel: data.len() >= PARALLEL_FIT,
            parts,
        }
    }

    /// Over the buyers of `run` (one x), the sums of w ln(1 + z / v), w ln(1 + v / z) (z =
    /// x m) and, when `with_gradient`, w z / (z + v), given ln v. One logarithm a buyer: of
    /// the smaller ratio, ln(1 + s) with s = min(z / v, v / z) <= 1; the other term adds
    /// |ln z - ln v| to it (ln(1 + r) = ln r + ln(1 + 1 / r)), a sum of two terms >= 0, so
    /// neither form cancels however far apart z and v are (see `GammaGamma::ln_likelihood`).
    fn sums(&self, run: &Range<usize>, v: f64, ln_v: f64, with_gradient: bool) -> [f64; 3] {
        let inverse_v = 1.0 / v;
        let mut l = [0.0; 3];
        for ((_, w), [z, inverse_z, ln_z]) in
            self.data[run.clone()].iter().zip(&self.spends[run.clone()])
        {
            let (up, down) = (z * inverse_v, v * inverse_z);
            let smaller = up.min(down).ln_1p();
            let ln_ratio = ln_z - ln_v;
            l[0] += w * (smaller + ln_ratio.max(0.0));
            l[1] += w * (smaller + (-ln_ratio).max(0.0));
            if with_gradient {
                l[2] += w / (1.0 + down);
            }
        }
        l
    }

    /// The log-likelihood and, when `with_gradient`, its derivatives in ln p, ln q and ln v,
    /// in one pass: the two share every logarithm.
    fn evaluate(&self, g: &GammaGamma, with_gradient: bool) -> (f64, [f64; 3]) {
        let GammaGamma { p, q, v } = *g;
        let ln_v = v.ln();
        sum_halves(self.parallel, |k| {
            let mut d = [0.0f64; 3];
            let value = self.parts[k]
                .iter()
                .map(|(x, w, s, range)| {
                    let px = p * x;
                    let [la, lb, u] = self.sums(range, v, ln_v, with_gradient);
                    if with_gradient {
                        d[0] += px * (w * digamma_rising(px, q) - lb);
                        d[1] += q * (w * digamma_rising(q, px) - la);
                        d[2] += (px + q) * u - w * px;
                    }
                    w * ln_inverse_beta(px, q) - s - px * lb - q * la
                })
                .sum::<f64>();
            (value, d)
        })
    }
}
