//! `segflow forget`: erased customers leave every file of every kept snapshot (tables,
//! rejected rows, state, audience files) while every other row stays as it was; later runs
//! leave them out though the input still holds them; a kill at any step of the erasure
//! leaves each snapshot whole, and `forget` again finishes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Date32Array, Float64Array, Int64Array, StringArray};
use sha2::{Digest, Sha256};

use crate::crash::{
    assert_consistent, assert_manifests_complete, listed_dirs, manifests, state_files, Tree,
};
use crate::util::{display_rows, segflow, segflow_env, snapshot_files, sorted_dump, write_columns};

/// The customer every test erases: a champion with many orders, one line the
/// `invalid_revenue` gate rejects, and an email address in the audiences.
const ERASED: i64 = 7;
const DATES: [&str; 2] = ["1998-01-31", "1998-02-28"];
const NEXT: &str = "1998-03-31";

type Rows = Vec<BTreeMap<String, Option<String>>>;

fn address(id: i64) -> String {
    format!("  Customer.{id}@Example.com ")
}

/// A CDNOW-shaped history (integer customer ids, a purchase date, quantity and amount, and
/// an order number) of 240 customers from 1997-01 to 1998-03, with one rejected line per
/// tenth customer; and their customers file with addresses and consent.
fn write_inputs(dir: &Path) {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(1997, 1, 1).unwrap();
    let (mut ids, mut orders, mut days, mut qty, mut amount) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut order_no = 0i64;
    for c in 1..=240i64 {
        let n = if c == ERASED { 14 } else { 1 + (c * 7919) % 6 };
        for k in 0..n {
            order_no += 1;
            let day = (c * 13 + k * (29 + c % 17)) % 450;
            ids.push(c);
            orders.push(order_no);
            days.push((start + chrono::Duration::days(day) - epoch).num_days() as i32);
            qty.push(1 + (c + k) % 3);
            amount.push(
                10.0 + ((c * 31 + k * 17) % 90) as f64 + if c == ERASED { 40.0 } else { 0.0 },
            );
        }
        if c % 10 == 7 {
            order_no += 1;
            ids.push(c);
            orders.push(order_no);
            days.push((start + chrono::Duration::days(200) - epoch).num_days() as i32);
            qty.push(1);
            amount.push(f64::NAN);
        }
    }
    std::fs::create_dir_all(dir.join("orders")).unwrap();
    write_columns(
        &dir.join("orders/cdnow.parquet"),
        vec![
            ("customer_id", Arc::new(Int64Array::from(ids)), false),
            ("order_no", Arc::new(Int64Array::from(orders)), false),
            ("date", Arc::new(Date32Array::from(days)), false),
            ("quantity", Arc::new(Int64Array::from(qty)), false),
            ("amount", Arc::new(Float64Array::from(amount)), false),
        ],
    );
    let customers: Vec<i64> = (1..=240).collect();
    let emails: Vec<String> = customers.iter().map(|c| address(*c)).collect();
    write_columns(
        &dir.join("customers.parquet"),
        vec![
            (
                "customer_id",
                Arc::new(Int64Array::from(customers.clone())),
                false,
            ),
            ("email", Arc::new(StringArray::from(emails)), false),
            (
                "email_opt_in",
                Arc::new(BooleanArray::from(vec![true; 240])),
                false,
            ),
            (
                "ads_opt_in",
                Arc::new(BooleanArray::from(vec![true; 240])),
                false,
            ),
        ],
    );
}

fn project(dir: &Path) -> PathBuf {
    write_inputs(dir);
    let config = dir.join("segflow.toml");
    std::fs::write(
        &config,
        r#"[input.orders]
uri = "orders"
[input.orders.columns]
order_id = "order_no"
order_ts = "date"
revenue = "amount"

[input.customers]
uri = "customers.parquet"

[output]
uri = "out"

[gates]
invalid_revenue = "drop"

[[audiences]]
name = "best"
segmentation = "rfm"
segments = ["Champions", "Loyal"]
channel = "email"

[[audiences]]
name = "valuable"
segmentation = "clv"
segments = ["high value, low risk", "high value, medium risk", "high value, high risk"]
channel = "ads"
"#,
    )
    .unwrap();
    config
}

