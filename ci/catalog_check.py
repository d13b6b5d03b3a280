"""Read every published table through segflow's `_catalog/` in DuckDB and Spark SQL, and
compare the rows with the Parquet files the run manifests list, read here with pyarrow.

Usage: catalog_check.py OUT [--no-spark]

For every table of the newest manifest: `<model>` must hold exactly the rows of that
snapshot's files (partition values from their directory names, in the manifest's column
types) and `<model>_history` the rows of every kept snapshot's files with `as_of`, in
DuckDB (executing `_catalog/duckdb.sql`) and in Spark (pyspark on a local master executing
`_catalog/spark.sql`). Rows are compared as multisets; floats bit-exact, timestamps as UTC
microseconds. Exit 1 on any difference, naming the table and engine.
"""
import argparse
import datetime
import decimal
import glob
import json
import math
import os
import sys
from collections import Counter
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq


def manifests(out):
    found = []
    for path in sorted(glob.glob(os.path.join(out, "_manifest", "as_of=*.json"))):
        with open(path) as f:
            found.append(json.load(f))
    found.sort(key=lambda m: m["as_of"])
    return found


def canonical(value):
    """A comparable form of one cell, the same whichever engine produced it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value.hex()
    if isinstance(value, decimal.Decimal):
        return ("dec", value.normalize())
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:  # Spark and DuckDB hand back UTC wall time
            value = value.replace(tzinfo=datetime.timezone.utc)
        return ("ts", round(value.timestamp() * 1_000_000))
    if isinstance(value, datetime.date):
        return ("date", value.isoformat())
    return value


def typed(text, type_name):
    """A partition directory's value in the column's manifest type."""
    if text == "" or text == "__HIVE_DEFAULT_PARTITION__":
        return None
    if type_name.startswith("Int") or type_name.startswith("UInt"):
        return int(text)
    if type_name == "Date32":
        return datetime.date.fromisoformat(text)
    if type_name == "Boolean":
        return text == "true"
    return text


def expected_rows(out, entry, as_of, with_as_of):
    """The rows of one snapshot of a table: its listed files, with partition values."""
    types = {c["name"]: c["type"] for c in entry["columns"]}
    names = [c["name"] for c in entry["columns"]] + (["as_of"] if with_as_of else [])
    rows = Counter()
    for rel in entry["files"]:
        table = pq.read_table(os.path.join(out, rel))
        parts = {}
        for seg in rel.split("/")[2:-1]:
            key, _, value = seg.partition("=")
            parts[key] = typed(unquote(value), types.get(key, "Utf8"))
        if with_as_of:
            parts["as_of"] = datetime.date.fromisoformat(as_of)
        for row in table.to_pylist():
            row.update(parts)
            rows[tuple(sorted((n, canonical(row.get(n))) for n in names))] += 1
    return rows


def engine_rows(names, records):
    rows = Counter()
    for rec in records:
        rows[tuple(sorted((n, canonical(v)) for n, v in zip(names, rec)))] += 1
    return rows


def compare(what, got, want, failures):
    if got == want:
        return
    missing = list((want - got).elements())[:2]
    extra = list((got - want).elements())[:2]
    failures.append(
        f"{what}: {sum(got.values())} rows, expected {sum(want.values())}; "
        f"missing e.g. {missing}; unexpected e.g. {extra}"
    )


def statements(path):
    with open(path) as f:
        text = f.read()
    for stmt in text.split(";\n"):
        body = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
        if body:
            yield body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--no-spark", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    kept = manifests(out)
    if not kept:
        sys.exit(f"{out}: no manifest")
    newest = kept[-1]
    expected = {}
    for name, entry in newest["tables"].items():
        history = Counter()
        for m in kept:
            if name in m["tables"]:
                history += expected_rows(out, m["tables"][name], m["as_of"], True)
        expected[name] = (expected_rows(out, entry, newest["as_of"], False), history)
    if len(kept) < 2:
        sys.exit("the catalog check wants at least two kept snapshots (history)")

    failures = []
    import duckdb

    con = duckdb.connect()

    for stmt in statements(os.path.join(out, "_catalog", "duckdb.sql")):
        con.execute(stmt)
    for name, (newest_rows, history) in expected.items():
        for view, want in ((name, newest_rows), (f"{name}_history", history)):
            # Through Arrow: DuckDB's own Python conversion of TIMESTAMPTZ wants pytz.
            table = con.sql(f'select * from "{view}"').to_arrow_table()
            records = [tuple(r.values()) for r in table.to_pylist()]
            compare(f"duckdb {view}", engine_rows(table.column_names, records), want, failures)
    print(f"duckdb: {2 * len(expected)} views over {len(kept)} snapshots read", file=sys.stderr)

    if not args.no_spark:
        os.environ["TZ"] = "UTC"  # Spark hands timestamps back in the process's zone
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        import time

        time.tzset()
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[1]")
            .appName("segflow-catalog-check")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.warehouse.dir", os.path.join(out, "..", "spark-warehouse"))
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        try:
            for stmt in statements(os.path.join(out, "_catalog", "spark.sql")):
                spark.sql(stmt)
            for name, (newest_rows, history) in expected.items():
                for view, want in ((name, newest_rows), (f"{name}_history", history)):
                    df = spark.sql(f"select * from `{view}`")
                    got = engine_rows(df.columns, [tuple(r) for r in df.collect()])
                    compare(f"spark {view}", got, want, failures)
        finally:
            spark.stop()
        print(f"spark: {2 * len(expected)} tables and views read", file=sys.stderr)

    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"catalog OK: {len(expected)} tables, newest and history, same rows as the manifests' files")


if __name__ == "__main__":
    main()
