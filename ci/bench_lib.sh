# Shared by the benchmark scripts (sourced from the repo root, after `set -euo pipefail`):
# the Python venv, the release build, generated order histories and the demo's config over
# them.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/segflow-target}"
BENCH_DATA_ROOT="${BENCH_DATA_DIR:-$HOME/.cache/segflow-bench}"
VENV="${TEST_VENV:-.venv}"
PY="$VENV/bin/python"
# segflow rejects unknown SEGFLOW_* variables (and known ones would change the run).
for v in $(compgen -e | grep '^SEGFLOW_' || true); do unset "$v"; done

# The venv with ci/requirements.txt, installed unless the given Python modules import.
bench_venv() {  # module...
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    local imports
    imports="$(IFS=,; echo "$*")"
    if ! "$PY" -c "import $imports" 2> /dev/null; then
        "$PY" -m pip install --quiet --disable-pip-version-check -r ci/requirements.txt
    fi
}

# Brings the release build up to date and sets BIN to it.
bench_build() {
    BIN="$CARGO_TARGET_DIR/release/segflow"
    echo "building $BIN (release; ~45 min from scratch, seconds when up to date) ..." >&2
    cargo build --release --quiet
}

# The directory of a generated order history of N lines (`segflow generate --lines N` and
# the extra arguments, written once into a temp name and renamed when complete; reused).
bench_data() {  # name lines [generate arguments...]
    local dir="$BENCH_DATA_ROOT/$1" lines="$2"
    shift 2
    if [ ! -d "$dir" ]; then
        echo "generating $lines lines into $dir ..." >&2
        mkdir -p "$BENCH_DATA_ROOT"
        rm -rf "$dir.tmp"
        "$BIN" generate --lines "$lines" "$@" --out "$dir.tmp" >&2
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Writes FILE: the demo's config (its column mapping) with `orders`
# read from DATA, the demo's customers and marketing spend, and the output at OUT; with a
# memory limit, also [runtime] memory_limit and temp_dir.
demo_config() {  # file data out [memory_limit temp_dir]
    local demo
    demo="$(pwd)/fixtures/demo"
    sed -e "s|^uri = \"orders\"|uri = \"$2\"|" \
        -e "s|^uri = \"customers.parquet\"|uri = \"$demo/customers.parquet\"|" \
        -e "s|^uri = \"marketing_spend.parquet\"|uri = \"$demo/marketing_spend.parquet\"|" \
        -e "s|^uri = \"../../out\"|uri = \"$3\"|" \
        fixtures/demo/segflow.toml > "$1"
    if [ $# -ge 5 ]; then
        printf '\n[runtime]\nmemory_limit = "%s"\ntemp_dir = "%s"\n' "$4" "$5" >> "$1"
    fi
    grep -q "uri = \"$2\"" "$1" || { echo "could not rewrite the orders uri in $1" >&2; exit 1; }
}

# Wall seconds and peak RSS (KiB), tab-separated, from a /usr/bin/time -v report.
time_report() {  # file
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; wall = s }
        /Maximum resident set size/ { rss = $2 }
        END { printf "%.2f\t%d\n", wall, rss }' "$1"
}
