//! segflow: customer segment, cohort and lifetime-value tables from e-commerce order
//! history, computed by SQL models on Apache DataFusion and published atomically as
//! hive-partitioned Parquet.
//!
//! The flow of a run: [`config`] → [`session`] → [`sources`] (the canonical `orders`
//! view) → [`models`] (discover, header, graph) → [`engine`] (plan, execute, check) →
//! [`publish`] (stage, swap, manifest).

pub mod config;
pub mod engine;
pub mod error;
pub mod init;
pub mod models;
pub mod publish;
pub mod run;
pub mod session;
pub mod sources;

pub use error::{Error, Result};
