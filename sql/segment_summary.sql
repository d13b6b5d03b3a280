/*---
description = "The segment scorecard for dashboards. One row per segmentation (rfm, lifecycle, clv, channel, country, device, and age_band, gender, email_opt_in when the customers input has them) and segment: size, share, revenue, margin, order behaviour, reachability, stability against the previous snapshot, and an over-segmentation flag."
grain = ["segmentation", "segment"]

[params]
min_segment_customers = 20

[columns]
segmentation        = "rfm, lifecycle, clv (value band x churn risk), channel, country, device (acquisition), age_band, gender, email_opt_in (demographic, from the customers input; a segmentation whose column is empty there is left out)."
segment             = "Segment name: RFM segment, lifecycle stage, clv_segment, acquisition channel/country/device, age band in years at as_of (under 25, 25-34, .., 65+), gender as given (lower-cased), opted in / not opted in; unknown when missing."
customers           = "Customers in the segment."
share               = "customers / all customers (shares of one segmentation sum to 1)."
revenue             = "Net revenue of the segment's customers to date."
revenue_share       = "revenue / revenue of all customers (NULL when that is 0)."
margin              = "Margin of the segment's customers (NULL when no cost is known)."
aov                 = "revenue / orders of the segment."
orders_per_customer = "orders / customers."
repeat_rate         = "Share of the segment's customers with 2 or more orders."
reachable_share     = "Share of the segment's customers with customers.email_opt_in = true; NULL without that input."
stability           = "Share of the segment's customers that were in the same segment in the previous snapshot; NULL without one, and for demographic segmentations (their history is not kept)."
below_min_size      = "True when customers < $min_segment_customers: too small to act on."

[checks]
unique   = ["segmentation, segment"]
not_null = ["segmentation", "segment", "customers", "share"]
accepted_values = { segmentation = ["rfm", "lifecycle", "clv", "channel", "country", "device", "age_band", "gender", "email_opt_in"] }
---*/
with attributes as (
    select
        customer_id,
        max(birth_year)           as birth_year,
        min(lower(trim(gender)))  as gender,
        bool_or(email_opt_in)     as opted_in
    from customers
    group by customer_id
),

known as (
    select
        count(birth_year) > 0   as birth_year,
        count(gender) > 0       as gender,
        count(email_opt_in) > 0 as email_opt_in
    from customers
),

-- One join of the customers to their attributes for the three demographic segmentations;
-- a segmentation whose column the customers input leaves empty is left out.
demographic_members as (
    select
        s.segmentation,
        case s.segmentation
            when 'age_band' then
                case
                    when a.birth_year is null then 'unknown'
                    when extract(year from $as_of) - a.birth_year < 25 then 'under 25'
                    when extract(year from $as_of) - a.birth_year < 35 then '25-34'
                    when extract(year from $as_of) - a.birth_year < 45 then '35-44'
                    when extract(year from $as_of) - a.birth_year < 55 then '45-54'
                    when extract(year from $as_of) - a.birth_year < 65 then '55-64'
                    else '65+'
                end
            when 'gender' then coalesce(nullif(a.gender, ''), 'unknown')
            else case a.opted_in when true then 'opted in' when false then 'not opted in' else 'unknown' end
        end as segment,
        f.customer_id
    from attributes a
    right join customer_facts f on a.customer_id = f.customer_id
    cross join (select 'age_band' as segmentation union all select 'gender' union all select 'email_opt_in') as s
    cross join known k
    where (s.segmentation = 'age_band' and k.birth_year)
       or (s.segmentation = 'gender' and k.gender)
       or (s.segmentation = 'email_opt_in' and k.email_opt_in)
),

members as (
    select 'rfm' as segmentation, segment, customer_id from rfm
    union all select 'lifecycle', stage, customer_id from lifecycle
    union all select 'clv', clv_segment, customer_id from clv
    union all select 'channel', acquisition_channel, customer_id from customer_facts
    union all select 'country', acquisition_country, customer_id from customer_facts
    union all select 'device',  acquisition_device,  customer_id from customer_facts
    union all select segmentation, segment, customer_id from demographic_members
),

has_previous as (
    select count(*) > 0 as yes from previous.customer_facts
),

totals as (
    select count(*) as customers, sum(cast(revenue as decimal(38, 6))) as revenue from customer_facts
),

-- A hash join keeps its left input in memory: the small sides (customer_facts, the
-- attributes) are written on the left and the members (customers x
-- segmentations) stream through as the right, preserved side.
-- The exact amounts once per customer, not once per membership.
facts as (
    select customer_id, orders,
           cast(revenue as decimal(38, 6)) as revenue,
           cast(margin as decimal(38, 6))  as margin
    from customer_facts
),

with_facts as (
    select m.segmentation, m.segment, m.customer_id, f.orders, f.revenue, f.margin
    from facts f
    join members m on m.customer_id = f.customer_id
),

