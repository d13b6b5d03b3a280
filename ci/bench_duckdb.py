#!/usr/bin/env python3
"""DuckDB side of the segflow benchmark (ci/bench.sh): computes the published tables
that plain SQL can compute -- customer_facts, rfm, lifecycle, cohort_retention,
product_value, channel_value, segment_summary -- from a segflow order source, with the
semantics of the segflow model files in sql/, and writes each one with
``COPY ... TO '<out>/<table>.parquet'``.

Usage (from the repository root):

    .venv/bin/python ci/bench_duckdb.py --orders DIR --out DIR --as-of 2026-11-21 \\
        [--threads 2] [--memory-limit 4GB] [--config fixtures/demo/segflow.toml]

The column mapping, drop_status and the customers / marketing_spend inputs come from
--config (default fixtures/demo/segflow.toml, relative uris resolve against its folder);
--orders replaces the orders uri. stdout: one JSON object with rows and seconds per
table (and per internal step); nothing else is printed there.

Pipeline, as segflow runs it (a full run): the canonical `orders` (mapped, cast, cancelled
lines dropped, rows with order_date > as_of removed) is materialized once; then the
internal models rfm_segments, purchase_orders, customer_days, customer_totals (per
customer: from purchase_orders and customer_days), customer_months (from customer_totals
and customer_days), acquisition_value and the published customer_facts (from
customer_totals), rfm, lifecycle are materialized as DuckDB tables because later models
read them; every published table is then COPY'd to zstd Parquet. segflow also computes
customer_affinity and segment_migration; this script does not compute them:
segment_migration, which segment_summary reads, is an empty table of its columns, as in a
first segflow run (no previous snapshot).

Dialect differences from the segflow (DataFusion) SQL, adapted here:

* The models' SQL is read from sql/<model>.sql (front matter removed) and rewritten by
  the REWRITES below, so the benchmark runs the library segflow runs, not a copy.
* `$as_of` and `$<param>` are typed placeholders in segflow; here they are pasted as
  literals (`DATE '2026-11-21'`, integers from the models' [params] defaults).
* `cast(<date> as int)` (days since the epoch in DataFusion) is not allowed in DuckDB:
  date differences are written `d1 - d2` (DATE - DATE = BIGINT days).
* segflow's `arg_min(v, k1, ..., kn)` / `arg_max(v, k1, ..., kn)` (the v of the smallest /
  largest key tuple, ties to the smallest v) have no multi-key, tie-breaking form in DuckDB:
  `arg_min(v, k1, ..., kn)` becomes DuckDB's `arg_min(v, (k1, ..., kn, v))` (a STRUCT key
  with v as the last tie-breaker: same row) and `arg_max(v, k1, ..., kn)` becomes the ordered
  aggregate `first(v order by k1 desc, ..., kn desc, v asc)` (DuckDB's arg_max would break
  a tie by the largest v, and a string cannot be negated).
* `named_struct('a', x, 'b', y)` is `struct_pack(a := x, b := y)` in DuckDB; `s['a']` reads a
  field in both.
* segflow's aggregate `rank_cuts(x, s1, ..., sk)` (src/ext/stats.rs; rfm's score cuts) has
  no DuckDB counterpart: it becomes `list_select(coalesce(list_sort(list(CAST(x AS DOUBLE))
  FILTER (WHERE x IS NOT NULL)), []), [i1, ..., ik])` -- the non-NULL values sorted once,
  and for each share s the 1-based index i = least(c, count(x)), c the smallest integer >= 1
  with c / count(*) >= s in DOUBLE (count(*) counts NULL x too; c at most count(*) + 1):
  ceil(s * count(*)), then one step down or up by that test, as rank_cut does. Without
  values every element is NULL, as in segflow. (DuckDB orders -0.0 and 0.0 as equal,
  segflow by IEEE total order: a cut may be the other zero, which compares the same.)
* `(values ...)` columns are column1..column8 in DataFusion and col0..col7 in DuckDB;
  rfm_segments names them with a table alias `t(column1, ..., column8)`.
* The clv model needs segflow's BG/NBD and Gamma-Gamma functions: segment_summary's
  `clv` segmentation (its `union all select 'clv', clv_segment, customer_id from clv`
  membership line) is removed, so DuckDB's segment_summary has every row of segflow's but
  those.
* `previous.<model>` (the previous snapshot) is an empty table of the same schema, and
  segment_migration an empty table (segmentation, from_segment, to_segment VARCHAR,
  customers BIGINT, revenue DOUBLE), as in a first segflow run: segment_summary.stability
  is NULL.
* Exact money sums are unchanged: `sum(cast(x as decimal(38, 6)))` is DECIMAL(38,6) in
  both engines, then cast to DOUBLE. (DuckDB's sum over DECIMAL(38,6) stays (38,6).)
* Sums over BIGINT (e.g. segment_summary's customers and orders) are HUGEINT in DuckDB,
  Int64 in DataFusion: in divisions they give the same doubles; a published HUGEINT
  column is cast to BIGINT before the COPY (DuckDB would write it to Parquet as DOUBLE).
* Source mapping: segflow's canonical order_ts is Timestamp(us, "UTC"); DuckDB keeps the
  naive TIMESTAMP (UTC wall time) and order_date = CAST(order_ts AS DATE), which is the
  same date when no [runtime] timezone is set (the demo sets none; one that is set is
  rejected here). Published *_ts columns are therefore naive TIMESTAMP in Parquet.
* drop_status: `NOT (status IS NOT NULL AND lower(status) IN (...))`, exactly segflow's
  predicate; the cut-off is `order_date <= as_of`.
* DuckDB settings: threads, memory_limit, temp_directory (spilling, under --out) and
  preserve_insertion_order = false (segflow gives no row order either; lets COPY stream).
* Only the order columns the models read are staged (as segflow stages only what its
  models read); the JSON lists them under "orders_columns".
* Output files: one Parquet file per table at zstd level 1, segflow's level (segflow
  writes hive-partitioned directories for rfm and lifecycle, several files per table,
  plus its own staging).
* Timing: "seconds_total" runs from before the connection is opened to after the last
  COPY, inside the process: Python's start-up and imports are not in it (ci/bench.sh
  compares it with segflow's process wall time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
import tomllib

import duckdb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "fixtures", "demo", "segflow.toml")

PUBLISHED = ["customer_facts", "rfm", "lifecycle", "cohort_retention",
             "product_value", "channel_value", "segment_summary"]


# Canonical columns of each input: (name, DuckDB type, required), as in src/sources.rs.
CANONICAL = {
    "orders": [
        ("customer_id", "VARCHAR", True), ("order_id", "VARCHAR", False),
        ("order_ts", "TIMESTAMP", True), ("revenue", "DOUBLE", True),
        ("quantity", "BIGINT", False), ("cost", "DOUBLE", False),
        ("product_id", "VARCHAR", False), ("category", "VARCHAR", False),
        ("channel", "VARCHAR", False), ("country", "VARCHAR", False),
        ("region", "VARCHAR", False), ("device", "VARCHAR", False),
        ("status", "VARCHAR", False),
    ],
    "customers": [
        ("customer_id", "VARCHAR", True), ("signup_ts", "TIMESTAMP", False),
        ("birth_year", "BIGINT", False), ("gender", "VARCHAR", False),
        ("email_opt_in", "BOOLEAN", False),
    ],
    "marketing_spend": [
        ("month", "DATE", True), ("channel", "VARCHAR", True), ("spend", "DOUBLE", True),
    ],
}


def q(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------
# The models: read from sql/*.sql (the same SQL segflow runs) and rewritten for DuckDB
# --------------------------------------------------------------------------------------

SQL_DIR = os.path.join(REPO, "sql")
FRONT_MATTER = re.compile(r"^\s*/\*---\n(.*?)\n---\*/", re.S)

# The dialect rewrites listed at the top, applied to the model text.
REWRITES = [
    # cast(<date> as int) (days since the epoch) -> a DATE difference.
    (re.compile(r"cast\(([^()]+?) as int\)"), r"((\1) - DATE '1970-01-01')"),
    # No BG/NBD in DuckDB: segment_summary's clv segmentation (its membership line) is left out.
    (re.compile(r"\n\s*union all select 'clv', clv_segment, customer_id from clv\b"), ""),
    # (values ...) columns are column1.. in DataFusion, col0.. in DuckDB.
    (re.compile(r"\(values(.*?)\n\)", re.S),
     r"(values\1\n) as t(column1, column2, column3, column4, column5, column6, column7, column8)"),
]


def model_sql(name: str) -> tuple[str, dict]:
    """The model's query (front matter removed, rewritten for DuckDB) and its [params]."""
    with open(os.path.join(SQL_DIR, f"{name}.sql"), encoding="utf-8") as f:
        text = f.read()
    m = FRONT_MATTER.match(text)
    header = tomllib.loads(m.group(1)) if m else {}
    sql = text[m.end():] if m else text
    for pattern, replacement in REWRITES:
        sql = pattern.sub(replacement, sql)
    return (rewrite_rank_cuts(rewrite_arg_min_max(rewrite_named_struct(sql))),
            header.get("params", {}))


