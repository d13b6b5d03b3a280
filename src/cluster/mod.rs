//! Scale-out on Apache Ballista: a run's models computed by a cluster of executors.
//!
//! `segflow scheduler` and `segflow executor` ([`serve`]) embed Ballista's scheduler and
//! executor with segflow's SQL functions, aggregates and optimizer rule (the one list of
//! [`crate::ext::functions`]), the codec of segflow's own tables ([`codec`]) and object stores
//! opened from the environment ([`stores`]). A run with `[runtime] engine = "ballista"`
//! [`connect`]s its model session to the scheduler: the staging pass (gates, fingerprints),
//! the lock, manifest, recovery and report stay in the run's process; every model query is
//! planned by the scheduler and executed by the executors, which read the staged tables
//! and write the published ones where every process can reach them.

pub mod codec;
pub mod serve;
mod stores;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use crate::config::Settings;
use crate::error::{Error, Result};

pub use stores::StoreRegistry;

/// The scheduler's port when none is given.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Where a scheduler listens: `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerAddr {
    pub host: String,
    pub port: u16,
}

impl SchedulerAddr {
    /// Parses `df://HOST:PORT`, `HOST:PORT` or `HOST` (port 50050); `key` names the setting
    /// or flag in the error.
    pub fn parse(key: &str, value: &str) -> Result<SchedulerAddr> {
        let bad = |message: String| Error::ConfigValue {
            key: key.to_string(),
            message: format!("`{value}`: {message} (expected df://HOST:PORT)"),
        };
        let rest = match value.split_once("://") {
            Some(("df", rest)) => rest,
            Some((scheme, _)) => return Err(bad(format!("unknown scheme `{scheme}://`"))),
            None => value,
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(format!("`{port}` is not a port")))?,
            ),
            None => (rest, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad("no host".into()));
        }
        Ok(SchedulerAddr {
            host: host.to_string(),
            port,
        })
    }

    /// The URL Ballista's client takes.
    pub fn url(&self) -> String {
        format!("df://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for SchedulerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How long a run waits for the scheduler's port to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails, naming the scheduler, unless its port accepts a TCP connection. Ballista's client
/// connects only when the first query runs; a run checks before it stages anything.
pub async fn reachable(scheduler: &SchedulerAddr) -> Result<()> {
    let unreachable = |message: String| Error::Cluster {
        scheduler: scheduler.to_string(),
        message,
    };
    let connect = tokio::net::TcpStream::connect((scheduler.host.as_str(), scheduler.port));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(format!("cannot connect: {e}"))),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The session of a run's models on the cluster behind `scheduler`: the run's engine config
/// (`[datafusion]`, target partitions) under Ballista's restrictions, segflow's codec, the
/// object stores of the inputs and output, and segflow's functions registered after the
/// session is bound to the cluster (binding replaces the function maps).
pub async fn connect(settings: &Settings, scheduler: &SchedulerAddr) -> Result<SessionContext> {
    reachable(scheduler).await?;
    // Ballista's restrictions first (no round-robin repartitioning, no dynamic filters
    // across stages, sort-merge joins, no string views over Flight): setting any Ballista
    // option before them would mark the config as already restricted.
    let config = crate::session::session_config(settings)?
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(codec::SegflowLogicalCodec::default()))
        // Ballista 55's adaptive planner loses track of a stage's task metrics on the
        // built-in models' joins of window aggregates ("task metrics array size 11 does not
        // equal with the stage metrics array size 10") and the job never finishes; the static
        // planner runs every model.
        .with_ballista_adaptive_query_planner(false);
    let runtime = crate::session::runtime_builder(settings)
        .with_object_store_registry(Arc::new(StoreRegistry::new(settings.s3.clone())))
        .build_arc()
        .map_err(|e| Error::engine("cannot create the engine runtime", e))?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(&scheduler.url(), state)
        .await
        .map_err(|e| Error::Cluster {
            scheduler: scheduler.to_string(),
            message: e.strip_backtrace(),
        })?;
    crate::ext::register(&ctx);
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_addresses_parse_with_and_without_scheme_and_port() {
        let addr = |h: &str, p| SchedulerAddr {
            host: h.into(),
            port: p,
        };
        for (text, want) in [
            ("df://127.0.0.1:50150", addr("127.0.0.1", 50150)),
            ("df://scheduler:50050/", addr("scheduler", 50050)),
            (
                "scheduler.segflow.svc",
                addr("scheduler.segflow.svc", 50050),
            ),
            ("10.0.0.7:6000", addr("10.0.0.7", 6000)),
        ] {
            assert_eq!(SchedulerAddr::parse("k", text).unwrap(), want, "{text}");
        }
        assert_eq!(addr("h", 1).url(), "df://h:1");
        for bad in [
            "http://h:1",
            "df://h:x",
            "df://:50050",
            "df://h:0",
            "h:70000",
        ] {
            let e = SchedulerAddr::parse("runtime.scheduler", bad).unwrap_err();
            assert!(e.to_string().contains("runtime.scheduler"), "{e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_named() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SchedulerAddr {
            host: "127.0.0.1".into(),
            port,
        };
        let e = reachable(&addr).await.unwrap_err();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
