/*---
description = "Internal. The BTYD summary of every customer at as_of, as BG/NBD and Gamma-Gamma take it: repeat purchase days, recency, age and mean value of the repeat purchase days, in $time_unit."
grain = ["customer_id"]
publish = false

[params]
time_unit = "days"

[columns]
customer_id = "Customer key."
frequency   = "Repeat purchase days: distinct purchase days - 1 (same-day orders merge)."
recency     = "First to last purchase date, in time_unit (0 without repeat purchases)."
t           = "First purchase date to as_of, in time_unit."
monetary    = "Mean net revenue per repeat purchase day: revenue after the first purchase date (refunds included) / frequency; 0 without repeat purchases."

[checks]
unique   = ["customer_id"]
not_null = ["customer_id", "frequency", "recency", "t", "monetary"]
expression = ["frequency >= 0", "recency <= t"]
---*/
-- Times are differences of purchase dates (weeks = days / 7, unrounded).
with unit as (
    select case lower($time_unit)
        when 'days'  then 1.0
        when 'weeks' then 7.0
        else raise_error('parameter time_unit must be days or weeks')
    end as days
)

select
    f.customer_id,
    cast(f.purchase_days - 1 as double) as frequency,
    cast(cast(f.last_order_date as int) - cast(f.first_order_date as int) as double) / u.days as recency,
    cast(f.tenure_days as double) / u.days as t,
    case when f.purchase_days > 1 then f.repeat_revenue / (f.purchase_days - 1) else 0.0 end as monetary
from customer_facts f
cross join unit u
