#!/usr/bin/env python3
"""Independent DuckDB cross-check of segflow's published built-in tables.

Recomputes customer_facts, rfm, lifecycle and cohort_retention from the demo
order source with SQL written directly from the model spec (not from the
project's sql/ directory) and compares them row-for-row with what segflow
published under <out>/<model>/as_of=<as_of>/.

Usage:
    ci/duckdb_check.py --orders fixtures/demo/orders --out <output dir> --as-of YYYY-MM-DD

Output: one PASS/FAIL line per table (followed by a diff on failure) and, as
the very last line, "N passed, M failed".  Exit status: 0 if every check
passed, 1 if any failed, 2 on usage errors (bad arguments, missing input or
missing table directory).
"""

import argparse
import datetime as dt
import glob
import math
import os
import sys
from collections import Counter

import duckdb
import pyarrow.parquet as pq

MODELS = ["customer_facts", "rfm", "lifecycle", "cohort_retention"]

REL_TOL = 1e-9
ABS_TOL = 1e-12  # only matters for values that should be ~0
MAX_SHOWN = 10
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


class UsageError(Exception):
    pass


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


# --------------------------------------------------------------------------
# Expected tables, computed from the spec
# --------------------------------------------------------------------------

def build_expected(con, orders_dir, as_of):
    con.execute("SET TimeZone='UTC'")
    pattern = os.path.join(orders_dir, "**", "*.parquet")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW src AS SELECT * FROM read_parquet({sql_str(pattern)}, hive_partitioning=true)"
    )
    src_types = {r[0]: r[1] for r in con.execute("DESCRIBE SELECT * FROM src").fetchall()}
    needed = ["client_id", "order_no", "created_at", "net_eur", "qty", "cogs_eur", "sku",
              "product_category", "utm_source", "country_code", "device_type", "order_status"]
    missing = [c for c in needed if c not in src_types]
    if missing:
        raise UsageError(f"{orders_dir}: source is missing columns {missing}")
    # created_at is a naive timestamp holding UTC; internally we keep order_ts
    # as a naive TIMESTAMP in UTC (and normalise segflow's values to that too).
    if "WITH TIME ZONE" in src_types["created_at"].upper():
        ts_expr = "timezone('UTC', created_at)"
    else:
        ts_expr = "CAST(created_at AS TIMESTAMP)"

    as_of_lit = f"DATE {sql_str(as_of.isoformat())}"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE orders AS
        SELECT
            CAST(client_id AS VARCHAR)        AS customer_id,
            CAST(order_no AS VARCHAR)         AS order_id,
            {ts_expr}                         AS order_ts,
            CAST(net_eur AS DOUBLE)           AS revenue,
            CAST(qty AS BIGINT)               AS quantity,
            CAST(cogs_eur AS DOUBLE)          AS cost,
            CAST(sku AS VARCHAR)              AS product_id,
            CAST(product_category AS VARCHAR) AS category,
            CAST(utm_source AS VARCHAR)       AS channel,
            CAST(country_code AS VARCHAR)     AS country,
            CAST(NULL AS VARCHAR)             AS region,
            CAST(device_type AS VARCHAR)      AS device,
            CAST(order_status AS VARCHAR)     AS status
        FROM src
        WHERE (order_status IS NULL OR lower(order_status) <> 'cancelled')
          AND {ts_expr} < CAST({as_of_lit} AS TIMESTAMP) + INTERVAL 1 DAY
    """)

    # Per-line working table.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE lines AS
        SELECT
            customer_id, order_id, order_ts,
            CAST(order_ts AS DATE)                                     AS order_date,
            CAST(revenue AS DECIMAL(38,6))                             AS rev_d,
            CAST(revenue AS DECIMAL(38,6)) - CAST(cost AS DECIMAL(38,6)) AS mar_d,
            coalesce(revenue >= 0, false)                              AS is_purchase,
            revenue,
            coalesce(category, 'unknown') AS cat,
            coalesce(channel,  'unknown') AS ch,
            coalesce(country,  'unknown') AS co,
            coalesce(device,   'unknown') AS dev
        FROM orders
    """)

    # First / last purchase line per customer (ties: smallest / largest order_id).
    con.execute("""
        CREATE OR REPLACE TEMP TABLE first_last AS
        WITH p AS (
            SELECT *,
                row_number() OVER (PARTITION BY customer_id ORDER BY order_ts ASC,  order_id ASC)  AS rn_first,
                row_number() OVER (PARTITION BY customer_id ORDER BY order_ts DESC, order_id DESC) AS rn_last
            FROM lines WHERE is_purchase
        )
        SELECT f.customer_id,
               f.order_id AS first_order_id, f.order_ts AS first_order_ts, f.order_date AS first_order_date,
               f.ch AS acquisition_channel, f.co AS acquisition_country, f.dev AS acquisition_device,
               l.order_id AS last_order_id, l.order_ts AS last_order_ts, l.order_date AS last_order_date
        FROM p f JOIN p l ON f.customer_id = l.customer_id AND l.rn_last = 1
        WHERE f.rn_first = 1
    """)

    # Sanity: acquisition attributes must be unambiguous per first order.
    amb = con.execute("""
        SELECT count(*) FROM (
            SELECT fl.customer_id FROM first_last fl
            JOIN lines x ON x.customer_id = fl.customer_id AND x.order_id = fl.first_order_id AND x.is_purchase
            GROUP BY fl.customer_id
            HAVING count(DISTINCT x.ch) > 1 OR count(DISTINCT x.co) > 1 OR count(DISTINCT x.dev) > 1)
    """).fetchone()[0]
    if amb:
        print(f"WARNING: {amb} customers have first orders whose lines disagree on channel/country/device; "
              f"using the first line's values", file=sys.stderr)

    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE exp_customer_facts AS
        WITH first_cat AS (
            SELECT customer_id, cat FROM (
                SELECT fl.customer_id, x.cat,
                       row_number() OVER (PARTITION BY fl.customer_id ORDER BY x.revenue DESC, x.cat ASC) AS rn
                FROM first_last fl
                JOIN lines x ON x.customer_id = fl.customer_id AND x.order_id = fl.first_order_id AND x.is_purchase
            ) WHERE rn = 1
        ),
        last_cat AS (
            SELECT customer_id, cat FROM (
                SELECT fl.customer_id, x.cat,
                       row_number() OVER (PARTITION BY fl.customer_id ORDER BY x.revenue DESC, x.cat ASC) AS rn
                FROM first_last fl
                JOIN lines x ON x.customer_id = fl.customer_id AND x.order_id = fl.last_order_id AND x.is_purchase
            ) WHERE rn = 1
        ),
        agg AS (
            SELECT x.customer_id,
                count(DISTINCT x.order_id)   FILTER (WHERE x.is_purchase) AS orders,
                count(DISTINCT x.order_date) FILTER (WHERE x.is_purchase) AS purchase_days,
                sum(x.rev_d) AS rev_d,
                sum(x.mar_d) AS mar_d,
                sum(x.rev_d) FILTER (WHERE x.order_date > fl.first_order_date) AS repeat_rev,
                sum(x.rev_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 90)  AS rev90,
                sum(x.rev_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 180) AS rev180,
                sum(x.rev_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 365) AS rev365,
                sum(x.mar_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 90)  AS mar90,
                sum(x.mar_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 180) AS mar180,
                sum(x.mar_d) FILTER (WHERE date_diff('day', fl.first_order_date, x.order_date) BETWEEN 0 AND 365) AS mar365
            FROM lines x JOIN first_last fl USING (customer_id)
            GROUP BY x.customer_id
        ),
        base AS (
            SELECT fl.*, a.*,
                date_diff('day', fl.last_order_date,  {as_of_lit}) AS recency_days,
                date_diff('day', fl.first_order_date, {as_of_lit}) AS tenure_days
            FROM first_last fl JOIN agg a USING (customer_id)
        )
        SELECT
            b.customer_id,
            b.first_order_ts,
            b.last_order_ts,
            b.first_order_date,
            b.last_order_date,
            CAST(make_date(year(b.first_order_date), month(b.first_order_date), 1) AS DATE) AS cohort_month,
            CAST(b.orders AS BIGINT)          AS orders,
            CAST(b.purchase_days AS BIGINT)   AS purchase_days,
            CAST(b.rev_d AS DOUBLE)           AS revenue,
            CAST(b.mar_d AS DOUBLE)           AS margin,
            CAST(b.rev_d AS DOUBLE) / CAST(b.orders AS DOUBLE) AS aov,
            CAST(b.recency_days AS BIGINT)    AS recency_days,
            CAST(b.tenure_days AS BIGINT)     AS tenure_days,
            b.acquisition_channel,
            b.acquisition_country,
            b.acquisition_device,
            fc.cat AS first_category,
            lc.cat AS last_category,
            coalesce(CAST(b.repeat_rev AS DOUBLE), 0) AS repeat_revenue,
            CASE WHEN b.tenure_days < 90  THEN NULL ELSE CAST(b.rev90  AS DOUBLE) END AS revenue_90d,
            CASE WHEN b.tenure_days < 180 THEN NULL ELSE CAST(b.rev180 AS DOUBLE) END AS revenue_180d,
            CASE WHEN b.tenure_days < 365 THEN NULL ELSE CAST(b.rev365 AS DOUBLE) END AS revenue_365d,
            CASE WHEN b.tenure_days < 90  THEN NULL ELSE CAST(b.mar90  AS DOUBLE) END AS margin_90d,
            CASE WHEN b.tenure_days < 180 THEN NULL ELSE CAST(b.mar180 AS DOUBLE) END AS margin_180d,
            CASE WHEN b.tenure_days < 365 THEN NULL ELSE CAST(b.mar365 AS DOUBLE) END AS margin_365d
        FROM base b
        JOIN first_cat fc USING (customer_id)
        JOIN last_cat  lc USING (customer_id)
    """)

    # RFM: score = 1 + floor(5 * W / N), W = customers with a strictly worse value.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE exp_rfm AS
        WITH s AS (
            SELECT customer_id, recency_days, orders AS frequency, revenue AS monetary,
                count(*) OVER () AS n,
                rank() OVER (ORDER BY recency_days DESC) - 1 AS w_r,   -- # with larger recency
                rank() OVER (ORDER BY orders ASC)       - 1 AS w_f,    -- # with fewer orders
                rank() OVER (ORDER BY revenue ASC)      - 1 AS w_m     -- # with less revenue
            FROM exp_customer_facts
        ),
        sc AS (
            SELECT customer_id, recency_days, frequency, monetary,
                CAST(1 + (5 * w_r) // n AS BIGINT) AS r_score,
                CAST(1 + (5 * w_f) // n AS BIGINT) AS f_score,
                CAST(1 + (5 * w_m) // n AS BIGINT) AS m_score
            FROM s
        )
        SELECT customer_id, recency_days, frequency, monetary, r_score, f_score, m_score,
            CAST(r_score AS VARCHAR) || CAST(f_score AS VARCHAR) || CAST(m_score AS VARCHAR) AS rfm_score,
            CASE
                WHEN r_score BETWEEN 4 AND 5 AND f_score BETWEEN 4 AND 5 AND m_score BETWEEN 4 AND 5 THEN 'Champions'
                WHEN r_score BETWEEN 3 AND 5 AND f_score BETWEEN 4 AND 5 THEN 'Loyal'
                WHEN r_score BETWEEN 1 AND 2 AND f_score BETWEEN 4 AND 5 AND m_score BETWEEN 4 AND 5 THEN 'Can''t Lose'
                WHEN r_score BETWEEN 1 AND 2 AND f_score BETWEEN 3 AND 5 THEN 'At Risk'
                WHEN r_score BETWEEN 4 AND 5 AND f_score BETWEEN 2 AND 3 THEN 'Potential Loyalist'
                WHEN r_score = 5 AND f_score = 1 THEN 'New'
                WHEN r_score = 4 AND f_score = 1 THEN 'Promising'
                WHEN r_score = 3 AND f_score BETWEEN 2 AND 3 THEN 'Need Attention'
                WHEN r_score = 3 AND f_score = 1 THEN 'About to Sleep'
                WHEN r_score = 2 AND f_score BETWEEN 1 AND 2 THEN 'Hibernating'
                WHEN r_score = 1 AND f_score BETWEEN 1 AND 2 THEN 'Lost'
                ELSE 'Other'
            END AS segment
        FROM sc
    """)

    con.execute("""
        CREATE OR REPLACE TEMP TABLE exp_lifecycle AS
        SELECT customer_id,
            CASE
                WHEN tenure_days  <= 30  THEN 'new'
                WHEN recency_days <= 90  THEN 'active'
                WHEN recency_days <= 180 THEN 'at_risk'
                WHEN recency_days <= 365 THEN 'lapsed'
                ELSE 'churned'
            END AS stage,
            tenure_days  AS days_since_first,
            recency_days AS days_since_last
        FROM exp_customer_facts
    """)

    # Cohort retention. Month index = calendar-month difference.
    # Interpretation (spec is terse): a period with no lines has revenue 0 and
    # margin 0; a period whose lines all have unknown (NULL) cost has margin NULL;
    # if cost is unknown for every line of the input, margin is NULL everywhere.
    any_cost = con.execute("SELECT count(mar_d) > 0 FROM lines").fetchone()[0]
    empty_margin = "CAST(0 AS DECIMAL(38,6))" if any_cost else "CAST(NULL AS DECIMAL(38,6))"
    as_of_month_idx = as_of.year * 12 + (as_of.month - 1)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE exp_cohort_retention AS
        WITH cust AS (
            SELECT customer_id, cohort_month,
                   year(cohort_month) * 12 + month(cohort_month) - 1 AS cm_idx
            FROM exp_customer_facts
        ),
        cohorts AS (
            SELECT cohort_month, min(cm_idx) AS cm_idx, count(*) AS cohort_customers
            FROM cust GROUP BY cohort_month
        ),
        grid AS (
            SELECT cohort_month, cohort_customers, CAST(unnest(range(0, {as_of_month_idx} - cm_idx + 1)) AS BIGINT) AS period,
                   {as_of_month_idx} - cm_idx AS max_period
            FROM cohorts
        ),
        act AS (
            SELECT c.cohort_month,
                   (year(x.order_date) * 12 + month(x.order_date) - 1) - c.cm_idx AS period,
                   count(DISTINCT x.customer_id) FILTER (WHERE x.is_purchase) AS active_customers,
                   sum(x.rev_d) AS rev_d,
                   sum(x.mar_d) AS mar_d
            FROM lines x JOIN cust c USING (customer_id)
            GROUP BY ALL
        ),
        j AS (
            SELECT g.cohort_month, g.period, g.cohort_customers, g.max_period,
                   coalesce(a.active_customers, 0) AS active_customers,
                   coalesce(a.rev_d, CAST(0 AS DECIMAL(38,6))) AS rev_d,
                   CASE WHEN a.cohort_month IS NULL THEN {empty_margin} ELSE a.mar_d END AS mar_d
            FROM grid g LEFT JOIN act a ON a.cohort_month = g.cohort_month AND a.period = g.period
        ),
        c AS (
            SELECT *,
                sum(rev_d) OVER (PARTITION BY cohort_month ORDER BY period ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum_rev,
                sum(mar_d) OVER (PARTITION BY cohort_month ORDER BY period ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum_mar
            FROM j
        )
        SELECT
            cohort_month,
            period,
            CAST(cohort_customers AS BIGINT) AS cohort_customers,
            CAST(active_customers AS BIGINT) AS active_customers,
            CAST(active_customers AS DOUBLE) / CAST(cohort_customers AS DOUBLE) AS retention,
            CAST(rev_d AS DOUBLE) AS revenue,
            CAST(mar_d AS DOUBLE) AS margin,
            CAST(cum_rev AS DOUBLE) / CAST(cohort_customers AS DOUBLE) AS cumulative_revenue_per_customer,
            CAST(cum_mar AS DOUBLE) / CAST(cohort_customers AS DOUBLE) AS cumulative_margin_per_customer,
            period <> max_period AS is_complete
        FROM c
    """)


# (model, key columns, expected column families in spec order)
SPECS = {
    "customer_facts": (["customer_id"], [
        ("customer_id", "str"), ("first_order_ts", "ts"), ("last_order_ts", "ts"),
        ("first_order_date", "date"), ("last_order_date", "date"), ("cohort_month", "date"),
        ("orders", "int"), ("purchase_days", "int"), ("revenue", "float"), ("margin", "float"),
        ("aov", "float"), ("recency_days", "int"), ("tenure_days", "int"),
        ("acquisition_channel", "str"), ("acquisition_country", "str"), ("acquisition_device", "str"),
        ("first_category", "str"), ("last_category", "str"), ("repeat_revenue", "float"),
        ("revenue_90d", "float"), ("revenue_180d", "float"), ("revenue_365d", "float"),
        ("margin_90d", "float"), ("margin_180d", "float"), ("margin_365d", "float"),
    ]),
    "rfm": (["customer_id"], [
        ("customer_id", "str"), ("recency_days", "int"), ("frequency", "int"), ("monetary", "float"),
        ("r_score", "int"), ("f_score", "int"), ("m_score", "int"), ("rfm_score", "str"), ("segment", "str"),
    ]),
    "lifecycle": (["customer_id"], [
        ("customer_id", "str"), ("stage", "str"), ("days_since_first", "int"), ("days_since_last", "int"),
    ]),
    "cohort_retention": (["cohort_month", "period"], [
        ("cohort_month", "date"), ("period", "int"), ("cohort_customers", "int"), ("active_customers", "int"),
        ("retention", "float"), ("revenue", "float"), ("margin", "float"),
        ("cumulative_revenue_per_customer", "float"), ("cumulative_margin_per_customer", "float"),
        ("is_complete", "bool"),
    ]),
}


# --------------------------------------------------------------------------
# Reading segflow's output
# --------------------------------------------------------------------------

def type_family(t):
    t = t.upper()
    if t in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER",
             "USMALLINT", "UTINYINT", "UHUGEINT"):
        return "int"
    if t in ("DOUBLE", "FLOAT", "REAL"):
        return "float"
    if t.startswith("VARCHAR") or t == "STRING":
        return "str"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "ts"
    if t == "BOOLEAN":
        return "bool"
    if t == "NULL" or t == '"NULL"':
        return "null"
    return t  # DECIMAL(..), etc. -> never matches an expected family


def partition_keys(path, root):
    rel = os.path.relpath(os.path.dirname(path), root)
    if rel == ".":
        return ()
    return tuple(p.split("=", 1)[0] for p in rel.split(os.sep) if "=" in p)


def read_actual(con, out_dir, model, as_of):
    """Returns (columns, types{col: duckdb type}, partition_cols, rows as list of dicts, n_files)."""
    root = os.path.join(out_dir, model, f"as_of={as_of.isoformat()}")
    files = sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.parquet"), recursive=True))
    # Zero-row files contribute nothing and may sit at a different partition
    # depth (which DuckDB's hive reader rejects), so only non-empty files are
    # read; if every file is empty we still read them for the schema.
    nonempty = [f for f in files if pq.ParquetFile(f).metadata.num_rows > 0]
    to_read = nonempty if nonempty else files
    groups = {}
    for f in to_read:
        groups.setdefault(partition_keys(f, root), []).append(f)

    columns, types, part_cols, rows = [], {}, set(), []
    for keys, fl in sorted(groups.items()):
        flist = "[" + ", ".join(sql_str(f) for f in fl) + "]"
        rel = f"read_parquet({flist}, hive_partitioning=true, hive_types_autocast=false, union_by_name=true)"
        file_cols = {r[0] for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({flist}, hive_partitioning=false, union_by_name=true)").fetchall()}
        desc = con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
        for name, typ, *_ in desc:
            if name == "as_of" and "as_of" not in file_cols:
                continue
            if name not in types:
                columns.append(name)
                types[name] = typ
            elif types[name] != typ and type_family(types[name]) != type_family(typ):
                # Keep the first non-null type seen.
                if type_family(types[name]) == "null":
                    types[name] = typ
            if name not in file_cols:
                part_cols.add(name)
        # TIMESTAMP WITH TIME ZONE is fetched as naive UTC (avoids needing pytz;
        # the expected side is naive UTC as well).
        sel = ", ".join(
            f"timezone('UTC', \"{name}\") AS \"{name}\"" if "WITH TIME ZONE" in typ.upper() else f"\"{name}\""
            for name, typ, *_ in desc)
        cur = con.execute(f"SELECT {sel} FROM {rel}")
        names = [d[0] for d in cur.description]
        for r in cur.fetchall():
            d = dict(zip(names, r))
            if "as_of" not in file_cols:
                d.pop("as_of", None)
            for pc in part_cols:
                if d.get(pc) == HIVE_NULL:
                    d[pc] = None
            rows.append(d)
    return root, columns, types, part_cols, rows, len(files)


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------

def canon_str(v):
    """Canonical string form of a value (for partition columns / keys)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def norm_ts(v):
    if v is None:
        return None
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return v


def floats_equal(a, b):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def values_equal(exp, act, fam, is_part):
    """Returns (equal, abs_diff_or_None)."""
    if exp is None or act is None:
        return exp is None and act is None, None
    if is_part:
        if fam == "float" and isinstance(act, str):
            try:
                a = float(act)
            except ValueError:
                return False, None
            return floats_equal(float(exp), a), abs(float(exp) - a)
        return canon_str(exp) == (act if isinstance(act, str) else canon_str(act)), None
    if fam == "float":
        if isinstance(act, bool) or not isinstance(act, (int, float)):
            return False, None
        return floats_equal(float(exp), float(act)), abs(float(exp) - float(act))
    if fam == "int":
        return (not isinstance(act, bool)) and isinstance(act, int) and exp == act, None
    if fam == "bool":
        return isinstance(act, bool) and exp == act, None
    if fam == "str":
        return isinstance(act, str) and exp == act, None
    if fam == "date":
        return (isinstance(act, dt.date) and not isinstance(act, dt.datetime) and exp == act), None
    if fam == "ts":
        return isinstance(act, dt.datetime) and norm_ts(exp) == norm_ts(act), None
    return exp == act, None


def fmt(v):
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    return repr(v)


def compare(con, model, out_dir, as_of):
    keys, spec_cols = SPECS[model]
    fams = dict(spec_cols)
    col_names = [c for c, _ in spec_cols]
    problems = []  # list of strings

    cur = con.execute(f"SELECT {', '.join(col_names)} FROM exp_{model}")
    exp_rows = [dict(zip(col_names, r)) for r in cur.fetchall()]

    root, a_cols, a_types, part_cols, act_rows, n_files = read_actual(con, out_dir, model, as_of)

    # Schema checks.
    missing_cols = [c for c in col_names if c not in a_types]
    extra_cols = [c for c in a_cols if c not in fams]
    if missing_cols:
        problems.append(f"  missing columns: {missing_cols}")
    for c in col_names:
        if c in a_types and c not in part_cols:
            fam = type_family(a_types[c])
            if fam != fams[c] and not (fam == "null" and not act_rows):
                problems.append(f"  column {c}: expected {fams[c]} type, got {a_types[c]}")
    compared = [c for c in col_names if c in a_types]

    def key_of(row):
        return tuple(canon_str(row.get(k)) for k in keys)

    exp_by_key = {}
    for r in exp_rows:
        exp_by_key[key_of(r)] = r
    assert len(exp_by_key) == len(exp_rows), f"internal: duplicate expected keys in {model}"

    act_by_key = {}
    dups = Counter()
    if all(k in a_types for k in keys):
        for r in act_rows:
            k = key_of(r)
            if k in act_by_key:
                dups[k] += 1
            act_by_key[k] = r
    if dups:
        shown = ", ".join(f"{k} x{n + 1}" for k, n in list(dups.items())[:MAX_SHOWN])
        problems.append(f"  {sum(dups.values())} duplicate key rows in segflow output ({len(dups)} keys), e.g. {shown}")

    only_exp = sorted(set(exp_by_key) - set(act_by_key), key=str)
    only_act = sorted(set(act_by_key) - set(exp_by_key), key=str)
    if only_exp:
        problems.append(f"  {len(only_exp)} keys expected but missing from segflow output "
                        f"({', '.join(keys)}), first {min(MAX_SHOWN, len(only_exp))}:")
        for k in only_exp[:MAX_SHOWN]:
            problems.append(f"    {k}: expected {{{', '.join(f'{c}={fmt(exp_by_key[k][c])}' for c in col_names[:6])}, ...}}")
    if only_act:
        problems.append(f"  {len(only_act)} keys in segflow output but not expected, first {min(MAX_SHOWN, len(only_act))}:")
        for k in only_act[:MAX_SHOWN]:
            problems.append(f"    {k}: got {{{', '.join(f'{c}={fmt(act_by_key[k].get(c))}' for c in col_names[:6])}, ...}}")

    # Value comparison on common keys.
    max_abs = 0.0
    bad_rows = []
    bad_by_col = Counter()
    n_common = 0
    for k in sorted(set(exp_by_key) & set(act_by_key), key=str):
        n_common += 1
        e, a = exp_by_key[k], act_by_key[k]
        diffs = []
        for c in compared:
            if c in keys:
                continue
            ok, d = values_equal(e[c], a.get(c), fams[c], c in part_cols)
            if d is not None and not math.isnan(d):
                max_abs = max(max_abs, d)
            if not ok:
                diffs.append((c, e[c], a.get(c)))
                bad_by_col[c] += 1
        if diffs:
            bad_rows.append((k, diffs))
    if bad_rows:
        problems.append(f"  {len(bad_rows)} rows differ; mismatches per column: "
                        + ", ".join(f"{c}={n}" for c, n in bad_by_col.most_common()))
        for k, diffs in bad_rows[:MAX_SHOWN]:
            key_txt = ", ".join(f"{kc}={kv}" for kc, kv in zip(keys, k))
            problems.append(f"    [{key_txt}]")
            for c, ev, av in diffs:
                problems.append(f"        {c}: expected {fmt(ev)}  got {fmt(av)}")

    detail = (f"{len(compared)} columns, max abs float diff {max_abs:.3g}"
              f" ({n_files} files{', partitioned by ' + ','.join(sorted(part_cols)) if part_cols else ''})")
    if extra_cols:
        detail += f"; extra columns ignored: {extra_cols}"
    if problems:
        return False, f"FAIL {model}: expected {len(exp_rows)} rows, got {len(act_rows)}, " + detail, problems
    return True, f"PASS {model}: {len(exp_rows)} rows, " + detail, []


# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", required=True, help="demo order source directory (hive-partitioned parquet)")
    ap.add_argument("--out", required=True, help="segflow output directory")
    ap.add_argument("--as-of", required=True, help="snapshot date YYYY-MM-DD")
    args = ap.parse_args(argv)  # exits 2 on usage errors

    try:
        as_of = dt.date.fromisoformat(args.as_of)
        if len(args.as_of) != 10:
            raise ValueError
    except ValueError:
        print(f"error: --as-of must be YYYY-MM-DD, got {args.as_of!r}", file=sys.stderr)
        return 2

    errors = []
    if not os.path.isdir(args.orders):
        errors.append(f"orders directory not found: {args.orders}")
    elif not glob.glob(os.path.join(glob.escape(args.orders), "**", "*.parquet"), recursive=True):
        errors.append(f"no parquet files under orders directory: {args.orders}")
    for m in MODELS:
        d = os.path.join(args.out, m, f"as_of={as_of.isoformat()}")
        if not os.path.isdir(d):
            errors.append(f"table directory not found: {d}")
        elif not glob.glob(os.path.join(glob.escape(d), "**", "*.parquet"), recursive=True):
            errors.append(f"no parquet files in table directory: {d}")
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 2

    con = duckdb.connect()
    try:
        build_expected(con, args.orders, as_of)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    passed = failed = 0
    for m in MODELS:
        try:
            ok, line, problems = compare(con, m, args.out, as_of)
        except Exception as e:  # unreadable output etc. counts as a failed check
            ok, line, problems = False, f"FAIL {m}: error reading/comparing output: {type(e).__name__}: {e}", []
        print(line)
        for p in problems:
            print(p)
        if ok:
            passed += 1
        else:
            failed += 1
    sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
