//! `segflow scheduler` and `segflow executor`: Ballista's scheduler and executor processes,
//! each knowing segflow's functions, codec and object stores.
//!
//! Liveness is tuned for nightly batch runs rather than Ballista's long-lived defaults: an
//! executor heartbeats every [`HEARTBEAT`]; the scheduler declares one lost after
//! [`EXECUTOR_TIMEOUT`] without a heartbeat and runs its tasks again on the others (and the
//! finished stages whose output it held); a job with no executor left fails after
//! [`NO_EXECUTORS_GRACE`], and one Ballista's check misses is cancelled after
//! [`STRANDED_JOB_GRACE`] (see [`cancel_stranded_jobs`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::RuntimeProducer;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service};
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::SessionBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tracing::{info, warn};

use super::codec::SegflowLogicalCodec;
use super::{SchedulerAddr, StoreRegistry};
use crate::config::S3Settings;
use crate::error::{Error, Result};

/// How often an executor tells the scheduler it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long the scheduler waits for a heartbeat before it declares an executor lost.
pub const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a job waits for an executor when none is left.
pub const NO_EXECUTORS_GRACE: Duration = Duration::from_secs(30);
/// How long a running job may go without a live executor before `segflow scheduler`
/// cancels it (see [`cancel_stranded_jobs`]): longer than [`NO_EXECUTORS_GRACE`], so that
/// where Ballista's own check applies its message is the one the run reports.
pub const STRANDED_JOB_GRACE: Duration = Duration::from_secs(40);

/// The scheduler embedded in `segflow scheduler`.
type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// `segflow scheduler`: serves Ballista's scheduler on `bind` until the process ends.
pub async fn run_scheduler(bind: SocketAddr, external_host: String, s3: S3Settings) -> Result<()> {
    let stores = Arc::new(StoreRegistry::new(s3));
    let session_builder: SessionBuilder =
        Arc::new(move |config: SessionConfig| super::job_state(config, stores.clone()));
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        external_host,
        bind_port: bind.port(),
        executor_timeout_seconds: EXECUTOR_TIMEOUT.as_secs(),
        expire_dead_executor_interval_seconds: 1,
        no_executors_grace_period_seconds: NO_EXECUTORS_GRACE.as_secs(),
        // `cancel_stranded_jobs` reads "ready" as "an executor is alive".
        min_ready_executors: 1,
        override_session_builder: Some(session_builder),
        override_logical_codec: Some(Arc::new(SegflowLogicalCodec::default())),
        ..Default::default()
    };
    let failed = |e: ballista_core::error::BallistaError| Error::Cluster {
        scheduler: bind.to_string(),
        message: e.to_string(),
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed)?;
    let config = Arc::new(config);
    config.validate().map_err(failed)?;
    let scheduler: Scheduler = create_scheduler(cluster, config).await.map_err(failed)?;
    tokio::spawn(cancel_stranded_jobs(scheduler.clone()));
    info!(%bind, "scheduler listening");
    start_grpc_service(bind, scheduler).await.map_err(failed)
}

/// Cancels every job that has been running for [`STRANDED_JOB_GRACE`] while no executor
/// was alive, checking each second.
///
/// Ballista 55 fails the jobs left on a cluster whose last executor is lost, once
/// [`NO_EXECUTORS_GRACE`] has passed without a new one; but only the jobs already running
/// when that executor was lost. A job planned a moment later (a model submitted beside the
/// one whose task killed the executor), or submitted to a scheduler no executor has joined,
/// would wait for ever, and with it the run. Each such job gets its own window, counted
/// from the first check that finds it running on an empty cluster; an executor joining in
/// the meantime clears every window.
async fn cancel_stranded_jobs(scheduler: Scheduler) {
    let mut stranded_since: HashMap<ballista_core::JobId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // Ready: at least `min_ready_executors` (1) executor has sent a recent heartbeat.
        if scheduler.is_ready() {
            stranded_since.clear();
            continue;
        }
        let running = scheduler.state.task_manager.get_running_job_cache();
        stranded_since.retain(|job, _| running.contains_key(job));
        let now = Instant::now();
        for job in running.keys() {
            let since = stranded_since.entry(job.clone()).or_insert(now);
            if now.duration_since(*since) < STRANDED_JOB_GRACE {
                continue;
            }
            warn!(
                %job,
                seconds = STRANDED_JOB_GRACE.as_secs(),
                "cancelling the job: no executor has been alive to run its tasks"
            );
            if let Err(e) = scheduler.cancel_job(job.clone()).await {
                warn!(%job, error = %e, "could not cancel the job");
            }
            // A job still running at the next checks (the cancel failed) waits another
            // window before it is cancelled again.
            *since = now;
        }
    }
}

/// What `segflow executor` serves.
pub struct ExecutorOptions {
    pub scheduler: SchedulerAddr,
    /// The Arrow Flight address (results and shuffle data); gRPC on `grpc_port`.
    pub bind: SocketAddr,
    /// The host other processes reach this executor at.
    pub external_host: String,
    pub grpc_port: u16,
    /// Shuffle files and spills.
    pub work_dir: PathBuf,
    /// Tasks run side by side (default: the cores).
    pub concurrent_tasks: usize,
    /// The executor's memory pool, shared by its tasks (default: Ballista's, 70 % of RAM).
    pub memory_limit: Option<u64>,
    pub s3: S3Settings,
}

