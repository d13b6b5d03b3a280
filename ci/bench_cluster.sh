#!/usr/bin/env bash
# Benchmark (a script, not a test): the local engine against a Ballista cluster of segflow
# processes on the same machine, on the same generated order history.
#
#   ci/bench_cluster.sh [--lines 10000000] [--runs 3] [--executors 2] [--tasks 1] [--bin BINARY] [--keep]
#
# `segflow generate --lines N` writes the data once into
# ${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}/generated-N (shared with ci/bench.sh). The
# release build (brought up to date first, or --bin) starts a scheduler and --executors
# executors on 127.0.0.1 (free ports; each with --concurrent-tasks --tasks and a 2 GiB
# memory limit; work dirs in a temp dir), kept up for every run. Then, interleaved, --runs
# times each: "local", the whole run on the local engine (the demo's config with the
# generated orders, memory_limit 4g, 2 tokio workers), and "cluster",
# the same config and output path with SEGFLOW_RUNTIME_ENGINE=ballista (staging, lock and
# publish in the run's process; every model, check and data test on the cluster). Each run
# is timed under /usr/bin/time -v; the cluster's CPU seconds (scheduler and executors, from
# /proc/PID/stat) and its shuffle output (the executors' "task wrote its shuffle output"
# log events: rows and bytes every task wrote to its shuffle files, the last stage's being
# the job's result) are counted per run. The last outputs of both are compared with
# ci/compare_binaries.py --compare-dirs (every table's rows, floats bit-equal, the
# manifests but their config hash); a difference stops the script with exit 1.
# --keep leaves the temp dir (outputs, logs) and prints its path.
# Printed: median wall (min..max) and peak RSS of each, the cluster/local ratio, the
# cluster's CPU seconds and shuffle bytes, and per model the seconds of the last runs side
# by side (the staging pass as "orders").
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=10000000
RUNS=3
EXECUTORS=2
TASKS=1
BIN=""
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --lines) LINES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --executors) EXECUTORS="$2"; shift 2 ;;
        --tasks) TASKS="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for v in LINES RUNS EXECUTORS TASKS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer" >&2; exit 2; }
done

AS_OF=2026-11-21
THREADS=2
. ci/bench_lib.sh
bench_venv pyarrow
if [ -z "$BIN" ]; then
    bench_build
