/*---
description = "Where valuable customers come from. One row per acquisition dimension and value (dimension = channel, country or device): customers, repeat rate, value 90/180/365 days after acquisition and, for channels with marketing spend, spend, CAC and LTV/CAC."
grain = ["dimension", "value"]

[columns]
dimension                = "channel, country or device (of the first purchase)."
value                    = "The channel, country or device; 'unknown' when missing."
customers                = "Customers acquired there."
repeat_rate              = "Share of them with 2 or more orders."
revenue                  = "Their total net revenue to date."
avg_revenue_per_customer = "revenue / customers."
customers_90d            = "Customers acquired at least 90 days before as_of."
avg_revenue_90d          = "Mean revenue in the first 90 days over customers_90d."
avg_margin_90d           = "Mean margin in the first 90 days over those with a known margin."
customers_180d           = "Customers acquired at least 180 days before as_of."
avg_revenue_180d         = "Mean revenue in the first 180 days."
avg_margin_180d          = "Mean margin in the first 180 days."
customers_365d           = "Customers acquired at least 365 days before as_of."
avg_revenue_365d         = "Mean revenue in the first 365 days."
avg_margin_365d          = "Mean margin in the first 365 days."
spend                    = "Channel rows only: marketing spend of the channel in months up to the as_of month (NULL without spend rows)."
cac                      = "spend / customers of the channel acquired in months that have a spend row (NULL when none)."
ltv_cac                  = "avg_revenue_365d / cac."

[checks]
unique   = ["dimension, value"]
not_null = ["dimension", "value", "customers"]
accepted_values = { dimension = ["channel", "country", "device"] }
---*/
with members as (
    select 'channel' as dimension, acquisition_channel as value, customer_id, cohort_month, orders,
           revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
    union all
    select 'country', acquisition_country, customer_id, cohort_month, orders,
           revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
    union all
    select 'device', acquisition_device, customer_id, cohort_month, orders,
           revenue, revenue_90d, margin_90d, revenue_180d, margin_180d, revenue_365d, margin_365d
    from customer_facts
),

value_stats as (
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
),

spend_months as (
    select channel, month, sum(cast(spend as decimal(38, 6))) as spend
    from marketing_spend
    where month <= $as_of and channel is not null
    group by channel, month
),

spend_totals as (
    select channel, cast(sum(spend) as double) as spend from spend_months group by channel
),

acquired as (
    select s.channel, count(c.customer_id) as customers
    from spend_months s
    left join customer_facts c
      on c.acquisition_channel = s.channel
     and c.cohort_month = cast(date_trunc('month', s.month) as date)
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
