/*---
description = "Internal. clv_backtest's refits: BG/NBD and Gamma-Gamma fitted on the history up to as_of - holdout_days (clv_holdout_summary). One row; the parameters are NULL where a refit did not converge."
grain = []
publish = false

[params]
time_unit   = "days"
clv_penalty = 0.0

[columns]
r                     = "BG/NBD r of the refit; NULL when it did not converge."
alpha                 = "BG/NBD alpha."
a                     = "BG/NBD a."
b                     = "BG/NBD b."
p                     = "Gamma-Gamma p; NULL when that refit did not converge."
q                     = "Gamma-Gamma q."
v                     = "Gamma-Gamma v."
converged             = "Both refits converged."
population_mean_spend = "p v / (q - 1) of the Gamma-Gamma refit."
unit                  = "Days in one time_unit."
---*/
with fits as (
    select
        bgnbd_fit(frequency, recency, t, $clv_penalty)     as bg,
        gamma_gamma_fit(frequency, monetary, $clv_penalty) as gg
    from clv_holdout_summary
)

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
