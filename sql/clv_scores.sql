/*---
description = "Internal. clv's predictions for every customer at as_of, computed once: the BTYD summary, p_alive (BG/NBD), expected purchases and spend (Gamma-Gamma) and the discounted values over 90 and 365 days. clv adds the bands that need every customer's value."
grain = ["customer_id"]
publish = false

[params]
time_unit     = "days"
discount_rate = 0.01

[columns]
# The columns clv publishes with the same names; their definitions are there.
customer_id             = "Customer key."
frequency               = "As clv.frequency."
recency                 = "As clv.recency."
t                       = "As clv.t."
monetary                = "As clv.monetary."
p_alive                 = "As clv.p_alive."
expected_purchases_30d  = "As clv.expected_purchases_30d."
expected_purchases_90d  = "As clv.expected_purchases_90d."
expected_purchases_365d = "As clv.expected_purchases_365d."
expected_avg_spend      = "As clv.expected_avg_spend."
clv_90d                 = "As clv.clv_90d."
clv_365d                = "As clv.clv_365d."

[checks]
unique = ["customer_id"]
---*/
with unit as (
    select case lower($time_unit) when 'weeks' then 7.0 else 1.0 end as days
),

-- clv_model's parameters: this run's fits, or the previous snapshot's where a fit failed;
-- NULL (no predictions) where neither exists. Its *_fit_source columns say which.
model as (
    select r, alpha, a, b, p, q, v, population_mean_spend from clv_model
),

scored as (
    select
        s.customer_id,
        s.frequency,
        s.recency,
        s.t,
        s.monetary,
        bgnbd_p_alive(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.t) as p_alive,
        case
            when s.frequency > 0 and s.monetary > 0
                then gamma_gamma_expected_spend(m.p, m.q, m.v, s.frequency, s.monetary)
            else m.population_mean_spend
        end as expected_avg_spend,
        m.r, m.alpha, m.a, m.b, u.days
    from model m
    cross join unit u
    cross join btyd_summary s
),

-- Expected purchases over 30, 90 and 365 days and the values discounted over 90 days (3
-- periods of 30 days) and 365 days (12 of 365/12), from one pass of the series per customer.
forecast as (
    select
        *,
        bgnbd_forecast(r, alpha, a, b, frequency, recency, t, expected_avg_spend, $discount_rate, days) as f
    from scored
),

valued as (
    select
        customer_id, frequency, recency, t, monetary, p_alive,
        f['expected_purchases_30d']  as expected_purchases_30d,
        f['expected_purchases_90d']  as expected_purchases_90d,
        f['expected_purchases_365d'] as expected_purchases_365d,
        expected_avg_spend,
        f['clv_90d']  as clv_90d,
        f['clv_365d'] as clv_365d
    from forecast
)

select * from valued
