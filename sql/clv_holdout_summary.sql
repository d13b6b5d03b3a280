/*---
description = "Internal. The BTYD summary of every customer as it was at as_of - holdout_days (the backtest's calibration end), with what each then bought in the holdout up to as_of."
grain = ["customer_id"]
publish = false

[params]
time_unit    = "days"
holdout_days = 90

[columns]
customer_id      = "Customer key (customers with a purchase by the calibration end)."
frequency        = "Repeat purchase days by the calibration end."
recency          = "First to last purchase date by the calibration end, in time_unit."
t                = "First purchase date to the calibration end, in time_unit."
monetary         = "Mean net revenue per repeat purchase day by the calibration end (0 without repeats)."
actual_purchases = "Purchase days in the holdout (after the calibration end, up to as_of)."
actual_revenue   = "Net revenue in the holdout, refunds included."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "frequency", "recency", "t", "monetary", "actual_purchases", "actual_revenue"]
expression = ["recency <= t"]
---*/
-- The calibration end and the unit are inlined rather than cross-joined from a one-row CTE:
-- a cross join whose small side comes second emits one batch per row of the large side.
-- The customer days are aggregated by customer before anything is joined to them (a join
-- of one row per customer, not of every day). What is not the day rows' own comes from the
-- customer's totals: the first purchase date (the customer's earliest purchase day), and the
-- repeat revenue by the calibration end, which is the total repeat revenue less the
-- holdout's (every holdout day comes after a first purchase made by the calibration end).
with per_customer as (
    select
        customer_id,
        count(*) filter (where is_purchase and cast(order_date as int) <= cast($as_of as int) - $holdout_days) as purchase_days,
        max(cast(order_date as int)) filter (where is_purchase and cast(order_date as int) <= cast($as_of as int) - $holdout_days) as last_day,
        count(*) filter (where is_purchase and cast(order_date as int) > cast($as_of as int) - $holdout_days) as actual_purchases,
        sum(revenue) filter (where cast(order_date as int) > cast($as_of as int) - $holdout_days) as actual_revenue
    from customer_days
    group by customer_id
),

calibrated as (
    select
        p.customer_id,
        cast(t.first_order_date as int) as first_day,
        p.purchase_days,
        p.last_day,
        t.repeat_revenue - coalesce(p.actual_revenue, 0) as repeat_revenue,
        p.actual_purchases,
        p.actual_revenue
    from customer_totals t
    join per_customer p on p.customer_id = t.customer_id
    where cast(t.first_order_date as int) <= cast($as_of as int) - $holdout_days
)

select
    customer_id,
    cast(purchase_days - 1 as double) as frequency,
    cast(last_day - first_day as double) / unit as recency,
    cast(cast($as_of as int) - $holdout_days - first_day as double) / unit as t,
    case when purchase_days > 1 then cast(repeat_revenue as double) / (purchase_days - 1) else 0.0 end as monetary,
    actual_purchases,
    cast(coalesce(actual_revenue, 0) as double) as actual_revenue
from (
    select
        *,
        case lower($time_unit)
            when 'days'  then 1.0
            when 'weeks' then 7.0
            else raise_error('parameter time_unit must be days or weeks')
        end * case when $holdout_days > 0 then 1.0
                   else raise_error('parameter holdout_days must be a number of days > 0')
              end as unit
    from calibrated
)
