//! The `segflow` command line: `run` publishes a snapshot, `init` scaffolds a project.
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
        /// Output root (local path or s3://, gs://, az:// URL), overriding [output] uri.
        #[arg(long)]
        output: Option<String>,
        /// Publish only these models (their inputs are computed, not published).
        #[arg(long, num_args = 1..)]
        select: Vec<String>,
    },
    /// Create a project: config, a copy of the built-in models, demo data.
    Init {
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SEGFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Logs never carry credentials: everything written is redacted.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| segflow::storage::RedactingWriter(std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    segflow::memory::limit_arenas();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_inner(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", segflow::storage::redact(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn main_inner(command: Command) -> Result<(), segflow::Error> {
    match command {
        Command::Run {
            config,
            as_of,
            output,
            select,
        } => {
            let settings = Settings::load(
                &config,
                &Overrides {
                    as_of,
                    output,
                    select,
                },
            )?;
            let summary = segflow::run::run(&settings).await?;
            let m = &summary.manifest;
            let loc = &summary.output.loc;
            println!(
                "published as_of={} to {} ({} tables, {} ms)",
                m.as_of,
                loc.uri,
                m.tables.len(),
                m.duration_ms
            );
            for (name, t) in &m.tables {
                if m.models.get(name).is_some_and(|x| x.published) {
                    println!(
                        "  {:<20} {:>8} rows  {}",
                        name,
                        t.rows,
                        loc.display(&t.path)
                    );
                }
            }
            println!(
                "  manifest: {}",
                loc.display(&segflow::publish::manifest_rel(m.as_of))
            );
            Ok(())
        }
        Command::Init { dir } => {
            segflow::init::init_project(&dir)?;
            println!(
                "created {}: run it with `segflow run --config {}`",
                dir.display(),
                dir.join("segflow.toml").display()
            );
            Ok(())
        }
    }
}