-- Stability without joining every membership to the previous one (38 M rows a side at
-- 100 M lines: neither a hash join's build side nor a sort-merge join's sorts fitted in
-- 4 GB): each customer's six segments, now and in the previous snapshot, come together in
-- one spillable aggregation by customer (6.4 M groups at 100 M lines, not 38 M
-- customer-segmentation pairs), which costs nothing when there is no previous snapshot.
both_snapshots as (
    select customer_id,
           max(rfm) as rfm, max(stage) as stage, max(clv_segment) as clv_segment,
           max(channel) as channel, max(country) as country, max(device) as device,
           max(previous_rfm) as previous_rfm, max(previous_stage) as previous_stage,
           max(previous_clv_segment) as previous_clv_segment,
           max(previous_channel) as previous_channel, max(previous_country) as previous_country,
           max(previous_device) as previous_device
    from (
        -- One row per customer and table, each filling its own columns. Without a previous
        -- snapshot there is nothing to compare: no current row goes through.
        select rfm.customer_id,
               rfm.segment as rfm, cast(null as varchar) as stage,
               cast(null as varchar) as clv_segment, cast(null as varchar) as channel,
               cast(null as varchar) as country, cast(null as varchar) as device,
               cast(null as varchar) as previous_rfm, cast(null as varchar) as previous_stage,
               cast(null as varchar) as previous_clv_segment, cast(null as varchar) as previous_channel,
               cast(null as varchar) as previous_country, cast(null as varchar) as previous_device
        from rfm cross join has_previous h where h.yes
        union all
        select lifecycle.customer_id,
               null as rfm, lifecycle.stage as stage, null as clv_segment,
               null as channel, null as country, null as device,
               null as previous_rfm, null as previous_stage, null as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from lifecycle cross join has_previous h where h.yes
        union all
        select clv.customer_id,
               null as rfm, null as stage, clv.clv_segment as clv_segment,
               null as channel, null as country, null as device,
               null as previous_rfm, null as previous_stage, null as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from clv cross join has_previous h where h.yes
        union all
        select customer_facts.customer_id,
               null as rfm, null as stage, null as clv_segment,
               customer_facts.acquisition_channel as channel,
               customer_facts.acquisition_country as country,
               customer_facts.acquisition_device as device,
               null as previous_rfm, null as previous_stage, null as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from customer_facts cross join has_previous h where h.yes
        union all
        select previous.rfm.customer_id,
               null as rfm, null as stage, null as clv_segment,
               null as channel, null as country, null as device,
               previous.rfm.segment as previous_rfm, null as previous_stage, null as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from previous.rfm
        union all
        select previous.lifecycle.customer_id,
               null as rfm, null as stage, null as clv_segment,
               null as channel, null as country, null as device,
               null as previous_rfm, previous.lifecycle.stage as previous_stage, null as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from previous.lifecycle
        union all
        select previous.clv.customer_id,
               null as rfm, null as stage, null as clv_segment,
               null as channel, null as country, null as device,
               null as previous_rfm, null as previous_stage, previous.clv.clv_segment as previous_clv_segment,
               null as previous_channel, null as previous_country, null as previous_device
        from previous.clv
        union all
        select previous.customer_facts.customer_id,
               null as rfm, null as stage, null as clv_segment,
               null as channel, null as country, null as device,
               null as previous_rfm, null as previous_stage, null as previous_clv_segment,
               previous.customer_facts.acquisition_channel as previous_channel,
               previous.customer_facts.acquisition_country as previous_country,
               previous.customer_facts.acquisition_device as previous_device
        from previous.customer_facts
    ) memberships
    group by customer_id
),

-- A customer stayed in a segment when it is theirs now and was in the previous snapshot.
-- One pass over the customers' rows (a CTE read twice is computed twice), unpivoted by a
-- cross join with the six segmentations (the small side, kept in memory).
stayed as (
    select segmentation, segment, count(*) as stayed
    from (
        select t.segmentation,
               case t.segmentation
                   when 'rfm' then case when b.rfm = b.previous_rfm then b.rfm end
                   when 'lifecycle' then case when b.stage = b.previous_stage then b.stage end
                   when 'clv' then case when b.clv_segment = b.previous_clv_segment then b.clv_segment end
                   when 'channel' then case when b.channel = b.previous_channel then b.channel end
                   when 'country' then case when b.country = b.previous_country then b.country end
                   else case when b.device = b.previous_device then b.device end
               end as segment
        from (select 'rfm' as segmentation union all select 'lifecycle' union all select 'clv'
              union all select 'channel' union all select 'country' union all select 'device') t
        cross join both_snapshots b
    ) stayers
    where segment is not null
    group by segmentation, segment
),

joined as (
    select m.*, coalesce(o.opted_in, false) as opted_in
    from attributes o
    right join with_facts m on o.customer_id = m.customer_id
),

stats as (
    select
        segmentation,
        segment,
        count(*) as customers,
        sum(revenue) as revenue,
        sum(margin)  as margin,
        sum(orders) as orders,
        count(*) filter (where orders >= 2) as repeaters,
        count(*) filter (where opted_in) as reachable
    from joined
    group by segmentation, segment
)

select
    s.segmentation,
    s.segment,
    s.customers,
    cast(s.customers as double) / t.customers as share,
    cast(s.revenue as double) as revenue,
    case when t.revenue <> 0 then cast(s.revenue as double) / cast(t.revenue as double) end as revenue_share,
    cast(s.margin as double) as margin,
    cast(s.revenue as double) / s.orders as aov,
    cast(s.orders as double) / s.customers as orders_per_customer,
    cast(s.repeaters as double) / s.customers as repeat_rate,
    case when k.email_opt_in then cast(s.reachable as double) / s.customers end as reachable_share,
    case when h.yes and s.segmentation not in ('age_band', 'gender', 'email_opt_in')
         then cast(coalesce(st.stayed, 0) as double) / s.customers end as stability,
    s.customers < $min_segment_customers as below_min_size
from stats s
left join stayed st on st.segmentation = s.segmentation and st.segment = s.segment
cross join totals t
cross join has_previous h
cross join known k
