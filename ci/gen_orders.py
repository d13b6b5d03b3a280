#!/usr/bin/env python3
"""Generate a large synthetic order history for scale tests of segflow.

Writes hive-partitioned Parquet (``<out>/month=YYYY-MM/*.parquet``, zstd) in
the same source schema as the bundled demo (fixtures/demo/orders), so that
fixtures/demo/segflow.toml's column mapping reads it unchanged (point
``[input.orders] uri`` at the output directory). The partition value lives
only in the directory name; the files have no ``month`` column. The month is
that of ``created_at`` (refund lines land in the month of the refund).

Columns, in the demo's order and with the demo's Parquet types
(``--schema demo``, the default):

    client_id INT64, order_no STRING, created_at TIMESTAMP(ms, no tz, UTC
    wall time), sku STRING, product_category STRING, qty INT32,
    net_eur DECIMAL(12,2), cogs_eur DOUBLE, utm_source STRING,
    country_code STRING, device_type STRING, order_status STRING

``--schema canonical`` writes the same columns with segflow's canonical
types instead (client_id STRING, created_at TIMESTAMP(us), qty INT64,
net_eur DOUBLE), i.e. without the casts the demo source needs.

Shape (all of it synthetic):

* customers are acquired over the period (growing, with a Black-Friday /
  Christmas bump); each has a gamma-distributed purchase rate, a
  lifetime after which they drop out (some never come back after the first
  order), a country, a preferred channel/device and a favourite category;
  orders per customer are therefore heavily skewed (many one-order
  customers, a long tail);
* 1-5 lines per order (mean ~2.6); per order one channel (utm_source, ~1 %
  NULL) and one device; ~3 % of orders 'cancelled', the rest 'completed';
* ~5 % of completed orders get refunds 3-30 days later: separate lines with
  negative qty/net_eur/cogs_eur and order_status 'returned' (same order_no);
* prices are log-uniform per category over a catalogue with skewed SKU
  popularity, 15 % of lines discounted; ~0.5 % of lines have a NULL
  product_category; ~0.02 % of lines are exact duplicates (as in the demo).

The number of orders is calibrated so the line count lands close to
``--lines`` (typically within 0.5 %). Everything is derived from
``hash(key, stream, seed)`` of DuckDB, so a given --seed gives the same set
of rows on every run (with the pinned DuckDB version); the order of rows
inside the files is not guaranteed to be identical between runs.

Usage (from the repository root, with ci/requirements.txt installed):

    .venv/bin/python ci/gen_orders.py --out /tmp/orders12m
    .venv/bin/python ci/gen_orders.py --out /tmp/orders200k --lines 200000

Runs in bounded memory (DuckDB memory_limit 4GB, 2 threads, spills to a
temporary directory next to --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import sys
import tempfile
import time

import duckdb

FIRST_CUSTOMER_ID = 100001  # as in the demo
LINES_PER_CUSTOMER = 12_500_000 / 800_000  # default --customers = lines / this

# category -> (sku prefix, number of skus, min unit price EUR, max unit price EUR, weight)
CATEGORIES = {
    "apparel": ("APP", 2400, 12.0, 95.0, 22),
    "beauty": ("BEA", 1500, 6.0, 60.0, 15),
    "shoes": ("SHO", 900, 35.0, 170.0, 11),
    "home": ("HOM", 1800, 9.0, 220.0, 11),
    "electronics": ("ELE", 1000, 19.0, 650.0, 8),
    "sports": ("SPO", 1000, 12.0, 160.0, 8),
    "books": ("BOO", 3000, 7.0, 42.0, 8),
    "toys": ("TOY", 800, 7.0, 85.0, 7),
    "grocery": ("GRO", 1200, 2.0, 30.0, 6),
    "jewelry": ("JEW", 600, 25.0, 400.0, 4),
}
# acquisition channel mix, and the mix of repeat orders not via the usual channel
CHANNELS = {
    "organic": (26, 30),
    "paid_search": (22, 12),
    "social": (16, 8),
    "affiliate": (10, 4),
    "referral": (7, 4),
    "direct": (7, 12),
    "email": (6, 28),
    "display": (6, 2),
}
COUNTRIES = {
    "DE": 30, "FR": 13, "NL": 9, "AT": 7, "PL": 7, "ES": 7, "IT": 7, "BE": 4,
    "CH": 4, "SE": 3, "DK": 2, "FI": 2, "CZ": 2, "PT": 2, "IE": 1,
}
DEVICES = {"mobile": 55, "desktop": 35, "tablet": 10}
LINES_PER_ORDER = {1: 22, 2: 30, 3: 23, 4: 14, 5: 11}  # mean 2.62
QTY = {1: 82, 2: 12, 3: 4, 4: 2}
HOUR_WEIGHTS = [2, 1, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 9, 8, 7, 7, 8, 9, 11, 13, 14, 13, 9, 5]

P_NULL_CHANNEL = 0.01
P_NULL_CATEGORY = 0.005
P_CANCELLED = 0.03
P_RETURNED = 0.05  # of completed orders at least 3 days before the end
P_REFUND_EXTRA_LINE = 0.5  # each further line of a returned order is refunded too
P_DUPLICATE = 0.0002  # exact duplicate rows (double-ingested completed lines)
P_ONE_TIME = 0.30  # never come back after the first order
P_LAPSING = 0.45  # of the others: drop out after an exponential lifetime
MEAN_LIFETIME_DAYS = 330.0
RATE_SHAPE = 1.0  # gamma shape of the purchase rates (a multiple of 0.5)

DAY_US = 86_400_000_000


class UsageError(Exception):
    pass


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def weighted_case(u: str, items: dict, weight_index: int | None = None) -> str:
    """CASE expression picking a key of `items` by weight for uniform `u` in [0,1)."""
    keys = list(items)
    weights = [items[k] if weight_index is None else items[k][weight_index] for k in keys]
    total = float(sum(weights))
    parts, acc = [], 0.0
    for k, w in zip(keys[:-1], weights[:-1]):
        acc += w
        val = sql_str(k) if isinstance(k, str) else str(k)
        parts.append(f"WHEN {u} < {acc / total!r} THEN {val}")
    last = sql_str(keys[-1]) if isinstance(keys[-1], str) else str(keys[-1])
    return f"(CASE {' '.join(parts)} ELSE {last} END)"


def sql_list(values) -> str:
    return "[" + ", ".join(sql_str(v) if isinstance(v, str) else repr(v) for v in values) + "]"


def months_back(d: dt.date, n: int) -> dt.date:
    """First day of the month n-1 months before d's month."""
    y, m = d.year, d.month - (n - 1)
    while m <= 0:
        y, m = y - 1, m + 12
    return dt.date(y, m, 1)


