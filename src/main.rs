//! The `segflow` command line: `run` publishes a snapshot, `forget` erases customers from
//! the kept ones, `init` scaffolds a project,
//! `generate` writes a synthetic order history for tests and benchmarks, `scheduler` and
//! `executor` serve a Ballista cluster that computes the models.
//!
//! Exit codes: 0 = published; 1 = the data or models were checked and failed (model
//! checks, input gates); 2 = the run was stopped (config, SQL, I/O, lock held, empty input).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use segflow::config::{Overrides, Settings};

const EXIT_HELP: &str = "Exit codes:
  0  everything published
  1  model checks or input gates failed (nothing published)
  2  the run stopped: config, SQL, I/O, lock held, empty input, SIGTERM/SIGINT (nothing published)";

const CHECK_HELP: &str = "Exit codes:
  0  no errors (warnings may be printed)
  1  errors in models, data tests, checks or params (each printed as file:line:col)
  2  the check could not run: config, inputs, I/O";

const FORGET_HELP: &str =
    "Their ids are kept as salted hashes in <output>/_privacy/erased.parquet, so that
every later run leaves them out though the source still holds them. Each kept snapshot
is rewritten through the same locked, atomic commit as a run; run it again after an
interruption to finish.

Exit codes:
  0  every kept snapshot is without them
  2  stopped: config, the customers file, I/O, lock held, SIGTERM/SIGINT (each snapshot
     is whole: before or after the erasure)";

const GENERATE_HELP: &str =
    "Writes <out>/month=YYYY-MM/part-0.parquet (zstd) in the demo's source schema
(fixtures/demo/segflow.toml reads it unchanged); order_no is SO-<client_id>-<kkkk>, k
numbering a customer's orders from 0000 (the first order). The same --seed gives
byte-identical files.

Exit codes:
  0  everything written
  2  stopped: a bad flag, a non-empty --out, I/O, SIGTERM/SIGINT (what was written is removed)";

