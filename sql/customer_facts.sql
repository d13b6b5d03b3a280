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
-- One pass over the orders and one over the customer days; the first and latest order are
-- the smallest and largest (purchase_ts, order_id), as arg_min / arg_max pick them.
with by_orders as (
    select
        customer_id,
        min(purchase_ts)   as first_order_ts,
        max(purchase_ts)   as last_order_ts,
        min(purchase_date) as first_order_date,
        max(purchase_date) as last_order_date,
        count(*)           as orders,
        arg_min(named_struct('channel', channel, 'country', country, 'device', device,
                             'category', top_category),
                purchase_ts, order_id)                 as first_order,
        arg_max(top_category, purchase_ts, order_id) as last_category
    from purchase_orders
    group by customer_id
),

by_days as (
    select
        d.customer_id,
        count(*) filter (where d.is_purchase) as purchase_days,
        sum(d.revenue) as revenue,
        sum(d.margin)  as margin,
        sum(case when d.order_date > o.first_order_date then d.revenue end) as repeat_revenue,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 90  then d.revenue end) as revenue_90d,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 180 then d.revenue end) as revenue_180d,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 365 then d.revenue end) as revenue_365d,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 90  then d.margin end)  as margin_90d,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 180 then d.margin end)  as margin_180d,
        sum(case when cast(d.order_date as int) - cast(o.first_order_date as int) between 0 and 365 then d.margin end)  as margin_365d
    from customer_days d
    join by_orders o on o.customer_id = d.customer_id
    group by d.customer_id
),

final as (
    select
        o.customer_id,
        o.first_order_ts,
        o.last_order_ts,
        o.first_order_date,
        o.last_order_date,
        cast(date_trunc('month', o.first_order_date) as date) as cohort_month,
        o.orders,
        m.purchase_days,
        cast(m.revenue as double) as revenue,
        cast(m.margin as double)  as margin,
        cast(m.revenue as double) / o.orders as aov,
        cast(cast($as_of as int) - cast(o.last_order_date as int) as bigint)  as recency_days,
        cast(cast($as_of as int) - cast(o.first_order_date as int) as bigint) as tenure_days,
        coalesce(o.first_order['channel'], 'unknown') as acquisition_channel,
        coalesce(o.first_order['country'], 'unknown') as acquisition_country,
        coalesce(o.first_order['device'], 'unknown')  as acquisition_device,
        o.first_order['category'] as first_category,
        o.last_category,
        cast(coalesce(m.repeat_revenue, 0) as double) as repeat_revenue,
        m.revenue_90d, m.revenue_180d, m.revenue_365d,
        m.margin_90d, m.margin_180d, m.margin_365d
    from by_orders o
    join by_days m on m.customer_id = o.customer_id
)
select
    customer_id, first_order_ts, last_order_ts, first_order_date, last_order_date, cohort_month,
    orders, purchase_days, revenue, margin, aov, recency_days, tenure_days,
    acquisition_channel, acquisition_country, acquisition_device, first_category, last_category,
    repeat_revenue,
    case when tenure_days >= 90  then cast(revenue_90d as double)  end as revenue_90d,
    case when tenure_days >= 180 then cast(revenue_180d as double) end as revenue_180d,
    case when tenure_days >= 365 then cast(revenue_365d as double) end as revenue_365d,
    case when tenure_days >= 90  then cast(margin_90d as double)   end as margin_90d,
    case when tenure_days >= 180 then cast(margin_180d as double)  end as margin_180d,
    case when tenure_days >= 365 then cast(margin_365d as double)  end as margin_365d
from final
