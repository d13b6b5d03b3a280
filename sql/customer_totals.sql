/*---
description = "Internal, kept as incremental state. One row per customer with a purchase: what customer_facts reports that does not move with as_of (order counts, exact revenue and margin, first and latest purchase, acquisition attributes, value 90/180/365 days after acquisition). An incremental run recomputes the rows of the customers its new lines touch, from their kept orders and days."
grain = ["customer_id"]
publish = false
materialized = "incremental"
# Recomputed from every kept order and day of the customers the new lines touch, so a
# touched customer's new row replaces the kept one.
merge = "select * from slice"

[columns]
customer_id      = "Customer key."
first_order_ts   = "Time of the first purchase (UTC)."
last_order_ts    = "Time of the latest purchase (UTC)."
first_order_date = "Date of the first purchase."
last_order_date  = "Date of the latest purchase."
orders           = "Distinct purchase orders."
purchase_days    = "Distinct purchase dates."
revenue          = "Exact net revenue of all kept lines, refunds included (Decimal(38,6))."
margin           = "Exact revenue minus cost over lines with a known cost; NULL when none is known."
first_channel    = "Channel of the first purchase order; NULL when missing."
first_country    = "Country of the first purchase order; NULL when missing."
first_device     = "Device of the first purchase order; NULL when missing."
first_category   = "Top category of the first purchase order."
last_category    = "Top category of the latest purchase order."
repeat_revenue   = "Exact net revenue of the days after the first purchase date; NULL when there are none."
revenue_90d      = "Exact revenue of the days at most 90 days after the first purchase date; NULL when there are none."
revenue_180d     = "Same for 180 days."
revenue_365d     = "Same for 365 days."
margin_90d       = "Exact margin of the days at most 90 days after the first purchase date."
margin_180d      = "Same for 180 days."
margin_365d      = "Same for 365 days."

[checks]
unique = ["customer_id"]
---*/
-- One pass over the orders and one over the customer days; the first and latest order are
-- the smallest and largest (purchase_ts, order_id), as arg_min / arg_max pick them. Every
-- value is the customer's own (nothing here reads another customer's rows or $as_of),
-- which is what lets an incremental run recompute only the touched customers.
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
)

select
    o.customer_id,
    o.first_order_ts,
    o.last_order_ts,
    o.first_order_date,
    o.last_order_date,
    o.orders,
    m.purchase_days,
    m.revenue,
    m.margin,
    o.first_order['channel']  as first_channel,
    o.first_order['country']  as first_country,
    o.first_order['device']   as first_device,
    o.first_order['category'] as first_category,
    o.last_category,
    m.repeat_revenue,
    m.revenue_90d, m.revenue_180d, m.revenue_365d,
    m.margin_90d, m.margin_180d, m.margin_365d
from by_orders o
join by_days m on m.customer_id = o.customer_id
