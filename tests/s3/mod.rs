//! S3 tests against a real S3-compatible server: moto's standalone server from the test
//! venv (`ci/test.sh` installs it), one per test on a free loopback port, and the loopback
//! fault proxy `ci/faultproxy.py` between segflow and moto where a test needs failures.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::crash::{
    assert_consistent, assert_same_tree, kill_at_every_step, paused_run, Tree, AUDIENCE,
};
use crate::util::{
    assert_finishes_ok, demo_config, demo_config_with, demo_orders, error_line, manifest,
    read_table, repo, run_ok, segflow_env, snapshot_files, sorted_dump, wait_until, Run,
    DEMO_AS_OF,
};

pub const KEY_ID: &str = "segflow-test-key-id-7f3a9";
pub const SECRET: &str = "segflow-test-secret-Q8xZ2vK4mN7pL1";

/// The test venv's Python (`TEST_VENV_PYTHON`, else `.venv/bin/python`).
pub fn python() -> PathBuf {
    let p = std::env::var_os("TEST_VENV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run ci/test.sh once (it creates the venv with moto[server])",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (60 s at most) until `child`, a server, listens on `port` of loopback.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    wait_until(
        &format!("{what} to listen on 127.0.0.1:{port}"),
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited at start: {status}");
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        },
    );
}

/// A moto S3 server on loopback, stopped on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    rt: tokio::runtime::Runtime,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let mut child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        wait_for_port(port, &mut child, "moto");
        Moto {
            child,
            port,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts the unsigned request).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }

    /// The environment segflow needs to reach this server (no [storage.s3] needed).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            // No instance-metadata lookups on this machine.
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn store(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap()
    }

    /// Uploads a local directory (recursively) under `prefix`.
    pub fn upload_dir(&self, bucket: &str, dir: &Path, prefix: &str) {
        upload_dir(&self.rt, &self.store(bucket), dir, prefix);
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        put_object(&self.rt, &self.store(bucket), key, bytes);
    }

    /// Every object under `prefix`, by path relative to it.
    pub fn tree(&self, bucket: &str, prefix: &str) -> Tree {
        store_tree(&self.rt, &self.store(bucket), prefix)
    }

    /// Copies the objects under `prefix` into a local directory (to read tables back).
    pub fn download(&self, bucket: &str, prefix: &str, to: &Path) {
        download(&self.rt, &self.store(bucket), prefix, to);
    }
}

/// Uploads a local directory (recursively) under `prefix` of `store`.
pub fn upload_dir(rt: &tokio::runtime::Runtime, store: &dyn ObjectStore, dir: &Path, prefix: &str) {
    for (rel, bytes) in snapshot_files(dir) {
        rt.block_on(store.put(
            &ObjPath::from(format!("{prefix}/{rel}")),
            PutPayload::from(bytes),
        ))
        .unwrap();
    }
}

/// Puts one object.
pub fn put_object(
    rt: &tokio::runtime::Runtime,
    store: &dyn ObjectStore,
    key: &str,
    bytes: Vec<u8>,
) {
    rt.block_on(store.put(&ObjPath::from(key), PutPayload::from(bytes)))
        .unwrap();
}

