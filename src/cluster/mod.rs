//! Scale-out on Apache Ballista: a run's models computed by a cluster of executors.
//!
//! `segflow scheduler` and `segflow executor` ([`serve`]) embed Ballista's scheduler and
//! executor with segflow's SQL functions, aggregates and optimizer rule (the one list of
//! [`crate::ext::functions`]), the codec of segflow's own tables ([`codec`]) and object stores
//! opened from the environment ([`stores`]). A run with `[runtime] engine = "ballista"`
//! [`connect`]s its model session to the scheduler: the staging pass (gates, fingerprints),
//! the lock, manifest, recovery and report stay in the run's process; every model query is
//! planned by the scheduler and executed by the executors, which read the staged tables
//! and write the published ones where every process can reach them.

pub mod codec;
pub mod serve;
mod stores;
pub(crate) mod views;

use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::session::PlanSection;

pub use crate::config::{SchedulerAddr, DEFAULT_SCHEDULER_PORT};
pub use stores::StoreRegistry;

/// How long a run waits for the scheduler's port to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails, naming the scheduler, unless its port accepts a TCP connection. Ballista's client
/// connects only when the first query runs; a run checks before it stages anything.
pub async fn reachable(scheduler: &SchedulerAddr) -> Result<()> {
    let unreachable = |message: String| Error::Cluster {
        scheduler: scheduler.to_string(),
        message,
    };
    let connect = tokio::net::TcpStream::connect((scheduler.host.as_str(), scheduler.port));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(format!("cannot connect: {e}"))),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// What a run says of a job the scheduler cancelled (Ballista's client reports it as "Job
/// … failed: Cancelled"), given the error's `message`: segflow's scheduler cancels the jobs
/// that wait [`serve::STRANDED_JOB_GRACE`] without a live executor.
pub fn why_cancelled(message: &str) -> Option<String> {
    message.trim_end().ends_with("failed: Cancelled").then(|| {
        format!(
            "the scheduler cancels a job that has waited {} s without a live executor; its log names the job",
            serve::STRANDED_JOB_GRACE.as_secs()
        )
    })
}

/// The engine config of a run's model session on the cluster: the run's (`[datafusion]`,
/// target partitions) under Ballista's restrictions, with segflow's codec.
pub fn cluster_config(settings: &Settings) -> Result<SessionConfig> {
    // Ballista's restrictions first (no round-robin repartitioning, no dynamic filters
    // across stages, sort-merge joins, no string views over Flight): setting any Ballista
    // option before them would mark the config as already restricted.
    Ok(crate::session::session_config(settings)?
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(codec::SegflowLogicalCodec::default()))
        // Ballista 55's adaptive planner loses track of a stage's task metrics on the
        // built-in models' joins of window aggregates ("task metrics array size 11 does not
        // equal with the stage metrics array size 10") and the job never finishes; the static
        // planner runs every model.
        .with_ballista_adaptive_query_planner(false))
}

/// The session state the scheduler plans a job in, from the config the client sent:
/// Ballista's default state (its logical rules and function set), the object stores, and
/// segflow's functions, aggregates and rule.
pub(crate) fn job_state(
    config: SessionConfig,
    stores: Arc<StoreRegistry>,
) -> datafusion::error::Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
        .with_object_store_registry(stores)
        .build_arc()?;
    let state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    crate::ext::with_extensions(state)
}

/// What `segflow explain` shows for `plan` with `engine = "ballista"`, planned here exactly
/// as the scheduler plans a job: the optimized logical plan and the physical plan under the
/// cluster's config, then the stages Ballista's distributed planner splits the physical plan
/// into (each a shuffle writer; `UnresolvedShuffleExec` marks where a stage reads the
/// output of an earlier one). With `analyze`, the physical plan is executed in this process
/// and shown with its metrics. No scheduler is contacted.
pub async fn explain(
    settings: &Settings,
    plan: LogicalPlan,
    analyze: bool,
) -> Result<Vec<PlanSection>> {
    let stores = Arc::new(StoreRegistry::new(settings.s3.clone()));
    let planning =
        |e: datafusion::error::DataFusionError| Error::engine("plan the model for the cluster", e);
    let state = job_state(cluster_config(settings)?, stores).map_err(planning)?;
    let mut sections =
        crate::session::explain_sections(DataFrame::new(state.clone(), plan.clone()), analyze)
            .await
            .map_err(planning)?;
    let physical = state.create_physical_plan(&plan).await.map_err(planning)?;
    let stages = DefaultDistributedPlanner::new()
        .plan_query_stages(
            &ballista_core::JobId::new("explain"),
            physical,
            state.config().options(),
        )
        .map_err(|e| planning(e.into_datafusion()))?;
    let mut text = String::new();
    for (i, stage) in stages.iter().enumerate() {
        let output = match stage.shuffle_output_partitioning() {
            _ if i + 1 == stages.len() => "the job's result".to_string(),
            Some(p) => format!("shuffled by {p}"),
            None => "kept in its partitions".to_string(),
        };
        text.push_str(&format!(
            "Stage {} ({} task(s)) -> {output}\n{}\n",
            stage.stage_id(),
            stage.input_partition_count(),
            displayable(stage.as_ref() as &dyn ExecutionPlan).indent(false)
        ));
    }
    sections.push(("distributed_plan".to_string(), text));
    Ok(sections)
}

/// The session of a run's models on the cluster behind `scheduler`: [`cluster_config`], the
/// object stores of the inputs and output, and segflow's functions registered after the
/// session is bound to the cluster (binding replaces the function maps).
pub async fn connect(settings: &Settings, scheduler: &SchedulerAddr) -> Result<SessionContext> {
    reachable(scheduler).await?;
    let config = cluster_config(settings)?;
    let runtime = crate::session::runtime_builder(settings)
        .with_object_store_registry(Arc::new(StoreRegistry::new(settings.s3.clone())));
    let state = crate::session::session_state(config, runtime)?;
    let ctx = SessionContext::remote_with_state(&scheduler.url(), state)
        .await
        .map_err(|e| Error::Cluster {
            scheduler: scheduler.to_string(),
            message: e.strip_backtrace(),
        })?;
    crate::ext::register(&ctx);
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_job_is_explained_and_other_failures_are_not() {
        let why = why_cancelled("Execution error: Job bqXa3 failed: Cancelled").unwrap();
        assert!(why.contains("40 s without a live executor"), "{why}");
        assert_eq!(why_cancelled("Job bqXa3 failed: task 3 lost"), None);
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_named() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SchedulerAddr {
            host: "127.0.0.1".into(),
            port,
        };
        let e = reachable(&addr).await.unwrap_err();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
