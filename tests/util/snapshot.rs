//! Expected output kept in `tests/snapshots/<name>.txt` instead of long string literals.
//!
//! A snapshot holds the text exactly, with `{key}` where a run-dependent value goes (a temp
//! path, say). On a mismatch the test fails with a line diff; with
//! `SEGFLOW_UPDATE_SNAPSHOTS=1` it rewrites the file from the output instead (each value back
//! to its `{key}`), so a reviewer updates the snapshots once and reviews them in the diff.
//! segflow itself refuses `SEGFLOW_*` variables it does not know, so every segflow process
//! the tests start is started without this one ([`super::segflow_command`]).

use std::path::PathBuf;

use super::repo;

/// Set to 1, snapshots that differ are rewritten instead of failing their test.
pub(crate) const UPDATE_SNAPSHOTS: &str = "SEGFLOW_UPDATE_SNAPSHOTS";

fn snapshot_path(name: &str) -> PathBuf {
    repo().join("tests/snapshots").join(format!("{name}.txt"))
}

/// The snapshot's text with every `{key}` of `vars` replaced by its value.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{key}}}"), value)
        })
}

/// The inverse of [`fill`]: every value back to its `{key}`, longest value first.
fn unfill(text: &str, vars: &[(&str, &str)]) -> String {
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
    vars.iter().fold(text.to_string(), |text, (key, value)| {
        text.replace(value, &format!("{{{key}}}"))
    })
}

/// A line diff of two texts (longest common subsequence): `  ` both, `- ` expected only,
/// `+ ` actual only. Each line ends in `⏎` so trailing blanks show.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.split('\n').collect();
    let b: Vec<&str> = actual.split('\n').collect();
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        let (mark, line) = if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
            (' ', a[i - 1])
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            i += 1;
            ('-', a[i - 1])
        } else {
            j += 1;
            ('+', b[j - 1])
        };
        out.push_str(&format!("{mark} {line}⏎\n"));
    }
    out
}

/// Asserts that `actual` is the text of `tests/snapshots/<name>.txt` with each `{key}` of
/// `vars` replaced by its value; see the module documentation for updating it.
pub(crate) fn assert_snapshot(name: &str, actual: &str, vars: &[(&str, &str)]) {
    let path = snapshot_path(name);
    let expected = std::fs::read_to_string(&path).map(|t| fill(&t, vars));
    if expected.as_deref().ok() == Some(actual) {
        return;
    }
    if std::env::var_os(UPDATE_SNAPSHOTS).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, unfill(actual, vars)).unwrap();
        eprintln!("{UPDATE_SNAPSHOTS}=1: rewrote {}", path.display());
        return;
    }
    match expected {
        Err(e) => panic!(
            "cannot read snapshot {}: {e}\nrerun with {UPDATE_SNAPSHOTS}=1 to write it from this output:\n{actual}",
            path.display()
        ),
        Ok(expected) => panic!(
            "output differs from snapshot {} (- snapshot, + output):\n{}\
             rerun with {UPDATE_SNAPSHOTS}=1 to rewrite the snapshot from the output, then review its diff",
            path.display(),
            diff(&expected, actual)
        ),
    }
}

#[test]
fn snapshot_diff_marks_changed_lines_and_placeholders_round_trip() {
    assert_eq!(
        diff("a\nb\nc\n", "a\nx\nc\n"),
        "  a⏎\n- b⏎\n+ x⏎\n  c⏎\n  ⏎\n"
    );
    let vars = [("m", "/tmp/t/models"), ("c", "/tmp/t/segflow.toml")];
    let template = "{m}/a.sql:1:1: error\n{c}:44:1: error\n";
    let text = fill(template, &vars);
    assert_eq!(
        text,
        "/tmp/t/models/a.sql:1:1: error\n/tmp/t/segflow.toml:44:1: error\n"
    );
    assert_eq!(unfill(&text, &vars), template);
}
