//! Failpoints: named moments of a run where tests stop the process deterministically.
//!
//! `SEGFLOW_FAILPOINTS="name=action,..."` (a testing aid; unset in production, where each
//! point costs one lookup in an empty list). Each point fires once per process, the first
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
//! if the memory pool had refused an allocation. `segflow generate` has
//! `generate_file_written` (the first month's file is complete).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn points() -> &'static [(String, String)] {
    static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("SEGFLOW_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
            .collect()
    })
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
