#!/usr/bin/env bash
# Benchmark (a script, not a test): segflow vs DuckDB on the same generated order history.
#
#   ci/bench.sh [--sizes "1000000 10000000"] [--runs 3] [--with-100m] [--baseline BINARY] [--delta]
#
# For each size (order lines), `segflow generate --lines N` writes the data once into
# ${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}/generated-N (reused when present). Then
# segflow (release build, brought up to date first) with the demo's column
# mapping (fixtures/demo/segflow.toml, plus memory_limit = "4g") and
# ci/bench_duckdb.py (DuckDB, memory_limit 4GB, the same 7 published tables in plain SQL)
# run interleaved, --runs times each, under /usr/bin/time -v; a third run each round is
# segflow `--select`ing only those 7 tables ("segflow-7"). Both tools get the same number
# of threads (THREADS, 2: DuckDB's threads; segflow's tokio workers — its plans' partitions,
# units of work on those threads, are its own default for the input's size), write zstd level 1 and stage only the 10 order columns their tables read.
# Times: segflow's process wall time; DuckDB's time measured inside its process (Python's
# start-up and imports, ~0.3 s, left out). After the runs of a size, every table both
# tools computed is compared row by row (ci/bench_compare.py: EXCEPT ALL both ways, floats
# bit-equal or within 1e-9 relative); a difference stops the script with exit 1. Printed
# per size: median wall time (min..max), peak RSS (max over the runs), rows out, the
# segflow/DuckDB ratios, and each table's seconds in the last run of both tools (segflow's
# model durations against DuckDB's own timings, with the tables only segflow computes);
# then how time grows with the line count. --with-100m adds one segflow run over 100 M
# lines with memory_limit = "4g" (completion, wall, peak RSS).
# --baseline BINARY (another segflow release build, e.g. of an older commit) adds a
# fourth run each round, "baseline": that binary's whole run on the same data and config,
# interleaved with the others; the table then shows segflow's ratio to it, and the last
# outputs of both are compared with ci/compare_binaries.py --compare-dirs (tables, metadata,
# manifest; a difference stops the script with exit 1).
#
# --delta adds a run each round, "segflow-delta": the whole run with [output] format =
# "delta" (SEGFLOW_OUTPUT_FORMAT), shown against the Parquet run's wall time, with the bytes
# both published (every file under the table folders: data, plus the Delta logs).
# Caveats: segflow also computes customer_affinity, segment_migration (empty without a
# previous snapshot), the predictive CLV models (clv, clv_model, clv_backtest: two BG/NBD
# and Gamma-Gamma fits) and the clv rows of segment_summary, and stages the canonical orders and every internal model as Parquet
# before publishing; DuckDB computes only the 7 tables (its script keeps intermediates in
# DuckDB tables). The "extra" line shows segflow's model time for the extra tables: each
# model's wall time, which overlaps the model run beside it (`concurrent_models`), so the
# per-table seconds do not add up to the run.
# DuckDB's RSS includes the Python interpreter (~40 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="1000000 10000000"
RUNS=3
WITH_100M=0
BASELINE=""
DELTA=0
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) SIZES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --with-100m) WITH_100M=1; shift ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        --delta) DELTA=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || { echo "--baseline: not an executable: $BASELINE" >&2; exit 2; }
    BASELINE="$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")"
fi
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
for n in $SIZES; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--sizes: not a line count: $n" >&2; exit 2; }
done

AS_OF=2026-11-21
THREADS=2
SEVEN="customer_facts rfm lifecycle cohort_retention product_value channel_value segment_summary"
. ci/bench_lib.sh
bench_venv duckdb pyarrow
bench_build
! grep -q 'target_partitions' fixtures/demo/segflow.toml ||
    { echo "fixtures/demo/segflow.toml sets target_partitions: segflow's own choice is what is measured" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segflow-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.tsv"   # size lines tool run status wall_s rss_kb rows7 rows_all extra_ms
: > "$RESULTS"

# Actual line count of a data dir (Parquet metadata only).
line_count() {
    "$PY" -c 'import sys, glob, pyarrow.parquet as pq
print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True)))' "$1"
}

# segflow config: the demo's, with absolute inputs, output in $WORK and a 4 GiB pool.
segflow_config() {  # data_dir out_dir memory_limit -> path
    demo_config "$WORK/segflow.toml" "$1" "$2" "$3" "$WORK/spill"
    echo "$WORK/segflow.toml"
}

