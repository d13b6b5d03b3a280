#!/usr/bin/env python3
"""Sweep of segflow's CLV fits over public order histories, against lifetimes.

The two raw CDNOW files that the `lifetimes` package ships (the master file: 23,570
customers, 69,659 order lines, January 1997 to June 1998; the sample: 2,357 of them) are
written as Parquet order sources. For each history, in days and in weeks, at every
month-end `as_of` from the third month on and at the last day of the history, segflow
computes `clv_model` (`run --select clv_model`); pandas computes the BTYD summary in
lifetimes' convention (purchase days; weeks = days / 7, unrounded) and lifetimes fits
BG/NBD and Gamma-Gamma to it. Each case passes when:

- both of segflow's fits converged in this run (`*_fit_source = 'this run'`, a method named,
  a finite log-likelihood);
- segflow's log-likelihood, evaluated by lifetimes' own likelihood function on lifetimes'
  summary, equals the one segflow published (1e-6 relative: the same summary and formula)
  and is no worse than lifetimes' fit (to 1e-6 relative);
- r and alpha (and p) are within 1 % of lifetimes'; a and b (q and v) within 1 % unless the
  likelihood is flat along them: then the case is listed as flat and the two
  log-likelihoods must be equal to 1e-6 relative.

Where lifetimes' own optimiser gives up (ConvergenceError, on the smallest early
histories), the reference is scipy's Nelder-Mead on lifetimes' likelihood function, run to
tight tolerances; the case's line says so.

One line per case with both tools' parameters side by side (also written to --table as
Markdown), then "N passed, M failed".

Usage:
    ci/clv_sweep.py --segflow target/debug/segflow --work <scratch dir> [--table FILE]
        [--datasets master,sample] [--units days,weeks]

Exit status: 0 when every case passed, 1 when one failed, 2 on usage errors.
"""

import argparse
import contextlib
import glob
import io
import math
import os
import subprocess
import sys
import time
import warnings

import duckdb
import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

import lifetimes  # noqa: E402
from lifetimes import BetaGeoFitter, GammaGammaFitter  # noqa: E402
from lifetimes.utils import ConvergenceError  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

PARAM_RTOL = 0.01
LL_RTOL = 1e-6
BGNBD = ["r", "alpha", "a", "b"]
GG = ["p", "q", "v"]


def raw_history(name):
    """The raw CDNOW file as (customer, date, amount) rows."""
    folder = os.path.join(os.path.dirname(lifetimes.__file__), "datasets")
    path = os.path.join(folder, f"CDNOW_{name}.txt")
    header = 0 if name == "master" else None
    rows = pd.read_csv(path, sep=r"\s+", header=header,
                       names=["customer", "extra", "date", "cds", "amount"]
                       if name == "sample" else ["customer", "date", "cds", "amount"],
                       dtype={"customer": str, "date": str})
    rows["date"] = pd.to_datetime(rows["date"], format="%Y%m%d")
    return rows[["customer", "date", "amount"]]


def as_of_dates(rows):
    """Every month-end from the third month of the history on, and its last day."""
    first, last = rows.date.min(), rows.date.max()
    third = (first + pd.offsets.MonthBegin(0) if first.day == 1 else first) + pd.offsets.MonthEnd(3)
    ends = list(pd.date_range(third, last, freq="ME"))
    if last not in ends:
        ends.append(last)
    return [d.date().isoformat() for d in ends]


def summary(rows, as_of, unit):
    """The BTYD summary at as_of in the lifetimes convention (what
    `summary_data_from_transaction_data` with freq="D" computes; written out here because
    lifetimes 0.11 predates the pandas in use): purchase days up to as_of, frequency =
    days - 1, recency = last - first day, T = as_of - first day, monetary = mean spend of
    the days after the first (0 without repeats); weeks = days / 7."""
    end = pd.Timestamp(as_of)
    days = (rows[rows.date <= end].groupby(["customer", "date"], as_index=False)["amount"].sum()
            .sort_values(["customer", "date"]))
    first = days.groupby("customer").date.transform("min")
    days["repeat"] = days.date > first
    g = days.groupby("customer")
    s = pd.DataFrame({
        "frequency": g.size() - 1,
        "recency": (g.date.max() - g.date.min()).dt.days.astype(float),
        "T": (end - g.date.min()).dt.days.astype(float),
    })
    repeat = days[days.repeat].groupby("customer").amount.mean()
    s["monetary_value"] = repeat.reindex(s.index).fillna(0.0)
    s["frequency"] = s["frequency"].astype(float)
    if unit == "weeks":
        s["recency"] = s["recency"] / 7.0
        s["T"] = s["T"] / 7.0
    return s


