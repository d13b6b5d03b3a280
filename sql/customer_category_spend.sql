/*---
description = "Internal, kept as incremental state. One row per customer and category with a purchase line (revenue >= 0): the exact purchase revenue."
grain = ["customer_id", "category"]
publish = false
materialized = "incremental"
# A category's kept spend and the spend of the new lines add up.
merge = """
select customer_id, category, sum(revenue) as revenue
from (select * from state union all select * from slice) both_rows
group by customer_id, category
"""

[columns]
customer_id = "Customer key."
category    = "Product category; 'unknown' when missing."
revenue     = "Exact sum of the purchase lines' revenue (Decimal(38,6))."

[checks]
unique = ["customer_id, category"]
---*/
select customer_id, coalesce(category, 'unknown') as category,
       sum(cast(revenue as decimal(38, 6))) as revenue
from orders
where revenue >= 0
group by 1, 2
