/*---
description = "The predictive CLV models fitted on every customer's history up to as_of: BG/NBD (purchase days and drop-out) and Gamma-Gamma (spend per repeat purchase day), by maximum likelihood. One row per run."
grain = []

[params]
time_unit   = "days"
clv_penalty = 0.0

[columns]
r                     = "BG/NBD: shape of the Gamma distribution of purchase rates."
alpha                 = "BG/NBD: scale of the purchase rates (in time_unit)."
a                     = "BG/NBD: first shape of the Beta distribution of drop-out probabilities."
b                     = "BG/NBD: second shape of the drop-out probabilities."
bgnbd_ln_likelihood   = "Log-likelihood of the BG/NBD fit (without the penalty)."
bgnbd_customers       = "Customers the BG/NBD model was fitted on (everyone with a purchase)."
bgnbd_iterations      = "Optimiser iterations of the BG/NBD fit on all customers (from 65,536 distinct summaries up, the fit starts where a fit on an even sample of at most 16,384 of them ended)."
bgnbd_converged       = "False when the BG/NBD fit stopped before the gradient vanished, a parameter ran off beyond 1e10 or 1e-10, or the sample cannot identify the model (fewer than 4 distinct customer summaries, or no customer bought twice): clv then predicts NULL."
p                     = "Gamma-Gamma: shape of the spend per purchase."
q                     = "Gamma-Gamma: shape of the customers' spend scales."
v                     = "Gamma-Gamma: scale of the customers' spend scales."
gamma_gamma_ln_likelihood = "Log-likelihood of the Gamma-Gamma fit (without the penalty)."
gamma_gamma_customers = "Customers the Gamma-Gamma model was fitted on: repeat buyers whose repeat purchases are worth more than 0 (refunds can make it less)."
gamma_gamma_iterations = "Optimiser iterations of the Gamma-Gamma fit on all repeat buyers (started from a sample's fit as for BG/NBD)."
gamma_gamma_converged = "False when the Gamma-Gamma fit stopped before the gradient vanished, a parameter ran off, or fewer than 3 distinct repeat-buyer summaries were fitted."
population_mean_spend = "Mean spend per purchase in the population, p v / (q - 1): the expected spend of customers without repeat purchases."
penalty               = "The L2 penalty on the parameters (0 = plain maximum likelihood)."
time_unit             = "days or weeks: the unit of recency, t, alpha and the fits."

[checks]
# A fit that did not converge (a sample too small or too uniform to identify the model)
# warns; clv then predicts NULL instead of numbers that mean nothing.
severity = "warn"
expression = ["bgnbd_converged", "gamma_gamma_converged"]
---*/
with summary as (
    select frequency, recency, t, monetary from btyd_summary
),

fits as (
    select
        bgnbd_fit(frequency, recency, t, $clv_penalty)  as bg,
        gamma_gamma_fit(frequency, monetary, $clv_penalty) as gg
    from summary
)

select
    bg['r']             as r,
    bg['alpha']         as alpha,
    bg['a']             as a,
    bg['b']             as b,
    bg['ln_likelihood'] as bgnbd_ln_likelihood,
    cast(bg['customers'] as bigint) as bgnbd_customers,
    bg['iterations']    as bgnbd_iterations,
    bg['converged']     as bgnbd_converged,
    gg['p']             as p,
    gg['q']             as q,
    gg['v']             as v,
    gg['ln_likelihood'] as gamma_gamma_ln_likelihood,
    cast(gg['customers'] as bigint) as gamma_gamma_customers,
    gg['iterations']    as gamma_gamma_iterations,
    gg['converged']     as gamma_gamma_converged,
    gamma_gamma_expected_spend(gg['p'], gg['q'], gg['v'], 0, 0) as population_mean_spend,
    cast($clv_penalty as double) as penalty,
    lower($time_unit)   as time_unit
from fits
