/*---
description = "The segment scorecard for dashboards. One row per segmentation (rfm, lifecycle, channel, country, device) and segment: size, share, revenue, margin, order behaviour, reachability, stability against the previous snapshot, and an over-segmentation flag."
grain = ["segmentation", "segment"]

[params]
min_segment_customers = 20

[columns]
segmentation        = "rfm, lifecycle, channel, country or device."
segment             = "Segment name (RFM segment, lifecycle stage, or acquisition channel/country/device)."
customers           = "Customers in the segment."
share               = "customers / all customers (shares of one segmentation sum to 1)."
revenue             = "Net revenue of the segment's customers to date."
revenue_share       = "revenue / revenue of all customers (NULL when that is 0)."
margin              = "Margin of the segment's customers (NULL when no cost is known)."
aov                 = "revenue / orders of the segment."
orders_per_customer = "orders / customers."
repeat_rate         = "Share of the segment's customers with 2 or more orders."
reachable_share     = "Share of the segment's customers with customers.email_opt_in = true; NULL without that input."
stability           = "Share of the segment's customers that were in the same segment in the previous snapshot; NULL without one."
below_min_size      = "True when customers < $min_segment_customers: too small to act on."

[checks]
unique   = ["segmentation, segment"]
not_null = ["segmentation", "segment", "customers", "share"]
accepted_values = { segmentation = ["rfm", "lifecycle", "channel", "country", "device"] }
---*/
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
