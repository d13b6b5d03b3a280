/*---
description = "How customers moved between segments since the previous published snapshot. One row per segmentation (rfm, lifecycle, clv), from_segment and to_segment, over customers present in both snapshots. Empty when there is no previous snapshot."
grain = ["segmentation", "from_segment", "to_segment"]

[columns]
segmentation = "rfm, lifecycle or clv (value band x churn risk)."
from_segment = "Segment in the previous snapshot."
to_segment   = "Segment in this snapshot."
customers    = "Customers that moved from from_segment to to_segment (equal = stayed)."
revenue      = "Their net revenue to date in this snapshot."

[checks]
unique   = ["segmentation, from_segment, to_segment"]
not_null = ["segmentation", "from_segment", "to_segment", "customers"]
accepted_values = { segmentation = ["rfm", "lifecycle", "clv"] }
---*/
-- Keys and segments as plain strings: string views read from Parquet share their pages'
-- buffers, and the exchange between the joins would count (and spill) a page per row batch.
-- Each segmentation is joined with its previous snapshot on the customer alone (three joins
-- of one row per customer, not one of all three tables' rows on segmentation and customer).
-- The rfm moves carry the customer's revenue themselves (rfm.monetary is customer_facts'
-- revenue); only the lifecycle and clv moves are joined with customer_facts for it.
with rfm_moves as (
    select 'rfm' as segmentation, arrow_cast(p.segment, 'Utf8') as from_segment,
           arrow_cast(c.segment, 'Utf8') as to_segment, c.monetary as revenue
    from rfm c
    join previous.rfm p on p.customer_id = c.customer_id
),

other_moves as (
    select 'lifecycle' as segmentation, arrow_cast(p.stage, 'Utf8') as from_segment,
           arrow_cast(c.stage, 'Utf8') as to_segment, arrow_cast(c.customer_id, 'Utf8') as customer_id
    from lifecycle c
    join previous.lifecycle p on p.customer_id = c.customer_id
    union all
    select 'clv', arrow_cast(p.clv_segment, 'Utf8'), arrow_cast(c.clv_segment, 'Utf8'), arrow_cast(c.customer_id, 'Utf8')
    from clv c
    join previous.clv p on p.customer_id = c.customer_id
),

moves as (
    select segmentation, from_segment, to_segment, revenue from rfm_moves
    union all
    select m.segmentation, m.from_segment, m.to_segment, f.revenue
    from other_moves m
    join (select arrow_cast(customer_id, 'Utf8') as customer_id, revenue from customer_facts) f
      on f.customer_id = m.customer_id
)

select
    segmentation,
    from_segment,
    to_segment,
    count(*) as customers,
    cast(sum(cast(revenue as decimal(38, 6))) as double) as revenue
from moves
group by segmentation, from_segment, to_segment
