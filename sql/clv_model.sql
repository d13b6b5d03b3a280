/*---
description = "The predictive CLV models fitted on every customer's history up to as_of: BG/NBD (purchase days and drop-out) and Gamma-Gamma (spend per repeat purchase day), by maximum likelihood. One row per run."
grain = []

[params]
time_unit   = "days"
clv_penalty = 0.0

[columns]
r                     = "BG/NBD: shape of the Gamma distribution of purchase rates. The parameters come from this run's fit when it converged, else from the newest previous snapshot's usable fit (bgnbd_fit_source says which); NULL when neither exists."
alpha                 = "BG/NBD: scale of the purchase rates (in time_unit)."
a                     = "BG/NBD: first shape of the Beta distribution of drop-out probabilities."
b                     = "BG/NBD: second shape of the drop-out probabilities."
bgnbd_ln_likelihood   = "Log-likelihood of this run's BG/NBD fit (without the penalty); NULL when the fit did not converge."
bgnbd_customers       = "Customers the BG/NBD model was fitted on (everyone with a purchase)."
bgnbd_iterations      = "Optimiser iterations of the BG/NBD fit on all customers, every attempt counted (from 65,536 distinct summaries up, the fit starts where a fit on an even sample of at most 16,384 of them ended)."
bgnbd_converged       = "False when this run's BG/NBD fit failed: every attempt (BFGS, then Nelder-Mead from where it stopped, then both from a moment-based start) stopped before the gradient vanished or with a parameter beyond 1e15 or 1e-15, or the sample cannot identify the model (fewer than 4 distinct customer summaries, or no customer bought twice)."
bgnbd_method          = "The attempt that converged: bfgs, nelder-mead, bfgs from moments or nelder-mead from moments; NULL when none did."
bgnbd_fit_source      = "Where r, alpha, a and b come from: 'this run', 'previous snapshot' (this run's fit failed: the newest previous snapshot's parameters, alpha converted to this time_unit) or 'none' (clv then predicts NULL)."
p                     = "Gamma-Gamma: shape of the spend per purchase."
q                     = "Gamma-Gamma: shape of the customers' spend scales."
v                     = "Gamma-Gamma: scale of the customers' spend scales."
gamma_gamma_ln_likelihood = "Log-likelihood of this run's Gamma-Gamma fit (without the penalty); NULL when the fit did not converge."
gamma_gamma_customers = "Customers the Gamma-Gamma model was fitted on: repeat buyers whose repeat purchases are worth more than 0 (refunds can make it less)."
gamma_gamma_iterations = "Optimiser iterations of the Gamma-Gamma fit on all repeat buyers (started from a sample's fit as for BG/NBD)."
gamma_gamma_converged = "False when this run's Gamma-Gamma fit failed (as for BG/NBD), or fewer than 3 distinct repeat-buyer summaries were fitted."
gamma_gamma_method    = "The attempt that converged, as bgnbd_method."
gamma_gamma_fit_source = "Where p, q and v come from, as bgnbd_fit_source."
population_mean_spend = "Mean spend per purchase in the population, p v / (q - 1): the expected spend of customers without repeat purchases."
penalty               = "The L2 penalty on the parameters (0 = plain maximum likelihood)."
time_unit             = "days or weeks: the unit of recency, t, alpha and the fits."

[checks]
# A fit that failed warns (log, manifest, report); clv then predicts from the previous
# snapshot's parameters, or NULL when there are none.
severity = "warn"
expression = ["bgnbd_fit_source = 'this run'", "gamma_gamma_fit_source = 'this run'"]
---*/
with summary as (
    select frequency, recency, t, monetary from btyd_summary
),

fits as (
    select
        bgnbd_fit(frequency, recency, t, $clv_penalty)  as bg,
        gamma_gamma_fit(frequency, monetary, $clv_penalty) as gg
    from summary
),

