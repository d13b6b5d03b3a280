/*---
description = "How good the CLV predictions are: both models refitted on the history up to as_of - holdout_days, their predictions for the holdout compared with what customers then bought. One row per decile of predicted holdout revenue and one for all customers."
grain = ["scope", "decile"]

[params]
time_unit    = "days"
holdout_days = 90
clv_penalty  = 0.0

[columns]
scope                      = "decile, or total for all customers."
decile                     = "1 (lowest predicted holdout revenue) to 10 (highest); equal predictions share a decile; NULL for the total."
calibration_end            = "as_of - holdout_days: the last day the refit saw."
holdout_days               = "Days after the calibration end, up to as_of, that the predictions are compared over."
customers                  = "Customers with a purchase by the calibration end."
predicted_purchases        = "Sum of the expected purchase days in the holdout (BG/NBD)."
actual_purchases           = "Sum of the purchase days in the holdout."
purchases_mae              = "Mean absolute error of the predicted purchase days per customer."
purchases_bias             = "Mean of predicted - actual purchase days per customer (> 0: over-predicted)."
purchases_rank_correlation = "Spearman rank correlation of predicted and actual purchase days (ties share ranks); NULL when either is constant."
predicted_revenue          = "Sum of expected purchases x expected spend (Gamma-Gamma) in the holdout, undiscounted."
actual_revenue             = "Net revenue in the holdout, refunds included."
revenue_mae                = "Mean absolute error of the predicted revenue per customer."
revenue_bias               = "Mean of predicted - actual revenue per customer."
revenue_rank_correlation   = "Spearman rank correlation of predicted and actual revenue."
r                          = "BG/NBD r of the refit (as in clv_model; NULL when that refit did not converge)."
alpha                      = "BG/NBD alpha of the refit."
a                          = "BG/NBD a of the refit."
b                          = "BG/NBD b of the refit."
p                          = "Gamma-Gamma p of the refit."
q                          = "Gamma-Gamma q of the refit."
v                          = "Gamma-Gamma v of the refit."
converged                  = "Both refits converged; when not, the predictions and errors are NULL."
time_unit                  = "days or weeks."

[checks]
not_null = ["scope", "customers"]
accepted_values = { scope = ["decile", "total"] }
expression = ["decile is null or (decile >= 1 and decile <= 10)"]
---*/
with fits as (
    select
        bgnbd_fit(frequency, recency, t, $clv_penalty)     as bg,
        gamma_gamma_fit(frequency, monetary, $clv_penalty) as gg
    from clv_holdout_summary
),

model as (
    select
        -- a refit that did not converge predicts nothing (NULL)
        case when bg['converged'] then bg['r'] end     as r,
        case when bg['converged'] then bg['alpha'] end as alpha,
        case when bg['converged'] then bg['a'] end     as a,
        case when bg['converged'] then bg['b'] end     as b,
        case when gg['converged'] then gg['p'] end as p,
        case when gg['converged'] then gg['q'] end as q,
        case when gg['converged'] then gg['v'] end as v,
        coalesce(bg['converged'] and gg['converged'], false) as converged,
        case when gg['converged'] then gamma_gamma_expected_spend(gg['p'], gg['q'], gg['v'], 0, 0) end as population_mean_spend,
        case lower($time_unit) when 'weeks' then 7.0 else 1.0 end as unit
    from fits
),

predicted as (
    select
        s.customer_id,
        bgnbd_expected_purchases(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.t, $holdout_days / m.unit) as predicted_purchases,
        case
            when s.frequency > 0 and s.monetary > 0
                then gamma_gamma_expected_spend(m.p, m.q, m.v, s.frequency, s.monetary)
            else m.population_mean_spend
        end as expected_spend,
        cast(s.actual_purchases as double) as actual_purchases,
        s.actual_revenue,
        m.r, m.alpha, m.a, m.b, m.p, m.q, m.v, m.converged
    from model m
    cross join clv_holdout_summary s
),

-- The customer count from its own aggregate, not `count(*) over ()` (a window over the
-- whole table keeps every row in memory at once, outside the memory limit).
ranked as (
    select
        p.*,
        p.predicted_purchases * p.expected_spend as predicted_revenue,
        -- 1 + floor(10 x customers with a strictly lower prediction / customers)
        cast(1 + floor(10.0 * (rank() over (order by p.predicted_purchases * p.expected_spend) - 1)
                       / n.customers) as bigint) as decile
    from (select count(*) as customers from clv_holdout_summary) n
    cross join predicted p
),

scored as (
    select
        case when grouping(decile) = 1 then 'total' else 'decile' end as scope,
        decile,
        count(*) as customers,
        -- sums of values rounded to 1e-12, exact in decimal: the same bits at any partitioning
        cast(sum(cast(predicted_purchases as decimal(38, 12))) as double) as predicted_purchases,
        cast(sum(cast(actual_purchases as decimal(38, 12))) as double)    as actual_purchases,
        cast(sum(cast(abs(predicted_purchases - actual_purchases) as decimal(38, 12))) as double) / count(*) as purchases_mae,
        cast(sum(cast(predicted_purchases - actual_purchases as decimal(38, 12))) as double) / count(*)      as purchases_bias,
        rank_correlation(predicted_purchases, actual_purchases) as purchases_rank_correlation,
        cast(sum(cast(predicted_revenue as decimal(38, 12))) as double) as predicted_revenue,
        cast(sum(cast(actual_revenue as decimal(38, 12))) as double)    as actual_revenue,
        cast(sum(cast(abs(predicted_revenue - actual_revenue) as decimal(38, 12))) as double) / count(*) as revenue_mae,
        cast(sum(cast(predicted_revenue - actual_revenue as decimal(38, 12))) as double) / count(*)      as revenue_bias,
        rank_correlation(predicted_revenue, actual_revenue) as revenue_rank_correlation,
        -- the parameters are the same on every row: carried through rather than joined
        -- again, which would fit the models a second time
        max(r) as r, max(alpha) as alpha, max(a) as a, max(b) as b,
        max(p) as p, max(q) as q, max(v) as v,
        coalesce(bool_and(converged), false) as converged
    from ranked
    group by grouping sets ((decile), ())
)

select
    s.scope,
    s.decile,
    cast(cast(cast($as_of as int) - $holdout_days as int) as date) as calibration_end,
    cast($holdout_days as bigint) as holdout_days,
    s.customers,
    s.predicted_purchases, s.actual_purchases, s.purchases_mae, s.purchases_bias, s.purchases_rank_correlation,
    s.predicted_revenue, s.actual_revenue, s.revenue_mae, s.revenue_bias, s.revenue_rank_correlation,
    s.r, s.alpha, s.a, s.b, s.p, s.q, s.v, s.converged,
    lower($time_unit) as time_unit
from scored s
