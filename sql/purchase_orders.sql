/*---
description = "Internal, kept as incremental state. One row per purchase order (an order with at least one line of revenue >= 0): its time, date, acquisition attributes and top category."
grain = ["customer_id", "order_id"]
publish = false
materialized = "incremental"
# The kept row of an order and the row of its new lines (late lines of an old order) merge
# as the lines would: the earliest time and date, the smallest attribute, the category of
# the highest-revenue line (ties: the smallest name).
merge = """
select
    customer_id,
    order_id,
    min(purchase_ts)   as purchase_ts,
    min(purchase_date) as purchase_date,
    min(channel) as channel,
    min(country) as country,
    min(device)  as device,
    arg_max(top_category, top_revenue) as top_category,
    max(top_revenue) as top_revenue
from (select * from state union all select * from slice) both_rows
group by customer_id, order_id
"""

[columns]
customer_id  = "Customer key."
order_id     = "Order key (synthetic per source row when the source has no order id)."
purchase_ts  = "Earliest purchase-line time of the order (UTC)."
purchase_date = "Date of purchase_ts in the run's time zone."
channel      = "Channel of the order (the smallest of its purchase lines'); NULL when missing."
country      = "Country of the order; NULL when missing."
device       = "Device of the order; NULL when missing."
top_category = "Category of the order's highest-revenue purchase line (ties: smallest name); 'unknown' when missing."
top_revenue  = "Revenue of that line (what a merge with late lines compares)."

[checks]
unique   = ["customer_id, order_id"]
not_null = ["customer_id", "order_id", "purchase_ts"]
---*/
select
    customer_id,
    order_id,
    min(order_ts)   as purchase_ts,
    min(order_date) as purchase_date,
    min(channel) as channel,
    min(country) as country,
    min(device)  as device,
    arg_max(coalesce(category, 'unknown'), revenue) as top_category,
    max(revenue) as top_revenue
from orders
where revenue >= 0
group by customer_id, order_id
