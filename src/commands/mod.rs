//! The commands of the `segflow` binary, one module each.

pub mod check;
pub mod cluster;
pub mod docs;
pub mod forget;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod run;

/// Runs `work` unless SIGTERM or SIGINT arrives first: then it is dropped (its clean-up
/// runs) and the error names the signal.
pub async fn until_signal<T>(
    work: impl std::future::Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    let mut shutdown = crate::shutdown::Shutdown::install()?;
    tokio::select! {
        t = work => t,
        s = shutdown.wait() => Err(crate::Error::Interrupted { signal: s }),
    }
}
