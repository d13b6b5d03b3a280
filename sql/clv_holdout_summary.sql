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
with bounds as (
    select
        cast($as_of as int) - $holdout_days as calibration_end,
        case lower($time_unit)
            when 'days'  then 1.0
            when 'weeks' then 7.0
            else raise_error('parameter time_unit must be days or weeks')
        end as unit,
        case when $holdout_days > 0 then 1.0
             else raise_error('parameter holdout_days must be a number of days > 0')
        end as valid
),

per_customer as (
    select
        d.customer_id,
        cast(f.first_order_date as int) as first_day,
        count(*) filter (where d.is_purchase and cast(d.order_date as int) <= b.calibration_end) as purchase_days,
        max(cast(d.order_date as int)) filter (where d.is_purchase and cast(d.order_date as int) <= b.calibration_end) as last_day,
        sum(d.revenue) filter (where d.order_date > f.first_order_date and cast(d.order_date as int) <= b.calibration_end) as repeat_revenue,
        count(*) filter (where d.is_purchase and cast(d.order_date as int) > b.calibration_end) as actual_purchases,
        sum(d.revenue) filter (where cast(d.order_date as int) > b.calibration_end) as actual_revenue
    from customer_days d
    join customer_facts f on f.customer_id = d.customer_id
    cross join bounds b
    where cast(f.first_order_date as int) <= b.calibration_end
    group by d.customer_id, f.first_order_date
)

select
    c.customer_id,
    cast(c.purchase_days - 1 as double) as frequency,
    cast(c.last_day - c.first_day as double) / b.unit as recency,
    cast(b.calibration_end - c.first_day as double) / b.unit * b.valid as t,
    case when c.purchase_days > 1 then cast(c.repeat_revenue as double) / (c.purchase_days - 1) else 0.0 end as monetary,
    c.actual_purchases,
    cast(coalesce(c.actual_revenue, 0) as double) as actual_revenue
from per_customer c
cross join bounds b