fi
[ -x "$BIN" ] || { echo "--bin: not an executable: $BIN" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segflow-bench-cluster.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    if [ "$KEEP" -eq 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
RESULTS="$WORK/results.tsv"   # tool run status wall_s rss_kb cluster_cpu_s shuffle_rows shuffle_bytes tasks
: > "$RESULTS"

data="$(bench_data "generated-$LINES" "$LINES")"

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {  # port pid name
    for _ in $(seq 1 300); do
        if (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; then return 0; fi
        kill -0 "$2" 2> /dev/null || { echo "$3 exited; its log:" >&2; cat "$WORK/$3.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$3 did not listen on $1 within 30 s" >&2; exit 1
}

# The cluster: one scheduler, $EXECUTORS executors.
SCHEDULER_PORT="$(free_port)"
"$BIN" --log-format json scheduler --bind "127.0.0.1:$SCHEDULER_PORT" > /dev/null 2> "$WORK/scheduler.log" &
PIDS+=($!)
wait_port "$SCHEDULER_PORT" "${PIDS[0]}" scheduler
for i in $(seq 1 "$EXECUTORS"); do
    flight="$(free_port)"; grpc="$(free_port)"
    mkdir -p "$WORK/executor-$i"
    "$BIN" --log-format json executor --scheduler "127.0.0.1:$SCHEDULER_PORT" \
        --bind "127.0.0.1:$flight" --grpc-port "$grpc" --work-dir "$WORK/executor-$i" \
        --concurrent-tasks "$TASKS" --memory-limit 2g > /dev/null 2> "$WORK/executor-$i.log" &
    PIDS+=($!)
    wait_port "$flight" "$!" "executor-$i"
done

cfg="$WORK/segflow.toml"
demo_config "$cfg" "$data" "$WORK/out" 4g "$WORK/spill"

# CPU seconds (user + system) the cluster's processes have used so far.
cluster_cpu() {
    local ticks=0 p
    for p in "${PIDS[@]}"; do
        ticks=$(( ticks + $(awk '{ print $14 + $15 }' "/proc/$p/stat") ))
    done
    echo "$ticks $(getconf CLK_TCK)" | awk '{ printf "%.2f", $1 / $2 }'
}
# Rows, bytes and tasks of the shuffle output logged by the executors after line $1 of each log.
shuffle_since() {
    "$PY" - "$WORK" "$EXECUTORS" "$@" <<'PY'
import json, sys
work, n, offsets = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
rows = bytes_ = tasks = 0
for i in range(1, n + 1):
    for line in open(f"{work}/executor-{i}.log").readlines()[offsets[i - 1]:]:
        if not line.startswith("{"):
            continue
        f = json.loads(line).get("fields", {})
        if f.get("message") == "task wrote its shuffle output":
            rows, bytes_, tasks = rows + int(f["rows"]), bytes_ + int(f["bytes"]), tasks + 1
print(f"{rows}\t{bytes_}\t{tasks}")
PY
}

run() {  # tool run_number
    local tool="$1" status=0 env=(TOKIO_WORKER_THREADS="$THREADS")
    [ "$tool" = cluster ] && env+=(SEGFLOW_RUNTIME_ENGINE=ballista "SEGFLOW_RUNTIME_SCHEDULER=df://127.0.0.1:$SCHEDULER_PORT")
    rm -rf "$WORK/out" "$WORK/spill"; mkdir -p "$WORK/spill"
    local offsets=() i cpu_before
    for i in $(seq 1 "$EXECUTORS"); do offsets+=("$(wc -l < "$WORK/executor-$i.log")"); done
    cpu_before="$(cluster_cpu)"
    /usr/bin/time -v -o "$WORK/time.txt" env "${env[@]}" "$BIN" --log-format json run \
        --config "$cfg" --as-of "$AS_OF" > /dev/null 2> "$WORK/$tool.stderr" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "the $tool run failed (exit $status); last lines of its log:" >&2
        tail -5 "$WORK/$tool.stderr" >&2
        exit 1
    fi
    local wall_rss cpu shuffle
    wall_rss="$(time_report "$WORK/time.txt")"
    cpu="$(echo "$(cluster_cpu) $cpu_before" | awk '{ printf "%.2f", $1 - $2 }')"
    shuffle="$(shuffle_since "${offsets[@]}")"
    printf '%s\t%s\t0\t%s\t%s\t%s\n' "$tool" "$2" "$wall_rss" "$cpu" "$shuffle" >> "$RESULTS"
    echo "  run $2 $tool: $(echo "$wall_rss" | awk '{printf "%s s, %.0f MiB", $1, $2/1024}')" \
         "$( [ "$tool" = cluster ] && echo "$cpu $shuffle" | awk '{printf "(cluster CPU %s s, shuffle %.1f MiB in %d tasks)", $1, $3/1048576, $4}')" >&2
    cp "$WORK/out/_manifest/as_of=$AS_OF.json" "$WORK/last-$tool-manifest.json"
    cp "$WORK/$tool.stderr" "$WORK/last-$tool-log.json"
    rm -rf "$WORK/last-$tool-out"; mv "$WORK/out" "$WORK/last-$tool-out"
}

echo "segflow $("$BIN" --version | awk '{print $2}'): local engine vs a Ballista cluster of $EXECUTORS executor(s) x $TASKS task(s) on" \
     "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $LINES lines ($(du -sh "$data" | cut -f1)), $RUNS run(s) each" >&2
find "$data" -name '*.parquet' -exec cat {} + > /dev/null   # the same warm page cache for both
for r in $(seq 1 "$RUNS"); do
    run local "$r"
    run cluster "$r"
done

# The two engines' last outputs: the same tables (the output path was the same for both).
# (The engine setting is part of the config hash.)
if ! "$PY" ci/compare_binaries.py --ignore-config-hash --compare-dirs "$WORK/last-local-out" "$WORK/last-cluster-out" >&2; then
    echo "the cluster published different tables than the local engine (above)" >&2
    exit 1
fi

"$PY" - "$RESULTS" "$WORK" <<'PY'
import datetime, json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
work = sys.argv[2]
by = {}
for tool, run, status, wall, rss, cpu, srows, sbytes, tasks in rows:
    by.setdefault(tool, []).append(dict(wall=float(wall), rss=int(rss), cpu=float(cpu),
                                        srows=int(srows), sbytes=int(sbytes), tasks=int(tasks)))
med = {t: statistics.median(r["wall"] for r in rs) for t, rs in by.items()}
print()
print(f"{'tool':<8} {'median wall':>11} {'(min..max)':>15} {'peak RSS (run)':>15} {'cluster CPU':>12} {'shuffle':>22}")
for tool in ("local", "cluster"):
    rs = by[tool]
    rng = f"({min(r['wall'] for r in rs):.2f}..{max(r['wall'] for r in rs):.2f})"
    cpu = f"{statistics.median(r['cpu'] for r in rs):.1f} s" if tool == "cluster" else ""
    shuffle = (f"{statistics.median(r['sbytes'] for r in rs) / 1048576:,.1f} MiB, "
               f"{statistics.median(r['srows'] for r in rs) / 1e6:.1f} M rows") if tool == "cluster" else ""
    print(f"{tool:<8} {med[tool]:>9.2f} s {rng:>15} {max(r['rss'] for r in rs) / 1024:>11,.0f} MiB {cpu:>12} {shuffle:>22}")
print(f"cluster / local: {med['cluster'] / med['local']:.2f}x (median wall)")

def seconds(tool):  # per model, and the staging pass as "orders"
    m = json.load(open(f"{work}/last-{tool}-manifest.json"))
    log = [json.loads(l) for l in open(f"{work}/last-{tool}-log.json") if l.startswith("{")]
    ts = lambda e: datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    out = {k: v["duration_ms"] / 1000 for k, v in m["models"].items()}
    staged = [ts(e) for e in log if e["fields"].get("message") == "canonical orders staged"]
    if staged:
        out["orders"] = staged[0] - ts(log[0])
    return out
local, cluster = seconds("local"), seconds("cluster")
items = sorted(local, key=lambda k: -max(local[k], cluster.get(k, 0)))
print("per model, last runs (s, local/cluster; models overlap, two at a time; orders = staging pass):")
print("  " + "  ".join(f"{k} {local[k]:.2f}/{cluster.get(k, float('nan')):.2f}" for k in items
                        if max(local[k], cluster.get(k, 0)) >= 0.05))
PY
