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

-- Every customer once, with the exact amounts and their attributes (the attributes, small,
-- on the left of the join: a hash join keeps its left input in memory).
facts as (
    select
        f.customer_id, f.orders,
        cast(f.revenue as decimal(38, 6)) as revenue,
        cast(f.margin as decimal(38, 6))  as margin,
        f.acquisition_channel, f.acquisition_country, f.acquisition_device,
        a.birth_year, a.gender, a.opted_in
    from attributes a
    right join customer_facts f on a.customer_id = f.customer_id
),

-- The segmentations by the customer's own columns (acquisition channel, country, device and
-- the three demographic ones), counted per combination of their segments (a few thousand
-- rows) in one pass over the customers, then unpivoted: not one pass per segmentation. A
-- demographic segmentation whose column the customers input leaves empty is left out.
own_combinations as (
    select
        acquisition_channel as channel,
        acquisition_country as country,
        acquisition_device  as device,
        case
            when birth_year is null then 'unknown'
            when extract(year from $as_of) - birth_year < 25 then 'under 25'
            when extract(year from $as_of) - birth_year < 35 then '25-34'
            when extract(year from $as_of) - birth_year < 45 then '35-44'
            when extract(year from $as_of) - birth_year < 55 then '45-54'
            when extract(year from $as_of) - birth_year < 65 then '55-64'
            else '65+'
        end as age_band,
        coalesce(nullif(gender, ''), 'unknown') as gender,
        case opted_in when true then 'opted in' when false then 'not opted in' else 'unknown' end as email_opt_in,
        count(*) as customers,
        sum(revenue) as revenue,
        sum(margin)  as margin,
        sum(orders) as orders,
        count(*) filter (where orders >= 2) as repeaters,
        count(*) filter (where opted_in) as reachable
    from facts
    group by 1, 2, 3, 4, 5, 6
),

own_stats as (
    select
        s.segmentation,
        case s.segmentation
            when 'channel'  then c.channel
            when 'country'  then c.country
            when 'device'   then c.device
            when 'age_band' then c.age_band
            when 'gender'   then c.gender
            else c.email_opt_in
        end as segment,
        sum(c.customers) as customers,
        sum(c.revenue) as revenue,
        sum(c.margin)  as margin,
        sum(c.orders) as orders,
        sum(c.repeaters) as repeaters,
        sum(c.reachable) as reachable
    from (select 'channel' as segmentation union all select 'country' union all select 'device'
          union all select 'age_band' union all select 'gender' union all select 'email_opt_in') as s
    cross join known k
    cross join own_combinations c
    where s.segmentation in ('channel', 'country', 'device')
       or (s.segmentation = 'age_band' and k.birth_year)
       or (s.segmentation = 'gender' and k.gender)
       or (s.segmentation = 'email_opt_in' and k.email_opt_in)
    group by 1, 2
),

-- Each customer's membership of rfm, lifecycle and clv, joined to the customer's amounts
-- (one join of their 3 x customers rows, not one per segmentation).
segmented as (
    select 'rfm' as segmentation, segment, customer_id from rfm
    union all select 'lifecycle', stage, customer_id from lifecycle
    union all select 'clv', clv_segment, customer_id from clv
),

segmented_stats as (
    select
        m.segmentation,
        m.segment,
        count(*) as customers,
        sum(f.revenue) as revenue,
        sum(f.margin)  as margin,
        sum(f.orders) as orders,
        count(*) filter (where f.orders >= 2) as repeaters,
        count(*) filter (where f.opted_in) as reachable
    from facts f
    join segmented m on m.customer_id = f.customer_id
    group by m.segmentation, m.segment
),

has_previous as (
    select count(*) > 0 as yes from previous.customer_facts
),

totals as (
    select count(*) as customers, sum(cast(revenue as decimal(38, 6))) as revenue from customer_facts
),

-- A customer stayed in a segment when it is theirs now and was in the previous snapshot:
-- for rfm, lifecycle and clv, segment_migration has counted them (customers from a segment to
-- the same); the customer_facts ones are joined here once on the customer (three
-- segmentations), counted by their combinations of stayed segments (a few hundred) before
-- those are unpivoted by a cross join. Without a previous snapshot nobody stayed.
facts_stayed as (
    select case when c.acquisition_channel = p.acquisition_channel then c.acquisition_channel end as channel,
           case when c.acquisition_country = p.acquisition_country then c.acquisition_country end as country,
           case when c.acquisition_device = p.acquisition_device then c.acquisition_device end    as device,
           count(*) as customers
    from customer_facts c
    join previous.customer_facts p on p.customer_id = c.customer_id
    group by 1, 2, 3
),

stayed as (
    -- rfm, lifecycle and clv: segment_migration's customers who kept their segment
    select segmentation, to_segment as segment, customers as stayed
    from segment_migration
    where from_segment = to_segment
    union all
    select segmentation, segment, sum(customers)
    from (
        select t.segmentation,
               case t.segmentation when 'channel' then f.channel when 'country' then f.country else f.device end as segment,
               f.customers
        from (select 'channel' as segmentation union all select 'country' union all select 'device') t
        cross join facts_stayed f
    ) stayers
    where segment is not null
    group by segmentation, segment
),

stats as (
    select * from segmented_stats
    union all
    select * from own_stats
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