/// `segflow executor`: registers with the scheduler and runs tasks until the process ends
/// (SIGTERM or Ctrl-C stop it after its running tasks).
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    let ExecutorOptions {
        scheduler,
        bind,
        external_host,
        grpc_port,
        work_dir,
        concurrent_tasks,
        memory_limit,
        s3,
    } = options;
    std::fs::create_dir_all(&work_dir).map_err(|e| Error::io("create", &work_dir, e))?;
    let work = work_dir.to_string_lossy().into_owned();
    // DataFusion's functions (the nested ones too, which Ballista's default registry lacks),
    // then segflow's.
    let mut functions =
        BallistaFunctionRegistry::from(&SessionStateBuilder::new().with_default_features().build());
    let extensions = crate::ext::functions();
    for f in extensions.scalars {
        functions
            .scalar_functions
            .insert(f.name().to_string(), Arc::new(f));
    }
    for f in extensions.aggregates {
        functions
            .aggregate_functions
            .insert(f.name().to_string(), Arc::new(f));
    }
    let stores = Arc::new(StoreRegistry::new(s3));
    let spill_dir = work.clone();
    let runtime: RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_temp_file_path(spill_dir.clone())
            .with_object_store_registry(stores.clone())
            .build_arc()
    });
    let config = ExecutorProcessConfig {
        bind_host: bind.ip().to_string(),
        external_host: Some(external_host),
        port: bind.port(),
        grpc_port,
        scheduler_host: scheduler.host.clone(),
        scheduler_port: scheduler.port,
        // One attempt: an executor started before its scheduler exits (and is restarted by
        // whatever supervises it) instead of waiting.
        scheduler_connect_timeout_seconds: 0,
        vcores: concurrent_tasks,
        work_dir: Some(work),
        executor_heartbeat_interval_seconds: HEARTBEAT.as_secs(),
        memory_pool_size: memory_limit,
        override_function_registry: Some(Arc::new(functions)),
        override_runtime_producer: Some(runtime),
        override_logical_codec: Some(Arc::new(SegflowLogicalCodec::default())),
        override_execution_engine: Some(Arc::new(SegflowEngine(DefaultExecutionEngine::new()))),
        ..Default::default()
    };
    info!(%bind, grpc_port, %scheduler, "executor starting");
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Cluster {
            scheduler: scheduler.to_string(),
            message: e.to_string(),
        })
}

/// The failpoint an executor passes when it is handed a task.
const TASK_FAILPOINT: &str = "executor_task";

/// Ballista's execution engine, with three changes: each stage's shuffle writer gets its
/// input's string views compacted ([`super::views::CompactViews`]), tasks report no
/// per-operator metrics, and (in tests) [`TASK_FAILPOINT`] is passed as each task is created.
///
/// Ballista 55's scheduler keeps the first task's operator metrics of a stage and refuses
/// the status of a later task whose plan (restricted to that task's partitions) has a
/// different number of operators ("task metrics array size 11 does not equal with the
/// stage metrics array size 10"): the task never counts as finished and the job hangs.
/// The built-in `rfm` model's joins of window aggregates do that on two executors. The
/// metrics only feed the scheduler's plan display; everything else a task reports is
/// passed on. (Ballista's shuffle client pool is private to its executor process: shuffle
/// reads open their own connections.)
struct SegflowEngine(DefaultExecutionEngine);

impl ExecutionEngine for SegflowEngine {
    fn create_query_stage_exec(
        &self,
        job_id: ballista_core::JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        crate::failpoint::hit_now(TASK_FAILPOINT);
        let job = job_id.to_string();
        // The shuffle writer's input, with its string views compacted (see `views`).
        let plan = match plan.children().first() {
            Some(&input) => {
                let input = super::views::CompactViews::over(Arc::clone(input));
                Arc::clone(&plan).replace_children(
                    vec![input],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )?
            }
            None => plan,
        };
        let stage = self.0.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(WithoutOperatorMetrics {
            stage,
            job,
            stage_id,
        }))
    }
}

/// A query stage reporting no per-operator metrics (see [`SegflowEngine`]); it logs what
/// each task wrote to its shuffle files (rows and bytes; the last stage's are the job's
/// result, fetched by the client).
#[derive(Debug)]
struct WithoutOperatorMetrics {
    stage: Arc<dyn QueryStageExecutor>,
    job: String,
    stage_id: usize,
}

impl std::fmt::Display for WithoutOperatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.stage.fmt(f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for WithoutOperatorMetrics {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::ShuffleWritePartition>> {
        let written = self.stage.execute_query_stage(task_id, context).await?;
        info!(
            job = %self.job,
            stage = self.stage_id,
            task = task_id,
            partitions = written.len(),
            rows = written.iter().map(|p| p.num_rows).sum::<u64>(),
            bytes = written.iter().map(|p| p.num_bytes).sum::<u64>(),
            "task wrote its shuffle output"
        );
        Ok(written)
    }

    fn collect_plan_metrics(&self) -> Vec<datafusion::physical_plan::metrics::MetricsSet> {
        Vec::new()
    }

    fn collect_runtime_stats_reports(
        &self,
    ) -> Vec<ballista_core::serde::protobuf::RuntimeStatsReport> {
        self.stage.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(
        &self,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::WindowStateReport>> {
        self.stage.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<ballista_core::serde::protobuf::TaskColumnStats> {
        self.stage.collect_column_stats()
    }
}