fn run(config: &Path, as_of: &str, extra: &[&str]) {
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        as_of,
    ];
    args.extend_from_slice(extra);
    let r = segflow(&args);
    assert_eq!(r.code, 0, "run {as_of}: {}", r.stderr);
}

/// A customers file `name` in `dir` holding `text`.
fn id_list(dir: &Path, name: &str, text: &str) -> PathBuf {
    let list = dir.join(name);
    std::fs::write(&list, text).unwrap();
    list
}

fn forget(config: &Path, list: &Path, failpoints: &str) -> crate::util::Run {
    let env: Vec<(String, String)> = match failpoints {
        "" => vec![],
        f => vec![("SEGFLOW_FAILPOINTS".into(), f.into())],
    };
    forget_env(config, list, &env)
}

fn forget_env(config: &Path, list: &Path, env: &[(String, String)]) -> crate::util::Run {
    segflow_env(
        &[
            "forget",
            "--customers",
            list.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        env,
    )
}

fn parquet_rows(bytes: &[u8]) -> Rows {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::copy_from_slice(bytes),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    display_rows(&batches)
}

/// Every Parquet folder of a snapshot (tables, rejected rows, each state table's base and
/// delta) by name, with its rows as the files the manifest lists hold them.
fn snapshot_rows(tree: &Tree, m: &serde_json::Value) -> BTreeMap<String, Rows> {
    let mut out = BTreeMap::new();
    for (dir, files) in listed_dirs(m) {
        let rows = files
            .iter()
            .filter(|f| f.ends_with(".parquet"))
            .flat_map(|f| parquet_rows(&tree[f]))
            .collect();
        out.insert(dir, rows);
    }
    for (model, t) in m["state"]["tables"].as_object().into_iter().flatten() {
        for layer in ["files", "delta"] {
            let rows = t[layer]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|f| parquet_rows(&tree[f.as_str().unwrap()]))
                .collect();
            out.insert(format!("state {model} {layer}"), rows);
        }
    }
    out
}

fn holds(rows: &Rows, id: &str) -> bool {
    rows.iter().any(|r| {
        r.get("customer_id")
            .is_some_and(|v| v.as_deref() == Some(id))
    })
}

fn without(rows: &Rows, id: &str) -> Rows {
    rows.iter()
        .filter(|r| {
            r.get("customer_id")
                .is_none_or(|v| v.as_deref() != Some(id))
        })
        .cloned()
        .collect()
}

/// The erased customer's address as each upload file holds it.
fn upload_values(id: i64) -> [String; 2] {
    let trimmed = address(id).trim().to_string();
    let hashed: String = Sha256::digest(trimmed.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    [trimmed, hashed]
}

/// Snapshot `d` of `after` is `before`'s without the erased customer: no row, state row or
/// upload line of theirs, every other row as it was (aggregates included, which hold no
/// customer).
fn assert_erased(before: &Tree, after: &Tree, d: &str) {
    let id = ERASED.to_string();
    let (b, a) = (&manifests(before)[d], &manifests(after)[d]);
    let (old, new) = (snapshot_rows(before, b), snapshot_rows(after, a));
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>(),
        "{d}"
    );
    for (name, rows) in &new {
        assert!(!holds(rows, &id), "{d} {name} still holds customer {id}");
        assert_eq!(
            sorted_dump(rows),
            sorted_dump(&without(&old[name], &id)),
            "{d} {name}: rows other than customer {id}'s changed"
        );
    }
    for f in a["audiences"]["files"].as_array().unwrap() {
        let text = String::from_utf8_lossy(&after[f.as_str().unwrap()]).into_owned();
        let old_text = String::from_utf8_lossy(&before[f.as_str().unwrap()]).into_owned();
        let kept: Vec<&str> = old_text
            .lines()
            .filter(|l| !upload_values(ERASED).iter().any(|v| v == l))
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), kept, "{d} {f}");
    }
    let rows = |m: &serde_json::Value, t: &str| m["tables"][t]["rows"].as_u64().unwrap();
    let members = |tree: &Tree, m: &serde_json::Value| {
        snapshot_rows(tree, m)[m["tables"]["audience_members"]["path"].as_str().unwrap()].clone()
    };
    assert_eq!(
        rows(a, "audience_members") as usize,
        members(after, a).len()
    );
    let summary = &a["audiences"]["audiences"]["best"];
    let counted = |change: &str| {
        members(after, a)
            .iter()
            .filter(|r| {
                r["audience"].as_deref() == Some("best") && r["change"].as_deref() == Some(change)
            })
            .count() as u64
    };
    assert_eq!(summary["entered"].as_u64(), Some(counted("entered")), "{d}");
    assert_eq!(summary["stayed"].as_u64(), Some(counted("stayed")), "{d}");
    assert_eq!(summary["left"].as_u64(), Some(counted("left")), "{d}");
    assert_eq!(a["erasure"]["erased_ids"].as_u64(), Some(1), "{d}");
}

