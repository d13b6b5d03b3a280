/*---
description = "Internal, kept as incremental state. One row per customer with a purchase line: the category the customer spends most on, its share of the customer's purchase spend, and how many categories the customer bought (published as customer_affinity). An incremental run recomputes the rows of the customers its new lines touch."
grain = ["customer_id"]
publish = false
materialized = "incremental"
# Recomputed from every kept category of the customers the new lines touch.
merge = "select * from slice"

[columns]
customer_id        = "Customer key."
top_category       = "Category with the largest purchase-line revenue (ties: smallest name; 'unknown' when missing)."
top_category_share = "That category's share of the customer's purchase-line revenue, 0-1 (NULL when it is 0)."
categories_bought  = "Distinct categories among purchase lines ('unknown' counts as one)."

[checks]
unique = ["customer_id"]
---*/
-- The top category is the one with the largest spend (arg_max breaks ties by the smallest
-- name), so its spend is the largest spend.
select
    customer_id,
    arg_max(category, revenue) as top_category,
    case when sum(revenue) > 0 then cast(max(revenue) as double) / cast(sum(revenue) as double) end
        as top_category_share,
    count(*) as categories_bought
from customer_category_spend
group by customer_id