def split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call's argument text."""
    args, depth, start, quoted = [], 0, 0, False
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        elif not quoted and c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return args


def rewrite_calls(sql: str, name: str, rewrite) -> str:
    """Replaces every call `name(args)` by `rewrite(args)` (args split at top-level commas)."""
    call = re.compile(rf"\b{name}\(")
    out, pos = [], 0
    while (m := call.search(sql, pos)) is not None:
        depth, end = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            end += 1
        out.append(sql[pos:m.start()] + rewrite(split_args(sql[m.end():end - 1])))
        pos = end
    return "".join(out) + sql[pos:]


def rewrite_named_struct(sql: str) -> str:
    """named_struct('a', x, 'b', y) (DataFusion) -> struct_pack(a := x, b := y) (DuckDB)."""
    def pack(args):
        pairs = [f"{args[i].strip(chr(39))} := {args[i + 1]}" for i in range(0, len(args), 2)]
        return f"struct_pack({', '.join(pairs)})"
    return rewrite_calls(sql, "named_struct", pack)


def rewrite_arg_min_max(sql: str) -> str:
    """segflow's arg_min/arg_max(v, k1, ..., kn) in DuckDB terms (see the top)."""
    def arg_min(args):
        v, *keys = args
        return f"arg_min({v}, ({', '.join(keys + [v])}))"

    def arg_max(args):
        v, *keys = args
        return f"first({v} order by {', '.join(k + ' desc' for k in keys)}, {v} asc)"
    return rewrite_calls(rewrite_calls(sql, "arg_min", arg_min), "arg_max", arg_max)


