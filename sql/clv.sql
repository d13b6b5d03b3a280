/*---
description = "Predictive customer lifetime value at as_of: each customer's BTYD summary, chance of still being a customer (BG/NBD), expected purchases and spend (Gamma-Gamma), discounted value over 90 and 365 days, churn risk and a value x risk segment. One row per customer."
grain = ["customer_id"]
partition_by = ["churn_risk"]

[params]
churn_high_below = 0.3
churn_low_from   = 0.7

[columns]
customer_id            = "Customer key."
frequency              = "Repeat purchase days (distinct purchase days - 1)."
recency                = "First to last purchase date, in time_unit."
t                      = "First purchase date to as_of, in time_unit."
monetary               = "Mean net revenue per repeat purchase day (first purchase excluded; 0 without repeats)."
p_alive                = "Probability that the customer is still active (BG/NBD); 1 for customers without repeat purchases, as the model has seen no gap to judge by."
expected_purchases_30d = "Expected purchase days in the 30 calendar days after as_of."
expected_purchases_90d = "Expected purchase days in the next 90 days."
expected_purchases_365d = "Expected purchase days in the next 365 days."
expected_avg_spend     = "Expected spend per future purchase (Gamma-Gamma); the population mean for customers without repeat purchases or whose repeat purchases are worth 0 or less."
clv_90d                = "Expected net revenue in the next 90 days: 3 periods of 30 days, period k discounted by (1 + discount_rate)^k."
clv_365d               = "Expected net revenue in the next 365 days: 12 periods of 365/12 days, discounted the same way."
churn_risk             = "high (p_alive < churn_high_below), medium, or low (p_alive >= churn_low_from); unknown when the BG/NBD fit did not converge (then every prediction is NULL)."
value_band             = "high (top 20 % of clv_365d), medium (next 30 %) or low; equal values share a band; unknown when a fit did not converge."
clv_segment            = "value_band and churn_risk together, e.g. 'high value, high risk': the customers to win back first."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "frequency", "recency", "t", "monetary", "churn_risk", "value_band", "clv_segment"]
accepted_values = { churn_risk = ["high", "medium", "low", "unknown"], value_band = ["high", "medium", "low", "unknown"] }
expression = ["p_alive is null or (p_alive >= 0 and p_alive <= 1)", "p_alive is null or (expected_purchases_30d <= expected_purchases_90d and expected_purchases_90d <= expected_purchases_365d)"]
---*/
-- The predictions are clv_scores' (computed once; this model reads them twice).
-- The value bands by rank: a customer is in the top 20 % ("high") when at least 80 % of all
-- customers have a strictly lower clv_365d, in the middle band at 50 %. rank_cuts gives the
-- value above which each share is reached (from the values alone, not a sort of every row).
with bands as (
    select cut[1] as medium_above, cut[2] as high_above
    from (select rank_cuts(clv_365d, 0.5, 0.8) as cut from clv_scores) lists
)

select
    customer_id, frequency, recency, t, monetary, p_alive,
    expected_purchases_30d, expected_purchases_90d, expected_purchases_365d,
    expected_avg_spend, clv_90d, clv_365d,
    churn_risk,
    value_band,
    concat(value_band, ' value, ', churn_risk, ' risk') as clv_segment
from (
    select
        *,
        case
            when p_alive is null then 'unknown'
            when p_alive < $churn_high_below then 'high'
            when p_alive >= $churn_low_from  then 'low'
            else 'medium'
        end as churn_risk,
        case
            when clv_365d is null then 'unknown'
            when clv_365d > b.high_above then 'high'
            when clv_365d > b.medium_above then 'medium'
            else 'low'
        end as value_band
    -- the one-row side first: the other way round a cross join emits a batch per row
    from bands b
    cross join clv_scores v
)
