/*---
description = "Internal. One row per purchase order (an order with at least one line of revenue >= 0): its time, date, acquisition attributes and top category."
grain = ["customer_id", "order_id"]
publish = false

[columns]
customer_id  = "Customer key."
order_id     = "Order key (synthetic per source row when the source has no order id)."
purchase_ts  = "Earliest purchase-line time of the order (UTC)."
purchase_date = "Date of purchase_ts in the run's time zone."
channel      = "Channel of the order; 'unknown' when missing."
country      = "Country of the order; 'unknown' when missing."
device       = "Device of the order; 'unknown' when missing."
top_category = "Category of the order's highest-revenue purchase line (ties: smallest name); 'unknown' when missing."

[checks]
unique   = ["customer_id, order_id"]
not_null = ["customer_id", "order_id", "purchase_ts"]
---*/
select
    customer_id,
    order_id,
    min(order_ts)   as purchase_ts,
    min(order_date) as purchase_date,
    coalesce(min(channel), 'unknown') as channel,
    coalesce(min(country), 'unknown') as country,
    coalesce(min(device), 'unknown')  as device,
    arg_max(coalesce(category, 'unknown'), revenue) as top_category
from orders
where revenue >= 0
group by customer_id, order_id