def bgnbd_ll(params, s):
    """lifetimes' BG/NBD log-likelihood (summed) at params."""
    f, r, t = (s[c].to_numpy(dtype=float) for c in ["frequency", "recency", "T"])
    w = np.ones_like(f)
    return -BetaGeoFitter._negative_log_likelihood(np.log(np.asarray(params, float)), f, r, t, w, 0.0) * w.sum()


def gg_ll(params, s):
    rep = s[(s.frequency > 0) & (s.monetary_value > 0)]
    x, m = rep.frequency.to_numpy(dtype=float), rep.monetary_value.to_numpy(dtype=float)
    w = np.ones_like(x)
    return -GammaGammaFitter._negative_log_likelihood(np.log(np.asarray(params, float)), x, m, w, 0.0) * w.sum()


def lifetimes_fit(fitter, nll, args):
    """lifetimes' fit; where lifetimes' own optimiser gives up (ConvergenceError: it
    happens on the smallest early histories), scipy's Nelder-Mead on lifetimes' own
    likelihood function from lifetimes' start, run to tight tolerances. Returns the
    parameters and which of the two gave them."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fitter.fit(*args)
        return list(fitter.params_.values), "lifetimes"
    except ConvergenceError:
        arrays = [np.asarray(a, dtype=float) for a in args]
        w = np.ones_like(arrays[0])
        best = minimize(nll, np.zeros(4 if isinstance(fitter, BetaGeoFitter) else 3), args=(*arrays, w, 0.0),
                        method="Nelder-Mead",
                        options={"maxiter": 50_000, "xatol": 1e-10, "fatol": 1e-14})
        return list(np.exp(best.x)), "scipy Nelder-Mead on lifetimes' likelihood"


def lifetimes_fits(s):
    bg, bg_how = lifetimes_fit(BetaGeoFitter(penalizer_coef=0.0),
                               BetaGeoFitter._negative_log_likelihood,
                               (s["frequency"], s["recency"], s["T"]))
    rep = s[(s.frequency > 0) & (s.monetary_value > 0)]
    gg, gg_how = lifetimes_fit(GammaGammaFitter(penalizer_coef=0.0),
                               GammaGammaFitter._negative_log_likelihood,
                               (rep["frequency"], rep["monetary_value"]))
    how = sorted({h for h in (bg_how, gg_how) if h != "lifetimes"})
    return bg, gg, how


def run_segflow(segflow, config, as_of, out):
    run = subprocess.run([segflow, "run", "--config", config, "--as-of", as_of,
                          "--select", "clv_model"], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"segflow exited {run.returncode}: {run.stderr[-2000:]}")
    pattern = os.path.join(out, "clv_model", f"as_of={as_of}", "**", "*.parquet")
    if not glob.glob(pattern, recursive=True):
        raise RuntimeError(f"no clv_model files under {pattern}")
    return duckdb.connect().execute(f"SELECT * FROM read_parquet('{pattern}')").df().iloc[0]


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def compare(model, names, seg, ref, seg_ll, ref_ll, free):
    """Problems of one model's fit (a list of text) and whether it was judged flat.
    `free`: parameters that may differ where the likelihood is flat along them."""
    problems = []
    if not seg_ll >= ref_ll - LL_RTOL * abs(ref_ll):
        problems.append(f"{model} log-likelihood {seg_ll:.6f} worse than lifetimes' {ref_ll:.6f}")
    flat = False
    for k, a, b in zip(names, seg, ref):
        if rel(a, b) <= PARAM_RTOL:
            continue
        if k in free and abs(seg_ll - ref_ll) <= LL_RTOL * abs(ref_ll):
            flat = True
            continue
        problems.append(f"{model} {k} {a:.6g} vs lifetimes {b:.6g} ({100 * rel(a, b):.2f} %)")
    return problems, flat


def case(segflow, rows, name, unit, as_of, config, out):
    m = run_segflow(segflow, config, as_of, out)
    s = summary(rows, as_of, unit)
    problems = []
    for model in ["bgnbd", "gamma_gamma"]:
        if not (m[f"{model}_converged"] and m[f"{model}_fit_source"] == "this run"
                and isinstance(m[f"{model}_method"], str)
                and math.isfinite(m[f"{model}_ln_likelihood"])):
            problems.append(f"{model} did not converge: converged={m[f'{model}_converged']} "
                            f"source={m[f'{model}_fit_source']} method={m[f'{model}_method']} "
                            f"LL={m[f'{model}_ln_likelihood']}")
    if int(m.bgnbd_customers) != len(s):
        problems.append(f"segflow fitted {m.bgnbd_customers} customers, lifetimes' summary has {len(s)}")
    seg_bg = [float(m[k]) for k in BGNBD]
    seg_gg = [float(m[k]) for k in GG]
    lt_bg, lt_gg, how = lifetimes_fits(s)
    seg_bg_ll, lt_bg_ll = bgnbd_ll(seg_bg, s), bgnbd_ll(lt_bg, s)
    seg_gg_ll, lt_gg_ll = gg_ll(seg_gg, s), gg_ll(lt_gg, s)
    for model, published, evaluated in [("bgnbd", m.bgnbd_ln_likelihood, seg_bg_ll),
                                        ("gamma_gamma", m.gamma_gamma_ln_likelihood, seg_gg_ll)]:
        if not rel(published, evaluated) <= LL_RTOL:
            problems.append(f"{model} published LL {published:.6f}, lifetimes' formula at "
                            f"segflow's parameters {evaluated:.6f}")
    p1, flat_bg = compare("BG/NBD", BGNBD, seg_bg, lt_bg, seg_bg_ll, lt_bg_ll, {"a", "b"})
    p2, flat_gg = compare("Gamma-Gamma", GG, seg_gg, lt_gg, seg_gg_ll, lt_gg_ll, {"q", "v"})
    problems += p1 + p2
    return {
        "case": f"{name} {unit} {as_of}", "customers": len(s),
        "repeat": int((s.frequency > 0).sum()),
        "seg_bg": seg_bg, "lt_bg": lt_bg, "seg_bg_ll": seg_bg_ll, "lt_bg_ll": lt_bg_ll,
        "seg_gg": seg_gg, "lt_gg": lt_gg, "seg_gg_ll": seg_gg_ll, "lt_gg_ll": lt_gg_ll,
        "method": f"{m.bgnbd_method} / {m.gamma_gamma_method}"
                  + (f" (reference: {', '.join(how)})" if how else ""),
        "flat": ", ".join(x for x, f in [("BG/NBD a,b", flat_bg), ("GG q,v", flat_gg)] if f),
        "problems": problems,
    }


def fmt(values):
    return " ".join(f"{v:.5g}" for v in values)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segflow", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--table", help="write the cases as a Markdown table here")
    ap.add_argument("--datasets", default="master,sample")
    ap.add_argument("--units", default="days,weeks")
    args = ap.parse_args(argv)
    if not os.path.exists(args.segflow):
        print(f"usage: {args.segflow} does not exist", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    results, passed, failed = [], 0, 0
    for name in args.datasets.split(","):
        rows = raw_history(name)
        orders = os.path.join(args.work, f"cdnow_{name}.parquet")
        rows.rename(columns={"date": "ts"}).to_parquet(orders, index=False)
        for unit in args.units.split(","):
            out = os.path.join(args.work, f"out_{name}_{unit}")
            config = os.path.join(args.work, f"segflow_{name}_{unit}.toml")
            with open(config, "w") as f:
                f.write(f"""[input.orders]
