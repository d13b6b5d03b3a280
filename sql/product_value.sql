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
    value as first_category,
    customers, repeat_rate, revenue, avg_revenue_per_customer,
    customers_90d, avg_revenue_90d, avg_margin_90d,
    customers_180d, avg_revenue_180d, avg_margin_180d,
    customers_365d, avg_revenue_365d, avg_margin_365d
from acquisition_value
where dimension = 'first_category'
