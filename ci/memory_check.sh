#!/usr/bin/env bash
# Memory check (a script, not a test): a release build of segflow over a large generated
# order history (`segflow generate`, default 12.5 M lines / 800 k customers), once with
# `memory_limit = "1g"` and once without a limit; prints wall time and peak RSS of each.
#
#   ci/memory_check.sh [DATA_DIR] [LINES]
#
# DATA_DIR is generated when it does not exist (default /tmp/segflow-orders-12m).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-/tmp/segflow-orders-12m}"
LINES="${2:-12500000}"
. ci/bench_lib.sh
bench_venv pyarrow
bench_build
if [ ! -d "$DATA" ]; then
    "$BIN" generate --out "$DATA" --lines "$LINES"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for limit in 1g none; do
    cfg="$WORK/segflow-$limit.toml"
    if [ "$limit" != none ]; then
        demo_config "$cfg" "$DATA" "$WORK/out-$limit" "$limit" "$WORK"
    else
        demo_config "$cfg" "$DATA" "$WORK/out-$limit"
    fi
    /usr/bin/time -v "$BIN" --log-format json run --config "$cfg" --as-of 2026-11-21 \
        > "$WORK/stdout-$limit" 2> "$WORK/stderr-$limit" || {
        tail -5 "$WORK/stderr-$limit"; exit 1; }
    rss_kb=$(grep "Maximum resident set size" "$WORK/stderr-$limit" | awk '{print $NF}')
    wall=$(grep "Elapsed (wall clock)" "$WORK/stderr-$limit" | awk '{print $NF}')
    printf 'memory_limit=%-5s wall=%s peak_rss=%.2f GiB\n' "$limit" "$wall" \
        "$(echo "$rss_kb / 1048576" | bc -l)"
    grep -o '"model computed","model":"[a-z_]*","rows":[0-9]*,"duration_ms":[0-9]*' \
        "$WORK/stderr-$limit" | sed 's/"model computed",/  /' || true
done