/// Every object under `prefix` of `store`, by path relative to it.
pub fn store_tree(rt: &tokio::runtime::Runtime, store: &dyn ObjectStore, prefix: &str) -> Tree {
    rt.block_on(async {
        let listed: Vec<_> = store
            .list(Some(&ObjPath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for m in listed {
            let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            let rel = m.location.as_ref()[prefix.len() + 1..].to_string();
            out.insert(rel, bytes.to_vec());
        }
        out
    })
}

/// Copies the objects under `prefix` of `store` into a local directory (to read tables
/// back).
pub fn download(rt: &tokio::runtime::Runtime, store: &dyn ObjectStore, prefix: &str, to: &Path) {
    for (rel, bytes) in store_tree(rt, store, prefix) {
        let p = to.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// The demo config with orders read from `s3://bucket/input/orders` and the output at
/// `s3://bucket/out`, plus `extra` config text.
pub(crate) fn s3_config(dir: &Path, extra: &str) -> PathBuf {
    let c = demo_config(dir, extra);
    let text = std::fs::read_to_string(&c).unwrap();
    let text = text
        .replace(
            &format!("uri = \"{}\"", demo_orders()),
            "uri = \"s3://bucket/input/orders\"",
        )
        .replace("uri = \"out\"", "uri = \"s3://bucket/out\"");
    assert!(text.contains("s3://bucket/input/orders") && text.contains("s3://bucket/out"));
    std::fs::write(&c, text).unwrap();
    c
}

/// [`s3_config`] with `[output] lock_timeout` set.
fn s3_config_with_lock_timeout(dir: &Path, timeout: &str) -> PathBuf {
    let config = s3_config(dir, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let out = "uri = \"s3://bucket/out\"";
    std::fs::write(
        &config,
        text.replace(out, &format!("{out}\nlock_timeout = \"{timeout}\"")),
    )
    .unwrap();
    config
}

pub(crate) fn moto_with_demo() -> Moto {
    let moto = Moto::start(&[]);
    moto.create_bucket("bucket");
    moto.upload_dir(
        "bucket",
        &repo().join("fixtures/demo/orders"),
        "input/orders",
    );
    moto
}

pub fn run_env(config: &Path, env: &[(String, String)], extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    segflow_env(&args, env)
}

/// The output holds exactly the demo snapshot's files (what its manifest lists plus each
/// table's `_SUCCESS`) and no lock; returns that manifest.
pub fn assert_one_demo_snapshot(tree: &Tree) -> serde_json::Value {
    assert_consistent(tree);
    let m: serde_json::Value =
        serde_json::from_slice(&tree[&format!("_manifest/as_of={DEMO_AS_OF}.json")]).unwrap();
    let mut expected: Vec<String> = vec![];
    for t in m["tables"].as_object().unwrap().values() {
        expected.push(format!("{}/_SUCCESS", t["path"].as_str().unwrap()));
        for f in t["files"].as_array().unwrap() {
            expected.push(f.as_str().unwrap().to_string());
        }
    }
    expected.sort();
    let actual: Vec<String> = tree
        .keys()
        .filter(|k| !k.starts_with('_'))
        .cloned()
        .collect();
    assert_eq!(actual, expected);
    assert!(!tree.contains_key("_lock"));
    m
}

#[test]
fn s3_round_trip_equals_the_local_run_and_a_rerun_leaves_one_snapshot() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    run_ok(
        &demo_config(local.path(), AUDIENCE),
        &["--as-of", DEMO_AS_OF],
    );
    let config = s3_config(tmp.path(), AUDIENCE);
    for round in 0..2 {
        let r = run_env(&config, &moto.env(), &["--as-of", DEMO_AS_OF]);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        assert!(
            r.stdout.contains("s3://bucket/out/rfm/as_of=2026-11-21"),
            "{}",
            r.stdout
        );
    }
    let tree = moto.tree("bucket", "out");
    let m = assert_one_demo_snapshot(&tree);
    // The report keeps its name on object storage and is the one the manifest lists.
    let report = format!("_report/as_of={DEMO_AS_OF}/index.html");
    assert_eq!(m["report"]["files"], serde_json::json!([report]));
    assert_eq!(m["report"]["bytes"], tree[&report].len());
    assert!(String::from_utf8_lossy(&tree[&report]).contains(m["run_id"].as_str().unwrap()));
    let under_report: Vec<&String> = tree.keys().filter(|k| k.starts_with("_report/")).collect();
    assert_eq!(under_report, vec![&report]);
    // So do the audience files, equal to the local run's.
    let audience = format!("_audiences/as_of={DEMO_AS_OF}/champions.csv");
    assert_eq!(m["audiences"]["files"], serde_json::json!([audience]));
    let under: Vec<&String> = tree
        .keys()
        .filter(|k| k.starts_with("_audiences/"))
        .collect();
    assert_eq!(under, vec![&audience]);
    assert_eq!(
        tree[&audience],
        std::fs::read(local.path().join("out").join(&audience)).unwrap()
    );

    let down = tmp.path().join("down");
    moto.download("bucket", "out", &down);
    let local_out = local.path().join("out");
    for model in m["tables"].as_object().unwrap().keys() {
        assert_eq!(
            sorted_dump(&moto.rt.block_on(read_table(&down, model, DEMO_AS_OF))),
            sorted_dump(&moto.rt.block_on(read_table(&local_out, model, DEMO_AS_OF))),
            "{model} differs between S3 and local"
        );
    }
}

#[test]
fn s3_sigkill_at_every_publish_step_keeps_the_snapshot_and_the_next_run_cleans_up() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "");
    kill_at_every_step(&config, &moto.env(), &|| moto.tree("bucket", "out"), false);
}

#[test]
fn s3_run_killed_after_its_manifest_before_its_report_gets_the_report_put_by_the_next_run() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), AUDIENCE);
    let mut env = moto.env();
    env.push(("SEGFLOW_FAILPOINTS".into(), "before_report=kill".into()));
    let r = run_env(&config, &env, &["--as-of", "2026-10-31"]);
    assert_eq!(r.code, -1, "not killed before the report: {}", r.stderr);
    let tree = moto.tree("bucket", "out");
    let report = "_report/as_of=2026-10-31/index.html";
    let m: serde_json::Value =
        serde_json::from_slice(&tree["_manifest/as_of=2026-10-31.json"]).unwrap();
    assert!(
        !tree.contains_key(report),
        "the report was put before the kill"
    );
    let audience = "_audiences/as_of=2026-10-31/champions.csv";
    assert!(!tree.contains_key(audience));

    // The next run (another snapshot) finishes the dead run's commit from its staging.
    let r = run_env(&config, &moto.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tree = moto.tree("bucket", "out");
    assert_consistent(&tree);
    let html = String::from_utf8_lossy(&tree[report]);
    assert!(
        html.contains(m["run_id"].as_str().unwrap()),
        "not the dead run's report"
    );
    assert_eq!(m["report"]["bytes"], tree[report].len());
    // And its audience file, as the dead run staged it.
    assert!(tree[audience].starts_with(b"email\n"));
}

