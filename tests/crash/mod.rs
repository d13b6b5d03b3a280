//! Crash, signal and retention tests, shared by local disk and S3: a run is stopped at an
//! exact step with a failpoint (`SEGFLOW_FAILPOINTS`: SIGKILL itself, or pause until a file
//! is removed), never by sleeping and hoping; "nothing changed" compares whole trees.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::util::{
    assert_finishes_ok, demo_config, demo_config_with, error_line, manifest, output_within,
    run_at_env, run_command, run_ok, snapshot_files, wait_until, Deadline, Run, DEMO_AS_OF,
    RUN_DEADLINE,
};

/// An email audience of the demo's RFM Champions (its file `_audiences/as_of=D/champions.csv`).
pub const AUDIENCE: &str = "[[audiences]]\nname = \"champions\"\nsegmentation = \"rfm\"\nsegments = [\"Champions\"]\nchannel = \"email\"\n";

/// Every file of an output, by path relative to its root.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// `model/as_of=D/...` → D (a table file, rejected rows, the report, audience files); None for `_manifest`,
/// `_staging`, `_lock` and the kept state (whose files later snapshots may share).
fn table_date(rel: &str) -> Option<&str> {
    let mut parts = rel.split('/');
    let model = parts.next()?;
    if model.starts_with('_') && !["_report", "_rejected", "_audiences"].contains(&model) {
        return None;
    }
    parts.next()?.strip_prefix("as_of=")
}

