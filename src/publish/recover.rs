//! Crash recovery, run by every run right after it takes the lock: whatever a killed run
//! left behind is rolled back or removed, so that afterwards no table file exists that no
//! manifest lists, and no staging.
//!
//! 1. Each `_staging/<run_id>/` of another run: on local disk, a run killed mid-commit
//!    (journal present, its manifest not written) has its swaps undone; on object storage,
//!    a run killed after its manifest has its report and audience files put in place; then
//!    it is removed.
//! 2. Leftover temp files are removed: manifest and catalog temp files (`_manifest/.tmp-*`,
//!    `_catalog/.tmp-*`), lock temp files of dead runs (`_lock.*`) and the staged files of
//!    puts a kill interrupted on local disk (`_lock#<n>`, `_manifest/<file>#<n>`,
//!    `_catalog/<file>#<n>`).
//! 3. Delta tables (see [`super::delta`]): a write no manifest lists is restored away,
//!    a table no manifest lists removed; their files are left to their logs.
//! 4. Every file under `<model>/as_of=D/` (and `_rejected/`, `_report/`, `_audiences/`) that the manifest
//!    of `D` does not list (and is not the `_SUCCESS` of one of its tables) is deleted:
//!    copies of a run killed before its manifest, files of a replaced snapshot whose
//!    deletion was cut short, local temp files.
//! 5. Every file under `_state/` that no manifest's state lists is deleted (state files may
//!    be shared by later snapshots, so not by one manifest: see [`super::state`]).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use object_store::ObjectStoreExt;
use tracing::warn;

use super::{staging_rel, Manifest, Output};
use crate::error::{Error, Result};
use crate::storage::retrying;

