//! `segflow scheduler` and `segflow executor`: the processes of a Ballista cluster that
//! runs segflow's models (see [`crate::cluster`]).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::cluster::serve::{run_executor, run_scheduler, ExecutorOptions};
use crate::cluster::SchedulerAddr;
use crate::config::{S3Settings, Settings};
use crate::error::{Error, Result};

/// The storage settings of `--config F` (its `[storage.*]`), else the environment's alone.
fn storage(config: Option<&Path>) -> Result<S3Settings> {
    match config {
        Some(path) => Settings::load_storage(path),
        None => Ok(S3Settings::default()),
    }
}

/// `HOST:PORT` as a socket address, `flag` naming it in the error.
fn socket(flag: &'static str, value: &str) -> Result<SocketAddr> {
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Argument {
            flag,
            message: format!("`{value}` is not a HOST:PORT address"),
        })
}

/// The host other processes reach a process bound to `bind` at: `--external-host`, else
/// the bound host, else (bound to every interface) this machine's name.
fn external_host(bind: &SocketAddr, given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        if bind.ip().is_unspecified() {
            crate::publish::lock::host_name()
        } else {
            bind.ip().to_string()
        }
    })
}

/// `segflow scheduler`.
pub async fn scheduler(bind: &str, external: Option<String>, config: Option<&Path>) -> Result<()> {
    let bind = socket("--bind", bind)?;
    let external = external_host(&bind, external);
    run_scheduler(bind, external, storage(config)?).await
}

/// `segflow executor`'s flags.
#[derive(clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler, HOST:PORT or df://HOST:PORT.
    #[arg(long)]
    pub scheduler: String,
    /// Arrow Flight address (results and shuffle data).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub bind: String,
    /// Host name the scheduler and runs reach this executor at [default: the --bind
    /// host, or this machine's name when bound to every interface].
    #[arg(long)]
    pub external_host: Option<String>,
    /// gRPC port for the scheduler's calls [default: the --bind port + 1].
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Directory for shuffle files and spills (created when missing).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Tasks run side by side [default: the CPUs].
    #[arg(long)]
    pub concurrent_tasks: Option<usize>,
    /// Memory pool shared by the tasks, e.g. "8g" [default: 70 % of the machine's].
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// A project config whose [storage.*] settings apply to every object store the
    /// executor reads or writes (the rest of the file is ignored); default: the AWS_*
    /// environment.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `segflow executor`.
pub async fn executor(args: ExecutorArgs) -> Result<()> {
    let scheduler = SchedulerAddr::parse("--scheduler", &args.scheduler)?;
    let bind = socket("--bind", &args.bind)?;
    let grpc_port = match args.grpc_port {
        Some(p) => p,
        None => bind.port().checked_add(1).ok_or_else(|| Error::Argument {
            flag: "--grpc-port",
            message: format!("--bind port {} leaves no port after it", bind.port()),
        })?,
    };
    if grpc_port == bind.port() {
        return Err(Error::Argument {
            flag: "--grpc-port",
            message: format!("{grpc_port} is the Flight port of --bind"),
        });
    }
    let memory_limit = match &args.memory_limit {
        Some(text) => Some(crate::config::parse_size("--memory-limit", text)? as u64),
        None => None,
    };
    let concurrent_tasks = match args.concurrent_tasks {
        Some(0) => {
            return Err(Error::Argument {
                flag: "--concurrent-tasks",
                message: "must be at least 1".into(),
            })
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    run_executor(ExecutorOptions {
        external_host: external_host(&bind, args.external_host),
        scheduler,
        bind,
        grpc_port,
        work_dir: args.work_dir,
        concurrent_tasks,
        memory_limit,
        s3: storage(args.config.as_deref())?,
    })
    .await
}

/// Serves `work` until it ends or SIGTERM / SIGINT arrives (a normal stop: exit 0, logged).
pub async fn until_stopped(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let mut shutdown = crate::shutdown::Shutdown::install()?;
    tokio::select! {
        r = work => r,
        s = shutdown.wait() => {
            tracing::info!(signal = s, "stopping");
            Ok(())
        }
    }
}
