#!/usr/bin/env python3
"""Row-by-row comparison of the tables both benchmarked tools computed (ci/bench.sh).

For each table ci/bench_duckdb.py writes (<duckdb-out>/<table>.parquet), segflow's
published table (<segflow-out>/<table>/as_of=<D>/, hive partitions read back as columns,
the `as_of` partition left out) must hold the same rows:

1. exact: every column as text (floats in their shortest round-trip form, so equal text is
   equal bits; timestamps with a zone as UTC wall time), EXCEPT ALL both ways;
2. where rows differ, they are paired by the table's grain (the model's front matter) and
   every float column must agree to a relative 1e-9 (summation order may move the last
   bits of a mean or a share), every other column exactly. Anything else fails.

segflow's segment_summary also has the `clv` segmentation (its BG/NBD functions have no
DuckDB counterpart): those rows are left out of the comparison, and only those.

Prints one line per table and exits 1 on any difference (naming the table, the column and
up to 5 rows), 2 on usage errors.

Usage:
    ci/bench_compare.py --segflow-out DIR --duckdb-out DIR --as-of 2026-11-21
"""

import argparse
import glob
import math
import os
import re
import sys
import tomllib

import duckdb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT_RTOL = 1e-9
FLOATS = ("DOUBLE", "FLOAT", "REAL")


def grain(table):
    text = open(os.path.join(REPO, "sql", f"{table}.sql")).read()
    m = re.match(r"\s*/\*---(.*?)---\*/", text, re.S)
    return tomllib.loads(m.group(1)).get("grain", []) if m else []


def columns(con, relation):
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {relation}").fetchall()]


def as_text(name, kind):
    q = f'"{name}"'
    if kind.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"CAST(CAST({q} AS TIMESTAMP) AS VARCHAR) AS {q}"
    return f"CAST({q} AS VARCHAR) AS {q}"


def same_float(a, b):
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= FLOAT_RTOL * max(abs(a), abs(b))


def compare(con, table, sf_root, dd_root, as_of):
    dd_file = os.path.join(dd_root, f"{table}.parquet")
    sf_dir = os.path.join(sf_root, table, f"as_of={as_of}")
    if not os.path.exists(dd_file):
        return f"DuckDB wrote no {dd_file}"
    if not glob.glob(os.path.join(sf_dir, "**", "*.parquet"), recursive=True):
        return f"segflow published no files under {sf_dir}"
    con.execute(f"CREATE OR REPLACE VIEW dd AS SELECT * FROM read_parquet('{dd_file}')")
    con.execute(f"""CREATE OR REPLACE VIEW sf_all AS SELECT * EXCLUDE (as_of) FROM read_parquet(
                    '{sf_dir}/**/*.parquet', hive_partitioning = true, union_by_name = true)""")
    where = "WHERE segmentation <> 'clv'" if table == "segment_summary" else ""
    con.execute(f"CREATE OR REPLACE VIEW sf AS SELECT * FROM sf_all {where}")
    dd_cols, sf_cols = columns(con, "dd"), dict(columns(con, "sf"))
    missing = [c for c, _ in dd_cols if c not in sf_cols]
    extra = [c for c in sf_cols if c not in dict(dd_cols)]
    if missing or extra:
        return f"columns differ: only DuckDB {missing}, only segflow {extra}"
    # Both sides' columns in DuckDB's order, as text (each by its own type).
    sf_text = ", ".join(as_text(c, sf_cols[c]) for c, _ in dd_cols)
    dd_text = ", ".join(as_text(c, k) for c, k in dd_cols)
    con.execute(f"CREATE OR REPLACE TEMP TABLE a AS SELECT {sf_text} FROM sf")
    con.execute(f"CREATE OR REPLACE TEMP TABLE b AS SELECT {dd_text} FROM dd")
    n_a, n_b = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in "ab")
    only_sf = con.execute("SELECT * FROM a EXCEPT ALL SELECT * FROM b").fetchall()
    only_dd = con.execute("SELECT * FROM b EXCEPT ALL SELECT * FROM a").fetchall()
    if n_a != n_b:
        return f"segflow has {n_a} rows, DuckDB {n_b}"
    if not only_sf and not only_dd:
        return None, f"{n_a} rows, bit-equal"
    # Pair the differing rows by the grain; floats within the tolerance, the rest exact.
    names = [c for c, _ in dd_cols]
    floats = {c for c, k in dd_cols if k in FLOATS}
    key = [c for c in grain(table) if c in names] or [c for c in names if c not in floats]
    index = [names.index(k) for k in key]
    by_key = {tuple(r[i] for i in index): r for r in only_dd}
    problems, near = [], 0
    for row in only_sf:
        k = tuple(row[i] for i in index)
        other = by_key.pop(k, None)
        if other is None:
            problems.append(f"segflow row with {dict(zip(key, k))} has no DuckDB row")
            continue
        for c, x, y in zip(names, row, other):
            ok = same_float(x, y) if c in floats else x == y
            if not ok:
                problems.append(f"{dict(zip(key, k))}: {c} segflow {x} DuckDB {y}")
        near += 1
    problems += [f"DuckDB row with {dict(zip(key, k))} has no segflow row" for k in by_key]
    if problems:
        return f"{len(problems)} difference(s): " + "; ".join(problems[:5])
    return None, f"{n_a} rows, equal ({n_a - near} bit-equal, {near} within {FLOAT_RTOL:g} relative)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segflow-out", required=True)
    ap.add_argument("--duckdb-out", required=True)
    ap.add_argument("--as-of", required=True)
    args = ap.parse_args(argv)
    if not (os.path.isdir(args.segflow_out) and os.path.isdir(args.duckdb_out)):
        print("usage: both output folders must exist", file=sys.stderr)
        return 2
    tables = sorted(os.path.basename(f)[:-len(".parquet")]
                    for f in glob.glob(os.path.join(args.duckdb_out, "*.parquet")))
    if not tables:
        print(f"DuckDB wrote no tables under {args.duckdb_out}", file=sys.stderr)
        return 1
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    failed = 0
    for t in tables:
        result = compare(con, t, args.segflow_out, args.duckdb_out, args.as_of)
        if isinstance(result, tuple):
            print(f"  same rows {t}: {result[1]}", file=sys.stderr)
        else:
            failed += 1
            print(f"  DIFFERENT {t}: {result}", file=sys.stderr)
    print(f"  {len(tables) - failed} of {len(tables)} tables the same in both tools", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
