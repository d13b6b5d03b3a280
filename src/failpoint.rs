//! Failpoints: named moments of a run where tests stop the process deterministically.
//!
//! `SEGFLOW_FAILPOINTS="name=action,..."`, a testing aid read only by binaries built with
//! the cargo feature `failpoints` (the tests enable it); any other binary ignores the
//! variable and logs one warning naming it ([`warn_if_ignored`]), so that a stray variable
//! in a production shell can neither kill a commit nor pause a run. Each point fires once per process, the first
//! time the run passes it. Actions:
//! - `kill`: the process sends itself SIGKILL at that moment (a crash, no clean-up);
//! - `pause:PATH`: creates PATH, then waits until PATH is removed (tests start a second run
//!   or send a signal while the first one is held exactly there);
//! - `error`: the code at that point fails as it says (points checked with [`fails`]).
//!
//! Points, in run order: `lock_staged` (local disk: the lock's staged file `_lock#<n>` is
//! written, not yet linked into place), `after_lock`, `staging` (the first model staged), `before_commit`,
//! `mid_commit` (one table copied or swapped in), `before_manifest`, `before_report`
//! (object storage: the manifest is put, the report not yet copied into place),
//! `after_manifest` (the snapshot is committed, its report in place; replaced files and
//! staging not yet removed). `out_of_memory` (with `error`): the first model computed fails as
//! if the memory pool had refused an allocation. `segflow forget` has `erased_listed` (the erased ids are written, no snapshot is
//! rewritten yet), `delta_erased` (Delta output: the erased rows are deleted from every
//! table, no manifest names the new versions yet), then the commit's points for each snapshot it rewrites. `segflow generate` has
//! `generate_file_written` (the first month's file is complete). `segflow executor` has
//! `executor_task` (with `kill`: the executor is handed its first task of a model's query).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The variable that arms failpoints.
pub const VARIABLE: &str = "SEGFLOW_FAILPOINTS";

/// Whether this binary was built with failpoints.
const ENABLED: bool = cfg!(feature = "failpoints");

/// The armed points of `spec` (the variable's value), none when failpoints are not built in.
fn armed(enabled: bool, spec: Option<&str>) -> Vec<(String, String)> {
    match (enabled, spec) {
        (true, Some(spec)) => spec
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The warning for a variable this binary ignores, if it is set.
fn ignored(enabled: bool, spec: Option<&str>) -> Option<String> {
    (!enabled && spec.is_some()).then(|| {
        format!("{VARIABLE} is set but ignored: this binary was built without the cargo feature `failpoints`")
    })
}

fn points() -> &'static [(String, String)] {
    static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    POINTS.get_or_init(|| armed(ENABLED, std::env::var(VARIABLE).ok().as_deref()))
}

/// Logs one warning when `SEGFLOW_FAILPOINTS` is set in a binary built without failpoints.
pub fn warn_if_ignored() {
    if let Some(message) = ignored(ENABLED, std::env::var(VARIABLE).ok().as_deref()) {
        tracing::warn!(variable = VARIABLE, "{message}");
    }
}

/// Whether `point` fires now: the first time it is passed, once per process.
fn fire(point: &str) -> bool {
    static FIRED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    match FIRED.lock() {
        Ok(mut fired) if !fired.iter().any(|f| f == point) => {
            fired.push(point.to_string());
            true
        }
        _ => false,
    }
}

/// Whether the failpoint `name`, armed with `error`, fires now (once per process).
pub fn fails(name: &str) -> bool {
    points()
        .iter()
        .any(|(point, action)| point == name && action == "error")
        && fire(name)
}

/// [`hit`] where the code cannot wait (inside the engine's synchronous calls): `kill` only.
pub fn hit_now(name: &str) {
    let killed = points()
        .iter()
        .any(|(point, action)| point == name && action == "kill");
    if killed && fire(name) {
        tracing::warn!(failpoint = name, "failpoint: killing the process");
        // SAFETY: raising a signal in our own process has no memory-safety effects.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// Passes the failpoint `name`: does nothing unless a test armed it (and only once).
pub async fn hit(name: &str) {
    for (point, action) in points() {
        if point != name {
            continue;
        }
        if !fire(point) {
            return;
        }
        if action == "kill" {
            tracing::warn!(failpoint = name, "failpoint: killing the process");
            // SAFETY: raising a signal in our own process has no memory-safety effects.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        } else if let Some(path) = action.strip_prefix("pause:") {
            tracing::warn!(
                failpoint = name,
                "failpoint: paused until {path} is removed"
            );
            if std::fs::write(path, std::process::id().to_string()).is_ok() {
                while std::path::Path::new(path).exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_the_feature_arms_nothing_and_names_the_variable() {
        let spec = Some("after_lock=kill,mid_commit=pause:/tmp/p");
        assert!(armed(false, spec).is_empty());
        let warning = ignored(false, spec).expect("a warning");
        assert!(warning.contains("SEGFLOW_FAILPOINTS") && warning.contains("failpoints"));
        assert_eq!(ignored(false, None), None);
    }

    #[test]
    fn a_binary_with_the_feature_arms_the_listed_points_silently() {
        let spec = Some("after_lock=kill, mid_commit = pause:/tmp/p");
        assert_eq!(
            armed(true, spec),
            vec![
                ("after_lock".to_string(), "kill".to_string()),
                ("mid_commit".to_string(), "pause:/tmp/p".to_string())
            ]
        );
        assert_eq!(ignored(true, spec), None);
    }
}
