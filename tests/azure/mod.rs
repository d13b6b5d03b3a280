//! Azure Blob Storage tests against Azurite, Microsoft's storage emulator (`azurite-blob`,
//! installed by `ci/test.sh` with npm, path in `AZURITE_BIN`): one in-memory instance per
//! test on a free loopback port, with one container made by `ci/azurite_container.py`.
//! segflow reaches it through `MicrosoftAzureBuilder::from_env()` in emulator mode
//! (`AZURE_STORAGE_USE_EMULATOR`, `AZURITE_BLOB_STORAGE_URL`): the publish protocol (create-only
//! `_lock`, conditional lock updates, staged files copied into place, manifests) runs against
//! Azurite's implementation of the Blob REST API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};

use crate::crash::{kill_at_every_step, Tree};
use crate::s3::{
    assert_one_demo_snapshot, assert_one_of_two_racing_runs_publishes,
    assert_only_a_stale_lock_is_taken_over, download, free_port, put_object, python, run_env,
    store_tree, upload_dir, wait_for_port, Emulator,
};
use crate::util::{
    demo_config, demo_orders, manifest, read_table, repo, run_ok, sorted_dump, DEMO_AS_OF,
};

/// Azurite's development account and its well-known key (published by Microsoft for the
/// emulator; not a secret).
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The `azurite-blob` launcher `ci/test.sh` installs and exports as `AZURITE_BIN`.
fn azurite_bin() -> PathBuf {
    let Some(bin) = std::env::var_os("AZURITE_BIN").map(PathBuf::from) else {
        panic!(
            "AZURITE_BIN is not set: run ci/test.sh once (it installs Azurite 3.35.0 with npm \
             and exports AZURITE_BIN=<dir>/node_modules/.bin/azurite-blob), or export it"
        );
    };
    assert!(
        bin.exists(),
        "AZURITE_BIN={} does not exist: run ci/test.sh once (it installs Azurite)",
        bin.display()
    );
    bin
}