/// An object store emulator the storage tests run segflow against (moto, Azurite).
pub trait Emulator {
    /// The environment that points segflow at it.
    fn env(&self) -> Vec<(String, String)>;
    /// Every object under `prefix` of `bucket`, by path relative to it.
    fn tree(&self, bucket: &str, prefix: &str) -> Tree;
    fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>);
}

impl Emulator for Moto {
    fn env(&self) -> Vec<(String, String)> {
        Moto::env(self)
    }

    fn tree(&self, bucket: &str, prefix: &str) -> Tree {
        Moto::tree(self, bucket, prefix)
    }

    fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        Moto::put(self, bucket, key, bytes);
    }
}

/// Two runs on one output (`url`, bucket `bucket`, prefix `out`): the second, started while
/// the first holds the lock, exits 2 naming the URL and the holder; exactly one publishes.
pub fn assert_one_of_two_racing_runs_publishes(store: &dyn Emulator, config: &Path, url: &str) {
    let dir = config.parent().unwrap();
    let (first, flag) = paused_run(config, &store.env(), "after_lock", dir);
    let second = run_env(config, &store.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    let err = error_line(&second);
    assert!(
        err.contains("locked") && err.contains(url) && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    std::fs::remove_file(&flag).unwrap();
    assert_finishes_ok(first, "the resumed first run");
    let tree = store.tree("bucket", "out");
    assert_consistent(&tree);
    let manifests: Vec<&String> = tree
        .keys()
        .filter(|k| k.starts_with("_manifest/as_of="))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
}

#[test]
fn two_runs_on_one_s3_output_exactly_one_publishes_the_other_names_the_holder() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "");
    assert_one_of_two_racing_runs_publishes(&moto, &config, "s3://bucket/out");
}

pub fn lock_json(
    host: &str,
    started: chrono::DateTime<chrono::Utc>,
    beat: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    format!(
        r#"{{"run_id":"nightly-elsewhere","host":"{host}","pid":4242,"started_at":"{}","heartbeat_at":"{}"}}"#,
        started.to_rfc3339(),
        beat.to_rfc3339()
    )
    .into_bytes()
}

