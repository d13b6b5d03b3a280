/*---
description = "One row per customer (anyone with at least one purchase up to as_of): order counts, exact revenue and margin, recency, tenure, acquisition attributes and value 90/180/365 days after acquisition."
grain = ["customer_id"]

[columns]
customer_id         = "Customer key (Utf8)."
first_order_ts      = "Time of the first purchase (UTC)."
last_order_ts       = "Time of the latest purchase (UTC)."
first_order_date    = "Date of the first purchase."
last_order_date     = "Date of the latest purchase."
cohort_month        = "First day of the month of the first purchase (acquisition cohort)."
orders              = "Distinct orders with a purchase line (revenue >= 0)."
purchase_days       = "Distinct purchase dates (same-day orders merge)."
revenue             = "Net revenue of all kept lines, refunds included (exact sum)."
margin              = "Revenue minus cost over lines with a known cost; NULL when no cost is known."
aov                 = "Average order value: revenue / orders."
recency_days        = "as_of minus the last purchase date, in days."
tenure_days         = "as_of minus the first purchase date, in days."
acquisition_channel = "Channel of the first purchase order ('unknown' when missing)."
acquisition_country = "Country of the first purchase order."
acquisition_device  = "Device of the first purchase order."
first_category      = "Category of the first order's highest-revenue line."
last_category       = "Category of the latest order's highest-revenue line."
repeat_revenue      = "Net revenue of the days after the first purchase date, refunds included: what repeat purchases brought (the BTYD monetary value times frequency)."
revenue_90d         = "Revenue of lines at most 90 days after the first purchase date (refunds dated before it are outside every window); NULL while tenure_days < 90."
revenue_180d        = "Same for 180 days."
revenue_365d        = "Same for 365 days."
margin_90d          = "Margin of lines at most 90 days after the first purchase date (refunds dated before it are outside); NULL while tenure_days < 90."
margin_180d         = "Same for 180 days."
margin_365d         = "Same for 365 days."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "first_order_ts", "orders", "revenue", "acquisition_channel"]
expression = ["orders >= 1", "purchase_days <= orders", "recency_days <= tenure_days", "recency_days >= 0"]
---*/
-- The customer's own totals are kept as state (customer_totals); what moves with as_of —
-- recency, tenure, and whether a 90/180/365-day window has closed — is computed here, over
-- every customer, each run.
with facts as (
    select
        customer_id, first_order_ts, last_order_ts, first_order_date, last_order_date,
        orders, purchase_days, revenue, margin, last_category, repeat_revenue,
        revenue_90d, revenue_180d, revenue_365d, margin_90d, margin_180d, margin_365d,
        first_channel, first_country, first_device, first_category,
        cast(cast($as_of as int) - cast(last_order_date as int) as bigint)  as recency_days,
        cast(cast($as_of as int) - cast(first_order_date as int) as bigint) as tenure_days
    from customer_totals
)
select
    customer_id, first_order_ts, last_order_ts, first_order_date, last_order_date,
    cast(date_trunc('month', first_order_date) as date) as cohort_month,
    orders, purchase_days,
    cast(revenue as double) as revenue,
    cast(margin as double)  as margin,
    cast(revenue as double) / orders as aov,
    recency_days, tenure_days,
    coalesce(first_channel, 'unknown') as acquisition_channel,
    coalesce(first_country, 'unknown') as acquisition_country,
    coalesce(first_device, 'unknown')  as acquisition_device,
    first_category,
    last_category,
    cast(coalesce(repeat_revenue, 0) as double) as repeat_revenue,
    case when tenure_days >= 90  then cast(revenue_90d as double)  end as revenue_90d,
    case when tenure_days >= 180 then cast(revenue_180d as double) end as revenue_180d,
    case when tenure_days >= 365 then cast(revenue_365d as double) end as revenue_365d,
    case when tenure_days >= 90  then cast(margin_90d as double)   end as margin_90d,
    case when tenure_days >= 180 then cast(margin_180d as double)  end as margin_180d,
    case when tenure_days >= 365 then cast(margin_365d as double)  end as margin_365d
from facts
