//! Session setup in one place: engine config, memory pool, spill directory, object stores.
//!
//! Every command (run, init's demo, tests) builds its DataFusion session through
//! [`build_session`], so a new object store, UDF or config layer is added once.

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Location;

/// The engine config of a run.
///
/// `[datafusion]` keys are applied with `ConfigOptions::set`, with the `datafusion.` prefix
/// added when missing; an unknown key is an error naming it. With `[runtime] memory_limit`,
/// sorts and aggregations share a fair spilling pool (90 % of the limit: the pool tracks only
/// large consumers) and spill to `[runtime] temp_dir` or the system temp directory.
pub fn session_config(settings: &Settings) -> Result<SessionConfig> {
    let mut config = SessionConfig::new().with_information_schema(true);
    {
        let options = config.options_mut();
        options.sql_parser.collect_spans = true;
        options.execution.time_zone = Some("UTC".to_string());
        // Each output file is encoded by the task that produces its rows. The parallel
        // encoder (a task per column, buffers handed between them) copied every page once
        // more and competed with the query for the cores: 10 M lines 19 s -> 15-16 s
        // without it on 2 cores. `[datafusion]` may turn it back on.
        options.execution.parquet.allow_single_file_parallelism = false;
        // The big GROUP BYs (lines -> orders, customer days) keep ~40 % of their rows, so the
        // partial stage builds nearly the hash table the final stage builds again. Passing
        // rows through once groups exceed 30 % of the first rows (DataFusion: 80 %): 10 M
        // lines -1.5 s wall, -2.5 s CPU and lower peak memory (three interleaved pairs).
        options
            .execution
            .skip_partial_aggregation_probe_ratio_threshold = 0.3;
        // Internal tables are bucketed by customer, one bucket per target partition (see
        // `crate::ext::buckets`): a hash partitioning on customer_id then serves any GROUP BY
        // whose keys include it, at any partition count (DataFusion's default: from 4).
        options.optimizer.subset_repartition_threshold = 1;
    }
    for (key, value) in &settings.datafusion {
        let full = if key.starts_with("datafusion.") {
            key.clone()
        } else {
            format!("datafusion.{key}")
        };
        config
            .options_mut()
            .set(&full, value)
            .map_err(|e| Error::ConfigValue {
                key: format!("[datafusion] \"{key}\""),
                message: format!("{e} (in {})", settings.config_path.display()),
            })?;
    }
    Ok(config)
}

/// The engine runtime of a run: the memory pool of `[runtime] memory_limit`, spill files in
/// `[runtime] temp_dir` (or the system temp dir).
pub fn runtime_builder(settings: &Settings) -> RuntimeEnvBuilder {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = settings.memory_limit {
        let pool_bytes = limit / 10 * 9;
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(pool_bytes),
            NonZeroUsize::new(5).expect("nonzero"),
        )));
    }
    let disk = match &settings.temp_dir {
        Some(dir) => {
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.clone()]))
        }
        None => DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
    };
    runtime.with_disk_manager_builder(disk)
}

/// The session state of a run from its engine `config` and `runtime` (DataFusion's
/// default features on top).
pub fn session_state(config: SessionConfig, runtime: RuntimeEnvBuilder) -> Result<SessionState> {
    let runtime = runtime
        .build_arc()
        .map_err(|e| Error::engine("cannot create the engine runtime", e))?;
    Ok(SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build())
}

/// Builds the DataFusion session for a run (see [`session_config`] and [`runtime_builder`]).
pub fn build_session(settings: &Settings) -> Result<SessionContext> {
    let state = session_state(session_config(settings)?, runtime_builder(settings))?;
    let ctx = SessionContext::new_with_state(state);
    crate::ext::register(&ctx);
    register_input_stores(&ctx, settings)?;
    Ok(ctx)
}

/// Input bytes per partition of a run's plans (see [`partitions_for`]).
const BYTES_PER_PARTITION: u64 = 2 << 20;
/// The most partitions [`partitions_for`] gives.
const MAX_PARTITIONS: usize = 32;