/// The kept state files manifest `m` lists (its own and those it shares).
pub fn state_files(m: &serde_json::Value) -> Vec<String> {
    m["state"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// Every directory a manifest publishes (tables, rejected rows, report) with its files.
pub fn listed_dirs(m: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let entry = |t: &serde_json::Value| {
        (
            t["path"].as_str().unwrap().to_string(),
            t["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect(),
        )
    };
    let mut dirs: Vec<_> = m["tables"]
        .as_object()
        .unwrap()
        .values()
        .map(entry)
        .collect();
    for key in ["rejected", "report", "audiences"] {
        if !m[key].is_null() {
            dirs.push(entry(&m[key]));
        }
    }
    dirs
}

/// Whether manifest `m` lists `rel` (a file, or the `_SUCCESS` of one of its directories).
fn lists(m: &serde_json::Value, rel: &str) -> bool {
    listed_dirs(m)
        .iter()
        .any(|(path, files)| rel == format!("{path}/_SUCCESS") || files.iter().any(|f| f == rel))
}

pub fn manifests(tree: &Tree) -> BTreeMap<String, serde_json::Value> {
    tree.iter()
        .filter_map(|(k, v)| {
            let d = k.strip_prefix("_manifest/as_of=")?.strip_suffix(".json")?;
            Some((d.to_string(), serde_json::from_slice(v).unwrap()))
        })
        .collect()
}

/// Every file a manifest lists exists (readers that honour the manifest see whole tables).
pub fn assert_manifests_complete(tree: &Tree) {
    for (d, m) in manifests(tree) {
        for (dir, files) in listed_dirs(&m) {
            for f in files {
                assert!(tree.contains_key(&f), "{d} {dir}: {f} listed but missing");
            }
        }
        for f in state_files(&m) {
            assert!(tree.contains_key(&f), "{d} state: {f} listed but missing");
        }
    }
}

/// After a successful run: manifests complete, and the output holds only the manifests,
/// `_manifest/latest.json`, the catalog's three files, the erased ids and the files the manifests list (no
/// staging, no lock, no temp file).
pub fn assert_consistent(tree: &Tree) {
    assert_manifests_complete(tree);
    let ms = manifests(tree);
    for rel in tree.keys() {
        assert!(!rel.starts_with("_staging/"), "staging left: {rel}");
        assert!(!rel.starts_with("_lock"), "lock left: {rel}");
        let manifest = rel == "_manifest/latest.json"
            || rel
                .strip_prefix("_manifest/as_of=")
                .and_then(|d| d.strip_suffix(".json"))
                .is_some_and(|d| ms.contains_key(d));
        let catalog = [
            "_catalog/duckdb.sql",
            "_catalog/spark.sql",
            "_catalog/README.md",
        ]
        .contains(&rel.as_str());
        // The erased customers' salted ids (`segflow forget`).
        let catalog = catalog || rel == "_privacy/erased.parquet";
        let owned = table_date(rel).is_some_and(|d| ms.get(d).is_some_and(|m| lists(m, rel)));
        let state = rel.starts_with("_state/") && ms.values().any(|m| state_files(m).contains(rel));
        assert!(
            manifest || catalog || owned || state,
            "{rel} is listed by no manifest"
        );
    }
}

/// The files of one snapshot: its manifest and, with `all_files`, every file under its
/// table folders (what a glob reader sees); otherwise the files its manifest lists and
/// their `_SUCCESS` (what a reader that honours the manifest sees).
fn snapshot(tree: &Tree, as_of: &str, all_files: bool) -> Tree {
    let manifest = format!("_manifest/as_of={as_of}.json");
    let listed = manifests(tree).remove(as_of);
    let owned = |k: &str| listed.as_ref().is_some_and(|m| lists(m, k));
    let state = listed.as_ref().map(state_files).unwrap_or_default();
    tree.iter()
        .filter(|(k, _)| {
            k.as_str() == manifest
                || (table_date(k) == Some(as_of) && (all_files || owned(k.as_str())))
                || state.contains(k)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Each table folder of snapshot `as_of` holds either exactly its files of `before` or
/// none of them.
fn assert_no_mix(before: &Tree, after: &Tree, as_of: &str) {
    let m = &manifests(before)[as_of];
    for t in m["tables"].as_object().unwrap().values() {
        let dir = format!("{}/", t["path"].as_str().unwrap());
        let files = |tree: &Tree| -> Tree {
            tree.iter()
                .filter(|(k, _)| k.starts_with(&dir) && k.ends_with(".parquet"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (old, now) = (files(before), files(after));
        let kept = now.iter().filter(|(k, v)| old.get(*k) == Some(v)).count();
        assert!(
            now == old || kept == 0,
            "{dir} mixes old and new files: {:?}",
            now.keys().collect::<Vec<_>>()
        );
    }
}

/// Asserts two trees are equal, naming the paths that differ (not dumping bytes).
pub fn assert_same_tree(after: &Tree, before: &Tree, what: &str) {
    let differ: Vec<&String> = after
        .keys()
        .chain(before.keys())
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: these paths differ: {differ:?}");
}

fn run_with(config: &Path, env: &[(String, String)], as_of: &str, failpoints: &str) -> Run {
    let mut env = env.to_vec();
    if !failpoints.is_empty() {
        env.push(("SEGFLOW_FAILPOINTS".into(), failpoints.into()));
    }
    run_at_env(config, as_of, &env)
}

/// SIGKILL at each step of a run (staging, mid-commit, before and after the manifest), for
/// a new as_of and for replacing a published one: the published snapshots stay whole, and
/// the next run succeeds and leaves no unlisted file and no staging.
/// `all_files`: the table folders must be untouched too (local disk, where glob readers
/// never see a mix); on object storage the manifest-listed files must be.
pub fn kill_at_every_step(
    config: &Path,
    env: &[(String, String)],
    tree: &dyn Fn() -> Tree,
    all_files: bool,
) {
    const BASE: &str = "2026-06-30";
    let r = run_with(config, env, BASE, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let new_dates = ["2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31"];
    for (point, new) in ["staging", "mid_commit", "before_manifest", "after_manifest"]
        .into_iter()
        .zip(new_dates)
    {
        for as_of in [new, BASE] {
            let before = tree();
            let r = run_with(config, env, as_of, &format!("{point}=kill"));
            assert_eq!(r.code, -1, "not killed at {point}: {}", r.stderr);
            let after = tree();
            if point != "after_manifest" {
                // Not committed: every published snapshot is exactly as it was.
                for d in manifests(&before).keys() {
                    if all_files && d == as_of {
                        // Local disk swaps table folders: mid-commit each folder of the
                        // snapshot being replaced is wholly old or wholly new, never a mix.
                        assert_no_mix(&before, &after, d);
                        continue;
                    }
                    assert_same_tree(
                        &snapshot(&after, d, all_files),
                        &snapshot(&before, d, all_files),
                        &format!("snapshot {d} changed by a run killed at {point} ({as_of})"),
                    );
                }
                assert!(!manifests(&after).contains_key(new) || as_of != new);
            } else {
                assert!(manifests(&after).contains_key(as_of), "{point} {as_of}");
                assert_manifests_complete(&after);
            }
            let r = run_with(config, env, as_of, "");
            assert_eq!(r.code, 0, "recovery after {point}: {}", r.stderr);
            assert_consistent(&tree());
        }
    }
}

/// Starts a run that pauses at `point` until the returned file is removed.
pub fn paused_run(
    config: &Path,
    env: &[(String, String)],
    point: &str,
    dir: &Path,
) -> (Child, PathBuf) {
    let flag = dir.join(format!("paused-{point}"));
    let mut child = run_command(&["--log-format", "json"], config, DEMO_AS_OF)
        .env_remove("SEGFLOW_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "SEGFLOW_FAILPOINTS",
            format!("{point}=pause:{}", flag.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let what = format!(
        "segflow to pause at failpoint {point} (it creates {})",
        flag.display()
    );
    wait_until(
        &what,
        Duration::from_secs(180),
        Duration::from_millis(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("segflow exited ({status}) before it paused at {point}:\n{stderr}");
            }
            flag.exists().then_some(())
        },
    );
    (child, flag)
}

/// Holds a run mid-staging, sends SIGTERM: exit 2 saying nothing was published.
pub fn sigterm_while_paused(config: &Path, env: &[(String, String)], dir: &Path) {
    let (child, _flag) = paused_run(config, env, "staging", dir);
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = output_within(child, RUN_DEADLINE, "the paused run to stop on SIGTERM");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM") && stderr.contains("nothing was published"),
        "{stderr}"
    );
}

#[test]
fn local_sigkill_at_every_publish_step_keeps_the_snapshot_and_the_next_run_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    // With an audience: its files are published (and rolled back) with the snapshot.
    let config = demo_config(tmp.path(), AUDIENCE);
    let out = tmp.path().join("out");
    kill_at_every_step(&config, &[], &|| snapshot_files(&out), true);
}

/// A run killed inside the create-only put of `_lock` (its staged file written, not yet
/// linked into place) changes nothing but that staged file; the next run removes it.
#[test]
fn local_sigkill_inside_the_lock_put_leaves_a_staged_file_the_next_run_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    run_ok(&config, &["--as-of", "2026-06-30"]);
    let before = snapshot_files(&out);
    let r = run_with(&config, &[], "2026-07-31", "lock_staged=kill");
    assert_eq!(r.code, -1, "not killed in the lock put: {}", r.stderr);
    let mut after = snapshot_files(&out);
    assert!(
        after.remove("_lock#1").is_some(),
        "no staged lock file: {:?}",
        after.keys()
    );
    assert_same_tree(
        &after,
        &before,
        "a run killed in the lock put changed the output",
    );
    let r = run_with(&config, &[], "2026-07-31", "");
    assert_eq!(r.code, 0, "recovery after lock_staged: {}", r.stderr);
    assert_consistent(&snapshot_files(&out));
}

#[test]
fn local_sigterm_mid_run_exits_2_releases_the_lock_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    run_ok(&config, &["--as-of", "2026-06-30"]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);
    sigterm_while_paused(&config, &[], tmp.path());
    assert_same_tree(
        &snapshot_files(&out),
        &before,
        "a stopped run changed the output",
    );
}

#[test]
fn keep_snapshots_deletes_the_oldest_whole_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(
        tmp.path(),
        "uri = \"out\"",
        "uri = \"out\"\nkeep_snapshots = 2",
    );
    let out = tmp.path().join("out");
    for d in ["2026-08-31", "2026-09-30", "2026-10-31"] {
        run_ok(&config, &["--as-of", d]);
    }
    let tree = snapshot_files(&out);
    let dates: Vec<String> = manifests(&tree).keys().cloned().collect();
    assert_eq!(dates, ["2026-09-30", "2026-10-31"]);
    assert!(
        tree.keys().all(|k| table_date(k) != Some("2026-08-31")),
        "files of the deleted snapshot remain"
    );
    // Its state files remain only where a kept state shares them.
    let kept: Vec<String> = manifests(&tree).values().flat_map(state_files).collect();
    for k in tree.keys().filter(|k| k.starts_with("_state/")) {
        assert!(kept.contains(k), "{k} is kept by no snapshot's state");
    }
    assert!(!out.join("rfm/as_of=2026-08-31").exists());
    assert!(!out.join("_report/as_of=2026-08-31").exists());
    assert!(out.join("_report/as_of=2026-10-31/index.html").exists());
    assert_consistent(&tree);
    // The catalog follows retention: its history is the kept snapshots, every table named.
    let duckdb = String::from_utf8(tree["_catalog/duckdb.sql"].clone()).unwrap();
    let spark = String::from_utf8(tree["_catalog/spark.sql"].clone()).unwrap();
    for text in [&duckdb, &spark] {
        assert!(
            !text.contains("2026-08-31"),
            "a deleted snapshot in:\n{text}"
        );
        assert!(text.contains("as_of=2026-09-30") && text.contains("as_of=2026-10-31"));
    }
    let m = manifest(&out, "2026-10-31");
    for table in m["tables"].as_object().unwrap().keys() {
        assert!(duckdb.contains(&format!("CREATE OR REPLACE VIEW \"{table}\" AS")));
        assert!(duckdb.contains(&format!("CREATE OR REPLACE VIEW \"{table}_history\" AS")));
        assert!(spark.contains(&format!("CREATE TABLE `{table}_history`")));
        assert!(spark.contains(&format!("CREATE OR REPLACE VIEW `{table}` AS")));
    }
    // Locations are absolute.
    let rfm = out.join("rfm/as_of=2026-10-31").display().to_string();
    assert!(
        duckdb.contains(&rfm) && spark.contains(&rfm),
        "{rfm} not named"
    );
}

#[test]
fn previous_model_has_the_model_schema_with_and_without_a_previous_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // lifecycle is partitioned by stage: the column that comes back from a path.
    std::fs::write(
        models.join("prev_lifecycle.sql"),
        "select * from previous.lifecycle",
    )
    .unwrap();
    let config = demo_config(tmp.path(), "[models]\npaths = [\"models\"]\n");
    let out = tmp.path().join("out");
    for (d, rows) in [("2026-09-30", 0), ("2026-10-31", 1)] {
        run_ok(&config, &["--as-of", d]);
        let m = manifest(&out, d);
        assert_eq!(
            m["tables"]["prev_lifecycle"]["columns"], m["tables"]["lifecycle"]["columns"],
            "as_of {d}"
        );
        let n = m["tables"]["prev_lifecycle"]["rows"].as_u64().unwrap();
        assert_eq!(n > 0, rows > 0, "as_of {d}: {n} rows");
    }
    // The rows of previous.lifecycle are the rows published for 2026-09-30.
    assert_eq!(
        manifest(&out, "2026-10-31")["tables"]["prev_lifecycle"]["rows"],
        manifest(&out, "2026-09-30")["tables"]["lifecycle"]["rows"]
    );
}

/// A run held mid-staging past `lock_timeout` keeps its lock fresh by heartbeats, so a
/// second run judges it alive (exit 2 naming it) instead of taking it over.
pub fn heartbeat_keeps_a_long_run_locked(
    config: &Path,
    env: &[(String, String)],
    dir: &Path,
    lock: &str,
    read_lock: &dyn Fn() -> serde_json::Value,
) {
    let (child, flag) = paused_run(config, env, "staging", dir);
    let beat = |l: &serde_json::Value| l["heartbeat_at"].as_str().unwrap().to_string();
    let first = read_lock();
    // Wait for two more heartbeats: the lock is older than lock_timeout (2 s) by then only
    // if nobody refreshed it.
    let mut seen = vec![beat(&first)];
    let deadline = Deadline::after(Duration::from_secs(60));
    while seen.len() < 3 {
        let now = beat(&read_lock());
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        deadline.check(|| format!("two more heartbeats in the lock {lock}; seen {seen:?}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = run_at_env(config, DEMO_AS_OF, env);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        error_line(&second).contains(&format!("pid {}", child.id())),
        "{}",
        error_line(&second)
    );
    std::fs::remove_file(&flag).unwrap();
    assert_finishes_ok(child, "the resumed run");
}

#[test]
fn local_heartbeat_keeps_a_long_run_from_being_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(
        tmp.path(),
        "uri = \"out\"",
        "uri = \"out\"\nlock_timeout = \"2s\"",
    );
    let lock = tmp.path().join("out/_lock");
    let what = format!("a whole lock file at {}", lock.display());
    heartbeat_keeps_a_long_run_locked(&config, &[], tmp.path(), &what, &|| {
        // The lock is replaced by rename: read until a whole file is seen.
        wait_until(
            &what,
            Duration::from_secs(60),
            Duration::from_millis(1),
            || serde_json::from_slice(&std::fs::read(&lock).ok()?).ok(),
        )
    });
}
