//! The run manifest: the commit record of a snapshot (it exists iff the snapshot does).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Policy;

/// One published table in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    /// Directory relative to the output root, e.g. `rfm/as_of=2026-11-21`.
    pub path: String,
    pub rows: u64,
    /// Data files relative to the output root.
    pub files: Vec<String>,
    /// Bytes of the data files.
    #[serde(default)]
    pub bytes: u64,
    pub partition_by: Vec<String>,
    pub duration_ms: u64,
    pub columns: Vec<ColumnEntry>,
    /// Delta output: the table's version that holds this snapshot (the table is
    /// `<model>/`, the snapshot its partition `as_of=D`; `files` are that partition's
    /// files at this version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_version: Option<u64>,
}

/// A column name and its Arrow type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The run manifest: the snapshot exists iff its manifest does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub as_of: NaiveDate,
    pub segflow_version: String,
    pub datafusion_version: String,
    pub config_hash: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub input: Option<InputStats>,
    pub models: BTreeMap<String, ModelTiming>,
    pub tables: BTreeMap<String, TableEntry>,
    /// The rows input gates with policy `drop` left out, under `_rejected/as_of=D/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectedEntry>,
    /// The run report, `_report/as_of=D/index.html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportEntry>,
    /// What checks and data tests of severity `warn` found (one line each, naming the
    /// model file): the run published, but someone should look.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the run computed the snapshot: from every line, or incrementally from the
    /// kept state of an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// The line-level aggregates this snapshot keeps for the next run, `_state/as_of=D/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateEntry>,
    /// The audiences' upload files, `_audiences/as_of=D/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<AudiencesEntry>,
    /// Pseudonymised ids: the key's fingerprint (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyEntry>,
    /// Erased customers (`segflow forget`): how many this snapshot no longer holds, and
    /// each erasure that rewrote it (counts and times, never the ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureEntry>,
}

/// The erasures a snapshot reflects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErasureEntry {
    /// How many of the erased ids (`_privacy/erased.parquet`) the snapshot was computed
    /// or rewritten without.
    pub erased_ids: u64,
    /// Each `segflow forget` that rewrote the snapshot, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erasures: Vec<ErasureRecord>,
}

/// One `segflow forget` applied to a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErasureRecord {
    pub at: DateTime<Utc>,
    /// Customers the request named.
    pub customers: u64,
    /// Rows removed from the snapshot's tables, rejected rows and state.
    pub rows_removed: u64,
    /// Files rewritten without them.
    pub files_rewritten: u64,
}

impl Manifest {
    /// How many erased ids the snapshot is without.
    pub fn erased_ids(&self) -> u64 {
        self.erasure.as_ref().map_or(0, |e| e.erased_ids)
    }
}

/// The upload files of a snapshot's audiences.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudiencesEntry {
    /// `_audiences/as_of=D`.
    pub path: String,
    /// Every upload file, relative to the output root.
    pub files: Vec<String>,
    pub bytes: u64,
    /// Each audience: what it holds and its files.
    pub audiences: BTreeMap<String, AudienceSummary>,
}

/// One audience of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudienceSummary {
    /// `email` or `ads`.
    pub channel: String,
    pub segmentation: String,
    pub segments: Vec<String>,
    /// Members now (entered + stayed): the rows of its upload files.
    pub members: u64,
    pub entered: u64,
    pub stayed: u64,
    pub left: u64,
    pub files: Vec<String>,
}

/// How a snapshot's customer ids were published.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrivacyEntry {
    /// The first 16 hex digits of SHA-256 of the pseudonym key.
    pub key_fingerprint: String,
}

/// How a snapshot was computed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunInfo {
    pub mode: RunMode,
    /// Why a run was full (None when incremental): `no state`, `--full-refresh`, `as_of
    /// before state`, `models or config changed`, `input changed: <path>`, `segflow
    /// version changed`.
    pub full_reason: Option<String>,
    /// Incremental runs: the snapshot whose state they started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_from: Option<NaiveDate>,
}

/// Whether a run read every line or only the new ones.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Full,
    Incremental,
}

/// The kept state of a snapshot: each incremental model's rows, and what they cover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEntry {
    /// `_state/as_of=D`.
    pub path: String,
    /// Every data file of the state, relative to the output root.
    pub files: Vec<String>,
    pub bytes: u64,
    /// Each incremental model's rows.
    pub tables: BTreeMap<String, StateTable>,
    /// Hash of everything that shapes the rows: the incremental models, the orders
    /// mapping and statuses, the gates, the time zone, their parameters.
    pub hash: String,
    /// What the state covers of the input.
    pub watermark: Watermark,
}

