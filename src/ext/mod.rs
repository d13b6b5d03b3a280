//! Every DataFusion extension segflow adds: SQL functions and aggregates, the decimal cast
//! rule, and tables bucketed by customer. See `README.md` here for why each exists and when
//! it can go.

pub mod argbest;
pub mod btyd;
pub mod buckets;
pub mod decimal;
pub mod minmax;
pub mod scalars;
pub mod stats;

#[cfg(test)]
mod canary_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::optimizer::OptimizerRule;
use datafusion::prelude::SessionContext;

/// Everything segflow adds to a DataFusion session, in one list: the local session
/// registers it, and a distributed engine's scheduler and executors take the same list.
pub struct Extensions {
    /// Scalar functions model files may call (the input mapping's among them).
    pub scalars: Vec<ScalarUDF>,
    /// Aggregates model files may call (`min` and `max` replace DataFusion's own).
    pub aggregates: Vec<AggregateUDF>,
    /// Logical optimizer rules, run after DataFusion's.
    pub rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
}

/// Every function, aggregate and optimizer rule segflow adds.
pub fn functions() -> Extensions {
    let mut scalars = vec![
        scalars::raise_error(),
        scalars::local_date_udf(),
        scalars::utc_timestamp_udf(),
        scalars::integer_text_udf(),
        decimal::float_decimal_udf(),
    ];
    scalars.extend(btyd::scalars());
    let mut aggregates = minmax::aggregates();
    aggregates.extend(argbest::aggregates());
    aggregates.extend(stats::aggregates());
    aggregates.extend(btyd::aggregates());
    Extensions {
        scalars,
        aggregates,
        rules: vec![Arc::new(decimal::FloatDecimalRule)],
    }
}

/// Registers [`functions`] on a session.
pub fn register(ctx: &SessionContext) {
    let Extensions {
        scalars,
        aggregates,
        rules,
    } = functions();
    for f in scalars {
        ctx.register_udf(f);
    }
    for f in aggregates {
        ctx.register_udaf(f);
    }
    for rule in rules {
        ctx.add_optimizer_rule(rule);
    }
}

/// `state` with [`functions`] registered (a Ballista scheduler's sessions).
pub fn with_extensions(
    state: datafusion::execution::SessionState,
) -> datafusion::error::Result<datafusion::execution::SessionState> {
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::execution::FunctionRegistry;
    let Extensions {
        scalars,
        aggregates,
        rules,
    } = functions();
    let mut builder = SessionStateBuilder::new_from_existing(state);
    for rule in rules {
        builder = builder.with_optimizer_rule(rule);
    }
    let mut state = builder.build();
    for f in scalars {
        state.register_udf(Arc::new(f))?;
    }
    for f in aggregates {
        state.register_udaf(Arc::new(f))?;
    }
    Ok(state)
}
