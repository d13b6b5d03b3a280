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
