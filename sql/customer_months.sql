/*---
description = "Internal, kept as incremental state. One row per customer with a purchase and calendar month with any kept line of theirs: the customer's acquisition cohort, the month's period since it, whether it had a purchase, and its exact revenue and margin. cohort_retention adds these up per cohort and period; an incremental run recomputes the rows of the customers its new lines touch."
grain = ["customer_id", "period"]
publish = false
materialized = "incremental"
# Every row of a touched customer is recomputed (a late line can move the cohort, and with
# it every period), and replaces all of that customer's kept rows.
merge = "select * from slice"

[columns]
customer_id  = "Customer key."
cohort_month = "First day of the month of the customer's first purchase."
period       = "Calendar months from the cohort month to this month (negative for refunds dated before the first purchase)."
active       = "True when the month has a purchase day."
revenue      = "Exact net revenue of the month, refunds included (Decimal(38,6))."
margin       = "Exact margin of the month; NULL when no line of the month has a cost."

[checks]
unique = ["customer_id, period"]
---*/
with customers as (
    select
        customer_id,
        cast(date_trunc('month', first_order_date) as date) as cohort_month,
        cast(date_part('year', first_order_date) * 12 + date_part('month', first_order_date) as bigint) as cohort_index
    from customer_totals
)

select
    d.customer_id,
    c.cohort_month,
    cast(date_part('year', d.order_date) * 12 + date_part('month', d.order_date) as bigint) - c.cohort_index as period,
    bool_or(d.is_purchase) as active,
    sum(d.revenue) as revenue,
    sum(d.margin)  as margin
from customer_days d
join customers c on c.customer_id = d.customer_id
group by 1, 2, 3
