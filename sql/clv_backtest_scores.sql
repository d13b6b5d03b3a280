/*---
description = "Internal. clv_backtest's predictions for every customer with a purchase by the calibration end, computed once: the holdout's expected purchases and revenue from the refits, beside what the customer then bought. clv_backtest reads them twice: for the decile cuts and for the deciles' scores."
grain = []
publish = false

[params]
holdout_days = 90

[columns]
predicted_purchases = "Expected purchase days in the holdout (BG/NBD refit); NULL when a refit did not converge."
actual_purchases    = "Purchase days in the holdout."
actual_revenue      = "Net revenue in the holdout, refunds included."
predicted_revenue   = "predicted_purchases x the expected spend per purchase (Gamma-Gamma refit; the population mean for customers without a repeat purchase by the calibration end)."
---*/
-- One row per customer, without the customer: clv_backtest scores deciles, not customers.
with predicted as (
    select
        bgnbd_expected_purchases(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.t, $holdout_days / m.unit) as predicted_purchases,
        case
            when s.frequency > 0 and s.monetary > 0
                then gamma_gamma_expected_spend(m.p, m.q, m.v, s.frequency, s.monetary)
            else m.population_mean_spend
        end as expected_spend,
        cast(s.actual_purchases as double) as actual_purchases,
        s.actual_revenue
    -- the one-row side first: the other way round a cross join emits a batch per row
    from clv_backtest_fit m
    cross join clv_holdout_summary s
)

select
    predicted_purchases,
    actual_purchases,
    actual_revenue,
    predicted_purchases * expected_spend as predicted_revenue
from predicted