# One timed run each: append a result line and set STATUS (always return 0, so that
# `set -e` stays in force inside; it is off in functions called from `||` lists).
STATUS=0
run_segflow() {  # size lines run data memory_limit [tool name, extra run arguments...]
    local out="$WORK/sf-out" status=0 tool="${6:-segflow}" bin="$BIN" format=parquet
    [ "$tool" = baseline ] && bin="$BASELINE"
    [ "$tool" = segflow-delta ] && format=delta
    rm -rf "$out" "$WORK/spill"; mkdir -p "$WORK/spill"
    local cfg; cfg="$(segflow_config "$4" "$out" "$5")"
    /usr/bin/time -v -o "$WORK/time.txt" env TOKIO_WORKER_THREADS="$THREADS" \
        SEGFLOW_OUTPUT_FORMAT="$format" "$bin" --log-format json run --config "$cfg" --as-of "$AS_OF" "${@:7}" \
        > "$WORK/sf.stdout" 2> "$WORK/sf.stderr" || status=$?
    local rows="-\t-\t-"
    if [ "$status" -eq 0 ]; then
        rows="$("$PY" - "$out/_manifest/as_of=$AS_OF.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
seven = ["customer_facts", "rfm", "lifecycle", "cohort_retention", "product_value",
         "channel_value", "segment_summary"]
extra = sum(v["duration_ms"] for k, v in m["models"].items()
            if k in ("customer_affinity", "segment_migration", "btyd_summary", "clv_model", "clv_scores",
                     "clv", "clv_holdout_summary", "clv_backtest_scores", "clv_backtest"))
print(f'{sum(m["tables"][t]["rows"] for t in seven)}\t{sum(t["rows"] for t in m["tables"].values())}\t{extra}')
PY
)"
        # Bytes under the published table folders (data files, _SUCCESS, Delta logs).
        "$PY" -c 'import os, sys
root = sys.argv[1]
print(sum(os.path.getsize(os.path.join(d, f)) for top in os.listdir(root) if not top.startswith("_")
          for d, _, fs in os.walk(os.path.join(root, top)) for f in fs))' "$out" |
            sed "s/^/$1\t$tool\t/" >> "$WORK/bytes.tsv"
        if [ "$tool" = segflow ]; then
            cp "$out/_manifest/as_of=$AS_OF.json" "$WORK/last-manifest.json"
            cp "$WORK/sf.stderr" "$WORK/last-log.json"
            rm -rf "$WORK/last-sf-out"; mv "$out" "$WORK/last-sf-out"   # compared afterwards
        elif [ "$tool" = baseline ]; then
            rm -rf "$WORK/last-base-out"; mv "$out" "$WORK/last-base-out"
        fi
    else
        echo "segflow failed (exit $status); last lines of stderr:" >&2
        tail -5 "$WORK/sf.stderr" >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%b\n' "$1" "$2" "$tool" "$3" "$status" \
        "$(time_report "$WORK/time.txt")" "$rows" >> "$RESULTS"
    rm -rf "$out" "$WORK/spill"
    STATUS=$status
}

run_duckdb() {  # size lines run data
    local out="$WORK/dd-out" status=0
    rm -rf "$out"
    /usr/bin/time -v -o "$WORK/time.txt" \
        "$PY" ci/bench_duckdb.py --orders "$4" --out "$out" --as-of "$AS_OF" \
        --threads "$THREADS" --memory-limit 4GB > "$WORK/dd.json" 2> "$WORK/dd.stderr" || status=$?
    local rows="-\t-\t-" timing
    timing="$(time_report "$WORK/time.txt")"
    if [ "$status" -eq 0 ]; then
        rows="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["rows_total"], "-", "-", sep="\t")' "$WORK/dd.json")"
        # The time inside the process (no Python start-up and imports), the RSS of it all.
        timing="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["seconds_total"])' "$WORK/dd.json")\t$(echo "$timing" | cut -f2)"
        cp "$WORK/dd.json" "$WORK/last-duckdb.json"
        rm -rf "$WORK/last-dd-out"; mv "$out" "$WORK/last-dd-out"   # compared afterwards
    else
        echo "bench_duckdb.py failed (exit $status); last lines of stderr:" >&2
        tail -5 "$WORK/dd.stderr" >&2
    fi
    printf '%s\t%s\tduckdb\t%s\t%s\t%b\t%b\n' "$1" "$2" "$3" "$status" \
        "$timing" "$rows" >> "$RESULTS"
    rm -rf "$out"
    STATUS=$status
}

# Every table both tools computed, row by row, in the last runs (fails loudly).
check_rows() {
    if ! "$PY" ci/bench_compare.py --segflow-out "$WORK/last-sf-out" \
            --duckdb-out "$WORK/last-dd-out" --as-of "$AS_OF"; then
        echo "segflow and DuckDB computed different tables (above): the timings compare nothing" >&2
        exit 1
    fi
}

