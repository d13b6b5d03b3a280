/*---
description = "Lifecycle stage of each customer at as_of. One row per customer. First match wins: new (first purchase at most $new_days days ago), active (last purchase at most $active_days ago), at_risk ($at_risk_days), lapsed ($churn_days), else churned."
grain = ["customer_id"]
partition_by = ["stage"]

[params]
new_days     = 30
active_days  = 90
at_risk_days = 180
churn_days   = 365

[columns]
customer_id      = "Customer key."
stage            = "new, active, at_risk, lapsed or churned."
days_since_first = "as_of minus the first purchase date, in days."
days_since_last  = "as_of minus the last purchase date, in days."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "stage"]
accepted_values = { stage = ["new", "active", "at_risk", "lapsed", "churned"] }
---*/
select
    customer_id,
    case
        when tenure_days  <= $new_days     then 'new'
        when recency_days <= $active_days  then 'active'
        when recency_days <= $at_risk_days then 'at_risk'
        when recency_days <= $churn_days   then 'lapsed'
        else 'churned'
    end as stage,
    tenure_days  as days_since_first,
    recency_days as days_since_last
from customer_facts
