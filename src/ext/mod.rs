//! Every DataFusion extension segflow adds: SQL functions and aggregates, the decimal cast
//! rule, and tables bucketed by customer. See `README.md` here for why each exists and when
//! it can go.

pub mod argbest;
pub mod buckets;
pub mod decimal;
pub mod functions;
pub mod minmax;
pub mod stats;
