/*---
description = "RFM scores and named segment. One row per customer. Scores are 1-5 with score = 1 + floor(5 * W / N), W = customers with a strictly worse value, N = customers: equal values get equal scores and the worst value scores 1."
grain = ["customer_id"]
partition_by = ["segment"]

[columns]
customer_id  = "Customer key."
recency_days = "Days from the last purchase date to as_of (lower is better)."
frequency    = "Number of orders."
monetary     = "Total net revenue (exact sum)."
r_score      = "Recency score 1-5 (5 = most recent)."
f_score      = "Frequency score 1-5."
m_score      = "Monetary score 1-5."
rfm_score    = "The three scores as text, e.g. '545'."
segment      = "Named segment from the first matching rule of rfm_segments; 'Other' when none matches."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "r_score", "f_score", "m_score", "segment"]
expression = ["r_score between 1 and 5", "f_score between 1 and 5", "m_score between 1 and 5"]
relationships = { customer_id = "customer_facts.customer_id" }
---*/
with facts as (
    select customer_id, recency_days, orders as frequency, revenue as monetary
    from customer_facts
),

population as (
    select count(*) as n from facts
),

-- W (customers with a strictly worse value) = rank - 1, from the count of each distinct
-- value and a running sum over those values (small sorts instead of three sorts of every
-- customer).
r_worse as (
    select recency_days,
           coalesce(sum(n) over (order by recency_days desc
                                 rows between unbounded preceding and 1 preceding), 0) as w
    from (select recency_days, count(*) as n from facts group by recency_days)
),

f_worse as (
    select frequency,
           coalesce(sum(n) over (order by frequency asc
                                 rows between unbounded preceding and 1 preceding), 0) as w
    from (select frequency, count(*) as n from facts group by frequency)
),

m_worse as (
    select monetary,
           coalesce(sum(n) over (order by monetary asc
                                 rows between unbounded preceding and 1 preceding), 0) as w
    from (select monetary, count(*) as n from facts group by monetary)
),

worse as (
    select
        f.customer_id, f.recency_days, f.frequency, f.monetary,
        r.w as r_worse,
        fw.w as f_worse,
        m.w as m_worse
    from facts f
    join r_worse r  on r.recency_days = f.recency_days
    join f_worse fw on fw.frequency = f.frequency
    join m_worse m  on m.monetary = f.monetary
),

scored as (
    select
        w.customer_id, w.recency_days, w.frequency, w.monetary,
        1 + (5 * w.r_worse) / p.n as r_score,
        1 + (5 * w.f_worse) / p.n as f_score,
        1 + (5 * w.m_worse) / p.n as m_score
    from worse w cross join population p
),

-- The segment depends on the three scores only: resolve the 125 score cells against the
-- rules once (first matching rule by priority) and join each customer to its cell.
scores as (
    select 1 as score union all select 2 union all select 3 union all select 4 union all select 5
),

cells as (
    select r.score as r_score, f.score as f_score, m.score as m_score
    from scores r cross join scores f cross join scores m
),

cell_priority as (
    select c.r_score, c.f_score, c.m_score, min(g.priority) as priority
    from cells c
    join rfm_segments g
      on c.r_score between g.r_min and g.r_max
     and c.f_score between g.f_min and g.f_max
     and c.m_score between g.m_min and g.m_max
    group by c.r_score, c.f_score, c.m_score
),

cell_segment as (
    select c.r_score, c.f_score, c.m_score, g.segment
    from cell_priority c
    join rfm_segments g on g.priority = c.priority
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
    coalesce(c.segment, 'Other') as segment
from scored s
left join cell_segment c
  on c.r_score = s.r_score and c.f_score = s.f_score and c.m_score = s.m_score