def expected_lines_per_order() -> float:
    tot = sum(LINES_PER_ORDER.values())
    e_n = sum(k * w for k, w in LINES_PER_ORDER.items()) / tot
    refunds = (1 - P_CANCELLED) * P_RETURNED * (1 + P_REFUND_EXTRA_LINE * (e_n - 1))
    dups = (1 - P_CANCELLED) * P_DUPLICATE * e_n
    return e_n + refunds + dups


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Generate a large synthetic segflow order history (hive-partitioned Parquet).")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--lines", type=int, default=12_500_000, help="target order lines (default 12500000)")
    p.add_argument("--customers", type=int, default=None,
                   help="customers (default: lines / 15.625, i.e. 800000 for 12.5 M lines)")
    p.add_argument("--months", type=int, default=36, help="months of history (default 36)")
    p.add_argument("--end", default="2026-11-21", help="last day of history, YYYY-MM-DD (default 2026-11-21)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--schema", choices=["demo", "canonical"], default="demo",
                   help="Parquet column types: as in fixtures/demo (default) or segflow's canonical types")
    p.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit (default 4GB)")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    a = p.parse_args(argv)
    try:
        a.end = dt.date.fromisoformat(a.end)
    except ValueError:
        raise UsageError(f"--end: not a date (YYYY-MM-DD): {a.end!r}")
    if a.months < 1 or a.months > 600:
        raise UsageError("--months must be in 1..600")
    if a.lines < 1:
        raise UsageError("--lines must be positive")
    if a.customers is None:
        a.customers = max(1, round(a.lines / LINES_PER_CUSTOMER))
    if a.customers < 1:
        raise UsageError("--customers must be positive")
    if not 0 <= a.seed < 2**63:
        raise UsageError("--seed must be in 0..2^63-1")
    min_lines = a.customers * expected_lines_per_order() * 1.05
    if a.lines < min_lines:
        raise UsageError(
            f"--lines {a.lines} is too few for {a.customers} customers (every customer orders at "
            f"least once; need at least ~{math.ceil(min_lines)} lines)")
    if os.path.exists(a.out):
        if not os.path.isdir(a.out):
            raise UsageError(f"--out {a.out!r} exists and is not a directory")
        if os.listdir(a.out):
            raise UsageError(f"--out {a.out!r} is not empty; refusing to write into it")
    return a


