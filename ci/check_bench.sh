#!/usr/bin/env bash
# Benchmark (a script, not a test): how long `segflow check` takes — the analyst's feedback
# loop — on the bundled demo project and on a generated 10 M-line order history.
#
#   ci/check_bench.sh [--lines 10000000] [--runs 5]
#
# `check` plans every model, check and data test against the input schemas (Parquet footers
# only, never the rows), so its time should not grow with the data: the target is under 2 s
# for both. Release build (brought up to date first); the generated data is shared with
# ci/bench.sh (${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}/generated-N). Prints the
# median and the range of the wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=10000000
RUNS=5
while [ $# -gt 0 ]; do
    case "$1" in
        --lines) LINES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        *) echo "unknown argument: $1 (use --lines N, --runs N)" >&2; exit 2 ;;
    esac
done
[[ "$LINES" =~ ^[1-9][0-9]*$ ]] || { echo "--lines must be a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }

. ci/bench_lib.sh
bench_build
DATA="$(bench_data "generated-$LINES" "$LINES")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/segflow-check-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# The demo config with the generated data as its orders input (same source schema).
demo_config "$WORK/big.toml" "$DATA" "$WORK/out"

measure() {
    local label="$1" config="$2" times=()
    for _ in $(seq "$RUNS"); do
        local start end
        start=$(date +%s%N)
        "$BIN" --log-format json check --config "$config" > "$WORK/check.out" 2>/dev/null ||
            { echo "segflow check failed on $label:" >&2; cat "$WORK/check.out" >&2; exit 1; }
        end=$(date +%s%N)
        times+=("$(awk -v ns="$((end - start))" 'BEGIN { printf "%.3f", ns / 1e9 }')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v label="$label" -v runs="$RUNS" '
        { t[NR] = $1 }
        END {
            median = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            verdict = (median < 2.0) ? "under 2 s" : "OVER 2 s"
            printf "%-34s median %.3f s  (%.3f..%.3f, %d runs)  %s\n", label, median, t[1], t[NR], runs, verdict
        }'
    tail -1 "$WORK/check.out"
}

echo "segflow check, release build, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
measure "demo project (fixtures/demo)" fixtures/demo/segflow.toml
measure "$(printf "%'d" "$LINES") generated lines ($(du -sh "$DATA" | cut -f1))" "$WORK/big.toml"
