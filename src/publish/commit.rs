//! The commit: staged tables into place, then the manifest (the commit point), then
//! clean-up and retention.
//!
//! - Local disk: each table directory is swapped by rename (old aside into this run's
//!   staging `_old/`, new in), so a glob reader sees the old or the new table, never a mix;
//!   a journal (`commit.json`) lets the next run roll back a run killed mid-commit; the
//!   manifest is replaced by temp + rename. A failed commit undoes every swap.
//! - Object storage (no rename): staged files are copied into `<model>/as_of=D/` under
//!   run-unique names (`<run_id>-<file>`), `_SUCCESS` is put, the manifest is put (one put
//!   is atomic: the commit point), then the report is copied over `_report/as_of=D/
//!   index.html` and the files of the snapshot it replaced are deleted. A failed commit
//!   deletes what it copied; a killed one is swept by the next run, which also puts the
//!   report of a run killed after its manifest in place.
//! - Kept state (`_state/`), on every store: files are placed one by one under names of
//!   the run that wrote them, before the manifest; after it, every state file no kept
//!   manifest lists is deleted (later states may share an older snapshot's files, see
//!   [`super::state`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{info, warn};

use super::delta::DeltaInputs;
use super::{manifest_rel, staging_rel, Manifest, Output, OutputLock};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::publish::layout::{report_file_rel, AUDIENCES, REPORT, STATE};
use crate::storage::retrying;

impl Output {
    /// The published path (relative to the root) of a staged file of table `name`.
    pub fn published_file(&self, run_id: &str, name: &str, as_of: NaiveDate, file: &str) -> String {
        let table = format!("{name}/as_of={as_of}");
        if self.loc.local.is_some() {
            // Swapped in by directory rename: names stay.
            return format!("{table}/{file}");
        }
        match file.rsplit_once('/') {
            Some((dir, base)) => format!("{table}/{dir}/{run_id}-{base}"),
            None => format!("{table}/{run_id}-{file}"),
        }
    }

