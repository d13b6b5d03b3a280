"""Reads the metrics file of the demo run with the Prometheus client library's own parser
(what a scraper would do) and checks it against the published tables, counted by pyarrow.

usage: metrics_check.py METRICS_FILE OUTPUT_ROOT AS_OF
"""

import glob
import os
import sys

import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    path, out, as_of = sys.argv[1:4]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    for name in [
        "segflow_run_success",
        "segflow_run_exit_status",
        "segflow_run_duration_seconds",
        "segflow_model_duration_seconds",
        "segflow_model_rows",
        "segflow_table_rows",
        "segflow_table_bytes",
        "segflow_input_rows",
        "segflow_gate_rows",
        "segflow_output_bytes",
    ]:
        check(name in families and families[name].type == "gauge", f"{name} is a gauge")

    def value(name, **labels):
        for s in families[name].samples:
            if s.labels == labels:
                return s.value
        return None

    check(value("segflow_run_success") == 1, "run_success is 1")
    check(value("segflow_run_exit_status") == 0, "exit status 0")
    tables = {s.labels["table"]: s.value for s in families["segflow_table_rows"].samples}
    check(len(tables) > 0, f"{len(tables)} tables reported")
    for table, rows in sorted(tables.items()):
        files = glob.glob(os.path.join(out, table, f"as_of={as_of}", "**", "*.parquet"), recursive=True)
        counted = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size = sum(os.path.getsize(f) for f in files)
        check(rows == counted, f"{table}: {rows:.0f} rows reported, {counted} in its files")
        check(value("segflow_table_bytes", table=table) == size, f"{table}: bytes = {size}")
        check(
            value("segflow_model_rows", model=table, published="true") == counted,
            f"{table}: model rows = table rows",
        )
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