/// Snapshot `d` of `after` is exactly its erasure, or (its manifest not yet rewritten)
/// each of its folders holds exactly its old rows or exactly its rows without the erased
/// customer: on local disk a commit swaps folders one by one, and the next process rolls
/// a commit cut short back (as for a run killed mid-commit).
fn assert_whole(before: &Tree, after: &Tree, d: &str) {
    let (b, a) = (&manifests(before)[d], &manifests(after)[d]);
    if !a["erasure"].is_null() {
        return assert_erased(before, after, d);
    }
    let id = ERASED.to_string();
    let old = snapshot_rows(before, b);
    for (name, rows) in snapshot_rows(after, a) {
        let rows = sorted_dump(&rows);
        assert!(
            rows == sorted_dump(&old[&name]) || rows == sorted_dump(&without(&old[&name], &id)),
            "{d} {name} is neither as it was nor erased"
        );
    }
}

fn tree(out: &Path) -> Tree {
    snapshot_files(out)
}

fn published(dir: &Path) -> (PathBuf, Tree) {
    let config = project(dir);
    run(&config, DATES[0], &[]);
    run(&config, DATES[1], &[]);
    let before = tree(&dir.join("out"));
    let ms = manifests(&before);
    assert!(
        ms.values().all(|m| !m["state"].is_null()),
        "the runs keep state"
    );
    assert_eq!(ms[DATES[1]]["run"]["mode"], "incremental");
    for d in DATES {
        let rows = snapshot_rows(&before, &ms[d]);
        let id = ERASED.to_string();
        // An incremental run rejects only the new lines: the full one holds theirs.
        let rejected = (d == DATES[0]).then(|| format!("_rejected/as_of={d}"));
        let tables = [
            format!("rfm/as_of={d}"),
            format!("audience_members/as_of={d}"),
        ];
        for name in tables.into_iter().chain(rejected) {
            let held = rows.get(&name).is_some_and(|r| holds(r, &id));
            assert!(
                held,
                "the fixture puts customer {id} in {name} ({:?})",
                rows.keys()
            );
        }
        let best = format!("_audiences/as_of={d}/best.csv");
        let text = String::from_utf8_lossy(&before[&best]).into_owned();
        assert!(
            text.lines().any(|l| l == upload_values(ERASED)[0]),
            "{best}"
        );
    }
    (config, before)
}

