//! The model scheduler: the tables do not depend on partitions or on models running side
//! by side (`[runtime] concurrent_models`); a model failing beside another stops the run,
//! one out of memory beside another is rerun alone.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{
    demo_config, error_line, failing, manifest, read_table, run_at_env, run_ok, snapshot_files,
    sorted_dump, Run, DEMO_AS_OF,
};

/// The log records of a run (`--log-format json`) with the given message, as their fields.
fn logged(r: &Run, message: &str) -> Vec<serde_json::Value> {
    r.stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["fields"].clone())
        .filter(|f| f["message"] == message)
        .collect()
}

/// Logs of the scheduler: which model started, beside how many others.
fn scheduler_logs() -> Vec<(String, String)> {
    vec![(
        "SEGFLOW_LOG".to_string(),
        "info,segflow::models::schedule=debug".to_string(),
    )]
}

/// The models that started beside another one.
fn started_beside(r: &Run) -> Vec<String> {
    logged(r, "model started")
        .iter()
        .filter(|f| f["beside"].as_u64().unwrap() > 0)
        .map(|f| f["model"].as_str().unwrap().to_string())
        .collect()
}

/// Every published table of `out` at `as_of`, sorted, floats as their shortest round-trip
/// text (equal text = equal bits).
pub(crate) async fn published_dumps(out: &Path, as_of: &str) -> BTreeMap<String, Vec<String>> {
    let m = manifest(out, as_of);
    let mut tables = BTreeMap::new();
    for model in m["tables"].as_object().unwrap().keys() {
        tables.insert(
            model.clone(),
            sorted_dump(&read_table(out, model, as_of).await),
        );
    }
    tables
}

/// The tables do not depend on the partition count or on whether models run one at a time
/// or side by side.
#[tokio::test]
async fn reruns_are_bit_identical_at_one_and_eight_partitions_and_models_one_or_two_at_a_time() {
    let mut dumps = Vec::new();
    for (partitions, concurrent) in [("1", 1), ("8", 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let config = demo_config(
            tmp.path(),
            &format!(
                "[datafusion]\n\"execution.target_partitions\" = \"{partitions}\"\n\n\
                 [runtime]\nconcurrent_models = {concurrent}\n"
            ),
        );
        let r = run_at_env(&config, DEMO_AS_OF, &scheduler_logs());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let beside = started_beside(&r);
        assert_eq!(beside.is_empty(), concurrent == 1, "{beside:?}");
        dumps.push(published_dumps(&tmp.path().join("out"), DEMO_AS_OF).await);
    }
    assert_eq!(dumps[0].len(), dumps[1].len());
    for (model, rows) in &dumps[0] {
        assert_eq!(
            rows, &dumps[1][model],
            "{model} differs between 1 partition, one model at a time and 8, two at a time"
        );
    }
}

/// Two models at a time: one failing beside another stops the run there (the models
/// downstream never start), exits 2 naming its file, and leaves the output as it was, with
/// no staging left behind.
#[test]
fn a_model_failing_beside_another_stops_the_run_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = demo_config(
        tmp.path(),
        "[models]\npaths = [\"models\"]\n\n[runtime]\nconcurrent_models = 2\n",
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);

    // Reads only the orders: it is ready as soon as they are staged, starts once one of the
    // two models ahead of it (heading longer chains of work) finishes, so beside the other,
    // and fails on its first rows.
    std::fs::write(
        models.join("aa_early_failure.sql"),
        "select customer_id, quantity / (quantity - quantity) as broken from orders",
    )
    .unwrap();
    let r = run_at_env(&config, DEMO_AS_OF, &scheduler_logs());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("aa_early_failure.sql") && err.to_lowercase().contains("divide by zero"),
        "{err}"
    );
    let started: Vec<String> = logged(&r, "model started")
        .iter()
        .map(|f| f["model"].as_str().unwrap().to_string())
        .collect();
    assert!(
        started_beside(&r).iter().any(|m| m == "aa_early_failure"),
        "{started:?}\n{}",
        r.stderr
    );
    assert!(
        !started.iter().any(|m| m == "segment_summary"),
        "the run went on after the failure: {started:?}"
    );
    assert_eq!(
        snapshot_files(&out),
        before,
        "a failed run changed the published output"
    );
    let staging = out.join("_staging");
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
        "staging left behind"
    );
}

