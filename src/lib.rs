//! segflow: customer segment, cohort and lifetime-value tables from e-commerce order
//! history, computed by SQL models on Apache DataFusion and published atomically as
//! hive-partitioned Parquet.
//!
//! The flow of a run ([`commands::run`]): [`config`] → plan the [`models`] → [`ingest`]
//! stages the canonical `orders` → the models compute and are checked → [`report`] →
//! [`publish`] commits; all I/O goes through [`storage`], every DataFusion extension lives
//! in [`ext`], the CLV mathematics in [`btyd`].

pub mod audiences;
pub mod btyd;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod error;
pub mod ext;
pub mod failpoint;
pub mod ingest;
pub mod memory;
pub mod models;
pub mod privacy;
pub mod progress;
pub mod publish;
pub mod redact;
pub mod report;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod storage;

pub use error::{Error, Result};
