#!/usr/bin/env bash
# Benchmark (a script, not a test): fitting and scoring the predictive CLV models for a
# million customers, segflow against the Python package lifetimes on the same summaries.
#
#   ci/clv_bench.sh [--customers 1000000] [--runs 3] [--skip-lifetimes]
#
# 1. `segflow generate --customers N` (15.625 lines per customer, as the P4 benchmark's
#    data) into ${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}/clv-N, reused when present.
# 2. segflow (release build, brought up to date first) runs `--select clv clv_model` with
#    the demo's mapping and memory_limit = "4g", --runs times. From each manifest:
#    clv_model (both maximum-likelihood fits) + clv_scores and clv (scoring every customer:
#    p_alive, expected purchases 30/90/365 days, expected spend, discounted CLV 90/365 days;
#    then the bands),
#    the figure the target (<= 5 s) is about; btyd_summary (building the summaries) apart.
# 3. lifetimes 0.11 fits BetaGeoFitter and GammaGammaFitter (penalizer 0) on the summaries
#    segflow published in `clv` and computes the same predictions, timed in-process (one
#    run; skip with --skip-lifetimes).
# Printed: the median seconds of each part, the segflow/lifetimes ratio and both fits'
# parameters (they must agree).
set -euo pipefail
cd "$(dirname "$0")/.."

CUSTOMERS=1000000
RUNS=3
LIFETIMES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --customers) CUSTOMERS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --skip-lifetimes) LIFETIMES=0; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$CUSTOMERS" =~ ^[1-9][0-9]*$ ]] || { echo "--customers must be a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }

AS_OF=2026-11-21
. ci/bench_lib.sh
bench_venv duckdb lifetimes
bench_build
DATA="$(bench_data "clv-$CUSTOMERS" "$((CUSTOMERS * 15625 / 1000))" --customers "$CUSTOMERS")"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segflow-clv-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
CFG="$WORK/segflow.toml"
sed -e "s|^uri = \"orders\"|uri = \"$DATA\"|" \
    -e "/^\[input.customers\]/,/^$/d" \
    -e "/^\[input.marketing_spend\]/,/^$/d" \
    -e "s|^uri = \"../../out\"|uri = \"$WORK/out\"|" \
    fixtures/demo/segflow.toml > "$CFG"
printf '\n[runtime]\nmemory_limit = "4g"\ntemp_dir = "%s"\n' "$WORK/spill" >> "$CFG"
mkdir -p "$WORK/spill"

: > "$WORK/runs.tsv"
for run in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/out"
    "$BIN" --log-format json run --config "$CFG" --as-of "$AS_OF" --select clv clv_model \
        > /dev/null 2> "$WORK/stderr" || { tail -5 "$WORK/stderr" >&2; exit 1; }
    "$PY" - "$WORK/out/_manifest/as_of=$AS_OF.json" >> "$WORK/runs.tsv" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
ms = lambda k: m[k]["duration_ms"] / 1000
score = ms("clv_scores") + ms("clv")  # the predictions, then the bands
print(f'{ms("clv_model") + score:.3f}\t{ms("clv_model"):.3f}\t{score:.3f}\t{ms("btyd_summary"):.3f}')
PY
    echo "  run $run: $(tail -1 "$WORK/runs.tsv" | awk -F'\t' '{printf "fit + score %s s (fit %s s, score %s s; summaries %s s)", $1, $2, $3, $4}')" >&2
done

"$PY" - "$WORK/runs.tsv" "$WORK/out" "$AS_OF" "$LIFETIMES" <<'PY'
import glob, statistics, sys, time, warnings
import duckdb
warnings.filterwarnings("ignore")
runs = [list(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(r[i] for r in runs) for i in range(4)]
out, as_of, with_lifetimes = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
con = duckdb.connect()
pattern = f"{out}/clv/as_of={as_of}/**/*.parquet"
s = con.execute(f"SELECT frequency, recency, t, monetary FROM read_parquet('{pattern}')").df()
model = con.execute(f"SELECT * FROM read_parquet('{out}/clv_model/as_of={as_of}/**/*.parquet')").df().iloc[0]
print(f"customers: {len(s):,}; distinct (frequency, recency, t): "
      f"{len(s.drop_duplicates(['frequency', 'recency', 't'])):,}")
print(f"segflow   fit + score: {med[0]:.2f} s median of {len(runs)} (fit {med[1]:.2f} s, "
      f"score {med[2]:.2f} s; building the summaries {med[3]:.2f} s)")
print(f"segflow   BG/NBD r={model.r:.5f} alpha={model.alpha:.4f} a={model.a:.5f} b={model.b:.5f} "
      f"({model.bgnbd_iterations} iterations, converged {model.bgnbd_converged}); "
      f"Gamma-Gamma p={model.p:.4f} q={model.q:.4f} v={model.v:.4f}")
if with_lifetimes:
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    start = time.perf_counter()
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(s.frequency, s.recency, s.t)
    rep = s[(s.frequency > 0) & (s.monetary > 0)]
    ggf = GammaGammaFitter(penalizer_coef=0.0).fit(rep.frequency, rep.monetary)
    fitted = time.perf_counter()
    f, r, t = s.frequency, s.recency, s.t
    bgf.conditional_probability_alive(f, r, t)
    for h in (30, 90, 365):
        bgf.conditional_expected_number_of_purchases_up_to_time(h, f, r, t)
    ok = (f > 0) & (s.monetary > 0)
    spend = ggf.conditional_expected_average_profit(f.where(ok, 1), s.monetary.where(ok, 1))
    from lifetimes.utils import _customer_lifetime_value
    _customer_lifetime_value(bgf, f, r, t, spend, time=3, discount_rate=0.01, freq="D")
    _customer_lifetime_value(bgf, f, r, t, spend, time=12, discount_rate=0.01, freq="D")
    done = time.perf_counter()
    total = done - start
    print(f"lifetimes fit + score: {total:.2f} s (fit {fitted - start:.2f} s, score {done - fitted:.2f} s)")
    p = bgf.params_
    print(f"lifetimes BG/NBD r={p.r:.5f} alpha={p.alpha:.4f} a={p.a:.5f} b={p.b:.5f}; "
          f"Gamma-Gamma p={ggf.params_.p:.4f} q={ggf.params_.q:.4f} v={ggf.params_.v:.4f}")
    print(f"segflow / lifetimes: {med[0] / total:.3f}x")
PY