/// The warning of a model rerun on sort-merge joins.
const SORT_MERGE_RERUN: &str =
    "model ran out of memory with hash joins; rerunning it with sort-merge joins, which spill";

/// The warning of a model queued to rerun alone.
const ALONE_RERUN: &str =
    "model ran out of memory beside other models; rerunning it alone once they finish";

/// A demo run with `concurrent_models` whose first model computed runs out of memory (the
/// failpoint), and whether it published the tables of the same run without the failpoint.
async fn out_of_memory_run(concurrent_models: usize) -> (Run, bool) {
    let runtime = format!("[runtime]\nconcurrent_models = {concurrent_models}\n");
    let plain = tempfile::tempdir().unwrap();
    run_ok(
        &demo_config(plain.path(), &runtime),
        &["--as-of", DEMO_AS_OF],
    );
    let expected = published_dumps(&plain.path().join("out"), DEMO_AS_OF).await;

    let tmp = tempfile::tempdir().unwrap();
    let mut env = scheduler_logs();
    env.push((
        "SEGFLOW_FAILPOINTS".to_string(),
        "out_of_memory=error".to_string(),
    ));
    let r = run_at_env(&demo_config(tmp.path(), &runtime), DEMO_AS_OF, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let same = published_dumps(&tmp.path().join("out"), DEMO_AS_OF).await == expected;
    (r, same)
}

/// The `beside` counts of each start of `model`.
fn starts_of(r: &Run, model: &str) -> Vec<u64> {
    logged(r, "model started")
        .iter()
        .filter(|f| f["model"] == model)
        .map(|f| f["beside"].as_u64().unwrap())
        .collect()
}

/// A model that runs out of memory beside another is rerun alone once the other finishes
/// (not on sort-merge joins beside it first), and the run publishes the same tables as one
/// where nothing ran out of memory.
#[tokio::test]
async fn a_model_out_of_memory_beside_another_is_rerun_alone_with_the_same_tables() {
    let (r, same) = out_of_memory_run(2).await;
    let warned = logged(&r, ALONE_RERUN);
    assert_eq!(warned.len(), 1, "{}", r.stderr);
    assert!(logged(&r, SORT_MERGE_RERUN).is_empty(), "{}", r.stderr);
    // Started twice: first beside another model, then alone.
    let starts = starts_of(&r, warned[0]["model"].as_str().unwrap());
    assert_eq!(starts.len(), 2, "{}", r.stderr);
    assert_eq!(starts[1], 0, "{}", r.stderr);
    assert!(same, "the tables differ from a run without the failpoint");
}

/// A model that runs out of memory alone is rerun once on sort-merge joins, which spill,
/// and the run publishes the same tables as one where nothing ran out of memory.
#[tokio::test]
async fn a_model_out_of_memory_alone_is_rerun_on_sort_merge_joins_with_the_same_tables() {
    let (r, same) = out_of_memory_run(1).await;
    let warned = logged(&r, SORT_MERGE_RERUN);
    assert_eq!(warned.len(), 1, "{}", r.stderr);
    assert!(logged(&r, ALONE_RERUN).is_empty(), "{}", r.stderr);
    // Started once (the rerun is within the same start), never queued to rerun alone.
    let starts = starts_of(&r, warned[0]["model"].as_str().unwrap());
    assert_eq!(starts.len(), 1, "{}", r.stderr);
    assert!(same, "the tables differ from a run without the failpoint");
}

#[test]
fn zero_concurrent_models_exits_2_naming_the_key() {
    let (code, err) = failing(|d| demo_config(d, "[runtime]\nconcurrent_models = 0\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("runtime.concurrent_models") && err.contains("at least 1"),
        "{err}"
    );
}
