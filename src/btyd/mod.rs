//! Buy-till-you-die numerics: the BG/NBD model of purchase counts (Fader, Hardie & Lee 2005)
//! and the Gamma-Gamma model of spend (Fader & Hardie 2013) — log-likelihoods, maximum
//! likelihood fits and per-customer predictions.
//!
//! Everything is computed in log space (`ln Γ` instead of Γ); parameters are fitted as their
//! logarithms so they stay positive; a fit reports whether it converged and never hides a
//! failure. Customers come as weighted tuples (identical `(x, t_x, T)` summaries counted
//! once), sorted before fitting, so the result does not depend on the order they arrived in.

mod bgnbd;
mod fit;
mod gamma_gamma;
mod optimise;
mod special;

pub use bgnbd::*;
pub use fit::*;
pub use gamma_gamma::*;
pub use optimise::*;
pub use special::*;

#[cfg(test)]
mod property_tests;
#[cfg(test)]
pub(crate) mod tests;