/// With `lock_timeout = "10m"` in `config`: a lock of another host that started five hours
/// ago and still beats is left alone (exit 2 naming it); one whose heartbeat stopped 11
/// minutes ago is taken over and the run publishes.
pub fn assert_only_a_stale_lock_is_taken_over(store: &dyn Emulator, config: &Path) {
    let now = chrono::Utc::now();
    let live = lock_json("other-host", now - chrono::Duration::hours(5), now);
    store.put("bucket", "out/_lock", live.clone());
    let r = run_env(config, &store.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("nightly-elsewhere"),
        "{}",
        error_line(&r)
    );
    assert_eq!(store.tree("bucket", "out")["_lock"], live);
    store.put(
        "bucket",
        "out/_lock",
        lock_json(
            "other-host",
            now - chrono::Duration::hours(5),
            now - chrono::Duration::minutes(11),
        ),
    );
    let r = run_env(config, &store.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tree = store.tree("bucket", "out");
    assert!(!tree.contains_key("_lock"));
    assert_consistent(&tree);
    assert!(tree.contains_key(&format!("_manifest/as_of={DEMO_AS_OF}.json")));
}

#[test]
fn an_s3_lock_with_an_old_heartbeat_is_taken_over_a_fresh_one_is_not() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config_with_lock_timeout(tmp.path(), "10m");
    assert_only_a_stale_lock_is_taken_over(&moto, &config);
}

/// Starts `ci/faultproxy.py` in front of moto; returns it and its port.
fn fault_proxy(moto: &Moto, rate: &str, dir: &Path) -> (Child, u16, PathBuf) {
    let port_file = dir.join(format!("proxy-port-{rate}"));
    let stats = dir.join(format!("proxy-stats-{rate}.json"));
    let mut child = Command::new(python())
        .arg(repo().join("ci/faultproxy.py"))
        .args(["--upstream", &format!("127.0.0.1:{}", moto.port)])
        .args([
            "--fail-rate",
            rate,
            "--seed",
            "7",
            "--faults",
            "503,reset,slow",
        ])
        .args(["--slow-seconds", "5"])
        .arg("--port-file")
        .arg(&port_file)
        .arg("--stats-file")
        .arg(&stats)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = wait_until(
        &format!(
            "the fault proxy to write its port to {}",
            port_file.display()
        ),
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the fault proxy exited at start: {status}");
            }
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse::<u16>()
                .ok()
        },
    );
    wait_for_port(port, &mut child, "fault proxy");
    (child, port, stats)
}

#[test]
fn s3_requests_failing_ten_percent_succeed_through_retries_all_failing_exits_2() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let (mut proxy, port, stats) = fault_proxy(&moto, "0.1", tmp.path());
    let storage = format!(
        "[storage.s3]\nendpoint = \"http://127.0.0.1:{port}\"\nallow_http = true\nrequest_timeout = \"2s\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"200ms\"\n"
    );
    let config = s3_config(tmp.path(), &storage);
    let r = run_env(&config, &moto.env(), &["--as-of", DEMO_AS_OF]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert!(
        s["fault_total"].as_u64().unwrap() > 0,
        "no fault injected: {s}"
    );
    let tree = moto.tree("bucket", "out");
    assert_consistent(&tree);
    let down = tmp.path().join("down");
    moto.download("bucket", "out", &down);
    assert_eq!(
        moto.rt.block_on(read_table(&down, "rfm", DEMO_AS_OF)).len(),
        2940
    );

    // Every request fails: exit 2 naming the operation and the URL, nothing published.
    let before = moto.tree("bucket", "out");
    let (mut proxy, port, _) = fault_proxy(&moto, "1.0", tmp.path());
    let dir = tmp.path().join("all-fail");
    std::fs::create_dir_all(&dir).unwrap();
    let storage = format!(
        "[storage.s3]\nendpoint = \"http://127.0.0.1:{port}\"\nallow_http = true\nrequest_timeout = \"1s\"\nmax_retries = 2\nretry_timeout = \"3s\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n"
    );
    let config = s3_config(&dir, &storage);
    let r = run_env(&config, &moto.env(), &["--as-of", "2026-11-20"]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("s3://bucket/out") && err.contains("failed"),
        "{err}"
    );
    assert_same_tree(
        &moto.tree("bucket", "out"),
        &before,
        "a failed run changed the output",
    );
}

#[test]
fn wrong_secret_and_missing_bucket_exit_2_naming_the_bucket_and_never_the_secret() {
    // One unauthenticated call (the bucket), then moto checks credentials: ours are unknown.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    moto.create_bucket("guarded-bucket");
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(
        tmp.path(),
        "uri = \"out\"",
        "uri = \"s3://guarded-bucket/out\"",
    );
    let mut env = moto.env();
    env.push(("SEGFLOW_LOG".into(), "trace".into()));
    let r = run_env(&config, &env, &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("guarded-bucket"),
        "{}",
        error_line(&r)
    );
    for secret in [SECRET, KEY_ID] {
        assert!(
            !r.stderr.contains(secret) && !r.stdout.contains(secret),
            "secret leaked"
        );
    }

    let moto = Moto::start(&[]);
    let dir = tmp.path().join("missing");
    std::fs::create_dir_all(&dir).unwrap();
    let config = demo_config_with(&dir, "uri = \"out\"", "uri = \"s3://no-such-bucket/out\"");
    let r = run_env(&config, &moto.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        error_line(&r).contains("no-such-bucket"),
        "{}",
        error_line(&r)
    );
    assert!(!r.stderr.contains(SECRET));
}

