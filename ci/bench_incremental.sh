#!/usr/bin/env bash
# Benchmark (a script, not a test): a nightly run that adds one day of orders, incremental
# (from the state the previous night kept) against a full run of the same date, on the
# same machine, data and memory limit.
#
#   ci/bench_incremental.sh [--lines 10000000] [--runs 3] [--bin BINARY] [--keep]
#
# `segflow generate --lines N` writes the history once into
# ${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}/generated-N (shared with ci/bench.sh); DuckDB
# then splits it, once, into nightly-N/: `orders/month=YYYY-MM/` with every line before the
# history's last day (sorted by time, as an export would be) and `new-day.parquet` with the
# last day's lines (new orders, and refunds of old ones). The release build (brought up to
# date first, or --bin) runs the demo's config over `orders/` (memory_limit 4g, partitions by
# input size, 2 tokio workers):
#   1. "base": a full run for the day before the last, which keeps the state (timed, shown);
#   2. then, with the last day's file added as `orders/month=M/day-D.parquet`, --runs times
#      interleaved, each from a hard-linked copy of the base output: "incremental" (a plain
#      run for the last day: it must say run.mode = incremental) and "full" (the same with
#      --full-refresh).
# Every run is timed under /usr/bin/time -v. The last incremental and full snapshots are
# compared table by table with DuckDB (each published table and each kept state table, by
# the files the manifests list: EXCEPT ALL both ways, values exactly equal); a difference
# exits 1. Printed: median wall (min..max) and peak
# RSS of each, incremental / full, and per model the seconds of the last runs side by side
# (the staging pass as "orders"), with the state's bytes. --keep leaves the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=10000000
RUNS=3
BIN=""
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --lines) LINES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for v in LINES RUNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer" >&2; exit 2; }
done

THREADS=2
. ci/bench_lib.sh
bench_venv duckdb pyarrow
if [ -z "$BIN" ]; then
    bench_build
fi
[ -x "$BIN" ] || { echo "--bin: not an executable: $BIN" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segflow-bench-incremental.XXXXXX")"
cleanup() {
    if [ "$KEEP" -eq 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

generated="$(bench_data "generated-$LINES" "$LINES")"
nightly="$BENCH_DATA_ROOT/nightly-$LINES"
if [ ! -d "$nightly" ]; then
    echo "splitting $generated at its last day into $nightly ..." >&2
    rm -rf "$nightly.tmp"
    mkdir -p "$nightly.tmp"
    "$PY" - "$generated" "$nightly.tmp" <<'PY'
import duckdb, sys
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"CREATE VIEW lines AS SELECT * FROM read_parquet('{src}/**/*.parquet', hive_partitioning = true)")
last = con.execute("SELECT max(created_at)::DATE FROM lines").fetchone()[0]
con.execute(f"""COPY (SELECT * FROM lines WHERE created_at::DATE < DATE '{last}' ORDER BY created_at)
    TO '{dst}/orders' (FORMAT parquet, PARTITION_BY (month), COMPRESSION zstd)""")
con.execute(f"""COPY (SELECT * EXCLUDE (month) FROM lines WHERE created_at::DATE = DATE '{last}' ORDER BY created_at)
    TO '{dst}/new-day.parquet' (FORMAT parquet, COMPRESSION zstd)""")
open(f"{dst}/last-day", "w").write(f"{last}\n")
PY
    mv "$nightly.tmp" "$nightly"
fi
LAST="$(cat "$nightly/last-day")"
BASE_DAY="$(date -u -d "$LAST - 1 day" +%F)"
DAY_FILE="$nightly/orders/month=${LAST:0:7}/day-$LAST.parquet"
rm -f "$DAY_FILE"

RESULTS="$WORK/results.tsv"   # kind run wall_s rss_kb
: > "$RESULTS"
run() {  # kind run_number out as_of [flags...]
    local kind="$1" n="$2" out="$3" as_of="$4" status=0
    shift 4
    demo_config "$WORK/$kind.toml" "$nightly/orders" "$out" 4g "$WORK/spill"
    rm -rf "$WORK/spill"; mkdir -p "$WORK/spill"
    /usr/bin/time -v -o "$WORK/time.txt" env TOKIO_WORKER_THREADS="$THREADS" "$BIN" --log-format json \
        run --config "$WORK/$kind.toml" --as-of "$as_of" "$@" > /dev/null 2> "$WORK/$kind.stderr" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "the $kind run failed (exit $status); last lines of its log:" >&2
        tail -5 "$WORK/$kind.stderr" >&2
        exit 1
    fi
    local wall_rss mode
    wall_rss="$(time_report "$WORK/time.txt")"
    mode="$("$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))["run"]; print(r["mode"], r["full_reason"] or "")' \
        "$out/_manifest/as_of=$as_of.json")"
    printf '%s\t%s\t%s\n' "$kind" "$n" "$wall_rss" >> "$RESULTS"
    echo "  $kind $n: $(echo "$wall_rss" | awk '{printf "%s s, %.0f MiB", $1, $2/1024}') ($mode)" >&2
    if [ "$kind" = incremental ] && [ "${mode%% *}" != incremental ]; then
        echo "the incremental run was not incremental: $mode" >&2
        exit 1
    fi
    cp "$out/_manifest/as_of=$as_of.json" "$WORK/last-$kind-manifest.json"
    cp "$WORK/$kind.stderr" "$WORK/last-$kind-log.json"
}

