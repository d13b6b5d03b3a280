//! segflow: customer segment, cohort and lifetime-value tables from e-commerce order
//! history, computed by SQL models on Apache DataFusion and published atomically as
//! hive-partitioned Parquet.
//!
//! The flow of a run: [`config`] → [`session`] → [`sources`] (the canonical `orders`
//! view) → [`models`] (discover, header, graph) → [`engine`] (plan, execute, check) →
//! [`publish`] (lock, stage, commit, recover), all I/O through [`storage`].

pub mod argbest;
pub mod btyd;
pub mod buckets;
pub mod check;
pub mod config;
pub mod decimal;
pub mod docs;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod fingerprints;
pub mod functions;
pub mod gates;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod keys;
pub mod lineage;
pub mod memory;
pub mod metrics;
pub mod minmax;
pub mod models;
pub mod progress;
pub mod publish;
pub mod report;
pub mod run;
pub mod session;
pub mod sources;
pub mod stats;
pub mod storage;

pub use error::{Error, Result};