    /// Moves the staged tables into place and writes the manifest: the commit point.
    /// `staged` maps each folder to publish to its staged files (relative to its staging
    /// directory); `delta` (Delta output) holds the tables written as Delta commits first,
    /// whose versions and files the manifest then records.
    pub async fn commit(
        &self,
        lock: &OutputLock,
        manifest: &mut Manifest,
        staged: &BTreeMap<String, Vec<String>>,
        delta: Option<&DeltaInputs<'_>>,
    ) -> Result<()> {
        let as_of = manifest.as_of;
        lock.heartbeat().await?;
        failpoint::hit("before_commit").await;
        let replaced = self.manifest(as_of).await?;
        let written = match delta {
            Some(inputs) => self.commit_delta(manifest, inputs).await?,
            None => Vec::new(),
        };
        let manifest: &Manifest = manifest;
        let run_id = manifest.run_id.as_str();
        let placed = if self.loc.local.is_some() {
            self.commit_local(lock, manifest, staged).await
        } else {
            self.commit_copy(lock, manifest, staged, replaced.as_ref())
                .await
        };
        if let Err(e) = placed {
            self.undo_delta(&written).await;
            return Err(e);
        }
        let mut keep_staging = false;
        if self.loc.local.is_none() && staged.contains_key(REPORT) {
            failpoint::hit("before_report").await;
            // The report has one fixed name per snapshot, so it is replaced only once the
            // snapshot is committed; a failure here leaves the staging for the next run's
            // recovery, which puts it in place (see `recover`).
            if let Err(e) = self.place_staged(run_id, &[report_file_rel(as_of)]).await {
                warn!(error = %e, "cannot put the report in place yet; the next run will");
                keep_staging = true;
            }
        }
        if let (None, Some(a)) = (&self.loc.local, &manifest.audiences) {
            if staged.contains_key(AUDIENCES) {
                if let Err(e) = self.place_staged(run_id, &a.files).await {
                    warn!(error = %e, "cannot put the audience files in place yet; the next run will");
                    keep_staging = true;
                }
            }
        }
        failpoint::hit("after_manifest").await;
        self.update_latest(as_of, run_id).await;
        if let Some(root) = &self.loc.local {
            // Rejected rows and audience files of the snapshot this one replaced, when this
            // run has none.
            let gone = [
                (
                    crate::publish::layout::REJECTED,
                    manifest.rejected.is_none(),
                ),
                (AUDIENCES, manifest.audiences.is_none()),
            ];
            for (folder, _) in gone.iter().filter(|(_, none)| *none) {
                let dir = root.join(format!("{folder}/as_of={as_of}"));
                if dir.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        warn!(dir = %dir.display(), error = %e, "cannot delete replaced files");
                    }
                }
            }
        }
        if let Some(old) = replaced.filter(|_| self.loc.local.is_none()) {
            // Files of the replaced snapshot that the new manifest does not list.
            for (_, files) in old.dirs() {
                for f in files.iter().filter(|f| !manifest.owns(f)) {
                    // Left over on failure: the next run's recovery deletes it.
                    if let Err(e) = self.delete_file(f).await {
                        warn!(file = %f, error = %e, "cannot delete a replaced file");
                    }
                }
            }
        }
        // State files of the replaced snapshot that no kept state shares.
        if let Err(e) = self.sweep_state().await {
            warn!(error = %e, "cannot delete replaced state files; the next run will");
        }
        if !keep_staging {
            self.remove_staging(run_id).await;
        }
        Ok(())
    }

    /// Copies staged files of `run_id` (`files`: their published paths, the same below the
    /// run's staging) into place (object storage).
    pub(crate) async fn place_staged(&self, run_id: &str, files: &[String]) -> Result<()> {
        for to in files {
            let from = format!("{}/{to}", staging_rel(run_id));
            let (src, dst) = (self.loc.path(&from), self.loc.path(to));
            retrying("copy", || self.loc.store.copy(&src, &dst))
                .await
                .map_err(|e| self.err(format!("copy {to} into place"), e))?;
        }
        Ok(())
    }

    /// `_manifest/latest.json` names the newest snapshot (a backfill never moves it back).
    async fn update_latest(&self, as_of: NaiveDate, run_id: &str) {
        let latest: Option<serde_json::Value> =
            self.get_json("_manifest/latest.json").await.unwrap_or(None);
        let latest_date = latest
            .as_ref()
            .and_then(|v| v.get("as_of"))
            .and_then(|v| v.as_str())
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
        if latest_date.is_none_or(|d| d <= as_of) {
            let body = serde_json::json!({
                "as_of": as_of.to_string(),
                "manifest": manifest_rel(as_of),
                "run_id": run_id,
            });
            // The snapshot is published; a stale pointer is worth a warning, not a failure.
            if let Err(e) = self.put_json("_manifest/latest.json", &body, run_id).await {
                warn!(error = %e, "cannot update _manifest/latest.json");
            }
        }
    }

    async fn commit_copy(
        &self,
        lock: &OutputLock,
        manifest: &Manifest,
        staged: &BTreeMap<String, Vec<String>>,
        replaced: Option<&Manifest>,
    ) -> Result<()> {
        let run_id = manifest.run_id.as_str();
        let as_of = manifest.as_of;
        let mut created: Vec<String> = Vec::new();
        let result = async {
            // The report and the audiences' files have fixed names: put in place once the
            // manifest is (see `commit`).
            let copied = staged
                .iter()
                .filter(|(n, _)| *n != REPORT && *n != AUDIENCES);
            for (name, files) in copied {
                let from_dir = format!("{}/{name}/as_of={as_of}", staging_rel(run_id));
                for f in files {
                    let to = match name.as_str() {
                        STATE => self.state_file(run_id, as_of, f),
                        _ => self.published_file(run_id, name, as_of, f),
                    };
                    let (src, dst) = (
                        self.loc.path(&format!("{from_dir}/{f}")),
                        self.loc.path(&to),
                    );
                    retrying("copy", || self.loc.store.copy(&src, &dst))
                        .await
                        .map_err(|e| self.err(format!("copy {name} into place ({to})"), e))?;
                    created.push(to);
                }
                let first = !replaced.is_some_and(|m| m.tables.contains_key(name));
                if first && name != STATE {
                    let success = format!("{name}/as_of={as_of}/_SUCCESS");
                    let marker = self.loc.path(&success);
                    retrying("put", || self.loc.store.put(&marker, PutPayload::new()))
                        .await
                        .map_err(|e| self.err(format!("write {success}"), e))?;
                    created.push(success);
                }
                failpoint::hit("mid_commit").await;
            }
            failpoint::hit("before_manifest").await;
            lock.heartbeat().await?;
            self.put_json(&manifest_rel(as_of), manifest, run_id).await
        }
        .await;
        if let Err(e) = result {
            for f in &created {
                if let Err(e) = self.delete_file(f).await {
                    warn!(file = %f, error = %e, "roll back: cannot delete a copied file");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    async fn commit_local(
        &self,
        lock: &OutputLock,
        manifest: &Manifest,
        staged: &BTreeMap<String, Vec<String>>,
    ) -> Result<()> {
        let root = self.local_root()?;
        let run_id = manifest.run_id.as_str();
        let as_of = manifest.as_of;
        let staging = root.join(staging_rel(run_id));
        // Journal for a run that takes over after this one is killed mid-commit.
        let journal = staging.join("commit.json");
        std::fs::write(
            &journal,
            serde_json::json!({ "as_of": as_of.to_string() }).to_string(),
        )
        .map_err(|e| Error::io("write commit journal", &journal, e))?;
        let names: Vec<String> = staged.keys().filter(|n| *n != STATE).cloned().collect();
        let mut swapped: Vec<String> = Vec::new();
        let mut placed: Vec<String> = Vec::new();
        let mut result = self.swap_tables(run_id, as_of, &names, &mut swapped).await;
        if let (Ok(()), Some(files)) = (&result, staged.get(STATE)) {
            result = self.place_state(run_id, as_of, files, &mut placed).await;
        }
        if result.is_ok() {
            failpoint::hit("before_manifest").await;
            result = lock.heartbeat().await;
        }
        if result.is_ok() {
            result = self.put_json(&manifest_rel(as_of), manifest, run_id).await;
        }
        if let Err(e) = result {
            self.roll_back(run_id, as_of, &swapped);
            for f in &placed {
                if let Err(e) = self.delete_file(f).await {
                    warn!(file = %f, error = %e, "roll back: cannot delete a placed state file");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Moves the staged state files (relative to the state's staging folder) to their
    /// run-named paths, one by one: no snapshot lists them before the manifest, and an
    /// older snapshot's state files stay where later states may share them.
    async fn place_state(
        &self,
        run_id: &str,
        as_of: NaiveDate,
        files: &[String],
        placed: &mut Vec<String>,
    ) -> Result<()> {
        let root = self.local_root()?;
        let from_dir = root.join(format!("{}/{STATE}/as_of={as_of}", staging_rel(run_id)));
        for f in files {
            let to = self.state_file(run_id, as_of, f);
            let target = root.join(&to);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create state directory", parent, e))?;
            }
            std::fs::rename(from_dir.join(f), &target)
                .map_err(|e| Error::io("move state file into place", &target, e))?;
            placed.push(to);
            failpoint::hit("mid_commit").await;
        }
        Ok(())
    }

    pub(crate) fn local_root(&self) -> Result<&std::path::Path> {
        self.loc
            .local
            .as_deref()
            .ok_or_else(|| self.err("local commit", "not a local output"))
    }

    /// Swaps each staged table in: old aside (into this run's `_old/`), new in.
    async fn swap_tables(
        &self,
        run_id: &str,
        as_of: NaiveDate,
        staged: &[String],
        swapped: &mut Vec<String>,
    ) -> Result<()> {
        let root = self.local_root()?;
        let staging = root.join(staging_rel(run_id));
        let aside_root = staging.join("_old");
        std::fs::create_dir_all(&aside_root)
            .map_err(|e| Error::io("create staging", &aside_root, e))?;
        for name in staged {
            let rel = format!("{name}/as_of={as_of}");
            let target = root.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create table directory", parent, e))?;
            }
            if target.exists() {
                std::fs::rename(&target, aside_root.join(name))
                    .map_err(|e| Error::io("move old table aside", &target, e))?;
            }
            swapped.push(name.clone());
            std::fs::rename(staging.join(&rel), &target)
                .map_err(|e| Error::io("move table into place", &target, e))?;
            failpoint::hit("mid_commit").await;
        }
        Ok(())
    }

    /// Undoes swaps: tables set aside in `_old/` go back; tables that had no old version
    /// and were moved in by this run (`swapped`) are removed.
    pub(crate) fn roll_back(&self, run_id: &str, as_of: NaiveDate, swapped: &[String]) {
        let Ok(root) = self.local_root() else {
            return;
        };
        let aside_root = root.join(staging_rel(run_id)).join("_old");
        let mut names: Vec<String> = swapped.to_vec();
        if let Ok(entries) = std::fs::read_dir(&aside_root) {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        names.sort();
        names.dedup();
        for name in names {
            let target = root.join(format!("{name}/as_of={as_of}"));
            let aside = aside_root.join(&name);
            let has_old = aside.exists();
            if !has_old && !swapped.contains(&name) {
                continue;
            }
            if target.exists() {
                if let Err(e) = std::fs::remove_dir_all(&target) {
                    warn!(dir = %target.display(), error = %e, "roll back: cannot remove new table");
                    continue;
                }
            }
            if has_old {
                if let Err(e) = std::fs::rename(&aside, &target) {
                    warn!(dir = %target.display(), error = %e, "roll back: cannot restore old table");
                }
            }
        }
    }

    /// Deletes whole snapshots beyond the newest `keep`, oldest first: the manifest first
    /// (so a half-deleted snapshot is never listed), then its files (Delta tables: their
    /// partition, then a vacuum of files older than `vacuum_after`).
    pub async fn apply_retention(&self, keep: usize) -> Result<()> {
        let dates = self.snapshots().await?;
        let excess = dates.len().saturating_sub(keep);
        for as_of in dates.into_iter().take(excess) {
            let Some(old) = self.manifest(as_of).await? else {
                continue;
            };
            self.delete_file(&manifest_rel(as_of)).await?;
            let dirs: BTreeSet<&str> = old.dirs().map(|(path, _)| path).collect();
            for dir in dirs {
                self.delete_prefix(dir).await?;
            }
            for (name, _) in old.tables.iter().filter(|(_, t)| t.delta_version.is_some()) {
                self.drop_delta_partition(name, as_of).await?;
            }
            info!(%as_of, "old snapshot deleted (keep_snapshots)");
        }
        if excess > 0 {
            // Its state files, unless a kept state shares them.
            self.sweep_state().await?;
        }
        Ok(())
    }
}