/// One incremental model's kept rows, in two layers: a base and, when the state shares an
/// earlier snapshot's base, the rows written since (`delta`), which replace the base's rows
/// of the same grain. The rows are the base's rows of a grain `delta` does not hold, and
/// every row of `delta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateTable {
    /// Rows of the base layer.
    pub rows: u64,
    /// The base layer's data files, relative to the output root: this snapshot's own, or
    /// those of the earlier snapshot whose base it shares.
    pub files: Vec<String>,
    /// Bytes of the base layer's files.
    #[serde(default)]
    pub bytes: u64,
    /// How many files the rows are bucketed into by customer (see `ext::buckets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<usize>,
    /// The model's grain: the columns by which the delta's rows replace the base's.
    #[serde(default)]
    pub grain: Vec<String>,
    /// The delta layer's data files (written by this snapshot's run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta: Vec<String>,
    #[serde(default)]
    pub delta_rows: u64,
    #[serde(default)]
    pub delta_bytes: u64,
}

impl StateTable {
    /// Every data file the table's rows are read from (base, then delta).
    pub fn all_files(&self) -> impl Iterator<Item = &String> {
        self.files.iter().chain(self.delta.iter())
    }
}

/// What the state covers: every line of `files` dated up to `through` (the snapshot's
/// as_of) that the gates let through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermark {
    pub through: NaiveDate,
    /// The latest order date among the lines it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_order_date: Option<NaiveDate>,
    /// The latest order date among the lines the models saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_visible: Option<NaiveDate>,
    /// The orders input's files as they were read.
    pub files: Vec<InputFile>,
}

/// One input file as read: a later run trusts the state only while it is unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputFile {
    /// The file's location in its store.
    pub path: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// The report of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportEntry {
    /// `_report/as_of=D`.
    pub path: String,
    /// `_report/as_of=D/index.html`, relative to the output root.
    pub files: Vec<String>,
    pub bytes: u64,
}

/// The rejected rows of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedEntry {
    /// `_rejected/as_of=D`.
    pub path: String,
    pub rows: u64,
    /// Data files relative to the output root.
    pub files: Vec<String>,
    /// Bytes of the data files.
    #[serde(default)]
    pub bytes: u64,
}

impl Manifest {
    /// Whether `rel` (a path relative to the output root) belongs to this snapshot: a data
    /// file it lists or the `_SUCCESS` marker of one of its tables.
    pub fn owns(&self, rel: &str) -> bool {
        self.dirs().any(|(path, files)| {
            rel.strip_prefix(path)
                .is_some_and(|rest| rest == "/_SUCCESS")
                || files.iter().any(|f| f == rel)
        })
    }

    /// Every directory the snapshot publishes and owns file by file (Parquet tables, then
    /// the rejected rows and the report) with its files. A Delta table's files belong to
    /// its log, which keeps them for older versions until vacuum: they are not listed.
    pub fn dirs(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.tables
            .values()
            .filter(|t| t.delta_version.is_none())
            .map(|t| (t.path.as_str(), t.files.as_slice()))
            .chain(
                self.rejected
                    .iter()
                    .map(|r| (r.path.as_str(), r.files.as_slice())),
            )
            .chain(
                self.report
                    .iter()
                    .map(|r| (r.path.as_str(), r.files.as_slice())),
            )
            .chain(
                self.audiences
                    .iter()
                    .map(|a| (a.path.as_str(), a.files.as_slice())),
            )
    }

    /// Every data file of the kept state: this snapshot's own and those it shares with
    /// earlier snapshots (state files are not in [`Self::dirs`]: a file is deleted only
    /// when no kept snapshot's state lists it, see `Output::sweep_state`).
    pub fn state_files(&self) -> impl Iterator<Item = &String> {
        self.state.iter().flat_map(|s| s.files.iter())
    }
}

/// Timing of every model, published or internal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelTiming {
    pub rows: u64,
    pub duration_ms: u64,
    pub published: bool,
}

/// What the orders input held, for the manifest and the default as_of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputStats {
    /// Parquet files read.
    pub files: usize,
    /// Source rows.
    pub rows_read: u64,
    /// Rows dropped by `drop_status`.
    pub rows_dropped_status: u64,
    /// Rows after as_of: normal data, invisible to this snapshot.
    pub rows_after_as_of: u64,
    /// Rows the models see.
    pub rows_visible: u64,
    /// Rows a gate with policy `drop` left out (published under `_rejected/`).
    #[serde(default)]
    pub rows_rejected: u64,
    /// Rows each input gate caught, and its policy.
    #[serde(default)]
    pub gates: BTreeMap<String, GateStat>,
}

/// One gate's outcome in the manifest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct GateStat {
    /// Rows the gate caught.
    pub rows: u64,
    pub policy: Policy,
}
