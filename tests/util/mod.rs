//! Helpers shared by every test module: running the `segflow` binary, configs on the demo
//! data, reading published tables back ([`tables`]), snapshot files of expected output
//! ([`snapshot`]) and deadlines for everything that waits ([`wait`]).

mod snapshot;
mod tables;
mod wait;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) use snapshot::{assert_snapshot, UPDATE_SNAPSHOTS};
pub(crate) use tables::{
    assert_matches_csv, assert_rows_match_csv, display_rows, manifest, read_table, run_minimal,
    sorted_dump, write_columns, write_minimal_orders, write_orders_with_nulls,
};
pub(crate) use wait::{
    assert_finishes_ok, finish_within, output_within, stderr_tail, wait_until, Deadline,
    RUN_DEADLINE,
};

/// The `--as-of` of the demo runs: the day after the demo's newest order.
pub(crate) const DEMO_AS_OF: &str = "2026-11-21";

/// The repository's root (fixtures, `sql/`, `ci/`, `tests/snapshots/`).
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a finished `segflow` process left: its exit code (-1 when killed by a signal) and
/// its output.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The `segflow` binary as a command, without the test harness's own variable
/// [`UPDATE_SNAPSHOTS`] (segflow refuses `SEGFLOW_*` variables it does not know).
pub(crate) fn segflow_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_segflow"));
    command.env_remove(UPDATE_SNAPSHOTS);
    command
}

pub(crate) fn segflow(args: &[&str]) -> Run {
    segflow_env(args, &[])
}

/// Runs segflow with extra environment variables; a process still running after
/// [`RUN_DEADLINE`] is killed and fails the test.
pub(crate) fn segflow_env(args: &[&str], env: &[(String, String)]) -> Run {
    let child = segflow_command()
        .args(["--log-format", "json"])
        .args(args)
        .env_remove("SEGFLOW_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("segflow starts");
    output_within(
        child,
        RUN_DEADLINE,
        &format!("`segflow {}`", args.join(" ")),
    )
    .into()
}

/// The error line segflow printed (logs are JSON lines; the error is plain text).
pub(crate) fn error_line(r: &Run) -> String {
    r.stderr
        .lines()
        .filter(|l| !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes a config into `dir` that reads the demo data with the demo mapping.
pub(crate) fn demo_config(dir: &Path, extra: &str) -> PathBuf {
    let demo = repo().join("fixtures/demo");
    let text = std::fs::read_to_string(demo.join("segflow.toml")).unwrap();
    let text = text
        .replace(
            "uri = \"orders\"",
            &format!("uri = \"{}\"", demo.join("orders").display()),
        )
        .replace(
            "uri = \"customers.parquet\"",
            &format!("uri = \"{}\"", demo.join("customers.parquet").display()),
        )
        .replace(
            "uri = \"marketing_spend.parquet\"",
            &format!(
                "uri = \"{}\"",
                demo.join("marketing_spend.parquet").display()
            ),
        )
        .replace("uri = \"../../out\"", "uri = \"out\"");
    let path = dir.join("segflow.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// The demo config with one piece of text replaced.
pub(crate) fn demo_config_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let c = demo_config(dir, "");
    let text = std::fs::read_to_string(&c).unwrap();
    assert!(text.contains(from), "`{from}` not in the demo config");
    std::fs::write(&c, text.replace(from, to)).unwrap();
    c
}

/// The demo's orders folder, as the demo config names it.
pub(crate) fn demo_orders() -> String {
    repo().join("fixtures/demo/orders").display().to_string()
}

/// `segflow run --config <config> --as-of <as_of>`.
pub(crate) fn run_at(config: &Path, as_of: &str) -> Run {
    run_at_env(config, as_of, &[])
}

/// [`run_at`] with extra environment variables.
pub(crate) fn run_at_env(config: &Path, as_of: &str, env: &[(String, String)]) -> Run {
    segflow_env(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--as-of",
            as_of,
        ],
        env,
    )
}

/// `segflow <global...> run --config <config> --as-of <as_of>`, to run with an environment
/// [`segflow_env`] does not give (bytes that are not UTF-8, `SEGFLOW_CONFIG` kept) or to
/// spawn.
pub(crate) fn run_command(global: &[&str], config: &Path, as_of: &str) -> Command {
    let mut command = segflow_command();
    command.args(global).args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        as_of,
    ]);
    command
}

/// `segflow run --config <config> <extra...>`, which must succeed.
pub(crate) fn run_ok(config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = segflow(&args);
    assert_eq!(r.code, 0, "segflow failed:\n{}", r.stderr);
    r
}

/// Every file under `dir`, by path relative to it, with its bytes ("nothing changed"
/// compares two of these).
pub(crate) fn snapshot_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Runs with a broken setup; checks nothing was published; returns (exit code, error text).
pub(crate) fn failing(setup: impl FnOnce(&Path) -> PathBuf) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let r = run_at(&config, DEMO_AS_OF);
    assert!(
        !tmp.path().join("out/_manifest").exists(),
        "a failed run published something"
    );
    (r.code, error_line(&r))
}

/// The demo config with one extra model file `models/<name>`.
pub(crate) fn with_model(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join(name), sql).unwrap();
    demo_config(dir, "[models]\npaths = [\"models\"]\n")
}

/// A run with one extra model file exits with `code` and an error containing every needle.
pub(crate) fn assert_model_fails(file: &str, sql: &str, code: i32, needles: &[&str]) {
    let (actual, err) = failing(|d| with_model(d, file, sql));
    assert_eq!(actual, code, "{file}: {err}");
    for n in needles {
        assert!(err.contains(n), "{file}: `{n}` missing from: {err}");
    }
}
