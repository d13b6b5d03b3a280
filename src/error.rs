//! The one error type of the segflow library.
//!
//! Every variant carries the context a user needs to fix the problem: the file, the model,
//! the column, the config key or the URI. `exit_code` maps errors onto the documented exit
//! codes (1 = the data or models were checked and failed, 2 = the run was stopped).

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop or fail a segflow run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown / mistyped keys.
    #[error("invalid config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// A config value (from file, env var or flag) is invalid.
    #[error("invalid config value for `{key}`: {message}")]
    ConfigValue { key: String, message: String },
    /// An input could not be found or read, or a mapped column is missing or ill-typed.
    #[error("input `{input}` ({uri}): {message}")]
    Input {
        input: String,
        uri: String,
        message: String,
    },
    /// A model file cannot be read, has bad front matter, or is not a single query.
    #[error("{file}: {message}")]
    ModelFile { file: String, message: String },
    /// Model dependencies form a cycle.
    #[error("model dependency cycle: {chain}")]
    Cycle { chain: String },
    /// A model refers to a table that is neither an input nor a model.
    #[error("{file}: model `{model}` refers to unknown table `{table}` (known: {known})")]
    UnknownTable {
        file: String,
        model: String,
        table: String,
        known: String,
    },
    /// A model failed to plan or execute.
    #[error("{file}: model `{model}` failed: {message}")]
    Model {
        file: String,
        model: String,
        message: String,
    },
    /// Model checks or input gates failed (exit code 1).
    #[error("{count} check(s) failed:\n{details}")]
    ChecksFailed { count: usize, details: String },
    /// A published model outputs a column of personal data that `[privacy] publish_pii`
    /// does not list (exit code 1).
    #[error("{file}: model `{model}` would publish column `{column}`, personal data: publishing it needs [privacy] publish_pii = [\"{column}\"] (or leave it out of the model)")]
    PersonalData {
        file: String,
        model: String,
        column: String,
    },
    /// Another run holds the output lock.
    #[error("output {uri} is locked by another run: {holder}")]
    Locked { uri: String, holder: String },
    /// Reading or writing the output failed.
    #[error("output {uri}: {operation} failed: {message}")]
    Output {
        uri: String,
        operation: String,
        message: String,
    },
    /// SIGTERM or SIGINT stopped the run before it committed.
    #[error("interrupted by {signal}: nothing was published (staging removed, lock released)")]
    Interrupted { signal: &'static str },
    /// A command-line flag has a bad value, or values that do not fit together.
    #[error("{flag}: {message}")]
    Argument { flag: &'static str, message: String },
    /// `segflow generate` writes only into an empty location.
    #[error(
        "output {uri} is not empty (it holds {found}): generate writes only into an empty location"
    )]
    OutputNotEmpty { uri: String, found: String },
    /// `segflow generate` stopped (an error, SIGTERM or SIGINT) and removed what it had written.
    #[error("generate into {uri} stopped: {reason}; {cleanup}")]
    GenerateStopped {
        uri: String,
        reason: String,
        cleanup: String,
    },
    /// The customers file of `segflow forget` cannot be read or holds no id.
    #[error("customers to forget, {file}: {message}")]
    ForgetList { file: PathBuf, message: String },
    /// The run report could not be made (a section, a chart or the template).
    #[error("report: {section}: {message}")]
    Report { section: String, message: String },
    /// Filesystem error with the path that failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error from the query engine outside any single model (session setup, sources).
    #[error("Ballista scheduler {scheduler}: {message}")]
    Cluster { scheduler: String, message: String },

    #[error("{context}: {source}")]
    Engine {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

impl Error {
    /// The process exit code for this error: 1 for failed checks, 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ChecksFailed { .. } | Error::PersonalData { .. } => 1,
            _ => 2,
        }
    }

    /// Wraps an engine error with what segflow was doing.
    pub fn engine(context: impl Into<String>, source: datafusion::error::DataFusionError) -> Self {
        Error::Engine {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with the operation and path.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