echo "segflow $("$BIN" --version | awk '{print $2}'): one new day ($LAST) incremental vs full on" \
     "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $LINES lines ($(du -sh "$nightly/orders" | cut -f1)), $RUNS run(s) each" >&2
run base 1 "$WORK/base" "$BASE_DAY"
cp "$nightly/new-day.parquet" "$DAY_FILE"
trap 'rm -f "$DAY_FILE"; cleanup' EXIT
find "$nightly/orders" -name '*.parquet' -exec cat {} + > /dev/null   # the same warm page cache for both
for r in $(seq 1 "$RUNS"); do
    for kind in incremental full; do
        rm -rf "$WORK/$kind"
        cp -al "$WORK/base" "$WORK/$kind"   # segflow never writes into an existing file
        if [ "$kind" = full ]; then
            run "$kind" "$r" "$WORK/$kind" "$LAST" --full-refresh
        else
            run "$kind" "$r" "$WORK/$kind" "$LAST"
        fi
    done
done

# Table by table (and each kept state table), by the files the manifests list: rows equal
# as multisets (EXCEPT ALL both ways: exact equality, floats to the bit but -0.0 = 0.0).
if ! "$PY" - "$WORK/incremental" "$WORK/full" "$LAST" <<'PY' >&2
import duckdb, json, sys
a, b, day = sys.argv[1:]
read = lambda fs, hive=True: f"read_parquet({fs!r}, hive_partitioning = {str(hive).lower()}, union_by_name = true)"
def entries(out):
    """{table: SQL of its rows}; a kept state table is its base without the grains its delta
    holds, plus the delta (see the README, "When a run is incremental")."""
    m = json.load(open(f"{out}/_manifest/as_of={day}.json"))
    t = {k: read([f"{out}/{f}" for f in v["files"]]) for k, v in m["tables"].items()}
    for k, v in m["state"]["tables"].items():
        # (no hive columns: a shared base lies under an earlier snapshot's as_of folder)
        base = read([f"{out}/{f}" for f in v["files"]], False)
        if v.get("delta"):
            delta = read([f"{out}/{f}" for f in v["delta"]], False)
            same = " AND ".join(f"d.{g} = b.{g}" for g in v["grain"])
            base = (f"(SELECT * FROM {base} b WHERE NOT EXISTS (SELECT 1 FROM {delta} d WHERE {same}) "
                    f"UNION ALL SELECT * FROM {delta})")
        t[f"_state/{k}"] = base
    return t