def rewrite_rank_cuts(sql: str) -> str:
    """segflow's rank_cuts(x, s1, ..., sk) in DuckDB terms (see the top): the non-NULL values
    of x, as DOUBLE, sorted once, and the c-th smallest of them for each share (list_select
    takes every index at once); the indexes come from count(*) and count(x) alone."""
    def cuts(args):
        x, *shares = args
        values = f"list_sort(list(CAST({x} AS DOUBLE)) FILTER (WHERE ({x}) IS NOT NULL))"
        indexes = ", ".join(rank_cut_index(f"CAST({s} AS DOUBLE)", "count(*)", f"count({x})")
                            for s in shares)
        # Without values, a list of NULLs (list_select of an empty list), as in segflow.
        return f"list_select(coalesce({values}, []::DOUBLE[]), [{indexes}])"
    return rewrite_calls(sql, "rank_cuts", cuts)


def rank_cut_index(share: str, rows: str, values: str) -> str:
    """The 1-based index of rank_cut in src/ext/stats.rs: the smallest c >= 1 with
    c / rows >= share in DOUBLE (at most rows + 1), capped to the number of values. The
    guess ceil(share * rows) is within one step of it; the step down is taken first."""
    n = f"CAST({rows} AS DOUBLE)"
    guess = f"CAST(least(greatest(ceil({share} * {n}), 1), {n} + 1) AS BIGINT)"

    def reaches(c):
        return f"CAST({c} AS DOUBLE) / {n} >= {share}"
    c = (f"CASE WHEN {guess} > 1 AND {reaches(f'{guess} - 1')} THEN {guess} - 1 "
         f"WHEN {guess} > {rows} OR {reaches(guess)} THEN {guess} ELSE {guess} + 1 END")
    return f"least({c}, {values})"


