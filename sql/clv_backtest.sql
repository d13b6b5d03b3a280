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
-- The predictions are clv_backtest_scores' (computed once: DataFusion inlines a CTE at each
-- reference, and the cuts and the scores below both read them); the refits' parameters are
-- clv_backtest_fit's (one row), joined to the eleven rows of scores.
with valued as (
    select predicted_purchases, actual_purchases, actual_revenue, predicted_revenue
    from clv_backtest_scores
),

-- The deciles by rank: decile d + 1 or higher when at least d / 10 of all customers have a
-- strictly lower predicted revenue (rank_cuts gives the value above which each share is
-- reached, from the values alone, not a sort of every row). Customers without a prediction
-- (a refit did not converge) rank after every value, as NULLs sort last: their decile is
-- that of a customer with every prediction below.
cuts as (
    select
        cut[1] as cut1, cut[2] as cut2, cut[3] as cut3, cut[4] as cut4, cut[5] as cut5,
        cut[6] as cut6, cut[7] as cut7, cut[8] as cut8, cut[9] as cut9,
        predicted, customers
    from (
        select
            rank_cuts(predicted_revenue, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9) as cut,
            count(predicted_revenue) as predicted,
            count(*) as customers
        from valued
    ) lists
),

ranked as (
    select
        p.*,
        case
            when p.predicted_revenue is null
                then cast(1 + floor(10.0 * c.predicted / c.customers) as bigint)
            else 1
                + case when p.predicted_revenue > c.cut1 then 1 else 0 end
                + case when p.predicted_revenue > c.cut2 then 1 else 0 end
                + case when p.predicted_revenue > c.cut3 then 1 else 0 end
                + case when p.predicted_revenue > c.cut4 then 1 else 0 end
                + case when p.predicted_revenue > c.cut5 then 1 else 0 end
                + case when p.predicted_revenue > c.cut6 then 1 else 0 end
                + case when p.predicted_revenue > c.cut7 then 1 else 0 end
                + case when p.predicted_revenue > c.cut8 then 1 else 0 end
                + case when p.predicted_revenue > c.cut9 then 1 else 0 end
        end as decile
    -- the one-row side first: the other way round a cross join emits a batch per row
    from cuts c
    cross join valued p
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
        rank_correlation(predicted_revenue, actual_revenue) as revenue_rank_correlation
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
    -- the refits' parameters, on a row of scores of at least one customer
    case when s.customers > 0 then m.r end     as r,
    case when s.customers > 0 then m.alpha end as alpha,
    case when s.customers > 0 then m.a end     as a,
    case when s.customers > 0 then m.b end     as b,
    case when s.customers > 0 then m.p end     as p,
    case when s.customers > 0 then m.q end     as q,
    case when s.customers > 0 then m.v end     as v,
    coalesce(s.customers > 0 and m.converged, false) as converged,
    lower($time_unit) as time_unit
from clv_backtest_fit m
cross join scored s
