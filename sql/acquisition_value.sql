/*---
description = "Internal. Customer value by acquisition attribute. One row per dimension (first_category, channel, country, device) and value: customers, repeat rate, revenue and average value 90/180/365 days after acquisition over the customers acquired at least that long ago."
grain = ["dimension", "value"]
publish = false

[columns]
dimension                = "first_category, channel, country or device (all of the first purchase)."
value                    = "The category, channel, country or device; 'unknown' when missing."
customers                = "Customers acquired with that value."
repeat_rate              = "Share of them with 2 or more orders."
revenue                  = "Their total net revenue to date."
avg_revenue_per_customer = "revenue / customers."
customers_90d            = "Customers acquired at least 90 days before as_of."
avg_revenue_90d          = "Mean revenue in the first 90 days over customers_90d (NULL when 0)."
avg_margin_90d           = "Mean margin in the first 90 days over those with a known margin."
customers_180d           = "Customers acquired at least 180 days before as_of."
avg_revenue_180d         = "Mean revenue in the first 180 days."
avg_margin_180d          = "Mean margin in the first 180 days."
customers_365d           = "Customers acquired at least 365 days before as_of."
avg_revenue_365d         = "Mean revenue in the first 365 days."
avg_margin_365d          = "Mean margin in the first 365 days."

[checks]
unique   = ["dimension, value"]
not_null = ["dimension", "value", "customers"]
---*/
with members as (
    select 'first_category' as dimension, first_category as value,
           customer_id, orders, revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
    union all
    select 'channel', acquisition_channel,
           customer_id, orders, revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
    union all
    select 'country', acquisition_country,
           customer_id, orders, revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
    union all
    select 'device', acquisition_device,
           customer_id, orders, revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
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