def log(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def generate(a) -> None:
    t0 = time.monotonic()
    start = months_back(a.end, a.months)
    n_days = (a.end - start).days + 1
    start_us = (dt.datetime(start.year, start.month, start.day) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    end_us = start_us + n_days * DAY_US - 1000  # last millisecond of --end
    seed = a.seed

    out = os.path.abspath(a.out)
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gen_orders_tmp_", dir=parent)
    created_out = not os.path.exists(out)
    complete = False
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit={sql_str(a.memory_limit)}")
        con.execute(f"SET threads={int(a.threads)}")
        con.execute("SET preserve_insertion_order=false")
        con.execute(f"SET temp_directory={sql_str(tmp)}")
        # uniform in (0,1) from (key, key2, stream); 53 random bits
        con.execute(
            f"CREATE MACRO rnd(k1, k2, s) AS "
            f"(((hash(k1, k2, s, {seed}::UBIGINT) >> 11)::DOUBLE + 0.5) / 9007199254740992.0)")
        # standard normal (Box-Muller) from two streams
        con.execute(
            "CREATE MACRO nrm(k1, k2, s) AS "
            "(sqrt(-2 * ln(rnd(k1, k2, s))) * cos(2 * pi() * rnd(k1, k2, s + 1)))")
        # time of day in microseconds (whole milliseconds, evening peak) from a uniform u_hour
        hour_case = weighted_case("u_hour", {h: w for h, w in enumerate(HOUR_WEIGHTS)})

        # ---- customers ----------------------------------------------------
        years = list(range(start.year, a.end.year + 1))
        # gamma(shape) for shape a multiple of 0.5: Z^2/2 for the half, -ln(U) per whole unit
        gamma_terms = [f"-ln(rnd(i, {100 + n}, 7))" for n in range(int(RATE_SHAPE))]
        if RATE_SHAPE % 1:
            gamma_terms.append("0.5 * pow(nrm(i, 0, 7), 2)")
        gamma_sql = "(" + " + ".join(gamma_terms) + ")"
        con.execute(f"""
            CREATE TABLE cust AS
            WITH base AS (
                SELECT i AS cid,
                       -- acquisition: half uniform, half growing (density ~ t)
                       CASE WHEN rnd(i, 0, 1) < 0.5 THEN rnd(i, 0, 2) ELSE sqrt(rnd(i, 0, 2)) END AS x,
                       -- 12 %: Black Friday .. Christmas window of some year
                       rnd(i, 0, 3) < 0.12 AS xmas,
                       make_date({years[0]} + floor(rnd(i, 0, 4) * {len(years)})::INT, 11, 20)
                           + floor(rnd(i, 0, 5) * 34)::INT AS xmas_day,
                       rnd(i, 0, 6) < {P_ONE_TIME} AS one_time,
                       -- purchase rate ~ gamma(shape {RATE_SHAPE}): sum of Z^2 / 2 and exponentials
                       {gamma_sql} AS rate,
                       CASE WHEN rnd(i, 0, 9) < {P_LAPSING}
                            THEN -ln(rnd(i, 0, 10)) * {MEAN_LIFETIME_DAYS} ELSE 1e9 END AS lifetime,
                       rnd(i, 0, 11) AS u_n,
                       {weighted_case("rnd(i, 0, 12)", COUNTRIES)} AS country,
                       {weighted_case("rnd(i, 0, 13)", CHANNELS, 0)} AS pref_channel,
                       {weighted_case("rnd(i, 0, 14)", DEVICES)} AS pref_device,
                       {weighted_case("rnd(i, 0, 15)", {k: v[4] for k, v in CATEGORIES.items()})} AS fav_cat,
                       0.2 + 0.5 * rnd(i, 0, 16) AS fav_share
                FROM range({a.customers}) t(i)
            ), days AS (
                SELECT *,
                       CASE WHEN xmas AND xmas_day BETWEEN DATE '{start}' AND DATE '{a.end}'
                            THEN xmas_day - DATE '{start}'
                            ELSE least(floor(x * {n_days})::INT, {n_days - 1}) END AS a_day
                FROM base
            )
            SELECT *,
                   CASE WHEN one_time THEN 0.0
                        ELSE least(lifetime, {n_days - 1} - a_day) END AS active_days
            FROM days
        """)
        log(t0, f"{a.customers} customers")

        # ---- calibrate the number of orders ------------------------------
        # repeat orders ~ geometric with mean m = s * rate * active_days (a gamma-mixed
        # count), at most one a day; s is chosen so the orders total matches the target.
        target_orders = a.lines / expected_lines_per_order()
        repeats = ("CASE WHEN active_days < 1 OR rate * active_days <= 0 THEN 0 ELSE "
                   "least(floor(active_days)::BIGINT, 2000, floor(-ln(u_n) / "
                   "ln(1 + 1 / (? * rate * active_days)))::BIGINT) END")
        total_q = f"SELECT count(*) + sum({repeats}) FROM cust"

        def total_orders(s: float) -> int:
            return int(con.execute(total_q, [s]).fetchone()[0])

        lo, hi = 0.0, 0.01
        while total_orders(hi) < target_orders:
            lo, hi = hi, hi * 2
            if hi > 1e9:
                raise UsageError("cannot reach --lines with these --customers/--months")
        for _ in range(60):
            mid = (lo + hi) / 2
            if total_orders(mid) < target_orders:
                lo = mid
            else:
                hi = mid
            if hi - lo <= hi * 1e-12:
                break
        s = hi
        log(t0, f"calibrated rate scale {s:.6g}: {total_orders(s)} orders (target {target_orders:.0f})")

        # ---- orders --------------------------------------------------------
        cat_names = list(CATEGORIES)
        con.execute(f"""
            CREATE TABLE orders AS
            WITH o AS (
                SELECT cid, k, country, pref_channel, pref_device, fav_cat, fav_share,
                       CASE WHEN k = 0 THEN a_day
                            ELSE a_day + floor(rnd(cid, k, 20) * (floor(active_days) + 1))::INT
                       END AS day,
                       rnd(cid, k, 90) AS u_hour
                FROM (SELECT *, unnest(range(1 + {repeats.replace('?', repr(s))})) AS k FROM cust)
            ), o2 AS (
                SELECT cid, k, country, pref_device, fav_cat, fav_share, day,
                       {start_us}::BIGINT + day::BIGINT * {DAY_US} + {hour_case}::BIGINT * 3600000000
                           + floor(rnd(cid, k, 91) * 3600000)::BIGINT * 1000 AS ts_us,
                       CASE WHEN rnd(cid, k, 21) < {P_NULL_CHANNEL} THEN NULL
                            WHEN k = 0 OR rnd(cid, k, 22) < 0.7 THEN pref_channel
                            ELSE {weighted_case("rnd(cid, k, 23)", CHANNELS, 1)} END AS channel,
                       CASE WHEN rnd(cid, k, 24) < 0.8 THEN pref_device
                            ELSE {weighted_case("rnd(cid, k, 25)", DEVICES)} END AS device,
                       rnd(cid, k, 26) < {P_CANCELLED} AS cancelled,
                       {weighted_case("rnd(cid, k, 27)", LINES_PER_ORDER)} AS nlines
                FROM o
            )
            SELECT *,
                   NOT cancelled AND day <= {n_days - 1 - 3} AND rnd(cid, k, 28) < {P_RETURNED} AS returned,
                   floor(rnd(cid, k, 29) * nlines)::INT AS refund_pick,
                   row_number() OVER (ORDER BY ts_us, cid, k) AS ord_seq
            FROM o2
        """)
        n_orders = con.execute("SELECT count(*) FROM orders").fetchone()[0]
        log(t0, f"{n_orders} orders")

        # ---- lines -> partitioned Parquet --------------------------------
        pad = max(8, len(str(n_orders)))
        prefixes = sql_list([CATEGORIES[c][0] for c in cat_names])
        n_skus = sql_list([CATEGORIES[c][1] for c in cat_names])
        log_lo = sql_list([math.log(CATEGORIES[c][2]) for c in cat_names])
        log_hi = sql_list([math.log(CATEGORIES[c][3]) for c in cat_names])
        cat_idx_case = weighted_case("rnd(cid * 8 + j, k, 31)", {i + 1: CATEGORIES[c][4] for i, c in enumerate(cat_names)})
        fav_idx = "(CASE fav_cat " + " ".join(f"WHEN {sql_str(c)} THEN {i + 1}" for i, c in enumerate(cat_names)) + " END)"
        demo = a.schema == "demo"
        t_client = "client_id" if demo else "client_id::VARCHAR"
        t_ts = "make_timestamp(ts_us)::TIMESTAMP_MS" if demo else "make_timestamp(ts_us)"
        t_qty = "qty::INTEGER" if demo else "qty::BIGINT"
        t_net = "(cents / 100.0)::DECIMAL(12,2)" if demo else "round(cents / 100.0, 2)"
        lines_sql = f"""
            WITH l AS (
                SELECT cid, k, ord_seq, ts_us, channel, country, device, cancelled, returned,
                       fav_cat, j,
                       CASE WHEN rnd(cid * 8 + j, k, 30) < fav_share THEN {fav_idx}
                            ELSE {cat_idx_case} END AS ci,
                       returned AND (j = refund_pick OR rnd(cid * 8 + j, k, 32) < {P_REFUND_EXTRA_LINE}) AS refunded,
                       NOT cancelled AND rnd(cid * 8 + j, k, 33) < {P_DUPLICATE} AS dup
                FROM (SELECT *, unnest(range(nlines)) AS j FROM orders)
            ), l2 AS (
                SELECT *,
                       -- skewed SKU popularity within the category
                       floor({n_skus}[ci] * pow(rnd(cid * 8 + j, k, 34), 2.5))::INT + 1 AS sku_no,
                       {weighted_case("rnd(cid * 8 + j, k, 35)", QTY)} AS q
                FROM l
            ), l3 AS (
                SELECT *,
                       -- log-uniform unit price per SKU, x.99 / x.95 / x.49 / x.00 endings
                       greatest(199, floor(exp({log_lo}[ci] + rnd(ci, sku_no, 36) * ({log_hi}[ci] - {log_lo}[ci])))::BIGINT * 100
                                     + [99, 95, 49, 0][1 + floor(rnd(ci, sku_no, 37) * 4)::INT]) AS unit_cents,
                       -- refunds 3-30 days (plus up to 8 hours) after the order
                       ts_us + (3 + floor(rnd(cid * 8 + j, k, 41) * 28))::BIGINT * {DAY_US}
                             + floor(rnd(cid * 8 + j, k, 42) * 8 * 3600000)::BIGINT * 1000 AS refund_us
                FROM l2
            ), l4 AS (
                SELECT *,
                       CASE WHEN rnd(cid * 8 + j, k, 38) < 0.15
                            THEN round(unit_cents * q * (1 - [0.1, 0.15, 0.2, 0.3][1 + floor(rnd(cid * 8 + j, k, 39) * 4)::INT]))::BIGINT
                            ELSE unit_cents * q END AS line_cents,
                       0.40 + 0.30 * rnd(cid * 8 + j, k, 40) AS cogs_ratio,
                       unnest(CASE WHEN refunded AND dup THEN [0, 1, 2] WHEN refunded THEN [0, 1]
                                   WHEN dup THEN [0, 2] ELSE [0] END) AS kind
                FROM l3
            ), rows AS (
                SELECT {FIRST_CUSTOMER_ID}::BIGINT + cid AS client_id,
                       'SO-' || lpad(ord_seq::VARCHAR, {pad}, '0') AS order_no,
                       CASE WHEN kind = 1 THEN refund_us ELSE ts_us END AS ts_us,
                       {prefixes}[ci] || '-' || lpad(sku_no::VARCHAR, 5, '0') AS sku,
                       CASE WHEN rnd(cid * 8 + j, k, 43) < {P_NULL_CATEGORY} THEN NULL
                            ELSE {sql_list(cat_names)}[ci] END AS product_category,
                       CASE WHEN kind = 1 THEN -q ELSE q END AS qty,
                       CASE WHEN kind = 1 THEN -line_cents ELSE line_cents END AS cents,
                       channel, country, device,
                       CASE WHEN kind = 1 THEN 'returned' WHEN cancelled THEN 'cancelled'
                            ELSE 'completed' END AS status,
                       cogs_ratio
                FROM l4
                WHERE kind <> 1 OR refund_us <= {end_us}  -- no refunds after the end
            )
            SELECT {t_client} AS client_id,
                   order_no,
                   {t_ts} AS created_at,
                   sku,
                   product_category,
                   {t_qty} AS qty,
                   {t_net} AS net_eur,
                   round(cents / 100.0 * cogs_ratio, 2) AS cogs_eur,
                   channel AS utm_source,
                   country AS country_code,
                   device AS device_type,
                   status AS order_status,
                   strftime(make_timestamp(ts_us), '%Y-%m') AS month
            FROM rows
        """
        con.execute("DROP TABLE cust")
        con.execute(
            f"COPY ({lines_sql}) TO {sql_str(out)} "
            f"(FORMAT parquet, PARTITION_BY (month), COMPRESSION zstd, ROW_GROUP_SIZE 122880)")
        con.execute("DROP TABLE orders")
        complete = True
        log(t0, "written")

        # ---- report what was written --------------------------------------
        files, nbytes = [], 0
        for root, _, names in os.walk(out):
            for n in names:
                if n.endswith(".parquet"):
                    p = os.path.join(root, n)
                    files.append(p)
                    nbytes += os.path.getsize(p)
        glob = sql_str(os.path.join(out, "*", "*.parquet"))
        lines, orders, customers, mn, mx = con.execute(
            f"SELECT count(*), count(DISTINCT order_no), count(DISTINCT client_id), "
            f"min(created_at), max(created_at) FROM read_parquet({glob}, hive_partitioning=false)"
        ).fetchone()
        log(t0, "done")
        dev = (lines - a.lines) / a.lines * 100
        print(f"out:       {out}")
        print(f"lines:     {lines} (target {a.lines}, {dev:+.2f} %)")
        print(f"orders:    {orders}")
        print(f"customers: {customers}")
        print(f"period:    {mn} .. {mx} ({a.months} months, month=YYYY-MM partitions)")
        print(f"files:     {len(files)}")
        print(f"bytes:     {nbytes} ({nbytes / 2**20:.1f} MiB)")
        print(f"seconds:   {time.monotonic() - t0:.1f}")
    except BaseException:
        # leave nothing half-written behind
        con.close()
        if not complete and (created_out or (os.path.isdir(out) and os.listdir(out))):
            shutil.rmtree(out, ignore_errors=True)
            if not created_out:
                os.makedirs(out, exist_ok=True)
        raise
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    try:
        a = parse_args(argv)
    except UsageError as e:
        print(f"gen_orders.py: error: {e}", file=sys.stderr)
        return 2
    try:
        generate(a)
    except UsageError as e:
        print(f"gen_orders.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
