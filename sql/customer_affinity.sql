/*---
description = "Product affinity. One row per customer: the category the customer spends most on, its share of the customer's purchase spend, and how many categories the customer bought."
grain = ["customer_id"]

[columns]
customer_id        = "Customer key."
top_category       = "Category with the largest purchase-line revenue (ties: smallest name; 'unknown' when missing)."
top_category_share = "That category's share of the customer's purchase-line revenue, 0-1 (NULL when it is 0)."
categories_bought  = "Distinct categories among purchase lines ('unknown' counts as one)."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "top_category", "categories_bought"]
relationships = { customer_id = "customer_facts.customer_id" }
---*/
-- Kept per customer as incremental state (category_affinity): a night recomputes only the
-- customers its new lines touch.
select customer_id, top_category, top_category_share, categories_bought
from category_affinity
