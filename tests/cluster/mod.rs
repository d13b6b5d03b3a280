//! The Ballista engine: a scheduler and two executors of the built binary on loopback
//! (free ports, killed when the test ends) compute the demo's models; the tables equal the
//! local engine's, bit for bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::s3::{free_port, moto_with_demo, s3_config, wait_for_port};
use crate::scheduler::published_dumps;
use crate::util::{
    demo_config, error_line, finish_within, output_within, run_at_env, run_command,
    segflow_command, segflow_env, snapshot_files, stderr_tail, wait_until, Deadline, Run,
    DEMO_AS_OF, RUN_DEADLINE,
};

/// A scheduler and its executors, killed on drop.
struct Cluster {
    scheduler: Child,
    executors: Vec<Child>,
    port: u16,
    _work: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts a scheduler and one executor per entry of `executor_env` (each with that
    /// extra environment, on top of `env`), two task slots each.
    fn start(env: &[(String, String)], executor_env: &[Vec<(String, String)>]) -> Cluster {
        let work = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(work.path().join("scheduler.log")).expect("log file");
        let mut scheduler = segflow_command()
            .args(["--log-format", "json", "scheduler", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("scheduler starts");
        wait_for_port(port, &mut scheduler, "scheduler");
        let mut cluster = Cluster {
            scheduler,
            executors: Vec::new(),
            port,
            _work: work,
        };
        for extra in executor_env {
            cluster.add_executor(env, extra);
        }
        cluster
    }

    /// Starts one more executor (with `env` and `extra`), two task slots, and waits until
    /// it listens.
    fn add_executor(&mut self, env: &[(String, String)], extra: &[(String, String)]) {
        let i = self.executors.len();
        let flight = free_port();
        let grpc = free_port();
        let dir = self._work.path().join(format!("executor-{i}"));
        let log = std::fs::File::create(self._work.path().join(format!("executor-{i}.log")))
            .expect("log file");
        let mut child = segflow_command()
            .args(["--log-format", "json", "executor", "--scheduler"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--bind")
            .arg(format!("127.0.0.1:{flight}"))
            .args(["--grpc-port", &grpc.to_string()])
            .arg("--work-dir")
            .arg(&dir)
            .args(["--concurrent-tasks", "2"])
            .envs(env.iter().chain(extra).map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("executor starts");
        wait_for_port(flight, &mut child, "executor");
        self.executors.push(child);
    }

    /// The environment that sends a run's models to this cluster.
    fn run_env(&self) -> Vec<(String, String)> {
        vec![
            ("SEGFLOW_RUNTIME_ENGINE".into(), "ballista".into()),
            (
                "SEGFLOW_RUNTIME_SCHEDULER".into(),
                format!("df://127.0.0.1:{}", self.port),
            ),
        ]
    }

    /// A process's log, for failure messages.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self._work.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The id executor `i` registered under (from its start-up log line).
    fn executor_id(&self, i: usize) -> String {
        let log = self.log(&format!("executor-{i}"));
        let start = log
            .find("Executor id: ")
            .unwrap_or_else(|| panic!("executor-{i} logged no id\n{}", self.logs()))
            + "Executor id: ".len();
        log[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect()
    }

    /// `segflow run` of `config` at `as_of` on this cluster (with `env` besides): a run
    /// still going after [`RUN_DEADLINE`] is killed and fails the test with every process's
    /// log.
    fn run(&self, config: &Path, as_of: &str, env: &[(String, String)]) -> Run {
        let child = run_command(&["--log-format", "json"], config, as_of)
            .envs(env.iter().cloned().chain(self.run_env()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run starts");
        finish_within(child, RUN_DEADLINE)
            .unwrap_or_else(|out| {
                panic!(
                    "the run on the cluster did not finish in {} s; its stderr ended:\n{}\n{}",
                    RUN_DEADLINE.as_secs(),
                    stderr_tail(&out),
                    self.logs()
                )
            })
            .into()
    }

    fn logs(&self) -> String {
        let mut all = format!("--- scheduler\n{}", self.log("scheduler"));
        for i in 0..self.executors.len() {
            let name = format!("executor-{i}");
            all.push_str(&format!("\n--- {name}\n{}", self.log(&name)));
        }
        all
    }
}

/// Every published table of the snapshot `as_of` in `out` (see [`published_dumps`]).
fn tables(out: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(published_dumps(out, DEMO_AS_OF))
}

/// The demo run on the local engine, in `dir`: its published tables.
fn local_tables(dir: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let config = demo_config(dir, "");
    let r = run_at_env(&config, DEMO_AS_OF, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    tables(&dir.join("out"))
}

fn assert_same_tables(
    local: &std::collections::BTreeMap<String, Vec<String>>,
    cluster: &std::collections::BTreeMap<String, Vec<String>>,
) {
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        cluster.keys().collect::<Vec<_>>()
    );
    for (model, rows) in local {
        assert_eq!(
            rows, &cluster[model],
            "{model}: the cluster's rows differ from the local engine's"
        );
    }
}

/// A demo project whose output holds the snapshot of 2026-10-31: (its directory, config,
/// every output file before the test's run).
fn with_earlier_snapshot() -> (
    tempfile::TempDir,
    PathBuf,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let first = run_at_env(&config, "2026-10-31", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before = snapshot_files(&tmp.path().join("out"));
    (tmp, config, before)
}

/// The environment of an executor that dies as it is handed its first task.
fn killed_at_first_task() -> Vec<(String, String)> {
    vec![(
        "SEGFLOW_FAILPOINTS".to_string(),
        "executor_task=kill".to_string(),
    )]
}

/// The demo project's input and output on moto S3, its models on a scheduler and two
/// executors (which reach S3 through the AWS_* environment): every published table equals
/// the local engine's, row for row, floats bit-equal.
#[test]
fn the_demo_on_two_executors_with_s3_output_publishes_the_local_engines_tables() {
    let reference = tempfile::tempdir().unwrap();
    let local = local_tables(reference.path());

    let moto = moto_with_demo();
    let cluster = Cluster::start(&moto.env(), &[vec![], vec![]]);
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "");
    let r = cluster.run(&config, DEMO_AS_OF, &moto.env());
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, cluster.logs());
    let out = tmp.path().join("s3-out");
    moto.download("bucket", "out", &out);
    assert_same_tables(&local, &tables(&out));
}

/// The only executor is SIGKILLed as it is handed its first task (a failpoint); a second
/// one joins once it is dead. The scheduler declares the first lost after the heartbeat
/// timeout and runs its task on the second: the run completes with the local engine's
/// tables, and the output holds one whole snapshot (no staging, no lock).
#[test]
fn an_executor_killed_at_its_first_task_is_replaced_and_the_run_publishes_the_same_tables() {
    let reference = tempfile::tempdir().unwrap();
    let local = local_tables(reference.path());

    let mut cluster = Cluster::start(&[], &[killed_at_first_task()]);
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let run = run_command(&["--log-format", "json"], &config, DEMO_AS_OF)
        .envs(cluster.run_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let deadline = Deadline::after(std::time::Duration::from_secs(120));
    let killed = loop {
        if let Some(status) = cluster.executors[0].try_wait().expect("status") {
            break status;
        }
        deadline.check(|| format!("the executor with the failpoint to die\n{}", cluster.logs()));
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "{}",
        cluster.logs()
    );
    cluster.add_executor(&[], &[]);
    let out = output_within(run, RUN_DEADLINE, "the run on the cluster");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", cluster.logs());
    // The scheduler notices the death either by the missed heartbeats or by a failed task
    // launch; both paths remove the executor by its id.
    let dead = cluster.executor_id(0);
    assert!(
        cluster
            .log("scheduler")
            .contains(&format!("Removing executor {dead}")),
        "{}",
        cluster.logs()
    );
    assert_same_tables(&local, &tables(&tmp.path().join("out")));
    let files = snapshot_files(&tmp.path().join("out"));
    assert!(
        !files
            .keys()
            .any(|f| f.starts_with("_staging") || f == "_lock"),
        "{:?}",
        files.keys().collect::<Vec<_>>()
    );
}

/// The only executor is SIGKILLed at its first task and none other joins: after the
/// scheduler's grace period the job fails, the run exits 2 with the scheduler's error, and
/// the output (holding an earlier snapshot) is exactly as it was.
#[test]
fn a_run_whose_last_executor_dies_exits_2_and_changes_nothing() {
    let (tmp, config, before) = with_earlier_snapshot();
    let out: PathBuf = tmp.path().join("out");
    let cluster = Cluster::start(&[], &[killed_at_first_task()]);
    let r = cluster.run(&config, DEMO_AS_OF, &[]);
    assert_eq!(r.code, 2, "{}\n{}", r.stderr, cluster.logs());
    let line = error_line(&r);
    assert!(line.contains("Job") && line.contains("failed"), "{line}");
    assert_eq!(snapshot_files(&out), before, "the output changed");
}

/// The only executor is SIGKILLed and the scheduler has declared it lost before the run
/// starts: Ballista's own check (which covers only the jobs running when the executor was
/// lost) never fails the run's jobs, the scheduler cancels them once they have waited
/// `STRANDED_JOB_GRACE` without an executor, and the run exits 2 saying so; the output is
/// exactly as it was.
#[test]
fn a_run_on_a_cluster_whose_executors_are_gone_exits_2_and_changes_nothing() {
    let (tmp, config, before) = with_earlier_snapshot();
    let out: PathBuf = tmp.path().join("out");
    let mut cluster = Cluster::start(&[], &[vec![]]);
    let gone = cluster.executor_id(0);
    cluster.executors[0].kill().expect("kills the executor");
    cluster.executors[0].wait().expect("reaps the executor");
    wait_until(
        &format!("the scheduler to remove executor {gone}"),
        std::time::Duration::from_secs(120),
        std::time::Duration::from_millis(100),
        || {
            cluster
                .log("scheduler")
                .contains(&format!("Removing executor {gone}"))
                .then_some(())
        },
    );
    let r = cluster.run(&config, DEMO_AS_OF, &[]);
    assert_eq!(r.code, 2, "{}\n{}", r.stderr, cluster.logs());
    let line = error_line(&r);
    assert!(
        line.contains("Cancelled") && line.contains("without a live executor"),
        "{line}"
    );
    assert!(
        cluster
            .log("scheduler")
            .contains("cancelling the job: no executor has been alive to run its tasks"),
        "{}",
        cluster.logs()
    );
    assert_eq!(snapshot_files(&out), before, "the output changed");
}

/// A scheduler nobody listens for: exit 2 naming HOST:PORT, before the lock is taken; the
/// output (holding an earlier snapshot) is exactly as it was.
#[test]
fn an_unreachable_scheduler_exits_2_naming_it_and_changes_nothing() {
    let (tmp, config, before) = with_earlier_snapshot();
    let out: PathBuf = tmp.path().join("out");
    let port = free_port();
    let env = vec![
        ("SEGFLOW_RUNTIME_ENGINE".to_string(), "ballista".to_string()),
        (
            "SEGFLOW_RUNTIME_SCHEDULER".to_string(),
            format!("df://127.0.0.1:{port}"),
        ),
    ];
    let r = run_at_env(&config, DEMO_AS_OF, &env);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = error_line(&r);
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("scheduler"), "{line}");
    assert_eq!(snapshot_files(&out), before, "the output changed");
}

/// `segflow executor` refuses a scheduler address it cannot parse, naming the flag.
#[test]
fn an_executor_with_a_bad_scheduler_address_exits_2_naming_the_flag() {
    let out = segflow_command()
        .args([
            "executor",
            "--scheduler",
            "df://host:notaport",
            "--work-dir",
            "/tmp/never-created-by-segflow",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--scheduler") && stderr.contains("notaport"),
        "{stderr}"
    );
}

/// `segflow explain` with `engine = "ballista"` shows the stages the scheduler splits the
/// model into — numbered in order, each reading only earlier stages' shuffles, the last one
/// the job's result — planned in the process, so no scheduler needs to listen.
#[test]
fn explain_on_the_cluster_engine_shows_the_distributed_stages_without_a_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let env = vec![
        ("SEGFLOW_RUNTIME_ENGINE".to_string(), "ballista".to_string()),
        (
            "SEGFLOW_RUNTIME_SCHEDULER".to_string(),
            format!("df://127.0.0.1:{}", free_port()),
        ),
    ];
    // The distributed plan `explain` prints for `model`.
    let distributed_plan = |model: &str| {
        let r = segflow_env(
            &["explain", model, "--config", config.to_str().unwrap()],
            &env,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("== physical_plan =="), "{}", r.stdout);
        r.stdout
            .split("== distributed_plan ==")
            .nth(1)
            .unwrap_or_else(|| panic!("no distributed plan:\n{}", r.stdout))
            .to_string()
    };
    // A grouping by (dimension, value): a partial aggregate, a hash shuffle, the final one.
    let distributed = distributed_plan("acquisition_value");
    for needle in [
        "Stage 1 (",
        "-> shuffled by Hash([dimension@0, value@1], 2)",
        "AggregateExec: mode=Partial",
        "Stage 2 (2 task(s)) -> the job's result",
        "UnresolvedShuffleExec: stage=1",
        "AggregateExec: mode=FinalPartitioned",
    ] {
        assert!(
            distributed.contains(needle),
            "`{needle}` missing:\n{distributed}"
        );
    }

    // A model of many stages: each reads only the shuffles of earlier ones.
    let distributed = distributed_plan("cohort_retention");
    let stages: Vec<&str> = distributed.split("\nStage ").skip(1).collect();
    assert!(stages.len() > 3, "{distributed}");
    for (i, stage) in stages.iter().enumerate() {
        let number: usize = stage.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(number, i + 1, "{distributed}");
        for read in stage.split("UnresolvedShuffleExec: stage=").skip(1) {
            let from: usize = read.split(',').next().unwrap().parse().unwrap();
            assert!(
                from < number,
                "stage {number} reads stage {from}:\n{distributed}"
            );
        }
        assert_eq!(
            stage.contains("-> the job's result"),
            i + 1 == stages.len(),
            "{distributed}"
        );
    }
    assert!(
        !tmp.path().join("out").exists(),
        "explain created the output"
    );
}
