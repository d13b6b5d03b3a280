/*---
description = "Which products bring the most valuable customers. One row per first-purchase category: customers, repeat rate, and average revenue and margin per customer 90, 180 and 365 days after acquisition, counting only customers acquired at least that long ago (their number is shown)."
grain = ["first_category"]

[columns]
first_category           = "Category of the customer's first order's highest-revenue line."
customers                = "Customers acquired with this category."
repeat_rate              = "Share of them with 2 or more orders."
revenue                  = "Their total net revenue to date."
avg_revenue_per_customer = "revenue / customers."
customers_90d            = "Customers acquired at least 90 days before as_of."
avg_revenue_90d          = "Mean revenue in the first 90 days over customers_90d (NULL when 0)."
avg_margin_90d           = "Mean margin in the first 90 days over those with a known margin."
customers_180d           = "Customers acquired at least 180 days before as_of."
avg_revenue_180d         = "Mean revenue in the first 180 days."
avg_margin_180d          = "Mean margin in the first 180 days."
customers_365d           = "Customers acquired at least 365 days before as_of."
avg_revenue_365d         = "Mean revenue in the first 365 days."
avg_margin_365d          = "Mean margin in the first 365 days."

[checks]
unique   = ["first_category"]
not_null = ["first_category", "customers"]
expression = ["repeat_rate between 0 and 1"]
---*/
select
    first_category,
    count(*) as customers,
    cast(count(*) filter (where orders >= 2) as double) / count(*) as repeat_rate,
    cast(sum(cast(revenue as decimal(38, 6))) as double) as revenue,
    cast(sum(cast(revenue as decimal(38, 6))) as double) / count(*) as avg_revenue_per_customer,
    count(revenue_90d) as customers_90d,
    cast(sum(cast(revenue_90d as decimal(38, 6))) as double) / nullif(count(revenue_90d), 0) as avg_revenue_90d,
    cast(sum(cast(margin_90d as decimal(38, 6))) as double) / nullif(count(margin_90d), 0) as avg_margin_90d,
    count(revenue_180d) as customers_180d,
    cast(sum(cast(revenue_180d as decimal(38, 6))) as double) / nullif(count(revenue_180d), 0) as avg_revenue_180d,
    cast(sum(cast(margin_180d as decimal(38, 6))) as double) / nullif(count(margin_180d), 0) as avg_margin_180d,
    count(revenue_365d) as customers_365d,
    cast(sum(cast(revenue_365d as decimal(38, 6))) as double) / nullif(count(revenue_365d), 0) as avg_revenue_365d,
    cast(sum(cast(margin_365d as decimal(38, 6))) as double) / nullif(count(margin_365d), 0) as avg_margin_365d
from customer_facts
group by first_category
