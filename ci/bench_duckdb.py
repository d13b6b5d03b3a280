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

Pipeline, as segflow runs it: the canonical `orders` (mapped, cast, cancelled lines
dropped, rows with order_date > as_of removed) is materialized once; then the internal
models purchase_orders, customer_days, rfm_segments, acquisition_value and the published
customer_facts, rfm, lifecycle are materialized as DuckDB tables because later models
read them; every published table is then COPY'd to zstd Parquet. segflow also computes
customer_affinity and segment_migration (empty without a previous snapshot); this script
does not.

Dialect differences from the segflow (DataFusion) SQL, adapted here:

* `$as_of` and `$<param>` are typed placeholders in segflow; here they are pasted as
  literals (`DATE '2026-11-21'`, integers from the models' [params] defaults).
* `cast(<date> as int)` (days since the epoch in DataFusion) is not allowed in DuckDB:
  date differences are written `d1 - d2` (DATE - DATE = BIGINT days).
* `first_value(x order by ...)` as an aggregate (purchase_orders.top_category) is
  `first(x order by ...)` in DuckDB (same tie-breaking: revenue desc, category asc).
* Integer division: `(5 * w) / n` is integer division on BIGINT in DataFusion, but `/`
  always returns DOUBLE in DuckDB; rfm uses `//`.
* `(values ...)` columns are column1..column8 in DataFusion and col0..col7 in DuckDB;
  rfm_segments names them with a table alias `t(column1, ..., column8)`.
* `previous.<model>` (the previous snapshot) is an empty table of the same schema, as in
  a first segflow run: segment_summary.stability is NULL.
* Exact money sums are unchanged: `sum(cast(x as decimal(38, 6)))` is DECIMAL(38,6) in
  both engines, then cast to DOUBLE. (DuckDB's sum over DECIMAL(38,6) stays (38,6); the
  sums over BIGINT, e.g. segment_summary's orders, are HUGEINT in DuckDB, Int64 in
  DataFusion -- only used in divisions, so the results are the same doubles.)
* Source mapping: segflow's canonical order_ts is Timestamp(us, "UTC"); DuckDB keeps the
  naive TIMESTAMP (UTC wall time) and order_date = CAST(order_ts AS DATE), which is the
  same date when no [runtime] timezone is set (the demo sets none; one that is set is
  rejected here). Published *_ts columns are therefore naive TIMESTAMP in Parquet.
* drop_status: `NOT (status IS NOT NULL AND lower(status) IN (...))`, exactly segflow's
  predicate; the cut-off is `order_date <= as_of`.
* DuckDB settings: threads, memory_limit, temp_directory (spilling, under --out) and
  preserve_insertion_order = false (segflow gives no row order either; lets COPY stream).
* Output files: one zstd Parquet file per table (segflow writes hive-partitioned
  directories for rfm and lifecycle, several files per table, plus its own staging).
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

# Model [params] defaults (lifecycle.sql, segment_summary.sql); config [params] override.
DEFAULT_PARAMS = {"new_days": 30, "active_days": 90, "at_risk_days": 180, "churn_days": 365,
                  "min_segment_customers": 20}

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
# The models, translated from sql/*.sql (see the dialect notes above)
# --------------------------------------------------------------------------------------

RFM_SEGMENTS = """
select
    cast(column1 as bigint) as priority,
    column2                 as segment,
    cast(column3 as bigint) as r_min,
    cast(column4 as bigint) as r_max,
    cast(column5 as bigint) as f_min,
    cast(column6 as bigint) as f_max,
    cast(column7 as bigint) as m_min,
    cast(column8 as bigint) as m_max
from (values
    ( 1, 'Champions',          4, 5, 4, 5, 4, 5),
    ( 2, 'Loyal',              3, 5, 4, 5, 1, 5),
    ( 3, 'Can''t Lose',        1, 2, 4, 5, 4, 5),
    ( 4, 'At Risk',            1, 2, 3, 5, 1, 5),
    ( 5, 'Potential Loyalist', 4, 5, 2, 3, 1, 5),
    ( 6, 'New',                5, 5, 1, 1, 1, 5),
    ( 7, 'Promising',          4, 4, 1, 1, 1, 5),
    ( 8, 'Need Attention',     3, 3, 2, 3, 1, 5),
    ( 9, 'About to Sleep',     3, 3, 1, 1, 1, 5),
    (10, 'Hibernating',        2, 2, 1, 2, 1, 5),
    (11, 'Lost',               1, 1, 1, 2, 1, 5)
) as t(column1, column2, column3, column4, column5, column6, column7, column8)
"""

PURCHASE_ORDERS = """
select
    customer_id,
    order_id,
    min(order_ts)   as purchase_ts,
    min(order_date) as purchase_date,
    coalesce(min(channel), 'unknown') as channel,
    coalesce(min(country), 'unknown') as country,
    coalesce(min(device), 'unknown')  as device,
    first(coalesce(category, 'unknown')
        order by revenue desc, coalesce(category, 'unknown') asc) as top_category
from orders
where revenue >= 0
group by customer_id, order_id
"""

CUSTOMER_DAYS = """
select
    customer_id,
    order_date,
    sum(cast(revenue as decimal(38, 6)))        as revenue,
    sum(cast(revenue - cost as decimal(38, 6))) as margin,
    bool_or(revenue >= 0)                       as is_purchase
from orders
group by customer_id, order_date
"""

CUSTOMER_FACTS = """
with ranked as (
    select
        po.*,
        row_number() over (partition by customer_id order by purchase_ts asc, order_id asc)   as first_rank,
        row_number() over (partition by customer_id order by purchase_ts desc, order_id desc) as last_rank
    from purchase_orders po
),

firsts as (
    select customer_id, purchase_ts as first_order_ts, purchase_date as first_order_date,
           channel, country, device, top_category as first_category
    from ranked where first_rank = 1
),

lasts as (
    select customer_id, purchase_ts as last_order_ts, purchase_date as last_order_date,
           top_category as last_category
    from ranked where last_rank = 1
),

order_counts as (
    select customer_id, count(*) as orders from purchase_orders group by customer_id
),

day_counts as (
    select customer_id, count(*) as purchase_days
    from customer_days where is_purchase group by customer_id
),

money as (
    select
        d.customer_id,
        sum(d.revenue) as revenue,
        sum(d.margin)  as margin,
        sum(case when d.order_date - f.first_order_date <= 90  then d.revenue end) as revenue_90d,
        sum(case when d.order_date - f.first_order_date <= 180 then d.revenue end) as revenue_180d,
        sum(case when d.order_date - f.first_order_date <= 365 then d.revenue end) as revenue_365d,
        sum(case when d.order_date - f.first_order_date <= 90  then d.margin end)  as margin_90d,
        sum(case when d.order_date - f.first_order_date <= 180 then d.margin end)  as margin_180d,
        sum(case when d.order_date - f.first_order_date <= 365 then d.margin end)  as margin_365d
    from customer_days d
    join firsts f on f.customer_id = d.customer_id
    group by d.customer_id
),

final as (
    select
        f.customer_id,
        f.first_order_ts,
        l.last_order_ts,
        f.first_order_date,
        l.last_order_date,
        cast(date_trunc('month', f.first_order_date) as date) as cohort_month,
        o.orders,
        dc.purchase_days,
        cast(m.revenue as double) as revenue,
        cast(m.margin as double)  as margin,
        cast(m.revenue as double) / o.orders as aov,
        cast($as_of - l.last_order_date as bigint)  as recency_days,
        cast($as_of - f.first_order_date as bigint) as tenure_days,
        f.channel  as acquisition_channel,
        f.country  as acquisition_country,
        f.device   as acquisition_device,
        f.first_category,
        l.last_category,
        m.revenue_90d, m.revenue_180d, m.revenue_365d,
        m.margin_90d, m.margin_180d, m.margin_365d
    from firsts f
    join lasts l        on l.customer_id = f.customer_id
    join order_counts o on o.customer_id = f.customer_id
    join day_counts dc  on dc.customer_id = f.customer_id
    join money m        on m.customer_id = f.customer_id
)

select
    customer_id, first_order_ts, last_order_ts, first_order_date, last_order_date, cohort_month,
    orders, purchase_days, revenue, margin, aov, recency_days, tenure_days,
    acquisition_channel, acquisition_country, acquisition_device, first_category, last_category,
    case when tenure_days >= 90  then cast(revenue_90d as double)  end as revenue_90d,
    case when tenure_days >= 180 then cast(revenue_180d as double) end as revenue_180d,
    case when tenure_days >= 365 then cast(revenue_365d as double) end as revenue_365d,
    case when tenure_days >= 90  then cast(margin_90d as double)   end as margin_90d,
    case when tenure_days >= 180 then cast(margin_180d as double)  end as margin_180d,
    case when tenure_days >= 365 then cast(margin_365d as double)  end as margin_365d
from final
"""

RFM = """
with facts as (
    select customer_id, recency_days, orders as frequency, revenue as monetary
    from customer_facts
),

population as (
    select count(*) as n from facts
),

worse as (
    select
        customer_id, recency_days, frequency, monetary,
        cast(rank() over (order by recency_days desc) as bigint) - 1 as r_worse,
        cast(rank() over (order by frequency asc) as bigint) - 1     as f_worse,
        cast(rank() over (order by monetary asc) as bigint) - 1      as m_worse
    from facts
),

scored as (
    select
        w.customer_id, w.recency_days, w.frequency, w.monetary,
        1 + (5 * w.r_worse) // p.n as r_score,
        1 + (5 * w.f_worse) // p.n as f_score,
        1 + (5 * w.m_worse) // p.n as m_score
    from worse w cross join population p
),

matched as (
    select s.customer_id, min(r.priority) as priority
    from scored s
    join rfm_segments r
      on s.r_score between r.r_min and r.r_max
     and s.f_score between r.f_min and r.f_max
     and s.m_score between r.m_min and r.m_max
    group by s.customer_id
)

select
    s.customer_id,
    s.recency_days,
    s.frequency,
    s.monetary,
    s.r_score,
    s.f_score,
    s.m_score,
    concat(cast(s.r_score as varchar), cast(s.f_score as varchar), cast(s.m_score as varchar)) as rfm_score,
    coalesce(r.segment, 'Other') as segment
from scored s
left join matched m on m.customer_id = s.customer_id
left join rfm_segments r on r.priority = m.priority
"""

LIFECYCLE = """
select
    customer_id,
    case
        when tenure_days  <= $new_days     then 'new'
        when recency_days <= $active_days  then 'active'
        when recency_days <= $at_risk_days then 'at_risk'
        when recency_days <= $churn_days   then 'lapsed'
        else 'churned'
    end as stage,
    tenure_days  as days_since_first,
    recency_days as days_since_last
from customer_facts
"""

COHORT_RETENTION = """
with customers as (
    select customer_id, cohort_month,
           cast(date_part('year', cohort_month) * 12 + date_part('month', cohort_month) as bigint) as cohort_index
    from customer_facts
),

as_of_index as (
    select cast(date_part('year', $as_of) * 12 + date_part('month', $as_of) as bigint) as idx
),

sizes as (
    select cohort_month, cohort_index, count(*) as cohort_customers
    from customers group by cohort_month, cohort_index
),

grid as (
    select s.cohort_month, s.cohort_customers,
           unnest(range(0, a.idx - s.cohort_index + 1)) as period
    from sizes s cross join as_of_index a
),

activity as (
    select
        c.customer_id,
        c.cohort_month,
        cast(date_part('year', d.order_date) * 12 + date_part('month', d.order_date) as bigint) - c.cohort_index as period,
        bool_or(d.is_purchase) as active,
        sum(d.revenue) as revenue,
        sum(d.margin)  as margin
    from customer_days d
    join customers c on c.customer_id = d.customer_id
    group by 1, 2, 3
),

cells as (
    select
        cohort_month, period,
        count(*) filter (where active) as active_customers,
        sum(revenue) as revenue,
        sum(margin)  as margin
    from activity
    group by cohort_month, period
),

cost_known as (
    select count(*) > 0 as known from customer_days where margin is not null
),

filled as (
    select
        g.cohort_month,
        cast(g.period as bigint) as period,
        g.cohort_customers,
        coalesce(c.active_customers, 0) as active_customers,
        coalesce(c.revenue, cast(0 as decimal(38, 6))) as revenue,
        case
            when c.cohort_month is not null then c.margin
            when k.known then cast(0 as decimal(38, 6))
        end as margin
    from grid g
    cross join cost_known k
    left join cells c on c.cohort_month = g.cohort_month and c.period = g.period
)

select
    f.cohort_month,
    f.period,
    f.cohort_customers,
    f.active_customers,
    cast(f.active_customers as double) / f.cohort_customers as retention,
    cast(f.revenue as double) as revenue,
    cast(f.margin as double)  as margin,
    cast(sum(f.revenue) over (partition by f.cohort_month order by f.period
         rows between unbounded preceding and current row) as double) / f.cohort_customers
        as cumulative_revenue_per_customer,
    cast(sum(f.margin) over (partition by f.cohort_month order by f.period
         rows between unbounded preceding and current row) as double) / f.cohort_customers
        as cumulative_margin_per_customer,
    f.period <> (select a.idx from as_of_index a)
        - cast(date_part('year', f.cohort_month) * 12 + date_part('month', f.cohort_month) as bigint)
        as is_complete
from filled f
"""

_MEMBER_COLS = ("customer_id, orders, revenue, revenue_90d, margin_90d, revenue_180d, "
                "margin_180d, revenue_365d, margin_365d")

ACQUISITION_VALUE = f"""
with members as (
    select 'first_category' as dimension, first_category as value,
           {_MEMBER_COLS}
    from customer_facts
    union all
    select 'channel', acquisition_channel,
           {_MEMBER_COLS}
    from customer_facts
    union all
    select 'country', acquisition_country,
           {_MEMBER_COLS}
    from customer_facts
    union all
    select 'device', acquisition_device,
           {_MEMBER_COLS}
    from customer_facts
)

select
    dimension,
    value,
    count(*) as customers,
    cast(count(*) filter (where orders >= 2) as double) / count(*) as repeat_rate,
    cast(sum(cast(revenue as decimal(38, 6))) as double) as revenue,
    cast(sum(cast(revenue as decimal(38, 6))) as double) / count(*) as avg_revenue_per_customer,
    count(revenue_90d) as customers_90d,
    cast(sum(cast(revenue_90d as decimal(38, 6))) as double) / nullif(count(revenue_90d), 0) as avg_revenue_90d,
    cast(sum(cast(margin_90d as decimal(38, 6))) as double) / nullif(count(margin_90d), 0) as avg_margin_90d,
    count(revenue_180d) as customers_180d,
    cast(sum(cast(revenue_180d as decimal(38, 6))) as double) / nullif(count(revenue_180d), 0) as avg_revenue_180d,
    cast(sum(cast(margin_180d as decimal(38, 6))) as double) / nullif(count(margin_180d), 0) as avg_margin_180d,
    count(revenue_365d) as customers_365d,
    cast(sum(cast(revenue_365d as decimal(38, 6))) as double) / nullif(count(revenue_365d), 0) as avg_revenue_365d,
    cast(sum(cast(margin_365d as decimal(38, 6))) as double) / nullif(count(margin_365d), 0) as avg_margin_365d
from members
group by dimension, value
"""

PRODUCT_VALUE = """
select
    value as first_category,
    customers, repeat_rate, revenue, avg_revenue_per_customer,
    customers_90d, avg_revenue_90d, avg_margin_90d,
    customers_180d, avg_revenue_180d, avg_margin_180d,
    customers_365d, avg_revenue_365d, avg_margin_365d
from acquisition_value
where dimension = 'first_category'
"""

CHANNEL_VALUE = """
with value_stats as (
    select * from acquisition_value where dimension in ('channel', 'country', 'device')
),

spend_months as (
    select channel, cast(date_trunc('month', month) as date) as month,
           sum(cast(spend as decimal(38, 6))) as spend
    from marketing_spend
    where month <= $as_of and channel is not null
    group by 1, 2
),

spend_totals as (
    select channel, cast(sum(spend) as double) as spend from spend_months group by channel
),

acquired as (
    select s.channel, count(c.customer_id) as customers
    from spend_months s
    left join customer_facts c
      on c.acquisition_channel = s.channel
     and c.cohort_month = s.month
    group by s.channel
)

select
    v.*,
    t.spend,
    t.spend / nullif(a.customers, 0) as cac,
    v.avg_revenue_365d / (t.spend / nullif(a.customers, 0)) as ltv_cac
from value_stats v
left join spend_totals t on v.dimension = 'channel' and t.channel = v.value
left join acquired a     on v.dimension = 'channel' and a.channel = v.value
"""

SEGMENT_SUMMARY = """
with members as (
    select 'rfm' as segmentation, segment, customer_id from rfm
    union all select 'lifecycle', stage, customer_id from lifecycle
    union all select 'channel', acquisition_channel, customer_id from customer_facts
    union all select 'country', acquisition_country, customer_id from customer_facts
    union all select 'device',  acquisition_device,  customer_id from customer_facts
),

previous_members as (
    select 'rfm' as segmentation, segment, customer_id from previous.rfm
    union all select 'lifecycle', stage, customer_id from previous.lifecycle
    union all select 'channel', acquisition_channel, customer_id from previous.customer_facts
    union all select 'country', acquisition_country, customer_id from previous.customer_facts
    union all select 'device',  acquisition_device,  customer_id from previous.customer_facts
),

has_previous as (
    select count(*) > 0 as yes from previous.customer_facts
),

opt_in_known as (
    select count(email_opt_in) > 0 as yes from customers
),

opt_in as (
    select customer_id, bool_or(email_opt_in) as opted_in
    from customers where email_opt_in is not null group by customer_id
),

totals as (
    select count(*) as customers, sum(cast(revenue as decimal(38, 6))) as revenue from customer_facts
),

joined as (
    select
        m.segmentation, m.segment, m.customer_id,
        f.orders, f.revenue, f.margin,
        coalesce(o.opted_in, false) as opted_in,
        p.segment as previous_segment
    from members m
    join customer_facts f on f.customer_id = m.customer_id
    left join opt_in o on o.customer_id = m.customer_id
    left join previous_members p
      on p.segmentation = m.segmentation and p.customer_id = m.customer_id
),

stats as (
    select
        segmentation,
        segment,
        count(*) as customers,
        sum(cast(revenue as decimal(38, 6))) as revenue,
        sum(cast(margin as decimal(38, 6)))  as margin,
        sum(orders) as orders,
        count(*) filter (where orders >= 2) as repeaters,
        count(*) filter (where opted_in) as reachable,
        count(*) filter (where previous_segment = segment) as stayed
    from joined
    group by segmentation, segment
)

select
    s.segmentation,
    s.segment,
    s.customers,
    cast(s.customers as double) / t.customers as share,
    cast(s.revenue as double) as revenue,
    case when t.revenue <> 0 then cast(s.revenue as double) / cast(t.revenue as double) end as revenue_share,
    cast(s.margin as double) as margin,
    cast(s.revenue as double) / s.orders as aov,
    cast(s.orders as double) / s.customers as orders_per_customer,
    cast(s.repeaters as double) / s.customers as repeat_rate,
    case when k.yes then cast(s.reachable as double) / s.customers end as reachable_share,
    case when h.yes then cast(s.stayed as double) / s.customers end as stability,
    s.customers < $min_segment_customers as below_min_size
from stats s
cross join totals t
cross join has_previous h
cross join opt_in_known k
"""

# (name, sql, materialize as a table, publish with COPY), in dependency order.
STEPS = [
    ("rfm_segments", RFM_SEGMENTS, True, False),
    ("purchase_orders", PURCHASE_ORDERS, True, False),
    ("customer_days", CUSTOMER_DAYS, True, False),
    ("customer_facts", CUSTOMER_FACTS, True, True),
    ("rfm", RFM, True, True),
    ("lifecycle", LIFECYCLE, True, True),
    ("cohort_retention", COHORT_RETENTION, False, True),
    ("acquisition_value", ACQUISITION_VALUE, True, False),
    ("product_value", PRODUCT_VALUE, False, True),
    ("channel_value", CHANNEL_VALUE, False, True),
    ("segment_summary", SEGMENT_SUMMARY, False, True),
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


def register_inputs(con, config: dict, config_dir: str, orders_uri: str, as_of: dt.date):
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
    # The canonical view: order_date inserted after order_ts, as in segflow.
    con.execute(f"""
        CREATE TABLE orders AS
        WITH mapped AS ({select})
        SELECT customer_id, order_id, order_ts, CAST(order_ts AS DATE) AS order_date,
               revenue, quantity, cost, product_id, category, channel, country, region,
               device, status
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
    params = {k: str(int(v)) for k, v in DEFAULT_PARAMS.items()}
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
        register_inputs(con, config, os.path.dirname(os.path.abspath(args.config)),
                        args.orders, as_of)
        rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
        result["internal"]["orders"] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
        # previous.<model>: empty tables of the same schema (no previous snapshot).
        con.execute("CREATE SCHEMA previous")

        for name, sql, materialize, publish in STEPS:
            t0 = time.perf_counter()
            body = render(sql, params)
            if materialize:
                con.execute(f"CREATE TABLE {name} AS {body}")
                source = name
            else:
                source = f"({body})"
            if publish:
                path = os.path.join(args.out, f"{name}.parquet")
                n = con.execute(f"COPY {source} TO {q(path)} (FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
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