/// `model/as_of=D/...` → D.
fn snapshot_date(rel: &str) -> Option<NaiveDate> {
    let mut parts = rel.split('/');
    let model = parts.next()?;
    use crate::publish::layout::{AUDIENCES, REJECTED, REPORT};
    let published_dir = [REJECTED, REPORT, AUDIENCES].contains(&model);
    if model.is_empty() || (model.starts_with('_') && !published_dir) {
        return None;
    }
    let d = parts.next()?.strip_prefix("as_of=")?;
    parts.next()?;
    NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// The tables (top-level folders not starting with `_`) that hold a Delta log.
fn delta_tables(files: &[String]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter_map(|rel| {
            let (table, rest) = rel.split_once('/')?;
            let is_log = rest.starts_with("_delta_log/");
            (is_log && !table.starts_with('_')).then(|| table.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `rel` is the staged file of a write that a kill interrupted, outside the
/// snapshots' folders (which recovery sweeps by their manifests): object_store's
/// `LocalFileSystem` stages every put as `<name>#<n>` and renames it into place, and
/// segflow stages `_lock` the same way. Only the names segflow writes at the root and in
/// `_manifest/` are matched: `_lock#<n>` and `_manifest/<file>#<n>`.
fn interrupted_write(rel: &str) -> bool {
    let Some((name, n)) = rel.rsplit_once('#') else {
        return false;
    };
    let staged = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    staged
        && (name == "_lock"
            || ["_manifest/", "_catalog/", "_privacy/"].iter().any(|dir| {
                name.strip_prefix(dir)
                    .is_some_and(|f| !f.is_empty() && !f.contains('/'))
            }))
}

impl Output {
    /// Recovers after dead runs (see the module docs). `me` is this run's id.
    pub async fn recover(&self, me: &str) -> Result<()> {
        self.recover_staging(me).await?;
        let mut manifests: BTreeMap<NaiveDate, Option<Manifest>> = BTreeMap::new();
        let mut removed = 0usize;
        let files = self.all_files().await?;
        // Delta tables keep the files of older versions until vacuum: their log, not a
        // manifest, says which are live; a write no manifest lists is restored away.
        let delta_tables = delta_tables(&files);
        self.recover_delta(&delta_tables).await?;
        for rel in files {
            if rel
                .split_once('/')
                .is_some_and(|(table, _)| delta_tables.iter().any(|t| t == table))
            {
                continue;
            }
            let debris = rel.starts_with("_manifest/.tmp-")
                || rel.starts_with(&format!("{}/.tmp-", crate::publish::layout::CATALOG))
                || rel.starts_with(&format!("{}/.tmp-", crate::publish::layout::PRIVACY))
                || (rel.starts_with("_lock.") && !rel.ends_with(me))
                || interrupted_write(&rel);
            if debris {
                self.delete_file(&rel).await?;
                continue;
            }
            let Some(as_of) = snapshot_date(&rel) else {
                continue;
            };
            let manifest = match manifests.entry(as_of) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.manifest(as_of).await?)
                }
            };
            let owned = manifest.as_ref().is_some_and(|m| m.owns(&rel));
            if !owned {
                self.delete_file(&rel).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            warn!(
                files = removed,
                "removed table files no manifest lists (a killed run)"
            );
        }
        self.sweep_state().await?;
        if let Some(root) = &self.loc.local {
            remove_empty_dirs(root, true);
        }
        Ok(())
    }

    async fn recover_staging(&self, me: &str) -> Result<()> {
        let dead: Vec<String> = match &self.loc.local {
            Some(root) => match std::fs::read_dir(root.join("_staging")) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => vec![],
            },
            None => {
                let listed = self
                    .loc
                    .list("_staging")
                    .await
                    .map_err(|e| self.err("list _staging", e))?;
                let mut ids: Vec<String> = listed
                    .iter()
                    .filter_map(|m| self.loc.rel(&m.location))
                    .filter_map(|r| r.split('/').nth(1).map(str::to_string))
                    .collect();
                ids.dedup();
                ids
            }
        };
        for run in dead.into_iter().filter(|r| r != me) {
            if let Some(root) = &self.loc.local {
                let journal = root.join(staging_rel(&run)).join("commit.json");
                if let Ok(text) = std::fs::read_to_string(&journal) {
                    let as_of = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.get("as_of").and_then(|d| d.as_str()).map(str::to_string))
                        .and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
                    if let Some(as_of) = as_of {
                        let committed = self
                            .manifest(as_of)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|m| m.run_id == run);
                        if !committed {
                            warn!(%run, %as_of, "rolling back a run killed mid-commit");
                            self.roll_back(&run, as_of, &[]);
                        }
                    }
                }
            }
            if self.loc.local.is_none() {
                self.finish_report(&run).await?;
            }
            warn!(%run, "removing the staging of a dead run");
            self.delete_prefix(&staging_rel(&run)).await?;
        }
        Ok(())
    }

    /// Object storage: a run killed after its manifest and before its report and audience
    /// files were copied into place (or whose copy failed) left them in its staging; put
    /// each in place if that run's manifest is still the snapshot's and lists it.
    async fn finish_report(&self, run: &str) -> Result<()> {
        use crate::publish::layout::{AUDIENCES, REPORT};
        let staging = format!("{}/", staging_rel(run));
        for folder in [REPORT, AUDIENCES] {
            let prefix = format!("{staging}{folder}");
            let listed = self
                .loc
                .list(&prefix)
                .await
                .map_err(|e| self.err(format!("list {prefix}"), e))?;
            for rel in listed.iter().filter_map(|m| self.loc.rel(&m.location)) {
                let Some(published) = rel.strip_prefix(&staging) else {
                    continue;
                };
                let Some(as_of) = snapshot_date(published) else {
                    continue;
                };
                let committed = self
                    .manifest(as_of)
                    .await?
                    .is_some_and(|m| m.run_id == run && m.owns(published));
                if committed {
                    warn!(%run, %as_of, file = published,
                        "putting a file of a run killed after its commit in place");
                    self.place_staged(run, &[published.to_string()]).await?;
                }
            }
        }
        Ok(())
    }

    /// Every file below the root, relative to it. On local disk this walks the directory
    /// itself: `LocalFileSystem` hides the `<name>#<n>` files of interrupted writes.
    async fn all_files(&self) -> Result<Vec<String>> {
        if let Some(root) = &self.loc.local {
            let mut out = Vec::new();
            walk(root, root, &mut out)?;
            return Ok(out);
        }
        let listed = self
            .loc
            .list("")
            .await
            .map_err(|e| self.err("list the output", e))?;
        Ok(listed
            .iter()
            .filter_map(|m| self.loc.rel(&m.location))
            .collect())
    }

    /// Deletes one file; a missing file is fine.
    pub(crate) async fn delete_file(&self, rel: &str) -> Result<()> {
        if let Some(root) = &self.loc.local {
            let p = root.join(rel);
            return match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove", &p, e)),
            };
        }
        let path = self.loc.path(rel);
        match retrying("delete", || self.loc.store.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("delete {rel}"), e)),
        }
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let p = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            walk(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Removes empty directories below `dir` (never `dir` itself when `keep` is set), e.g. the
/// partition folders of deleted files.
pub(crate) fn remove_empty_dirs(dir: &std::path::Path, keep: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for entry in entries.flatten() {
        let p = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !(is_dir && remove_empty_dirs(&p, false)) {
            empty = false;
        }
    }
    if empty && !keep {
        return std::fs::remove_dir(dir).is_ok();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_table_files_belong_to_snapshots() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 21);
        assert_eq!(
            snapshot_date("rfm/as_of=2026-11-21/segment=Lost/x.parquet"),
            d
        );
        assert_eq!(snapshot_date("rfm/as_of=2026-11-21/_SUCCESS"), d);
        assert_eq!(
            snapshot_date("_staging/r/rfm/as_of=2026-11-21/x.parquet"),
            None
        );
        assert_eq!(snapshot_date("_manifest/as_of=2026-11-21.json"), None);
        assert_eq!(snapshot_date("_rejected/as_of=2026-11-21/x.parquet"), d);
        assert_eq!(snapshot_date("_report/as_of=2026-11-21/index.html"), d);
        // State files are swept by whether any manifest lists them, not by their folder.
        assert_eq!(
            snapshot_date("_state/as_of=2026-11-21/customer_days/r-part-0.parquet"),
            None
        );
        assert_eq!(snapshot_date("notes.txt"), None);
    }

    #[test]
    fn staged_files_of_interrupted_writes_are_recognised_by_name() {
        for staged in [
            "_lock#1",
            "_lock#12",
            "_manifest/latest.json#3",
            "_manifest/as_of=2026-11-21.json#1",
            "_catalog/duckdb.sql#2",
            "_privacy/erased.parquet#4",
        ] {
            assert!(interrupted_write(staged), "{staged}");
        }
        for other in [
            "_lock",
            "_lock#",
            "_lock#a1",
            "notes#1",
            "_manifest/latest.json",
            "_catalog/#1",
            "rfm/as_of=2026-11-21/x#1",
        ] {
            assert!(!interrupted_write(other), "{other}");
        }
    }
}