#[test]
fn forget_removes_a_customer_from_every_kept_snapshot_and_later_runs_leave_them_out() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = published(dir.path());
    let list = id_list(dir.path(), "forget.txt", &format!("{ERASED}\n"));
    let r = forget(&config, &list, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("erased 1 customer(s) (1 new"),
        "{}",
        r.stdout
    );
    let out = dir.path().join("out");
    let after = tree(&out);
    assert_consistent(&after);
    assert!(after.contains_key("_privacy/erased.parquet"));
    for d in DATES {
        assert_erased(&before, &after, d);
        let m = &manifests(&after)[d];
        assert_eq!(m["erasure"]["erasures"][0]["customers"], 1);
        assert!(
            m["erasure"]["erasures"][0]["rows_removed"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
    // The erased list holds a salted hash, not the id.
    let erased = parquet_rows(&after["_privacy/erased.parquet"]);
    assert_eq!(erased.len(), 1);
    assert_ne!(erased[0]["hash"].as_deref(), Some("7"));
    // Nothing else is left: no file holds the erased customer's address.
    for (f, bytes) in &after {
        for v in upload_values(ERASED) {
            assert!(
                !String::from_utf8_lossy(bytes).contains(&v),
                "{f} holds the erased customer's address"
            );
        }
    }

    // `preview` leaves them out too: its customer_facts has the erased snapshot's rows.
    let r = segflow(&[
        "preview",
        "customer_facts",
        "--config",
        config.to_str().unwrap(),
        "--as-of",
        DATES[1],
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = manifests(&after)[DATES[1]]["tables"]["customer_facts"]["rows"].clone();
    let line = format!("customer_facts as_of={}: {rows} row(s)", DATES[1]);
    assert!(r.stdout.contains(&line), "{line} not in\n{}", r.stdout);

    // A second request for the same customer changes nothing.
    let r = forget(&config, &list, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("already without them"), "{}", r.stdout);
    crate::crash::assert_same_tree(&tree(&out), &after, "a repeated forget");

    // The next night: the input still holds the customer (and new lines of theirs); the
    // run is incremental from the rewritten state and leaves them out, exactly as a full
    // run over the same kept snapshots does.
    let full_out = dir.path().join("full");
    copy_dir(&out, &full_out);
    run(&config, NEXT, &[]);
    let next = tree(&out);
    let m = &manifests(&next)[NEXT];
    assert_eq!(m["run"]["mode"], "incremental", "{m}");
    assert_eq!(m["erasure"]["erased_ids"], 1);
    let full_flags = ["--full-refresh", "--output", full_out.to_str().unwrap()];
    run(&config, NEXT, &full_flags);
    let full = tree(&full_out);
    let fm = &manifests(&full)[NEXT];
    assert_eq!(fm["run"]["mode"], "full");
    let (inc_rows, full_rows) = (snapshot_rows(&next, m), snapshot_rows(&full, fm));
    for (dir_name, rows) in &inc_rows {
        if dir_name.starts_with("state") || dir_name.starts_with("_report") {
            continue;
        }
        assert!(
            !holds(rows, &ERASED.to_string()),
            "{NEXT} {dir_name} holds the erased customer"
        );
        assert_eq!(
            sorted_dump(rows),
            sorted_dump(&full_rows[dir_name]),
            "{NEXT} {dir_name}: the incremental run differs from a full run"
        );
    }
}

#[test]
fn a_customers_file_without_ids_or_the_column_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = project(dir.path());
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let r = forget(&config, &empty, "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("empty.txt") && r.stderr.contains("no customer id"),
        "{}",
        r.stderr
    );
    let wrong = dir.path().join("ids.parquet");
    write_columns(
        &wrong,
        vec![("id", Arc::new(Int64Array::from(vec![7])), false)],
    );
    let r = forget(&config, &wrong, "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("ids.parquet")
            && r.stderr.contains("no column `customer_id` (columns: id)"),
        "{}",
        r.stderr
    );
    assert!(
        !dir.path().join("out/_privacy").exists(),
        "nothing recorded"
    );
}

/// SIGKILL at each step of the erasure: every snapshot is whole (exactly as it was, or
/// exactly erased), a run in between leaves the customer out, and `forget` again (the same
/// list) finishes: every snapshot erased, no file left that no manifest lists.
#[test]
fn sigkill_during_forget_leaves_every_snapshot_whole_and_forget_again_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = published(dir.path());
    let out = dir.path().join("out");
    let pristine = dir.path().join("pristine");
    copy_dir(&out, &pristine);
    let list = dir.path().join("forget.parquet");
    write_columns(
        &list,
        vec![(
            "customer_id",
            Arc::new(Int64Array::from(vec![ERASED])),
            false,
        )],
    );
    for point in [
        "erased_listed",
        "before_commit",
        "mid_commit",
        "before_manifest",
        "after_manifest",
    ] {
        std::fs::remove_dir_all(&out).unwrap();
        copy_dir(&pristine, &out);
        let r = forget(&config, &list, &format!("{point}=kill"));
        assert_eq!(r.code, -1, "not killed at {point}: {}", r.stderr);
        let killed = tree(&out);
        assert_manifests_complete(&killed);
        for d in DATES {
            assert_whole(&before, &killed, d);
        }
        let r = forget(&config, &list, "");
        assert_eq!(r.code, 0, "forget after a kill at {point}: {}", r.stderr);
        let done = tree(&out);
        assert_consistent(&done);
        for d in DATES {
            assert_erased(&before, &done, d);
        }
    }
    // Killed before any snapshot was rewritten: the next run already leaves the customer
    // out (a full run: the kept state still holds them).
    std::fs::remove_dir_all(&out).unwrap();
    copy_dir(&pristine, &out);
    let r = forget(&config, &list, "erased_listed=kill");
    assert_eq!(r.code, -1, "{}", r.stderr);
    run(&config, NEXT, &[]);
    let next = tree(&out);
    let m = &manifests(&next)[NEXT];
    assert_eq!(
        m["run"]["full_reason"], "customers erased since the state",
        "{m}"
    );
    for (name, rows) in snapshot_rows(&next, m) {
        assert!(!holds(&rows, &ERASED.to_string()), "{NEXT} {name}");
    }
    for f in state_files(m) {
        assert!(!holds(&parquet_rows(&next[&f]), &ERASED.to_string()), "{f}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// On S3 the erasure copies only the rewritten files in under new names (the commit of
/// object storage), deletes the replaced ones after the manifest, and puts the audience
/// files in place: each snapshot ends exactly erased, and the objects of the files that
/// held no erased customer are untouched.
#[test]
fn forget_on_s3_rewrites_only_the_files_that_hold_the_customer() {
    let moto = crate::s3::Moto::start(&[]);
    moto.create_bucket("bucket");
    let dir = tempfile::tempdir().unwrap();
    let local = project(dir.path());
    moto.upload_dir("bucket", &dir.path().join("orders"), "input/orders");
    let text = std::fs::read_to_string(&local)
        .unwrap()
        .replace("uri = \"orders\"", "uri = \"s3://bucket/input/orders\"")
        .replace("uri = \"out\"", "uri = \"s3://bucket/out\"");
    let config = dir.path().join("s3.toml");
    std::fs::write(&config, text).unwrap();
    for d in DATES {
        let r = crate::s3::run_env(&config, &moto.env(), &["--as-of", d]);
        assert_eq!(r.code, 0, "{d}: {}", r.stderr);
    }
    let before = moto.tree("bucket", "out");
    let list = id_list(dir.path(), "forget.txt", &format!("{ERASED}\n"));
    let r = forget_env(&config, &list, &moto.env());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let after = moto.tree("bucket", "out");
    assert_consistent(&after);
    for d in DATES {
        assert_erased(&before, &after, d);
        let (b, a) = (&manifests(&before)[d], &manifests(&after)[d]);
        let listed = |m: &serde_json::Value| -> Vec<String> {
            let mut files: Vec<String> = listed_dirs(m).into_iter().flat_map(|(_, f)| f).collect();
            files.extend(state_files(m));
            files
        };
        let (old, new) = (listed(b), listed(a));
        // Exactly the files that held the customer were replaced (audience files and the
        // report keep their names); the others are the very same objects.
        for f in old.iter().filter(|f| f.ends_with(".parquet")) {
            let held = holds(&parquet_rows(&before[f]), &ERASED.to_string());
            assert_eq!(held, !new.contains(f), "{d}: {f}");
            if !held {
                assert_eq!(after[f], before[f], "{d}: {f} was rewritten though kept");
            }
        }
        assert!(old
            .iter()
            .any(|f| new.contains(f) && f.ends_with(".parquet")));
    }
}

const DELTA_DATES: [&str; 2] = ["2026-10-31", crate::util::DEMO_AS_OF];
/// A customer of the demo (in rfm's Delta files of both dates, and a Champion or Loyal).
const DEMO_CUSTOMER: &str = "100114";
/// Their address as the demo's customers file holds it, trimmed (as exported).
const DEMO_ADDRESS: &str = "Customer.100114@Example.COM";

/// The demo on Delta output at two dates; the output's files.
fn delta_published(dir: &Path) -> (PathBuf, Tree) {
    let audience = "[[audiences]]\nname = \"best\"\nsegmentation = \"rfm\"\n\
                    segments = [\"Champions\", \"Loyal\"]\nchannel = \"email\"\n";
    let config = crate::delta::delta_config(dir, audience);
    for d in DELTA_DATES {
        let r = segflow(&["run", "--config", config.to_str().unwrap(), "--as-of", d]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let before = tree(&dir.join("out"));
    let rfm = &manifests(&before)[DELTA_DATES[1]]["tables"]["rfm"];
    let held = rfm["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| holds(&parquet_rows(&before[f.as_str().unwrap()]), DEMO_CUSTOMER));
    assert!(held, "the demo has customer {DEMO_CUSTOMER}");
    let best = format!("_audiences/as_of={}/best.csv", DELTA_DATES[1]);
    assert!(
        String::from_utf8_lossy(&before[&best])
            .lines()
            .any(|l| l == DEMO_ADDRESS),
        "customer {DEMO_CUSTOMER} is in the audience"
    );
    (config, before)
}

/// Every kept manifest names its tables' newest versions, whose rows are the old ones
/// without the customer's; no data file holds them and no log file names them.
fn assert_delta_erased(before: &Tree, after: &Tree) {
    let id = DEMO_CUSTOMER;
    crate::delta::assert_delta_consistent(after);
    for d in DELTA_DATES {
        let (b, a) = (&manifests(before)[d], &manifests(after)[d]);
        for (name, t) in a["tables"].as_object().unwrap() {
            let rows = |tree: &Tree, t: &serde_json::Value| -> Rows {
                t["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|f| parquet_rows(&tree[f.as_str().unwrap()]))
                    .collect()
            };
            let (old, new) = (rows(before, &b["tables"][name]), rows(after, t));
            assert_eq!(
                sorted_dump(&new),
                sorted_dump(&without(&old, id)),
                "{d} {name}: rows other than customer {id}'s changed"
            );
            assert_eq!(t["rows"].as_u64(), Some(new.len() as u64), "{d} {name}");
        }
        assert_eq!(a["erasure"]["erased_ids"], 1, "{d}");
        // The audience's upload file loses exactly the customer's line; its counts follow
        // the membership table.
        let best = format!("_audiences/as_of={d}/best.csv");
        let old_lines: Vec<String> = String::from_utf8_lossy(&before[&best])
            .lines()
            .filter(|l| *l != DEMO_ADDRESS)
            .map(str::to_string)
            .collect();
        let new_lines: Vec<String> = String::from_utf8_lossy(&after[&best])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(new_lines, old_lines, "{d} {best}");
        let members: Rows = a["tables"]["audience_members"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| parquet_rows(&after[f.as_str().unwrap()]))
            .collect();
        let summary = &a["audiences"]["audiences"]["best"];
        let now = members
            .iter()
            .filter(|r| r["change"].as_deref() != Some("left"))
            .count();
        assert_eq!(summary["members"].as_u64(), Some(now as u64), "{d}");
    }
    for (f, bytes) in after {
        if f.ends_with(".parquet") {
            assert!(
                !holds(&parquet_rows(bytes), id),
                "{f} still holds customer {id}"
            );
        }
        // No statistics of customer ids in the log, and the DELETE's predicate is the
        // salted-hash test, not the ids.
        if f.contains("/_delta_log/") {
            assert!(
                !String::from_utf8_lossy(bytes).contains(id),
                "{f} names customer {id}"
            );
        }
    }
}

/// On Delta output each table gets one DELETE commit of the customer's rows; every kept
/// manifest names the new version, and the vacuum that follows leaves no data file that
/// holds them: time travel to before the erasure ends. No log file names the customer.
#[test]
fn forget_on_delta_output_deletes_the_rows_and_vacuums_every_file_that_held_them() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = delta_published(dir.path());
    let list = id_list(dir.path(), "forget.txt", &format!("{DEMO_CUSTOMER}\n"));
    let r = forget(&config, &list, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_delta_erased(&before, &tree(&dir.path().join("out")));
}

/// Killed after the Delta deletes, before any manifest names the new versions: each
/// snapshot still reads whole (its manifest's version, not yet vacuumed), a run in between
/// keeps the deletes, and `forget` again finishes.
#[test]
fn forget_on_delta_killed_after_the_deletes_is_finished_by_forget_again() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = delta_published(dir.path());
    let list = id_list(dir.path(), "forget.txt", &format!("{DEMO_CUSTOMER}\n"));
    let r = forget(&config, &list, "delta_erased=kill");
    assert_eq!(r.code, -1, "{}", r.stderr);
    let out = dir.path().join("out");
    let killed = tree(&out);
    for d in DELTA_DATES {
        let m = &manifests(&killed)[d];
        assert!(m["erasure"].is_null(), "{d} not yet rewritten");
        for t in m["tables"].as_object().unwrap().values() {
            for f in t["files"].as_array().unwrap() {
                assert!(killed.contains_key(f.as_str().unwrap()), "{d}: {f} missing");
            }
        }
    }
    let r = forget(&config, &list, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_delta_erased(&before, &tree(&out));
}

/// The customer's address is gone from `customers` before the erasure (the usual order of a
/// deletion request): their upload lines cannot be told, so the upload files of each
/// audience they were in are deleted from those snapshots; the rest is erased as usual.
#[test]
fn an_erased_member_without_an_address_any_more_takes_the_audience_files_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = published(dir.path());
    let customers: Vec<i64> = (1..=240).filter(|c| *c != ERASED).collect();
    let emails: Vec<String> = customers.iter().map(|c| address(*c)).collect();
    let n = customers.len();
    write_columns(
        &dir.path().join("customers.parquet"),
        vec![
            ("customer_id", Arc::new(Int64Array::from(customers)), false),
            ("email", Arc::new(StringArray::from(emails)), false),
            (
                "email_opt_in",
                Arc::new(BooleanArray::from(vec![true; n])),
                false,
            ),
            (
                "ads_opt_in",
                Arc::new(BooleanArray::from(vec![true; n])),
                false,
            ),
        ],
    );
    let list = id_list(dir.path(), "forget.txt", &format!("{ERASED}\n"));
    let r = forget(&config, &list, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let after = tree(&dir.path().join("out"));
    assert_consistent(&after);
    for d in DATES {
        let m = &manifests(&after)[d];
        assert_eq!(
            m["audiences"]["audiences"]["best"]["files"],
            serde_json::json!([]),
            "{d}"
        );
        assert!(
            !after.contains_key(&format!("_audiences/as_of={d}/best.csv")),
            "{d}"
        );
        for (name, rows) in snapshot_rows(&after, m) {
            assert!(!holds(&rows, &ERASED.to_string()), "{d} {name}");
        }
        for f in m["audiences"]["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            // What is left (the ads audience, if the customer was not in it) is unchanged.
            assert_eq!(after[f], before[f], "{d} {f}");
        }
    }
}

/// A request cut short after the erased list was written, then another request: the second
/// erasure also removes the first one's customer everywhere, upload lines included.
#[test]
fn forget_after_an_interrupted_request_erases_both_requests_customers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = published(dir.path());
    let first = id_list(dir.path(), "first.txt", &format!("{ERASED}\n"));
    let r = forget(&config, &first, "erased_listed=kill");
    assert_eq!(r.code, -1, "{}", r.stderr);
    let second = id_list(dir.path(), "second.txt", "\u{feff}13\n");
    let r = forget(&config, &second, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("erased 1 customer(s) (1 new; 2 erased"),
        "{}",
        r.stdout
    );
    let after = tree(&dir.path().join("out"));
    assert_consistent(&after);
    for d in DATES {
        let (b, a) = (&manifests(&before)[d], &manifests(&after)[d]);
        let old = snapshot_rows(&before, b);
        for (name, rows) in snapshot_rows(&after, a) {
            let expected = without(&without(&old[&name], "7"), "13");
            assert_eq!(sorted_dump(&rows), sorted_dump(&expected), "{d} {name}");
        }
        for f in a["audiences"]["files"].as_array().unwrap() {
            let text = String::from_utf8_lossy(&after[f.as_str().unwrap()]).into_owned();
            for v in upload_values(ERASED).iter().chain(upload_values(13).iter()) {
                assert!(
                    !text.lines().any(|l| l == v),
                    "{d} {f} holds an erased address"
                );
            }
        }
        assert_eq!(a["erasure"]["erased_ids"], 2, "{d}");
    }
}
