//! Incremental state: what a run keeps for the next one (`_state/as_of=D/`, listed by the
//! manifest), and whether a run can trust a kept state and read only the lines it lacks.
//!
//! A state holds the rows of every incremental model (see `models::incremental`) over the
//! lines dated up to its as_of of the input files it lists, with each file's size, time and
//! etag, and a hash of everything that shapes the rows. A run for as_of D starts from the
//! newest state before D when its hash and segflow version match and every file it lists
//! is unchanged; anything else runs in full and says why.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::config::Settings;
use crate::error::Result;
use crate::ingest::{Lines, Since};
use crate::models::Model;
use crate::publish::manifest::{InputFile, RunInfo, RunMode};
use crate::publish::{Manifest, Output};

/// Why a run is full (the manifest's `run.full_reason`).
pub mod reason {
    pub const NO_STATE: &str = "no state";
    pub const FULL_REFRESH: &str = "--full-refresh";
    pub const BEFORE_STATE: &str = "as_of before state";
    pub const CHANGED: &str = "models or config changed";
    pub const VERSION: &str = "segflow version changed";
    pub const SELECT: &str = "--select";
    pub const ERASED: &str = "customers erased since the state";
    /// `input changed: <path>`.
    pub fn input_changed(path: &str) -> String {
        format!("input changed: {path}")
    }
}

/// The hash of what shapes a state's rows: the incremental models (name and file text),
/// the orders mapping and statuses, the gates' policies, the time zone, the parameters
/// those models read and the pseudonym key's fingerprint.
pub fn state_hash(settings: &Settings, models: &[Model]) -> String {
    let mut h = Sha256::new();
    for m in models.iter().filter(|m| m.incremental()) {
        h.update(format!("model {}\n{}\n", m.name, m.sql));
        for p in &m.params_used {
            h.update(format!("param {p}={:?}\n", settings.params.get(p)));
        }
    }
    if let Some(orders) = settings.inputs.get("orders") {
        h.update(format!(
            "columns {:?}\ndrop_status {:?}\nreturn_status {:?}\n",
            orders.columns, orders.drop_status, orders.return_status
        ));
    }
    h.update(format!("gates {:?}\n", settings.gates.policies));
    h.update(format!(
        "timezone {:?}\n",
        settings.timezone.map(|t| t.name())
    ));
    // Pseudonymised ids: the kept rows hold the pseudonyms of one key.
    h.update(format!(
        "pseudonym key {:?}\n",
        settings.privacy.pseudonym.as_ref().map(|k| k.fingerprint())
    ));
    format!("{:x}", h.finalize())
}

/// Why a run keeps no state at all (None when it keeps one): a state is exact only when
/// every model that reads the order lines merges incrementally and no gate needs the lines
/// of earlier runs (the duplicate gate with policy drop or fail). The lines must also have
/// order ids (synthetic ids number a customer's whole history), which only the staging
/// pass tells ([`NO_ORDER_IDS`]).
pub fn cannot_keep(settings: &Settings, models: &[Model]) -> Option<String> {
    if !settings.select.is_empty() {
        return Some("a --select run computes only some models".into());
    }
    if !models.iter().any(Model::incremental) {
        return Some("no model is incremental".into());
    }
    if let Some(m) = models
        .iter()
        .find(|m| !m.incremental() && m.inputs.contains("orders"))
    {
        return Some(format!(
            "model {} reads the order lines and is not materialized incrementally",
            m.name
        ));
    }
    let duplicates = settings
        .gates
        .policies
        .get(crate::ingest::gates::DUPLICATE_LINES)
        .copied()
        .unwrap_or(crate::config::Policy::Warn);
    if duplicate_gate_needs_history(duplicates) {
        return Some(
            "gate duplicate_lines has policy drop or fail, which compares every line with every earlier one"
                .into(),
        );
    }
    None
}

/// Why a run whose source has no order ids keeps no state.
pub const NO_ORDER_IDS: &str =
    "the orders input has no order_id (synthetic order ids number a customer's whole history)";

