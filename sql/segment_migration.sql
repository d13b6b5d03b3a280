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
with current_members as (
    select 'rfm' as segmentation, arrow_cast(segment, 'Utf8') as segment, arrow_cast(customer_id, 'Utf8') as customer_id from rfm
    union all select 'lifecycle', arrow_cast(stage, 'Utf8'), arrow_cast(customer_id, 'Utf8') from lifecycle
    union all select 'clv', arrow_cast(clv_segment, 'Utf8'), arrow_cast(customer_id, 'Utf8') from clv
),

previous_members as (
    select 'rfm' as segmentation, arrow_cast(segment, 'Utf8') as segment, arrow_cast(customer_id, 'Utf8') as customer_id from previous.rfm
    union all select 'lifecycle', arrow_cast(stage, 'Utf8'), arrow_cast(customer_id, 'Utf8') from previous.lifecycle
    union all select 'clv', arrow_cast(clv_segment, 'Utf8'), arrow_cast(customer_id, 'Utf8') from previous.clv
)

select
    c.segmentation,
    p.segment as from_segment,
    c.segment as to_segment,
    count(*) as customers,
    cast(sum(cast(f.revenue as decimal(38, 6))) as double) as revenue
from current_members c
join previous_members p on p.segmentation = c.segmentation and p.customer_id = c.customer_id
join (select arrow_cast(customer_id, 'Utf8') as customer_id, revenue from customer_facts) f
  on f.customer_id = c.customer_id
group by c.segmentation, p.segment, c.segment