ea, eb = entries(a), entries(b)
con = duckdb.connect()
bad = sorted(set(ea) ^ set(eb))
for name in sorted(set(ea) & set(eb)):
    ra, rb = ea[name], eb[name]
    n = con.execute(f"""SELECT (SELECT count(*) FROM (SELECT * FROM {ra} EXCEPT ALL SELECT * FROM {rb})),
                               (SELECT count(*) FROM (SELECT * FROM {rb} EXCEPT ALL SELECT * FROM {ra})),
                               (SELECT count(*) FROM {ra})""").fetchone()
    print(f"  {'OK  ' if n[:2] == (0, 0) else 'DIFF'} {name}: {n[2]:,} rows" + ("" if n[:2] == (0, 0) else f", {n[0]} only incremental, {n[1]} only full"))
    if n[:2] != (0, 0):
        bad.append(name)
if bad:
    print(f"different: {bad}")
    sys.exit(1)
PY
then
    echo "the incremental run published different tables than the full run (above)" >&2
    exit 1
fi
echo "  the incremental and the full run published the same tables and state" >&2

"$PY" - "$RESULTS" "$WORK" <<'PY'
import datetime, json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
work = sys.argv[2]
by = {}
for kind, run, wall, rss in rows:
    by.setdefault(kind, []).append(dict(wall=float(wall), rss=int(rss)))
med = {k: statistics.median(r["wall"] for r in rs) for k, rs in by.items()}
print()
print(f"{'run':<12} {'median wall':>11} {'(min..max)':>15} {'peak RSS':>12}")
for kind in ("base", "full", "incremental"):
    rs = by[kind]
    rng = f"({min(r['wall'] for r in rs):.2f}..{max(r['wall'] for r in rs):.2f})"
    print(f"{kind:<12} {med[kind]:>9.2f} s {rng:>15} {max(r['rss'] for r in rs) / 1024:>8,.0f} MiB")
print(f"incremental / full: {med['incremental'] / med['full']:.3f}x (median wall)")

def seconds(kind):
    m = json.load(open(f"{work}/last-{kind}-manifest.json"))
    log = [json.loads(l) for l in open(f"{work}/last-{kind}-log.json") if l.startswith("{")]
    ts = lambda e: datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    out = {k: v["duration_ms"] / 1000 for k, v in m["models"].items()}
    staged = [ts(e) for e in log if e["fields"].get("message") == "canonical orders staged"]
    if staged:
        out["orders"] = staged[0] - ts(log[0])
    at_a_time = [e["fields"]["concurrent_models"] for e in log
                 if e["fields"].get("message") == "models computed up to this many at a time"]
    return out, m, (at_a_time or ["?"])[0]
(full, fm, full_at), (inc, im, inc_at) = seconds("full"), seconds("incremental")
print(f"lines staged: full {fm['input']['rows_visible']:,}, incremental {im['input']['rows_visible']:,}; "
      f"state kept: {im['state']['bytes'] / 1048576:,.0f} MiB, of which the incremental night wrote "
      f"{sum(v['delta_bytes'] if v.get('delta') else v['bytes'] for v in im['state']['tables'].values()) / 1048576:,.1f} MiB "
      "(" + ", ".join(f"{k} {v['rows']:,} base rows + {v.get('delta_rows', 0):,} delta rows"
                      for k, v in im["state"]["tables"].items()) + ")")
items = sorted(full, key=lambda k: -max(full[k], inc.get(k, 0)))
print(f"per model, last runs (s, full / incremental; models at a time: {full_at} / {inc_at}; orders = staging pass):")
for k in items:
    print(f"  {k:<24} {full[k]:>8.2f} {inc.get(k, float('nan')):>8.2f}")
PY