# Per-table seconds of the last run of each tool, side by side: DuckDB's own timings
# (bench_duckdb.py's JSON) against segflow's (the manifest's model durations; the staging
# pass from the JSON log: the run's first line to "canonical orders staged").
table_times() {
    "$PY" - "$WORK/last-manifest.json" "$WORK/last-duckdb.json" "$WORK/last-log.json" <<'PY'
import datetime, json, sys
m, d = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
log = [json.loads(l) for l in open(sys.argv[3]) if l.startswith("{")]
ts = lambda e: datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
staged = [ts(e) for e in log if e["fields"].get("message") == "canonical orders staged"]
seg = {k: v["duration_ms"] / 1000 for k, v in m["models"].items()}
if staged:
    seg["orders"] = staged[0] - ts(log[0])
duck = {k: v["seconds"] for part in ("internal", "tables") for k, v in d[part].items()}
only = {k: v for k, v in seg.items() if k not in duck}
def line(items):  # (name, seconds, text), largest first; under 0.05 s left out
    return "  ".join(f"{k} {text}" for k, secs, text in sorted(items, key=lambda i: -i[1]) if secs >= 0.05)
both = line((t, s, f"{seg.get(t, float('nan')):.2f}/{s:.2f}") for t, s in duck.items())
print(f"  per table, last runs (s):  {both}  (segflow/duckdb; orders = staging; segflow's models"
      f" overlap, two at a time)", file=sys.stderr)
print(f"  segflow only (s):  {line((k, v, f'{v:.2f}') for k, v in only.items())}"
      f"  (total {sum(only.values()):.2f})", file=sys.stderr)
PY
}

echo "segflow $("$BIN" --version | awk '{print $2}') vs DuckDB $("$PY" -c 'import duckdb; print(duckdb.__version__)');" \
     "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), as_of $AS_OF, $RUNS run(s) each" >&2
for n in $SIZES; do
    dir="$(bench_data "generated-$n" "$n")"
    lines="$(line_count "$dir")"
    echo "== $n lines ($lines generated, $(du -sh "$dir" | cut -f1)) ==" >&2
    find "$dir" -name '*.parquet' -exec cat {} + > /dev/null   # same warm page cache for both
    for run in $(seq 1 "$RUNS"); do
        run_segflow "$n" "$lines" "$run" "$dir" 4g
        [ "$STATUS" -eq 0 ] || exit 1
        echo "  run $run segflow: $(tail -1 "$RESULTS" | cut -f6,7 | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" >&2
        run_duckdb "$n" "$lines" "$run" "$dir"
        [ "$STATUS" -eq 0 ] || exit 1
        echo "  run $run duckdb:  $(tail -1 "$RESULTS" | cut -f6,7 | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" >&2
        # shellcheck disable=SC2086
        run_segflow "$n" "$lines" "$run" "$dir" 4g segflow-7 --select $SEVEN
        [ "$STATUS" -eq 0 ] || exit 1
        echo "  run $run segflow --select (7 tables): $(tail -1 "$RESULTS" | cut -f6,7 | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" >&2
        if [ "$DELTA" -eq 1 ]; then
            run_segflow "$n" "$lines" "$run" "$dir" 4g segflow-delta
            [ "$STATUS" -eq 0 ] || exit 1
            echo "  run $run segflow, Delta output: $(tail -1 "$RESULTS" | cut -f6,7 | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" >&2
        fi
        if [ -n "$BASELINE" ]; then
            run_segflow "$n" "$lines" "$run" "$dir" 4g baseline
            [ "$STATUS" -eq 0 ] || exit 1
            echo "  run $run baseline: $(tail -1 "$RESULTS" | cut -f6,7 | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" >&2
        fi
    done
    check_rows
    if [ -n "$BASELINE" ] && ! "$PY" ci/compare_binaries.py --compare-dirs "$WORK/last-base-out" "$WORK/last-sf-out" >&2; then
        echo "segflow and the baseline published different tables (above)" >&2
        exit 1
    fi
    table_times
done

if [ "$WITH_100M" -eq 1 ]; then
    n=100000000
    dir="$(bench_data "generated-$n" "$n")"
    lines="$(line_count "$dir")"
    echo "== $n lines ($lines generated, $(du -sh "$dir" | cut -f1)), segflow only, memory_limit 4g ==" >&2
    run_segflow "$n" "$lines" 1 "$dir" 4g
fi