-- The newest previous snapshot's parameters where they were usable (its own fit, or one it
-- carried forward), alpha in this run's time unit; NULL without a previous snapshot. Taken
-- by max() (its one row) so that this model, and the per-customer models joined to it, are
-- seen to keep one row per customer.
previous_fit as (
    select
        max(r) as r, max(alpha) as alpha, max(a) as a, max(b) as b,
        max(p) as p, max(q) as q, max(v) as v
    from (select
        case when bgnbd_converged or bgnbd_fit_source = 'previous snapshot' then r end as r,
        case when bgnbd_converged or bgnbd_fit_source = 'previous snapshot' then
            alpha * (case lower(time_unit) when 'weeks' then 7.0 else 1.0 end)
                  / (case lower($time_unit) when 'weeks' then 7.0 else 1.0 end)
        end as alpha,
        case when bgnbd_converged or bgnbd_fit_source = 'previous snapshot' then a end as a,
        case when bgnbd_converged or bgnbd_fit_source = 'previous snapshot' then b end as b,
        case when gamma_gamma_converged or gamma_gamma_fit_source = 'previous snapshot' then p end as p,
        case when gamma_gamma_converged or gamma_gamma_fit_source = 'previous snapshot' then q end as q,
        case when gamma_gamma_converged or gamma_gamma_fit_source = 'previous snapshot' then v end as v
    from previous.clv_model) usable
),

chosen as (
    select
        f.bg,
        f.gg,
        case
            when f.bg['converged'] then 'this run'
            when pf.r is not null and pf.alpha is not null and pf.a is not null and pf.b is not null
                then 'previous snapshot'
            else 'none'
        end as bg_source,
        case
            when f.gg['converged'] then 'this run'
            when pf.p is not null and pf.q is not null and pf.v is not null then 'previous snapshot'
            else 'none'
        end as gg_source,
        pf.r as prev_r, pf.alpha as prev_alpha, pf.a as prev_a, pf.b as prev_b,
        pf.p as prev_p, pf.q as prev_q, pf.v as prev_v
    from fits f
    left join previous_fit pf on true
),

params as (
    select
        case bg_source when 'this run' then bg['r'] when 'previous snapshot' then prev_r end as r,
        case bg_source when 'this run' then bg['alpha'] when 'previous snapshot' then prev_alpha end as alpha,
        case bg_source when 'this run' then bg['a'] when 'previous snapshot' then prev_a end as a,
        case bg_source when 'this run' then bg['b'] when 'previous snapshot' then prev_b end as b,
        bg['ln_likelihood'] as bgnbd_ln_likelihood,
        cast(bg['customers'] as bigint) as bgnbd_customers,
        bg['iterations']    as bgnbd_iterations,
        coalesce(bg['converged'], false) as bgnbd_converged,
        bg['method']        as bgnbd_method,
        bg_source           as bgnbd_fit_source,
        case gg_source when 'this run' then gg['p'] when 'previous snapshot' then prev_p end as p,
        case gg_source when 'this run' then gg['q'] when 'previous snapshot' then prev_q end as q,
        case gg_source when 'this run' then gg['v'] when 'previous snapshot' then prev_v end as v,
        gg['ln_likelihood'] as gamma_gamma_ln_likelihood,
        cast(gg['customers'] as bigint) as gamma_gamma_customers,
        gg['iterations']    as gamma_gamma_iterations,
        coalesce(gg['converged'], false) as gamma_gamma_converged,
        gg['method']        as gamma_gamma_method,
        gg_source           as gamma_gamma_fit_source
    from chosen
)

select
    r, alpha, a, b,
    bgnbd_ln_likelihood, bgnbd_customers, bgnbd_iterations, bgnbd_converged, bgnbd_method,
    bgnbd_fit_source,
    p, q, v,
    gamma_gamma_ln_likelihood, gamma_gamma_customers, gamma_gamma_iterations,
    gamma_gamma_converged, gamma_gamma_method, gamma_gamma_fit_source,
    gamma_gamma_expected_spend(p, q, v, 0, 0) as population_mean_spend,
    cast($clv_penalty as double) as penalty,
    lower($time_unit)   as time_unit
from params