uri = "{orders}"
[input.orders.columns]
customer_id = "customer"
order_ts = "ts"
revenue = "amount"
[output]
uri = "{out}"
[params]
time_unit = "{unit}"
""")
            for as_of in as_of_dates(rows):
                started = time.monotonic()
                try:
                    r = case(args.segflow, rows, name, unit, as_of, config, out)
                except Exception as e:  # a crash is a failed case, named
                    r = {"case": f"{name} {unit} {as_of}", "problems": [f"{type(e).__name__}: {e}"]}
                results.append(r)
                took = time.monotonic() - started
                if r["problems"]:
                    failed += 1
                    print(f"FAIL {r['case']}: {'; '.join(r['problems'])}", flush=True)
                else:
                    passed += 1
                    print(f"PASS {r['case']} ({r['customers']} customers, {r['repeat']} repeat, "
                          f"{took:.1f} s): BG/NBD segflow {fmt(r['seg_bg'])} LL {r['seg_bg_ll']:.4f} "
                          f"| lifetimes {fmt(r['lt_bg'])} LL {r['lt_bg_ll']:.4f}; GG segflow "
                          f"{fmt(r['seg_gg'])} | lifetimes {fmt(r['lt_gg'])}; {r['method']}"
                          f"{'; flat: ' + r['flat'] if r['flat'] else ''}", flush=True)
    if args.table:
        os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
        with open(args.table, "w") as f:
            f.write("| case | customers | segflow r, alpha, a, b | lifetimes r, alpha, a, b | "
                    "LL segflow / lifetimes | segflow p, q, v | lifetimes p, q, v | method | flat |\n")
            f.write("|---|---|---|---|---|---|---|---|---|\n")
            for r in results:
                if "seg_bg" not in r:
                    f.write(f"| {r['case']} | failed: {'; '.join(r['problems'])} |||||||\n")
                    continue
                f.write(f"| {r['case']} | {r['customers']} | {fmt(r['seg_bg'])} | {fmt(r['lt_bg'])} | "
                        f"{r['seg_bg_ll']:.3f} / {r['lt_bg_ll']:.3f} | {fmt(r['seg_gg'])} | "
                        f"{fmt(r['lt_gg'])} | {r['method']} | {r['flat']} |\n")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
