//! Atomic publish and locking on local disk: a failing model or a commit that fails halfway
//! leaves the published snapshot as it was, the debris of a killed run is cleaned up, and a
//! live lock stops a second run naming its holder.

use crate::util::{
    demo_config, error_line, read_table, run_at, run_ok, segflow, snapshot_files, DEMO_AS_OF,
};

#[tokio::test]
async fn failing_model_exits_2_and_leaves_previous_snapshot_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = demo_config(tmp.path(), "[models]\npaths = [\"models\"]\n");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);

    std::fs::write(
        models.join("zz_late_failure.sql"),
        "select count(*) / (count(*) - count(*)) as broken from segment_summary",
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("zz_late_failure.sql") && err.to_lowercase().contains("divide by zero"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed run changed the published output"
    );

    std::fs::remove_file(models.join("zz_late_failure.sql")).unwrap();
    // Debris of a killed run: a staging dir and a lock of a process that is gone.
    std::fs::create_dir_all(out.join("_staging/dead-run/rfm")).unwrap();
    std::fs::write(
        out.join("_lock"),
        format!(
            r#"{{"run_id":"dead-run","host":"{}","pid":999999999,"started_at":"2026-11-23T00:00:00Z"}}"#,
            segflow::publish::host_name()
        ),
    )
    .unwrap();
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    assert!(!out.join("_staging").exists(), "staging debris left behind");
    assert_eq!(read_table(&out, "rfm", DEMO_AS_OF).await.len(), 2940);
}

#[test]
fn a_commit_that_fails_halfway_rolls_back_every_swapped_table() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    // The last table to be swapped in cannot be: its folder is in the way as a plain file.
    std::fs::remove_dir_all(out.join("segment_summary")).unwrap();
    std::fs::write(out.join("segment_summary"), "in the way").unwrap();
    let before = snapshot_files(&out);
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("segment_summary"),
        "{}",
        error_line(&r)
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed commit changed the published tables"
    );
    assert!(!out.join("_staging").exists() && !out.join("_lock").exists());
}

#[test]
fn live_lock_makes_a_second_run_exit_2_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lock = format!(
        r#"{{"run_id":"nightly-42","host":"{}","pid":{},"started_at":"{}"}}"#,
        segflow::publish::host_name(),
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    );
    std::fs::write(out.join("_lock"), &lock).unwrap();
    let r = segflow(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    let err = error_line(&r);
    assert!(
        err.contains("locked") && err.contains("nightly-42"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("_lock")).unwrap(),
        lock,
        "lock of a live run was touched"
    );
}