/// The partitions of a run's plans over an orders input of `input_bytes` (Parquet): one per
/// 2 MiB of input, at least one per core, at most 32 — more partitions than cores.
///
/// The staged lines and the state are bucketed by customer, one bucket per partition, and
/// each GROUP BY over them aggregates every bucket in its own hash table; tables a bucket's
/// size stay in the CPU's caches where one per core do not (3.8 M customer days at 10 M
/// lines). On 2 cores at 10 M lines (127 MB), 32 partitions against 2: the whole run 9.3–10.3 s
/// against 10.8–14.4 s (CPU 15.6–17.9 s against 18.3–25.2 s; customer_category_spend 0.6–0.9 s
/// against 1.4–2.5 s, purchase_orders 1.6–1.9 against 2.2–2.8 s); 64 was no faster. Small
/// inputs keep one partition per core: 32 made the 50 k-line demo 40 % slower (0.44 -> 0.61 s).
/// The threads stay one per core (tokio's workers): partitions are only units of work.
pub fn partitions_for(input_bytes: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_size = usize::try_from(input_bytes / BYTES_PER_PARTITION).unwrap_or(usize::MAX);
    by_size.clamp(cores, MAX_PARTITIONS.max(cores))
}

/// Sets `ctx`'s partitions for an orders input of `input_bytes` ([`partitions_for`]) unless
/// `[datafusion]` sets `execution.target_partitions`; returns the partitions now in effect.
pub fn set_partitions(ctx: &SessionContext, settings: &Settings, input_bytes: u64) -> usize {
    let state = ctx.state_ref();
    let mut state = state.write();
    let configured = settings
        .datafusion
        .iter()
        .any(|(k, _)| k.trim_start_matches("datafusion.") == "execution.target_partitions");
    let options = state.config_mut().options_mut();
    if !configured {
        options.execution.target_partitions = partitions_for(input_bytes);
    }
    options.execution.target_partitions
}

/// Makes the object store of every input given by URL known to `ctx`.
pub fn register_input_stores(ctx: &SessionContext, settings: &Settings) -> Result<()> {
    for input in settings.inputs.values() {
        if input.uri.contains("://") {
            Location::resolve(&input.uri, &settings.s3)
                .map_err(|e| Error::Input {
                    input: input.name.clone(),
                    uri: input.uri.clone(),
                    message: e.to_string(),
                })?
                .register(ctx);
        }
    }
    Ok(())
}

/// One section of `segflow explain`: the plan's type (`logical_plan`, `physical_plan`, ...)
/// and its text.
pub type PlanSection = (String, String);

/// `df`'s plans as EXPLAIN gives them: (plan type, plan text) in order; with `analyze`,
/// `df` is executed and the physical plan carries its metrics.
pub async fn explain_sections(
    df: datafusion::prelude::DataFrame,
    analyze: bool,
) -> datafusion::error::Result<Vec<PlanSection>> {
    use datafusion::arrow::array::{Array, StringArray};
    let batches = df.explain(false, analyze)?.collect().await?;
    let mut sections = Vec::new();
    for b in &batches {
        let (Some(kind), Some(plan)) = (
            b.column(0).as_any().downcast_ref::<StringArray>(),
            b.column(1).as_any().downcast_ref::<StringArray>(),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            if kind.is_valid(i) && plan.is_valid(i) {
                sections.push((kind.value(i).to_string(), plan.value(i).to_string()));
            }
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    #[test]
    fn partitions_follow_the_input_size_between_the_cores_and_32() {
        let mib = 1u64 << 20;
        assert_eq!(partitions_for(0), cores());
        assert_eq!(partitions_for(300 * 1024), cores(), "the 300 kB demo");
        assert_eq!(partitions_for(20 * mib), 10.max(cores()));
        assert_eq!(partitions_for(127 * mib), 32.max(cores()), "10 M lines");
        assert_eq!(partitions_for(1300 * mib), 32.max(cores()), "100 M lines");
        assert_eq!(partitions_for(u64::MAX), 32.max(cores()));
    }

    fn settings(extra: &str) -> Settings {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segflow.toml");
        std::fs::write(
            &path,
            format!("[input.orders]\nuri = \"orders\"\n[output]\nuri = \"out\"\n{extra}"),
        )
        .expect("write config");
        Settings::load_with_env(&path, &Default::default(), &[]).expect("config")
    }

    #[test]
    fn a_configured_target_partitions_is_kept_and_otherwise_the_input_size_decides() {
        let plain = settings("");
        let ctx = build_session(&plain).expect("session");
        assert_eq!(set_partitions(&ctx, &plain, 127 << 20), 32.max(cores()));
        assert_eq!(ctx.state().config().target_partitions(), 32.max(cores()));
        for key in [
            "execution.target_partitions",
            "datafusion.execution.target_partitions",
        ] {
            let pinned = settings(&format!("[datafusion]\n\"{key}\" = \"3\"\n"));
            let ctx = build_session(&pinned).expect("session");
            assert_eq!(set_partitions(&ctx, &pinned, 127 << 20), 3, "{key}");
            assert_eq!(ctx.state().config().target_partitions(), 3);
        }
    }
}