# The zstd level of the published tables: segflow's (src/publish/stage.rs writes zstd(1)).
ZSTD_LEVEL = 1

# (model, materialized as a table because later models read it, published)
STEPS = [
    ("rfm_segments", True, False),
    ("purchase_orders", True, False),
    ("customer_days", True, False),
    ("customer_totals", True, False),
    ("customer_months", True, False),
    ("customer_facts", True, True),
    ("rfm", True, True),
    ("lifecycle", True, True),
    ("cohort_retention", False, True),
    ("acquisition_value", True, False),
    ("product_value", False, True),
    ("channel_value", False, True),
    ("segment_summary", False, True),
]


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

class UsageError(Exception):
    pass


def parquet_scan(uri: str) -> str:
    if os.path.isdir(uri):
        pattern = os.path.join(uri, "**", "*.parquet")
    else:
        pattern = uri
    return f"read_parquet({q(pattern)}, hive_partitioning = false)"


def mapped_select(con, name: str, spec: dict, uri: str) -> tuple[str, set]:
    """SELECT list mapping the source columns of one input to its canonical columns."""
    scan = parquet_scan(uri)
    available = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
    mapping = spec.get("columns", {})
    exprs, present = [], set()
    for canonical, typ, required in CANONICAL[name]:
        source = mapping.get(canonical, canonical)
        if source not in available:
            if canonical in mapping or required:
                raise UsageError(f"input.{name}: source column {source!r} (canonical "
                                 f"{canonical!r}) not found in {uri}")
            default = "1" if canonical == "quantity" else "NULL"
            exprs.append(f"CAST({default} AS {typ}) AS {canonical}")
            continue
        present.add(canonical)
        if typ == "TIMESTAMP" and "WITH TIME ZONE" in available[source].upper():
            expr = f"timezone('UTC', {ident(source)})"  # naive UTC wall time
        else:
            expr = f"CAST({ident(source)} AS {typ})"
        exprs.append(f"{expr} AS {canonical}")
    return f"SELECT {', '.join(exprs)} FROM {scan}", present


def orders_columns(models: dict) -> list[str]:
    """The canonical order columns the models that read `orders` use (by name), as segflow
    stages only the columns its selected models need; order_date is derived here."""
    readers = [sql for sql, _ in models.values() if re.search(r"\b(from|join)\s+orders\b", sql)]
    names = [c for c, _, _ in CANONICAL["orders"]] + ["order_date"]
    return [c for c in names
            if c in ("customer_id", "order_id") or any(re.search(rf"\b{c}\b", s) for s in readers)]


def register_inputs(con, config: dict, config_dir: str, orders_uri: str, as_of: dt.date,
                    columns: list[str]):
    inputs = config.get("input", {})
    if "timezone" in config.get("runtime", {}):
        raise UsageError("[runtime] timezone is not supported by this script (UTC dates only)")
    spec = inputs.get("orders", {})
    select, present = mapped_select(con, "orders", spec, orders_uri)
    if "order_id" not in present:
        raise UsageError("orders without an order_id column (synthetic ids) are not supported")
    drop = [s.lower() for s in spec.get("drop_status", ["cancelled"])]  # segflow's default
    dropped = "false"
    if drop and "status" in present:
        dropped = f"(status IS NOT NULL AND lower(status) IN ({', '.join(q(s) for s in drop)}))"
    # The canonical orders, only the columns the models read (order_date derived).
    exprs = ", ".join("CAST(order_ts AS DATE) AS order_date" if c == "order_date" else c
                      for c in columns)
    con.execute(f"""
        CREATE TABLE orders AS
        WITH mapped AS ({select})
        SELECT {exprs}
        FROM mapped
        WHERE NOT {dropped} AND CAST(order_ts AS DATE) <= DATE {q(as_of.isoformat())}
    """)
    for name in ("customers", "marketing_spend"):
        spec = inputs.get(name)
        if spec is None:
            cols = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t, _ in CANONICAL[name])
            con.execute(f"CREATE VIEW {name} AS SELECT {cols} WHERE false")
            continue
        uri = spec["uri"]
        if not os.path.isabs(uri):
            uri = os.path.join(config_dir, uri)
        select, _ = mapped_select(con, name, spec, uri)
        con.execute(f"CREATE VIEW {name} AS {select}")


