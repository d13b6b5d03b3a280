//! `[runtime] engine` and `scheduler`: where a run's models are computed.

use std::fmt;

use crate::error::{Error, Result};

/// Where a run's models are computed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Engine {
    /// In the run's own process.
    #[default]
    Local,
    /// On the Ballista cluster behind the scheduler.
    Ballista(SchedulerAddr),
}

/// `[runtime] engine` and `scheduler` (or their variables) as an [`Engine`], each with the
/// key or variable it came from (for the error).
pub(crate) fn engine(
    (engine_key, engine): (&str, Option<&str>),
    (scheduler_key, scheduler): (&str, Option<&str>),
) -> Result<Engine> {
    match engine.unwrap_or("local") {
        "local" => Ok(Engine::Local),
        "ballista" => Ok(Engine::Ballista(SchedulerAddr::parse(
            scheduler_key,
            scheduler.unwrap_or("df://localhost:50050"),
        )?)),
        other => Err(Error::ConfigValue {
            key: engine_key.to_string(),
            message: format!("unknown engine `{other}` (expected \"local\" or \"ballista\")"),
        }),
    }
}

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

    #[test]
    fn the_engine_is_local_unless_ballista_is_named_and_an_unknown_one_names_its_key() {
        assert_eq!(
            engine(("e", None), ("s", Some("h:1"))).unwrap(),
            Engine::Local
        );
        assert_eq!(
            engine(("e", Some("ballista")), ("s", None)).unwrap(),
            Engine::Ballista(SchedulerAddr {
                host: "localhost".into(),
                port: DEFAULT_SCHEDULER_PORT
            })
        );
        let e = engine(("SEGFLOW_RUNTIME_ENGINE", Some("spark")), ("s", None)).unwrap_err();
        assert!(
            e.to_string().contains("SEGFLOW_RUNTIME_ENGINE") && e.to_string().contains("spark")
        );
    }
}
