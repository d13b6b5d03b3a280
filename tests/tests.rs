//! End-to-end tests of the `segflow` binary: one test binary, each test in its own temp
//! directory. This file is the index; the tests live in one module per topic.

/// Shared helpers: running segflow, demo configs, reading tables back, snapshot files of
/// expected output, deadlines for everything that waits.
mod util;

/// The analyst loop: `init`, `check`, `list`, `preview`, `explain`, `docs`, data tests and
/// model checks.
mod analyst;
/// Azure Blob Storage against Azurite.
mod azure;
/// Bad input: every config, environment, input and model mistake exits non-zero naming
/// what is wrong, and publishes nothing.
mod cli_errors;
/// The Ballista engine: a scheduler and executors on loopback compute the models.
mod cluster;
/// CLV fits that fail: predictions from the previous snapshot or NULL, with warnings.
mod clv;
/// Crash, signal and retention tests, shared by local disk and the object-store emulators.
mod crash;
/// Delta Lake output: one commit per table per run, recovery across table commits,
/// retention with vacuum, schema changes.
mod delta;
/// `segflow forget`: erasure from every kept snapshot and from later runs, and a kill at
/// each of its steps.
mod forget;
/// Input gates with their policies, the freshness gate, damaged input files.
mod gates;
/// Google Cloud Storage inputs against fake-gcs-server.
mod gcs;
/// `segflow generate`: deterministic synthetic order history.
mod generate;
/// Golden outputs: the hand-computed fixture, the demo run and its identical re-run, and
/// values worked out by hand on minimal inputs.
mod golden;
/// Incremental nightly runs: the same tables as full runs, full runs that say why.
mod incremental;
/// What a run reports about itself: the Prometheus metrics file, progress lines on a
/// terminal, OpenLineage events.
mod metrics_lineage;
/// Atomic publish and locking on local disk: a failed model or commit changes nothing, a
/// live lock stops a second run.
mod publish;
/// The run report: its sections, numbers and charts.
mod report;
/// Runs over time: migration between snapshots, `--select`, time zones, minimal inputs,
/// parameters and the order columns staged for models.
mod runs;
/// S3 against moto (and a fault proxy).
mod s3;
/// The model scheduler: models side by side (`concurrent_models`), bit-identical reruns, a
/// failure or an out-of-memory model beside another.
mod scheduler;
