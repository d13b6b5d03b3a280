/*---
description = "Internal, kept as incremental state. One row per customer and calendar day with any kept order line (refunds included): exact revenue and margin of that day and whether it was a purchase day."
grain = ["customer_id", "order_date"]
publish = false
materialized = "incremental"
# A day's kept row and the row of its new lines (a late line dated that day) add up.
merge = """
select customer_id, order_date,
       sum(revenue) as revenue, sum(margin) as margin, bool_or(is_purchase) as is_purchase
from (select * from state union all select * from slice) both_rows
group by customer_id, order_date
"""

[columns]
customer_id = "Customer key."
order_date  = "Calendar day of the lines."
revenue     = "Exact sum of net revenue of all kept lines that day (Decimal(38,6)); refunds are negative."
margin      = "Exact sum of revenue - cost (NULL when no line that day has a cost)."
is_purchase = "True when the day has a line with revenue >= 0."

[checks]
unique = ["customer_id, order_date"]
---*/
select
    customer_id,
    order_date,
    sum(cast(revenue as decimal(38, 6)))        as revenue,
    sum(cast(revenue - cost as decimal(38, 6))) as margin,
    bool_or(revenue >= 0)                       as is_purchase
from orders
group by customer_id, order_date