#[test]
fn sigterm_mid_run_on_s3_exits_2_releases_the_lock_and_publishes_nothing() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "");
    let r = run_env(&config, &moto.env(), &["--as-of", "2026-06-30"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = moto.tree("bucket", "out");
    crate::crash::sigterm_while_paused(&config, &moto.env(), tmp.path());
    assert_same_tree(
        &moto.tree("bucket", "out"),
        &before,
        "a stopped run changed the output",
    );
}

#[test]
fn s3_heartbeat_keeps_a_long_run_from_being_taken_over() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config_with_lock_timeout(tmp.path(), "2s");
    crate::crash::heartbeat_keeps_a_long_run_locked(
        &config,
        &moto.env(),
        tmp.path(),
        "s3://bucket/out/_lock",
        &|| serde_json::from_slice(&moto.tree("bucket", "out")["_lock"]).unwrap(),
    );
}

#[test]
fn s3_inputs_may_be_a_file_a_prefix_or_a_glob() {
    let moto = moto_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "");
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    run_ok(&demo_config(&local, ""), &["--as-of", DEMO_AS_OF]);
    let all_rows = manifest(&local.join("out"), DEMO_AS_OF)["input"]["rows_read"].clone();
    let file = "s3://bucket/input/orders/year=2026/part-0.parquet";
    for (uri, files) in [
        ("s3://bucket/input/orders", 4),
        // DataFusion matches a glob against file names below hive folders.
        ("s3://bucket/input/orders/*.parquet", 4),
        (file, 1),
    ] {
        let out = tmp.path().join(format!("out-{files}-{}", uri.len()));
        let mut env = moto.env();
        env.push(("SEGFLOW_INPUT_ORDERS_URI".into(), uri.into()));
        let r = run_env(
            &config,
            &env,
            &["--as-of", DEMO_AS_OF, "--output", out.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{uri}: {}", r.stderr);
        let m = manifest(&out, DEMO_AS_OF);
        assert_eq!(m["input"]["files"], files, "{uri}");
        if files == 4 {
            assert_eq!(m["input"]["rows_read"], all_rows, "{uri}");
        }
    }
}

#[test]
fn s3_generate_writes_the_same_files_as_local_and_refuses_a_non_empty_prefix() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bucket");
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("orders");
    // One month of about 10 MiB: the upload goes multipart (8 MiB parts).
    let args = [
        "--lines",
        "900000",
        "--customers",
        "120000",
        "--months",
        "1",
    ];
    let gen = |out: &str, env: &[(String, String)]| {
        let mut all = vec!["generate", "--out", out];
        all.extend_from_slice(&args);
        segflow_env(&all, env)
    };
    let r = gen(local.to_str().unwrap(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = gen("s3://bucket/gen", &moto.env());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = moto.tree("bucket", "gen");
    assert!(written["month=2026-11/part-0.parquet"].len() > 8 * 1024 * 1024);
    assert_same_tree(&written, &snapshot_files(&local), "S3 and local differ");

    let r = gen("s3://bucket/gen", &moto.env());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("s3://bucket/gen") && err.contains("not empty"),
        "{err}"
    );
    assert_same_tree(
        &moto.tree("bucket", "gen"),
        &written,
        "a refused generate changed the output",
    );
}

#[test]
fn s3_generate_sigint_deletes_every_object_it_wrote() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bucket");
    moto.put("bucket", "other/keep.txt", b"kept".to_vec());
    let tmp = tempfile::tempdir().unwrap();
    crate::generate::sigint_while_paused("s3://bucket/gen", &moto.env(), tmp.path(), &|| {
        moto.tree("bucket", "gen")
            .contains_key("month=2023-12/part-0.parquet")
    });
    assert!(moto.tree("bucket", "gen").is_empty());
    assert_eq!(moto.tree("bucket", "other").len(), 1);
}
