//! SIGTERM and SIGINT as a future, so that a command stops cleanly instead of being killed.

use tokio::signal::unix::{signal, SignalKind};

use crate::error::{Error, Result};

/// Resolves when SIGTERM or SIGINT arrives; installed before the run starts, so a signal
/// never kills the process without clean-up (`run`, `generate`, `preview` and `explain` use it).
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn install() -> Result<Shutdown> {
        let io = |e| Error::io("install signal handler", "SIGTERM/SIGINT", e);
        Ok(Shutdown {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
        })
    }

    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
