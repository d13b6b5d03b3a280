//! The manifest entries of a snapshot before its commit: where each staged table will be
//! published, from plain facts about what the run staged (publish knows its own layout;
//! the run only says what it computed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::NaiveDate;

use crate::error::Result;
use crate::publish::layout::REJECTED;
use crate::publish::manifest::{ModelTiming, RejectedEntry, TableEntry};
use crate::publish::stage::StagedTable;
use crate::publish::Output;

/// One model a run computed and staged.
pub struct StagedModel<'a> {
    pub name: &'a str,
    pub rows: u64,
    pub duration: Duration,
    /// Whether this run publishes it (a published model that `--select` chose).
    pub published: bool,
    pub partition_by: &'a [String],
    pub staged: &'a StagedTable,
}

/// What a snapshot's manifest says of the tables a run staged, and the staged files of
/// each directory the commit moves into place.
pub struct Draft {
    /// The snapshot's tables: this run's, plus (for a `--select` run) the other tables of
    /// the snapshot it replaces.
    pub tables: BTreeMap<String, TableEntry>,
    /// The tables this run staged (the report reads them from staging).
    pub staged_names: BTreeSet<String>,
    pub models: BTreeMap<String, ModelTiming>,
    pub rejected: Option<RejectedEntry>,
    /// Staged files of each directory to publish, relative to its staging directory.
    pub staged: BTreeMap<String, Vec<String>>,
}

impl Output {
    /// The manifest entries of what `run_id` staged for `as_of`: the published models, the
    /// timing of every model, the rejected rows. With `keep_other_tables` (a `--select` run)
    /// the tables of the snapshot being replaced that this run does not stage are kept.
    pub async fn draft(
        &self,
        run_id: &str,
        as_of: NaiveDate,
        models: &[StagedModel<'_>],
        rejected: Option<&StagedTable>,
        keep_other_tables: bool,
    ) -> Result<Draft> {
        let mut tables = BTreeMap::new();
        let mut staged = BTreeMap::new();
        for m in models.iter().filter(|m| m.published) {
            let entry = TableEntry {
                path: format!("{}/as_of={as_of}", m.name),
                rows: m.rows,
                files: self.published_files(run_id, m.name, as_of, m.staged),
                bytes: m.staged.bytes,
                partition_by: m.partition_by.to_vec(),
                duration_ms: m.duration.as_millis() as u64,
                columns: m.staged.columns.clone(),
                delta_version: None,
            };
            tables.insert(m.name.to_string(), entry);
            staged.insert(m.name.to_string(), m.staged.files.clone());
        }
        let timings = models
            .iter()
            .map(|m| {
                let timing = ModelTiming {
                    rows: m.rows,
                    duration_ms: m.duration.as_millis() as u64,
                    published: m.published,
                };
                (m.name.to_string(), timing)
            })
            .collect();
        let rejected = rejected.map(|r| {
            staged.insert(REJECTED.to_string(), r.files.clone());
            RejectedEntry {
                path: format!("{REJECTED}/as_of={as_of}"),
                rows: r.rows,
                files: self.published_files(run_id, REJECTED, as_of, r),
                bytes: r.bytes,
            }
        });
        let staged_names: BTreeSet<String> = tables.keys().cloned().collect();
        if keep_other_tables {
            if let Some(existing) = self.manifest(as_of).await? {
                let mut all = existing.tables;
                all.extend(tables);
                tables = all;
            }
        }
        Ok(Draft {
            tables,
            staged_names,
            models: timings,
            rejected,
            staged,
        })
    }

    /// Where each staged file of `table` is published.
    fn published_files(
        &self,
        run_id: &str,
        name: &str,
        as_of: NaiveDate,
        table: &StagedTable,
    ) -> Vec<String> {
        table
            .files
            .iter()
            .map(|f| self.published_file(run_id, name, as_of, f))
            .collect()
    }
}