fn duplicate_gate_needs_history(p: crate::config::Policy) -> bool {
    !matches!(p, crate::config::Policy::Warn)
}

/// How a run starts: from a kept state (the manifest that lists it) or in full, and why.
#[derive(Debug, Clone)]
pub enum Start {
    From(Box<Manifest>),
    Full(String),
}

/// The state a run for `as_of` (None: the latest order date, not known yet) may start
/// from: the newest state before it, if its hash and version match; else why not.
pub async fn start(
    output: &Output,
    settings: &Settings,
    as_of: Option<NaiveDate>,
    hash: &str,
    keeps_state: bool,
) -> Result<Start> {
    if settings.full_refresh {
        return Ok(Start::Full(reason::FULL_REFRESH.into()));
    }
    if !settings.select.is_empty() {
        return Ok(Start::Full(reason::SELECT.into()));
    }
    let mut dates = output.snapshots().await?;
    dates.reverse();
    let mut later_state = false;
    for d in dates {
        let Some(m) = output.manifest(d).await? else {
            continue;
        };
        let Some(state) = &m.state else {
            continue;
        };
        if as_of.is_some_and(|a| d >= a) {
            later_state = true;
            continue;
        }
        if !keeps_state {
            return Ok(Start::Full(reason::CHANGED.into()));
        }
        if m.segflow_version != env!("CARGO_PKG_VERSION") {
            return Ok(Start::Full(reason::VERSION.into()));
        }
        if state.hash != hash {
            return Ok(Start::Full(reason::CHANGED.into()));
        }
        // A state that still holds customers erased since (a `forget` cut short) is not
        // trusted: a full run leaves them out.
        let erased = settings
            .privacy
            .erased
            .as_ref()
            .map_or(0, |e| e.len() as u64);
        if m.erased_ids() != erased {
            return Ok(Start::Full(reason::ERASED.into()));
        }
        return Ok(Start::From(Box::new(m)));
    }
    Ok(Start::Full(
        if later_state {
            reason::BEFORE_STATE
        } else {
            reason::NO_STATE
        }
        .into(),
    ))
}

/// Which lines a run starting from `base` reads, given the input's files now: the slice
/// the state lacks, or (a file it lists changed or is gone) why the run is full.
pub fn lines_since(base: &Manifest, files: &[InputFile]) -> std::result::Result<Since, String> {
    let Some(state) = &base.state else {
        return Err(reason::NO_STATE.into());
    };
    for kept in &state.watermark.files {
        match files.iter().find(|f| f.path == kept.path) {
            Some(now) if now == kept => {}
            _ => return Err(reason::input_changed(&kept.path)),
        }
    }
    let known: BTreeSet<String> = state
        .watermark
        .files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    let new = files.iter().filter(|f| !known.contains(&f.path)).count();
    info!(
        state_as_of = %base.as_of,
        new_files = new,
        "incremental run: reading the new files and the lines after the state's as_of"
    );
    Ok(Since {
        through: state.watermark.through,
        known,
        latest: state.watermark.latest_order_date,
        latest_visible: state.watermark.latest_visible,
    })
}

/// The manifest's `run` entry.
pub fn run_info(start: &Start) -> RunInfo {
    match start {
        Start::From(m) => RunInfo {
            mode: RunMode::Incremental,
            full_reason: None,
            state_from: Some(m.as_of),
        },
        Start::Full(why) => RunInfo {
            mode: RunMode::Full,
            full_reason: Some(why.clone()),
            state_from: None,
        },
    }
}

/// [`Lines`] for a start, given the input's files: an incremental start whose files
/// changed becomes full (the start is updated with the reason).
pub fn choose_lines(start: &mut Start, files: &[InputFile]) -> Lines {
    let Start::From(base) = start else {
        return Lines::All;
    };
    match lines_since(base, files) {
        Ok(since) => Lines::Since(since),
        Err(why) => {
            *start = Start::Full(why);
            Lines::All
        }
    }
}