/// An in-memory Azurite blob service on loopback, stopped on drop.
pub struct Azurite {
    child: Child,
    pub port: u16,
    pub rt: tokio::runtime::Runtime,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    pub fn start() -> Azurite {
        let port = free_port();
        let mut child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob starts");
        wait_for_port(port, &mut child, "azurite");
        Azurite {
            child,
            port,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a container (object_store creates none).
    pub fn create_container(&self, container: &str) {
        let out = Command::new(python())
            .arg(repo().join("ci/azurite_container.py"))
            .args([&self.endpoint(), container])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "create container {container}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The environment segflow needs to reach this emulator (the development account and
    /// key are object_store's emulator defaults).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint()),
        ]
    }

    /// A client of this emulator. Built with an explicit endpoint, not emulator mode: that
    /// reads the URL from the process environment, shared by the tests running at once.
    pub fn store(&self, container: &str) -> MicrosoftAzure {
        MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_endpoint(format!("{}/{ACCOUNT}", self.endpoint()))
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .unwrap()
    }

    /// Uploads a local directory (recursively) under `prefix`.
    pub fn upload_dir(&self, container: &str, dir: &Path, prefix: &str) {
        upload_dir(&self.rt, &self.store(container), dir, prefix);
    }

    pub fn put(&self, container: &str, key: &str, bytes: Vec<u8>) {
        put_object(&self.rt, &self.store(container), key, bytes);
    }

    /// Every object under `prefix`, by path relative to it.
    pub fn tree(&self, container: &str, prefix: &str) -> Tree {
        store_tree(&self.rt, &self.store(container), prefix)
    }

    /// Copies the objects under `prefix` into a local directory (to read tables back).
    pub fn download(&self, container: &str, prefix: &str, to: &Path) {
        download(&self.rt, &self.store(container), prefix, to);
    }
}

/// The demo config with orders read from `az://bucket/input/orders` and the output at
/// `az://bucket/out`, plus `extra` config text.
fn az_config(dir: &Path, extra: &str) -> PathBuf {
    let c = demo_config(dir, extra);
    let text = std::fs::read_to_string(&c).unwrap();
    let text = text
        .replace(
            &format!("uri = \"{}\"", demo_orders()),
            "uri = \"az://bucket/input/orders\"",
        )
        .replace("uri = \"out\"", "uri = \"az://bucket/out\"");
    assert!(text.contains("az://bucket/input/orders") && text.contains("az://bucket/out"));
    std::fs::write(&c, text).unwrap();
    c
}

/// Azurite with container `bucket` holding the demo orders under `input/orders`.
fn azurite_with_demo() -> Azurite {
    let azurite = Azurite::start();
    azurite.create_container("bucket");
    azurite.upload_dir(
        "bucket",
        &repo().join("fixtures/demo/orders"),
        "input/orders",
    );
    azurite
}

#[test]
fn azure_round_trip_equals_the_local_run_and_a_rerun_leaves_one_snapshot() {
    let azurite = azurite_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    run_ok(&demo_config(local.path(), ""), &["--as-of", DEMO_AS_OF]);
    let config = az_config(tmp.path(), "");
    for round in 0..2 {
        let r = run_env(&config, &azurite.env(), &["--as-of", DEMO_AS_OF]);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        assert!(
            r.stdout.contains("az://bucket/out/rfm/as_of=2026-11-21"),
            "{}",
            r.stdout
        );
    }
    let tree = azurite.tree("bucket", "out");
    let m = assert_one_demo_snapshot(&tree);
    // The input was read from Azure: every orders file and row, as in the local run.
    let local_m = manifest(&local.path().join("out"), DEMO_AS_OF);
    assert_eq!(m["input"]["files"], local_m["input"]["files"]);
    assert_eq!(m["input"]["rows_read"], local_m["input"]["rows_read"]);
    let report = format!("_report/as_of={DEMO_AS_OF}/index.html");
    assert_eq!(m["report"]["files"], serde_json::json!([report]));
    assert_eq!(m["report"]["bytes"], tree[&report].len());

    let down = tmp.path().join("down");
    azurite.download("bucket", "out", &down);
    let local_out = local.path().join("out");
    let rt = &azurite.rt;
    for model in m["tables"].as_object().unwrap().keys() {
        assert_eq!(
            sorted_dump(&rt.block_on(read_table(&down, model, DEMO_AS_OF))),
            sorted_dump(&rt.block_on(read_table(&local_out, model, DEMO_AS_OF))),
            "{model} differs between Azure and local"
        );
    }
}

#[test]
fn azure_sigkill_at_every_publish_step_keeps_the_snapshot_and_the_next_run_cleans_up() {
    let azurite = azurite_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = az_config(tmp.path(), "");
    kill_at_every_step(
        &config,
        &azurite.env(),
        &|| azurite.tree("bucket", "out"),
        false,
    );
}

impl Emulator for Azurite {
    fn env(&self) -> Vec<(String, String)> {
        Azurite::env(self)
    }

    fn tree(&self, container: &str, prefix: &str) -> Tree {
        Azurite::tree(self, container, prefix)
    }

    fn put(&self, container: &str, key: &str, bytes: Vec<u8>) {
        Azurite::put(self, container, key, bytes);
    }
}

#[test]
fn azure_two_runs_on_one_output_exactly_one_publishes_the_other_names_the_holder() {
    let azurite = azurite_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = az_config(tmp.path(), "");
    assert_one_of_two_racing_runs_publishes(&azurite, &config, "az://bucket/out");
}

#[test]
fn azure_lock_with_an_old_heartbeat_is_taken_over_a_fresh_one_is_not() {
    let azurite = azurite_with_demo();
    let tmp = tempfile::tempdir().unwrap();
    let config = az_config(tmp.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let out = "uri = \"az://bucket/out\"";
    std::fs::write(
        &config,
        text.replace(out, &format!("{out}\nlock_timeout = \"10m\"")),
    )
    .unwrap();
    assert_only_a_stale_lock_is_taken_over(&azurite, &config);
}
