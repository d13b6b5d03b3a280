/*---
description = "Acquisition cohort retention and the LTV curve. One row per cohort month and period (0 = acquisition month, calendar months), every period up to the month of as_of."
grain = ["cohort_month", "period"]

[columns]
cohort_month      = "First day of the acquisition month."
period            = "Calendar months since the acquisition month (0 = acquisition month)."
cohort_customers  = "Customers acquired in the cohort month."
active_customers  = "Cohort customers with a purchase in this period."
retention         = "active_customers / cohort_customers."
revenue           = "Net revenue of the cohort in this period, refunds included (0 when none)."
margin            = "Margin of the cohort in this period (0 when no lines; NULL when no cost is known)."
cumulative_revenue_per_customer = "Revenue of periods 0..period divided by cohort_customers: the LTV curve."
cumulative_margin_per_customer  = "Margin of periods 0..period divided by cohort_customers."
is_complete       = "False for the period containing as_of (still running)."

[checks]
unique   = ["cohort_month, period"]
not_null = ["cohort_month", "period", "cohort_customers", "active_customers", "retention", "revenue"]
expression = ["retention between 0 and 1", "period >= 0"]
---*/
with customers as (
    select customer_id, cohort_month,
           cast(date_part('year', cohort_month) * 12 + date_part('month', cohort_month) as bigint) as cohort_index
    from customer_facts
),

as_of_index as (
    select cast(date_part('year', $as_of) * 12 + date_part('month', $as_of) as bigint) as idx
),

sizes as (
    select cohort_month, cohort_index, count(*) as cohort_customers
    from customers group by cohort_month, cohort_index
),

grid as (
    select s.cohort_month, s.cohort_customers,
           unnest(range(0, a.idx - s.cohort_index + 1)) as period
    from sizes s cross join as_of_index a
),

cells as (
    select
        cohort_month, period,
        count(*) filter (where active) as active_customers,
        sum(revenue) as revenue,
        sum(margin)  as margin
    from customer_months
    group by cohort_month, period
),

-- Whether any line has a cost: the first such customer day ends the scan.
cost_known as (
    select count(*) > 0 as known
    from (select 1 as one from customer_days where margin is not null limit 1) first_cost
),

filled as (
    select
        g.cohort_month,
        cast(g.period as bigint) as period,
        g.cohort_customers,
        coalesce(c.active_customers, 0) as active_customers,
        coalesce(c.revenue, cast(0 as decimal(38, 6))) as revenue,
        case
            when c.cohort_month is not null then c.margin
            when k.known then cast(0 as decimal(38, 6))
        end as margin
    from grid g
    cross join cost_known k
    left join cells c on c.cohort_month = g.cohort_month and c.period = g.period
)

select
    f.cohort_month,
    f.period,
    f.cohort_customers,
    f.active_customers,
    cast(f.active_customers as double) / f.cohort_customers as retention,
    cast(f.revenue as double) as revenue,
    cast(f.margin as double)  as margin,
    cast(sum(f.revenue) over (partition by f.cohort_month order by f.period
         rows between unbounded preceding and current row) as double) / f.cohort_customers
        as cumulative_revenue_per_customer,
    cast(sum(f.margin) over (partition by f.cohort_month order by f.period
         rows between unbounded preceding and current row) as double) / f.cohort_customers
        as cumulative_margin_per_customer,
    f.period <> (select a.idx from as_of_index a)
        - cast(date_part('year', f.cohort_month) * 12 + date_part('month', f.cohort_month) as bigint)
        as is_complete
from filled f