touch "$WORK/bytes.tsv"
"$PY" - "$RESULTS" "$RUNS" "${BASELINE:-}" "$WORK/bytes.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs = sys.argv[2]
by = {}
for size, lines, tool, run, status, wall, rss, rows7, rows_all, extra in rows:
    by.setdefault((int(size), tool), []).append(dict(
        lines=int(lines), ok=status == "0", status=status, wall=float(wall), rss=int(rss),
        rows7=rows7, rows_all=rows_all, extra=extra))

def mib(kb):
    return f"{kb / 1024:,.0f} MiB"

print()
print(f"segflow vs DuckDB, as_of 2026-11-21, 2 cores, 2 threads and memory limit 4 GiB each, {runs} interleaved run(s) per tool")
print("segflow: every model (18), gates, checks, report; segflow-7: --select of DuckDB's 7 tables; duckdb: the 7 tables")
baseline = sys.argv[3]
if baseline:
    print(f"baseline: {baseline} (whole run, interleaved); x baseline = segflow's median over the baseline's")
hdr = f"{'lines':>13}  {'tool':<10} {'median wall':>11} {'(min..max)':>15} {'peak RSS':>11} {'rows out (7)':>12} {'rows out (all)':>14} {'x duckdb':>9}"
if baseline:
    hdr += f" {'x baseline':>10}"
print(hdr)
print("-" * len(hdr))
medians = {}
for size in sorted({s for s, _ in by}):
    for tool in ("segflow", "segflow-7", "duckdb", "baseline", "segflow-delta"):
        rs = by.get((size, tool))
        if not rs:
            continue
        ok = [r for r in rs if r["ok"]]
        lines = f"{rs[0]['lines']:,}"
        if not ok:
            print(f"{lines:>13}  {tool:<10} {'FAILED (exit ' + rs[0]['status'] + ')':>11}  peak RSS {mib(max(r['rss'] for r in rs))}")
            continue
        med = statistics.median(r["wall"] for r in ok)
        medians[(size, tool)] = (med, ok[0]["lines"])
        rng = f"({min(r['wall'] for r in ok):.2f}..{max(r['wall'] for r in ok):.2f})"
        ratio = ""
        if tool not in ("duckdb", "baseline", "segflow-delta") and (size, "duckdb") in by:
            d = [r["wall"] for r in by[(size, "duckdb")] if r["ok"]]
            if d:
                ratio = f"{med / statistics.median(d):.2f}x"
        vs_base = ""
        if baseline and tool == "segflow":
            b = [r["wall"] for r in by.get((size, "baseline"), []) if r["ok"]]
            if b:
                vs_base = f" {med / statistics.median(b):>9.3f}x"
        fails = len(rs) - len(ok)
        note = f"  ({fails} failed)" if fails else ""
        print(f"{lines:>13}  {tool:<10} {med:>9.2f} s {rng:>15} {mib(max(r['rss'] for r in rs)):>11} "
              f"{ok[0]['rows7']:>12} {ok[0]['rows_all']:>14} {ratio:>9}{vs_base}{note}")
    if (size, "segflow-delta") in medians and (size, "segflow") in medians:
        published = {}
        for l in open(sys.argv[4]):
            s, tool, b = l.split("\t")
            if int(s) == size:
                published[tool] = int(b)
        pq, dl = published.get("segflow", 0), published.get("segflow-delta", 0)
        print(f"{'':>13}  Delta output: {medians[(size, 'segflow-delta')][0] / medians[(size, 'segflow')][0]:.3f}x the Parquet "
              f"run's median wall; published bytes {dl:,} vs {pq:,} ({dl / pq if pq else float('nan'):.3f}x)")
    sf = [r for r in by.get((size, "segflow"), []) if r["ok"] and r["extra"] != "-"]
    if sf and (size, "duckdb") in by:
        print(f"{'':>13}  (segflow model time for customer_affinity, segment_migration and the clv models, not computed by "
              f"DuckDB: median {statistics.median(int(r['extra']) for r in sf) / 1000:.2f} s, overlapping other models)")

sizes = sorted({s for s, _ in medians})
if len(sizes) >= 2:
    print()
    print("time growth with data size (median wall):")
    for a, b in zip(sizes, sizes[1:]):
        parts, la, lb = [], None, None
        for tool in ("segflow", "duckdb"):
            if (a, tool) in medians and (b, tool) in medians:
                (ta, la), (tb, lb) = medians[(a, tool)], medians[(b, tool)]
                parts.append(f"{tool} time x{tb / ta:.2f}")
        if parts:
            print(f"  {a:,} -> {b:,} lines (lines x{lb / la:.2f}): " + ", ".join(parts))
PY
