#!/usr/bin/env python3
"""Reads segflow's Delta output with readers segflow does not share code with, and checks it
against the Parquet output of the same runs.

    delta_check.py DELTA_OUT PARQUET_OUT

Both outputs hold the same as_of snapshots, written by one run each in the same order.
Checked, for every published table:
- the Python `deltalake` package (delta-rs's Python release) reads the table; at the version
  each manifest lists, partition as_of = D holds exactly the rows of the Parquet snapshot D
  (as text, so floats compare exactly), which is time travel for every older snapshot;
- the newest version is the newest manifest's, and equals the newest Parquet snapshot;
- the log has one WRITE commit per run, carrying the runs' ids in order, and segflow's
  application transaction version equals the number of runs;
- polars `read_delta` and DuckDB over deltalake's Arrow dataset give the same rows;
- `_catalog/duckdb.sql` and `_catalog/spark.sql` name every table at its location.
Exit 1 with every difference listed.
"""

import datetime
import json
import re
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"FAIL {message}")


def manifests(out: Path) -> dict[str, dict]:
    found = {}
    for p in sorted((out / "_manifest").glob("as_of=*.json")):
        found[p.name[len("as_of="):-len(".json")]] = json.loads(p.read_text())
    return found


def as_text(con, relation: str, columns: list[str], empty_is_null: set[str]) -> str:
    """A query of `relation` with every column cast to text (partition values read from
    Parquet paths: the empty string is NULL)."""
    exprs = []
    for c in columns:
        q = '"' + c.replace('"', '""') + '"'
        e = f"CAST({q} AS VARCHAR)"
        if c in empty_is_null:
            e = f"NULLIF({e}, '')"
        exprs.append(f"{e} AS {q}")
    return f"SELECT {', '.join(exprs)} FROM {relation}"


def same_rows(con, label: str, left: str, right: str) -> bool:
    counts = [con.execute(f"SELECT count(*) FROM ({q})").fetchall()[0][0] for q in (left, right)]
    only_left = con.execute(f"SELECT count(*) FROM (({left}) EXCEPT ALL ({right}))").fetchall()[0][0]
    only_right = con.execute(f"SELECT count(*) FROM (({right}) EXCEPT ALL ({left}))").fetchall()[0][0]
    if counts[0] != counts[1] or only_left or only_right:
        fail(f"{label}: {counts[0]} vs {counts[1]} rows, {only_left} / {only_right} differ")
        return False
    return True


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    delta_out, parquet_out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    dm, pm = manifests(delta_out), manifests(parquet_out)
    if list(dm) != list(pm) or not dm:
        fail(f"snapshots differ: Delta {list(dm)}, Parquet {list(pm)}")
        return 1
    dates = list(dm)
    newest = dates[-1]
    # The runs in the order they published (both outputs were written in the same order).
    runs = sorted(dm.values(), key=lambda m: m["started_at"])
    con = duckdb.connect()
    checked = 0
    for name, newest_entry in dm[newest]["tables"].items():
        location = delta_out / name
        columns = [c["name"] for c in newest_entry["columns"]]
        partition_by = set(newest_entry["partition_by"])
        latest = DeltaTable(str(location))
        # Every snapshot at the version its manifest names (older ones: time travel).
        for d in dates:
            entry, pentry = dm[d]["tables"].get(name), pm[d]["tables"].get(name)
            if entry is None or pentry is None:
                fail(f"{name} {d}: in one output only")
                continue
            version = entry.get("delta_version")
            if not isinstance(version, int):
                fail(f"{name} {d}: no delta_version in the manifest")
                continue
            at = DeltaTable(str(location), version=version)
            rows = at.to_pyarrow_table(filters=[("as_of", "=", datetime.date.fromisoformat(d))])
            con.register("delta_rows", rows)
            delta_q = as_text(con, "delta_rows", columns, set())
            files = [str(parquet_out / f) for f in pentry["files"]]
            if files:
                listing = "read_parquet([{}], hive_partitioning = true, hive_types_autocast = false)".format(
                    ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                )
                parquet_q = as_text(con, listing, columns, partition_by)
            else:
                parquet_q = f"SELECT * FROM ({delta_q}) WHERE false"
            if same_rows(con, f"{name} as_of={d} at version {version} vs Parquet", delta_q, parquet_q):
                checked += 1
            if rows.num_rows != entry["rows"]:
                fail(f"{name} {d}: {rows.num_rows} rows at version {version}, manifest says {entry['rows']}")
            con.unregister("delta_rows")
        # The newest version is the newest manifest's.
        if latest.version() != newest_entry["delta_version"]:
            fail(f"{name}: newest version {latest.version()}, manifest {newest_entry['delta_version']}")
        # One WRITE commit per run, with the runs' ids, and the txn version of the last.
        history = list(reversed(latest.history()))
        operations = [h.get("operation") for h in history]
        ids = [h.get("segflow.run_id") for h in history]
        if operations != ["WRITE"] * len(runs):
            fail(f"{name}: commits {operations}, expected one WRITE per run ({len(runs)})")
        if ids != [m["run_id"] for m in runs]:
            fail(f"{name}: run ids in the log {ids}, manifests {[m['run_id'] for m in runs]}")
        txn = latest.transaction_version("segflow")
        if txn != len(runs):
            fail(f"{name}: segflow's transaction version {txn}, expected {len(runs)}")
        # polars and DuckDB over deltalake's Arrow dataset read the same rows.
        whole = latest.to_pyarrow_table()
        con.register("whole", whole)
        con.register("polars_rows", pl.read_delta(str(location)).to_arrow())
        con.register("dataset", latest.to_pyarrow_dataset())
        all_columns = columns + ["as_of"]
        ref = as_text(con, "whole", all_columns, set())
        same_rows(con, f"{name}: polars read_delta vs deltalake", as_text(con, "polars_rows", all_columns, set()), ref)
        same_rows(con, f"{name}: DuckDB over the Arrow dataset vs deltalake", as_text(con, "dataset", all_columns, set()), ref)
        for t in ("whole", "polars_rows", "dataset"):
            con.unregister(t)
    # The catalog names every table at its location.
    duck = (delta_out / "_catalog" / "duckdb.sql").read_text()
    spark = (delta_out / "_catalog" / "spark.sql").read_text()
    scanned = set(re.findall(r"delta_scan\('([^']*)'\)", duck))
    spark_locations = set(re.findall(r"USING delta LOCATION '([^']*)'", spark))
    expected = {str(delta_out / name) for name in dm[newest]["tables"]}
    if scanned != expected:
        fail(f"duckdb.sql scans {sorted(scanned)}, tables are {sorted(expected)}")
    if spark_locations != expected:
        fail(f"spark.sql locations {sorted(spark_locations)}, tables are {sorted(expected)}")
    for loc in scanned | spark_locations:
        try:
            DeltaTable(loc)
        except Exception as e:  # noqa: BLE001 - any failure to open is the finding
            fail(f"the catalog names {loc}, which is no Delta table: {e}")
    tables = len(dm[newest]["tables"])
    if FAILURES:
        print(f"delta check: {len(FAILURES)} failure(s)")
        return 1
    print(
        f"delta check OK: {tables} tables x {len(dates)} snapshots ({checked} compared with Parquet), "
        f"history, txn, polars, DuckDB, catalog"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