#[derive(Parser)]
#[command(name = "segflow", version, about = "Customer segment, cohort and lifetime-value tables from order history", after_help = EXIT_HELP)]
struct Cli {
    /// Log format: text on a terminal, JSON lines otherwise (auto).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "SEGFLOW_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the models and publish a snapshot.
    #[command(after_help = EXIT_HELP)]
    Run {
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
        /// Snapshot date (YYYY-MM-DD); default: config, else the latest order date.
        #[arg(long)]
        as_of: Option<String>,
        /// Output root (local path or s3://, az:// URL; gs:// is refused), overriding [output] uri.
        #[arg(long)]
        output: Option<String>,
        /// Publish only these models (their inputs are computed, not published).
        #[arg(long, num_args = 1..)]
        select: Vec<String>,
        /// Compute everything from every order line, even when the kept state would allow
        /// an incremental run.
        #[arg(long)]
        full_refresh: bool,
        /// Also write the run's metrics to FILE in the Prometheus text format (for
        /// node-exporter's textfile collector), whether the run succeeds or fails.
        #[arg(long, value_name = "FILE")]
        metrics: Option<PathBuf>,
    },
    /// Erase customers from every kept snapshot (tables, rejected rows, state, audience
    /// files) and keep them out of later runs.
    #[command(after_help = FORGET_HELP)]
    Forget {
        /// The customers: one id per line as the source holds it, or a Parquet file with a
        /// `customer_id` column.
        #[arg(long, value_name = "FILE")]
        customers: PathBuf,
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Parse and plan every model, check and data test against the input schemas (reads no
    /// data, takes no lock, writes nothing); report every problem.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
    },
    /// List the models: kind, grain, partitioning, what each reads, whether the newest
    /// snapshot publishes it, description.
    List {
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Run one model and what it reads, and print its first rows (nothing published, no
    /// lock; staged in a temp dir).
    Preview {
        /// The model.
        model: String,
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
        /// Rows to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Snapshot date (YYYY-MM-DD); default: config, else the latest order date.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Print a model's logical and physical plan (computing what it reads in a temp dir).
    Explain {
        /// The model.
        model: String,
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
        /// Execute the model and show the plan with its metrics.
        #[arg(long)]
        analyze: bool,
    },
    /// Write a browsable catalog of the models (one static HTML page, no network needed).
    Docs {
        /// Directory to write index.html into (created when missing).
        #[arg(long)]
        out: PathBuf,
        /// Config file.
        #[arg(long, default_value = "segflow.toml", env = "SEGFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Create a project: config, a copy of the built-in models, demo data.
    Init {
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
    },
    /// Write a deterministic synthetic order history (hive-partitioned Parquet by month).
    #[command(after_help = GENERATE_HELP)]
    Generate(GenerateArgs),
    /// Serve a Ballista scheduler that runs segflow's models (`[runtime] engine = "ballista"`).
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:50050")]
        bind: String,
        /// Host name executors and runs reach this scheduler at [default: the --bind host,
        /// or this machine's name when bound to every interface].
        #[arg(long)]
        external_host: Option<String>,
        /// A project config whose [storage.*] settings apply to every object store the
        /// scheduler lists (the rest of the file is ignored); default: the AWS_* environment.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a Ballista executor for segflow's models, registered with a scheduler.
    Executor(segflow::commands::cluster::ExecutorArgs),
}

/// `segflow generate`'s arguments.
#[derive(clap::Args)]
struct GenerateArgs {
    /// Output root (local path or s3://, az:// URL); must not hold any object.
    #[arg(long)]
    out: String,
    /// Order lines to write (the count lands within about 0.5 % of it).
    #[arg(long, default_value_t = segflow::commands::generate::DEFAULT_LINES)]
    lines: u64,
    /// Customers [default: lines / 15.625]; each orders at least once.
    #[arg(long)]
    customers: Option<u64>,
    /// Months of history (1..=600), ending with the month of --end.
    #[arg(long, default_value_t = segflow::commands::generate::DEFAULT_MONTHS)]
    months: u32,
    /// Last day of history (YYYY-MM-DD).
    #[arg(long, default_value = segflow::commands::generate::DEFAULT_END)]
    end: String,
    /// Random seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads, one month each [default: 2, at most the CPUs]; the files do not
    /// depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // delta-rs's kernel logs every log replay at INFO and errors it also returns at ERROR;
    // segflow reports those errors itself.
    let filter = EnvFilter::try_from_env("SEGFLOW_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,buoyant_kernel=off,deltalake_core=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Logs never carry credentials: everything written is redacted.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| segflow::redact::RedactingWriter(segflow::progress::Stderr));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// mimalloc: DataFusion allocates and frees many short-lived buffers per batch; glibc's
/// malloc spent ~13 % of a run in malloc/free/consolidation, mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    segflow::memory::tune_allocators();
    init_logging(cli.log_format);
    segflow::failpoint::warn_if_ignored();
    // A progress line per model on a terminal; none off one.
    segflow::progress::enable(std::io::stderr().is_terminal());
    // Ballista's processes plan deep trees on their worker threads (its binaries take 32 MiB).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(
        cli.command,
        Command::Scheduler { .. } | Command::Executor(_)
    ) {
        builder.thread_stack_size(32 * 1024 * 1024);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_inner(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", segflow::redact::redact(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn main_inner(command: Command) -> Result<ExitCode, segflow::Error> {
    use segflow::commands::{
        check, cluster, docs, forget, generate, init, inspect, run, until_signal,
    };
    let load = |config: &std::path::Path, overrides: Overrides| Settings::load(config, &overrides);
    match command {
        Command::List { config } => {
            let settings = load(&config, Overrides::default())?;
            print!("{}", inspect::list(&settings).await?);
        }
        Command::Preview {
            model,
            config,
            limit,
            as_of,
        } => {
            let as_of = Overrides {
                as_of,
                ..Overrides::default()
            };
            let settings = load(&config, as_of)?;
            let preview = inspect::preview(&settings, &model, limit, settings.as_of);
            print!("{}", until_signal(preview).await?);
        }
        Command::Explain {
            model,
            config,
            analyze,
        } => {
            let settings = load(&config, Overrides::default())?;
            print!(
                "{}",
                until_signal(inspect::explain(&settings, &model, analyze)).await?
            );
        }
        Command::Docs { out, config } => {
            let settings = load(&config, Overrides::default())?;
            let path = docs::write_docs(&settings, &out).await?;
            println!("wrote {}", path.display());
        }
        Command::Forget { customers, config } => {
            let settings = load(&config, Overrides::default())?;
            let summary = until_signal(forget::forget(&settings, &customers)).await?;
            print!("{}", summary.render());
        }
        Command::Check { config } => {
            let report = check::check(&load(&config, Overrides::default())?).await?;
            print!(
                "{}",
                report.render(&std::env::current_dir().unwrap_or_default())
            );
            if report.errors() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Run {
            config,
            as_of,
            output,
            select,
            full_refresh,
            metrics,
        } => {
            let overrides = Overrides {
                as_of,
                output,
                select,
                full_refresh,
            };
            let summary = run::run_command(&config, &overrides, metrics.as_deref()).await?;
            print!("{}", summary.render());
        }
        Command::Generate(args) => {
            let threads = args.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
            });
            let options = generate::GenerateOptions {
                out: args.out,
                lines: args.lines,
                customers: args.customers,
                months: args.months,
                end: args.end,
                seed: args.seed,
                threads,
                progress: std::io::stderr().is_terminal(),
            };
            print!("{}", generate::generate(&options).await?.render());
        }
        Command::Scheduler {
            bind,
            external_host,
            config,
        } => {
            cluster::until_stopped(cluster::scheduler(&bind, external_host, config.as_deref()))
                .await?
        }
        Command::Executor(args) => cluster::until_stopped(cluster::executor(args)).await?,
        Command::Init { dir } => {
            init::init_project(&dir)?;
            println!(
                "created {}: run it with `segflow run --config {}`",
                dir.display(),
                dir.join("segflow.toml").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