def render(sql: str, params: dict) -> str:
    def sub(m):
        name = m.group(1)
        if name not in params:
            raise UsageError(f"no value for ${name}")
        return params[name]
    return re.sub(r"\$([a-z_][a-z0-9_]*)", sub, sql)


def as_int64(con, source: str) -> str:
    """`source` with its HUGEINT columns (DuckDB's sum over BIGINT; DataFusion's is Int64)
    cast to BIGINT, as segflow publishes them: Parquet has no 128-bit integer, and DuckDB
    would write them as DOUBLE."""
    relation = source if source.startswith("(") else f"(SELECT * FROM {source})"
    wide = [r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall() if r[1] == "HUGEINT"]
    if not wide:
        return source
    casts = ", ".join(f"CAST({ident(c)} AS BIGINT) AS {ident(c)}" for c in wide)
    return f"(SELECT * REPLACE ({casts}) FROM {source} AS t)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", required=True, help="order source: Parquet file, directory or glob")
    ap.add_argument("--out", required=True, help="output directory (created; <table>.parquet inside)")
    ap.add_argument("--as-of", required=True, help="YYYY-MM-DD")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="segflow.toml with the column mapping (default fixtures/demo/segflow.toml)")
    args = ap.parse_args(argv)

    try:
        as_of = dt.date.fromisoformat(args.as_of)
    except ValueError:
        print(f"error: --as-of must be YYYY-MM-DD, got {args.as_of!r}", file=sys.stderr)
        return 2
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    models = {name: model_sql(name) for name, _, _ in STEPS}
    params = {k: str(int(v)) for _, p in models.values() for k, v in p.items()}
    params.update({k: str(v) for k, v in config.get("params", {}).items()})
    params["as_of"] = f"DATE {q(as_of.isoformat())}"

    os.makedirs(args.out, exist_ok=True)
    spill = os.path.join(args.out, ".duckdb_tmp")
    t_start = time.perf_counter()
    con = duckdb.connect(config={
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "temp_directory": spill,
        "preserve_insertion_order": False,
    })
    result = {"engine": "duckdb", "duckdb_version": duckdb.__version__, "as_of": as_of.isoformat(),
              "threads": args.threads, "memory_limit": args.memory_limit,
              "tables": {}, "internal": {}}
    try:
        t0 = time.perf_counter()
        columns = orders_columns(models)
        result["orders_columns"] = columns
        register_inputs(con, config, os.path.dirname(os.path.abspath(args.config)),
                        args.orders, as_of, columns)
        rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
        result["internal"]["orders"] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
        # previous.<model>: empty tables of the same schema (no previous snapshot).
        con.execute("CREATE SCHEMA previous")
        # segment_migration compares with the previous snapshot: empty without one (its
        # columns, as segflow publishes them; segment_summary reads it).
        con.execute("CREATE TABLE segment_migration (segmentation VARCHAR, from_segment VARCHAR, "
                    "to_segment VARCHAR, customers BIGINT, revenue DOUBLE)")

        for name, materialize, publish in STEPS:
            t0 = time.perf_counter()
            body = render(models[name][0], params)
            if materialize:
                con.execute(f"CREATE TABLE {name} AS {body}")
                source = name
            else:
                source = f"({body})"
            if publish:
                source = as_int64(con, source)
                path = os.path.join(args.out, f"{name}.parquet")
                n = con.execute(f"COPY {source} TO {q(path)} (FORMAT parquet, COMPRESSION zstd, "
                                f"COMPRESSION_LEVEL {ZSTD_LEVEL})").fetchone()[0]
                result["tables"][name] = {"rows": int(n), "seconds": round(time.perf_counter() - t0, 3)}
            else:
                n = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                result["internal"][name] = {"rows": int(n), "seconds": round(time.perf_counter() - t0, 3)}
            if name in ("customer_facts", "rfm", "lifecycle"):
                con.execute(f"CREATE TABLE previous.{name} AS SELECT * FROM {name} WHERE false")
    except (UsageError, duckdb.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    result["rows_total"] = sum(t["rows"] for t in result["tables"].values())
    result["seconds_total"] = round(time.perf_counter() - t_start, 3)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
