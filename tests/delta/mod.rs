//! Delta Lake output: the tables' logs read independently of delta-rs (the JSON commits of
//! `_delta_log/` replayed here), crash recovery across table commits, retention with
//! vacuum, schema changes. Readers in Python (deltalake, polars, DuckDB) are
//! `ci/delta_check.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::crash::{assert_same_tree, manifests, Tree};
use crate::util::{demo_config_with, error_line, run_at_env, snapshot_files, Run};

/// The demo config writing Delta tables to `out`, plus `extra` lines in `[output]`.
pub fn delta_config(dir: &Path, extra: &str) -> PathBuf {
    demo_config_with(
        dir,
        "uri = \"out\"",
        &format!("uri = \"out\"\nformat = \"delta\"\n{extra}"),
    )
}

/// `%XX` escapes decoded once (paths in a Delta log are URL-encoded).
fn decoded(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// One table's log: the actions of each commit, by version.
pub struct Log(BTreeMap<u64, Vec<serde_json::Value>>);

impl Log {
    pub fn read(tree: &Tree, table: &str) -> Log {
        let prefix = format!("{table}/_delta_log/");
        let mut commits = BTreeMap::new();
        for (k, v) in tree {
            let Some(name) = k.strip_prefix(&prefix) else {
                continue;
            };
            let Some(version) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(version) = version.parse::<u64>() else {
                continue;
            };
            let actions = String::from_utf8(v.clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            commits.insert(version, actions);
        }
        Log(commits)
    }

    pub fn latest(&self) -> Option<u64> {
        self.0.keys().next_back().copied()
    }

    /// The operation of each commit (`WRITE`, `RESTORE`, `DELETE`, ...), by version.
    pub fn operations(&self) -> Vec<String> {
        self.0
            .values()
            .map(|actions| {
                actions
                    .iter()
                    .find_map(|a| a["commitInfo"]["operation"].as_str())
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    }

    /// `segflow.run_id` of each commit that has one.
    pub fn run_ids(&self) -> Vec<String> {
        self.0
            .values()
            .filter_map(|actions| {
                actions
                    .iter()
                    .find_map(|a| a["commitInfo"]["segflow.run_id"].as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// The data files live at `version` (paths below the table), replaying adds and removes.
    pub fn files_at(&self, version: u64) -> BTreeSet<String> {
        let mut live = BTreeSet::new();
        for (_, actions) in self.0.range(..=version) {
            for a in actions {
                if let Some(p) = a["add"]["path"].as_str() {
                    live.insert(decoded(p));
                }
                if let Some(p) = a["remove"]["path"].as_str() {
                    live.remove(&decoded(p));
                }
            }
        }
        live
    }
}

/// The Delta tables of an output (folders holding a `_delta_log/`).
fn tables(tree: &Tree) -> BTreeSet<String> {
    tree.keys()
        .filter_map(|k| {
            let (t, rest) = k.split_once('/')?;
            rest.starts_with("_delta_log/").then(|| t.to_string())
        })
        .collect()
}

/// The newest Delta version of each table that a manifest lists.
fn manifest_versions(tree: &Tree) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in manifests(tree).values() {
        for (name, t) in m["tables"].as_object().unwrap() {
            let v = t["delta_version"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: no delta_version in {t}"));
            let e = out.entry(name.clone()).or_insert(v);
            *e = (*e).max(v);
        }
    }
    out
}

/// Every table's newest version holds the same files as the newest version the manifests
/// list (nothing a killed run wrote is visible).
fn assert_tables_at_manifest(tree: &Tree, what: &str) {
    let versions = manifest_versions(tree);
    assert_eq!(
        tables(tree),
        versions.keys().cloned().collect::<BTreeSet<_>>(),
        "{what}: tables on disk vs tables the manifests list"
    );
    for (name, v) in versions {
        let log = Log::read(tree, &name);
        let latest = log.latest().unwrap();
        assert_eq!(
            log.files_at(latest),
            log.files_at(v),
            "{what}: {name} at version {latest} is not the manifest's version {v}"
        );
    }
}

/// After a successful run: no staging, lock or temp file; every manifest's tables are at
/// versions that exist, list exactly the live files of their partition at that version,
/// and those files exist; each table's newest version is the newest manifest's.
pub fn assert_delta_consistent(tree: &Tree) {
    for rel in tree.keys() {
        assert!(!rel.starts_with("_staging/"), "staging left: {rel}");
        assert!(!rel.starts_with("_lock"), "lock left: {rel}");
        assert!(
            !rel.contains(".tmp-") && !rel.contains('#'),
            "temp file left: {rel}"
        );
    }
    for (d, m) in manifests(tree) {
        for (name, t) in m["tables"].as_object().unwrap() {
            let v = t["delta_version"].as_u64().unwrap();
            let log = Log::read(tree, name);
            let partition = format!("as_of={d}/");
            let live: BTreeSet<String> = log
                .files_at(v)
                .into_iter()
                .filter(|f| f.starts_with(&partition))
                .map(|f| format!("{name}/{f}"))
                .collect();
            let listed: BTreeSet<String> = t["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                listed, live,
                "{d} {name}: manifest files vs the log at v{v}"
            );
            for f in &listed {
                assert!(tree.contains_key(f), "{d} {name}: {f} listed but missing");
            }
        }
    }
    assert_tables_at_manifest(tree, "after a run");
}

fn run(config: &Path, as_of: &str, failpoints: &str) -> Run {
    let env: Vec<(String, String)> = if failpoints.is_empty() {
        vec![]
    } else {
        vec![("SEGFLOW_FAILPOINTS".into(), failpoints.into())]
    };
    run_at_env(config, as_of, &env)
}

/// The manifests and the catalog: what says which snapshots exist.
fn commit_records(tree: &Tree) -> Tree {
    tree.iter()
        .filter(|(k, _)| k.starts_with("_manifest/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// SIGKILL at `cases` (failpoint, as_of) after a first run at 2026-06-30: `mid_commit`
/// after the first table's commit, `before_manifest` after every table's, `after_manifest`;
/// a new as_of, or 2026-06-30 to replace the published snapshot. The
/// manifests are untouched by a run killed before its manifest; the next run's recovery
/// (stopped right after it by a failpoint) leaves every table at the manifest's version;
/// then a run publishes normally.
pub fn kill_between_table_commits(
    config: &Path,
    env: &[(String, String)],
    tree: &dyn Fn() -> Tree,
    cases: &[(&str, &str)],
) {
    let with = |as_of: &str, fp: &str| {
        let mut e = env.to_vec();
        if !fp.is_empty() {
            e.push(("SEGFLOW_FAILPOINTS".into(), fp.into()));
        }
        run_at_env(config, as_of, &e)
    };
    const BASE: &str = "2026-06-30";
    let r = with(BASE, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for &(point, as_of) in cases {
        {
            let before = tree();
            let r = with(as_of, &format!("{point}=kill"));
            assert_eq!(r.code, -1, "not killed at {point}: {}", r.stderr);
            let killed = tree();
            if point == "after_manifest" {
                assert!(manifests(&killed).contains_key(as_of), "{point} {as_of}");
            } else {
                assert_same_tree(
                    &commit_records(&killed),
                    &commit_records(&before),
                    &format!("manifests changed by a run killed at {point} ({as_of})"),
                );
                let ahead = tables(&killed)
                    .iter()
                    .any(|t| Log::read(&killed, t).latest() != Log::read(&before, t).latest());
                assert!(
                    ahead,
                    "{point} {as_of}: no table was committed before the kill"
                );
            }
            let r = with(as_of, "after_lock=kill");
            assert_eq!(r.code, -1, "not killed after recovery: {}", r.stderr);
            assert_tables_at_manifest(&tree(), &format!("recovery after {point} ({as_of})"));
            let r = with(as_of, "");
            assert_eq!(r.code, 0, "run after {point}: {}", r.stderr);
            assert_delta_consistent(&tree());
        }
    }
}

#[test]
fn delta_local_sigkill_between_table_commits_is_restored_to_the_manifest_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = delta_config(tmp.path(), "");
    let out = tmp.path().join("out");
    let cases = [
        ("mid_commit", "2026-07-31"),
        ("mid_commit", "2026-06-30"),
        ("before_manifest", "2026-08-31"),
        ("before_manifest", "2026-06-30"),
        ("after_manifest", "2026-09-30"),
        ("after_manifest", "2026-06-30"),
    ];
    kill_between_table_commits(&config, &[], &|| snapshot_files(&out), &cases);
}

#[test]
fn delta_runs_add_one_write_commit_per_table_with_the_run_id_and_a_growing_txn() {
    let tmp = tempfile::tempdir().unwrap();
    let config = delta_config(tmp.path(), "");
    let out = tmp.path().join("out");
    // A new as_of, a backfill before it, a rerun of the first.
    let dates = ["2026-10-31", "2026-09-30", "2026-10-31"];
    let mut run_ids = Vec::new();
    for d in dates {
        let r = run(&config, d, "");
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains(&format!(
                "{} (Delta table, version",
                out.join("rfm").display()
            )),
            "{}",
            r.stdout
        );
        let m: serde_json::Value =
            serde_json::from_slice(&snapshot_files(&out)[&format!("_manifest/as_of={d}.json")])
                .unwrap();
        run_ids.push(m["run_id"].as_str().unwrap().to_string());
    }
    let tree = snapshot_files(&out);
    assert_delta_consistent(&tree);
    let m = &manifests(&tree)["2026-10-31"];
    for name in m["tables"].as_object().unwrap().keys() {
        let log = Log::read(&tree, name);
        assert_eq!(log.operations(), ["WRITE", "WRITE", "WRITE"], "{name}");
        assert_eq!(log.run_ids(), run_ids, "{name}");
        let txns: Vec<i64> = log
            .0
            .values()
            .flat_map(|a| a.iter())
            .filter(|a| a["txn"]["appId"] == "segflow")
            .map(|a| a["txn"]["version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            txns,
            [1, 2, 3],
            "{name}: the txn version grows with every run"
        );
        assert_eq!(m["tables"][name]["delta_version"], 2, "{name}");
        // Both snapshots are live partitions of the newest version.
        let live = log.files_at(2);
        for d in ["2026-09-30", "2026-10-31"] {
            let rows = manifests(&tree)[d]["tables"][name]["rows"]
                .as_u64()
                .unwrap();
            assert!(
                rows == 0 || live.iter().any(|f| f.starts_with(&format!("as_of={d}/"))),
                "{name}: partition {d} missing"
            );
        }
        // The rerun replaced partition 2026-10-31: version 0's files of it are gone.
        let first: BTreeSet<String> = log.files_at(0);
        assert!(first.is_disjoint(&live) || first.is_empty(), "{name}");
    }
    // The catalog opens every table at its location.
    let duckdb = String::from_utf8(tree["_catalog/duckdb.sql"].clone()).unwrap();
    let spark = String::from_utf8(tree["_catalog/spark.sql"].clone()).unwrap();
    for name in m["tables"].as_object().unwrap().keys() {
        let location = out.join(name).display().to_string();
        assert!(
            duckdb.contains(&format!("delta_scan('{location}')")),
            "{name}"
        );
        assert!(
            spark.contains(&format!(
                "CREATE TABLE `{name}_history` USING delta LOCATION '{location}'"
            )),
            "{name}"
        );
    }
}

#[test]
fn delta_retention_deletes_old_partitions_and_vacuums_only_files_older_than_vacuum_after() {
    for (vacuum_after, old_files_stay) in [("7d", true), ("0s", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let config = delta_config(
            tmp.path(),
            &format!("keep_snapshots = 2\nvacuum_after = \"{vacuum_after}\""),
        );
        let out = tmp.path().join("out");
        for d in ["2026-08-31", "2026-09-30", "2026-10-31"] {
            let r = run(&config, d, "");
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        let tree = snapshot_files(&out);
        let kept: Vec<String> = manifests(&tree).keys().cloned().collect();
        assert_eq!(kept, ["2026-09-30", "2026-10-31"]);
        let log = Log::read(&tree, "rfm");
        let live = log.files_at(log.latest().unwrap());
        let partitions: BTreeSet<&str> = live.iter().filter_map(|f| f.split('/').next()).collect();
        assert_eq!(
            partitions,
            ["as_of=2026-09-30", "as_of=2026-10-31"].into(),
            "vacuum_after {vacuum_after}"
        );
        let ops = log.operations();
        assert_eq!(&ops[..4], ["WRITE", "WRITE", "WRITE", "DELETE"], "{ops:?}");
        // A reader pinned to version 0 (only 2026-08-31) reads it until vacuum_after.
        let first = log.files_at(0);
        assert!(!first.is_empty());
        let present = first.iter().all(|f| tree.contains_key(&format!("rfm/{f}")));
        assert_eq!(
            present, old_files_stay,
            "vacuum_after {vacuum_after}: {ops:?}"
        );
        assert_eq!(
            ops.contains(&"VACUUM END".to_string()),
            !old_files_stay,
            "{ops:?}"
        );
        assert_delta_consistent_after_retention(&tree);
    }
}

/// [`assert_delta_consistent`] where retention added DELETE / VACUUM commits after the
/// newest manifest's versions.
fn assert_delta_consistent_after_retention(tree: &Tree) {
    for (name, v) in manifest_versions(tree) {
        let log = Log::read(tree, &name);
        let after: Vec<String> = log.operations().into_iter().skip(v as usize + 1).collect();
        assert!(
            after
                .iter()
                .all(|o| o == "DELETE" || o.starts_with("VACUUM")),
            "{name}: {after:?} after the manifest's version {v}"
        );
    }
}

#[test]
fn delta_schema_change_fails_naming_the_model_unless_schema_change_is_overwrite() {
    for overwrite in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let model = models.join("shape.sql");
        std::fs::write(&model, "select 1 as a").unwrap();
        let extra = if overwrite {
            "schema_change = \"overwrite\""
        } else {
            ""
        };
        let config = delta_config(tmp.path(), extra);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n[models]\npaths = [\"models\"]\n")).unwrap();
        let out = tmp.path().join("out");
        let r = run(&config, "2026-09-30", "");
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::write(&model, "select 1 as a, 'x' as b").unwrap();
        let before = snapshot_files(&out);
        let r = run(&config, "2026-10-31", "");
        if overwrite {
            assert_eq!(r.code, 0, "{}", r.stderr);
            let tree = snapshot_files(&out);
            let log = Log::read(&tree, "shape");
            let schema = log.0[&1]
                .iter()
                .find_map(|a| a["metaData"]["schemaString"].as_str())
                .expect("the new schema in the commit");
            assert!(schema.contains("\"b\""), "{schema}");
            assert_delta_consistent(&tree);
        } else {
            assert_ne!(r.code, 0);
            let err = error_line(&r);
            assert!(
                err.contains("shape") && err.contains("schema_change = \"overwrite\""),
                "{err}"
            );
            // Nothing was published: the whole output is as it was.
            assert_same_tree(&snapshot_files(&out), &before, "a failed Delta write");
        }
    }
}

#[test]
fn delta_s3_sigkill_between_table_commits_is_restored_to_the_manifest_by_the_next_run() {
    let moto = crate::s3::moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = crate::s3::s3_config(tmp.path(), "");
    let mut env = moto.env();
    env.push(("SEGFLOW_OUTPUT_FORMAT".into(), "delta".into()));
    // Fewer cases than on local disk (moto is slow): a new as_of, then a replacement.
    let cases = [
        ("mid_commit", "2026-07-31"),
        ("before_manifest", "2026-06-30"),
    ];
    kill_between_table_commits(&config, &env, &|| moto.tree("bucket", "out"), &cases);
}

/// Two runs on one Delta output: the second, started while the first holds the lock just
/// before its table commits, exits 2 naming the holder; the first then commits each table
/// exactly once.
#[test]
fn delta_two_runs_on_one_output_exactly_one_commits_each_table_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = delta_config(tmp.path(), "");
    let out = tmp.path().join("out");
    let (first, flag) = crate::crash::paused_run(&config, &[], "before_commit", tmp.path());
    let second = run_at_env(&config, crate::util::DEMO_AS_OF, &[]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    let err = error_line(&second);
    assert!(
        err.contains("locked") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    std::fs::remove_file(&flag).unwrap();
    crate::util::assert_finishes_ok(first, "the resumed first run");
    let tree = snapshot_files(&out);
    assert_delta_consistent(&tree);
    assert_eq!(manifests(&tree).len(), 1);
    for name in tables(&tree) {
        assert_eq!(Log::read(&tree, &name).operations(), ["WRITE"], "{name}");
    }
}
