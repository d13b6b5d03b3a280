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

-- W (customers with a strictly worse value) / N reaches k/5 exactly when the value is past
-- the k-th cut rank_cuts gives (from the values alone, not a sort or a join of every
-- customer); recency is negated, as fewer days is better. The score counts the cuts passed.
-- The cuts are taken out of their lists in this one row, so that the customers are compared
-- with plain columns (not a list element looked up for every customer).
cuts as (
    select
        r[1] as r1, r[2] as r2, r[3] as r3, r[4] as r4,
        f[1] as f1, f[2] as f2, f[3] as f3, f[4] as f4,
        m[1] as m1, m[2] as m2, m[3] as m3, m[4] as m4
    from (
        select
            rank_cuts(-recency_days, 0.2, 0.4, 0.6, 0.8) as r,
            rank_cuts(frequency,     0.2, 0.4, 0.6, 0.8) as f,
            rank_cuts(monetary,      0.2, 0.4, 0.6, 0.8) as m
        from facts
    ) lists
),

scored as (
    select
        f.customer_id, f.recency_days, f.frequency, f.monetary,
        1 + cast(-f.recency_days > c.r1 as bigint)
          + cast(-f.recency_days > c.r2 as bigint)
          + cast(-f.recency_days > c.r3 as bigint)
          + cast(-f.recency_days > c.r4 as bigint) as r_score,
        1 + cast(f.frequency > c.f1 as bigint)
          + cast(f.frequency > c.f2 as bigint)
          + cast(f.frequency > c.f3 as bigint)
          + cast(f.frequency > c.f4 as bigint) as f_score,
        1 + cast(f.monetary > c.m1 as bigint)
          + cast(f.monetary > c.m2 as bigint)
          + cast(f.monetary > c.m3 as bigint)
          + cast(f.monetary > c.m4 as bigint) as m_score
    -- the one-row side first: the other way round a cross join emits a batch per row
    from cuts c
    cross join facts f
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
    cast(100 * s.r_score + 10 * s.f_score + s.m_score as varchar) as rfm_score,
    coalesce(c.segment, 'Other') as segment
-- the 125 cells on the build side of the join, every customer streaming past them
from cell_segment c
right join scored s
  on c.r_score = s.r_score and c.f_score = s.f_score and c.m_score = s.m_score
