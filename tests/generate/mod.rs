//! `segflow generate`: deterministic output, the shape of the data (line count, customers,
//! refunds, month folders, the demo schema), refusals and clean-up, and a `segflow run`
//! with the demo mapping over the generated history. Sizes stay at a few 10 k lines.

use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::{
    demo_config_with, demo_orders, error_line, manifest, output_within, read_table, repo, run_ok,
    segflow, segflow_command, snapshot_files, wait_until, Deadline, Run, RUN_DEADLINE,
};

/// Runs `segflow generate --out OUT ARGS...`.
fn generate(out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["generate", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    segflow(&all)
}

fn generate_ok(out: &Path, args: &[&str]) -> Run {
    let r = generate(out, args);
    assert_eq!(r.code, 0, "generate failed:\n{}", r.stderr);
    r
}

/// A number from the summary line `name:  N ...`.
fn summary_value(r: &Run, name: &str) -> u64 {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in the summary:\n{}", r.stdout))
}

/// Registers the generated folder as table `orders` (with the hive column `month`).
async fn orders_table(dir: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "orders",
        format!("{}/", dir.display()),
        ParquetReadOptions::default().table_partition_cols(vec![("month".into(), DataType::Utf8)]),
    )
    .await
    .unwrap();
    ctx
}

/// The single Int64 value of a query.
async fn scalar(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let col = batches[0].column(0);
    let col = datafusion::arrow::compute::cast(col, &DataType::Int64).unwrap();
    let values = col.as_primitive::<Int64Type>();
    assert!(!values.is_null(0), "{sql} returned NULL");
    values.value(0)
}

#[test]
fn generate_same_seed_gives_byte_identical_files_at_any_thread_count_and_another_seed_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str, threads: &str| {
        let out = tmp.path().join(name);
        generate_ok(
            &out,
            &["--lines", "20000", "--seed", seed, "--threads", threads],
        );
        snapshot_files(&out)
    };
    let one = run("a", "7", "1");
    let two = run("b", "7", "2");
    let other = run("c", "8", "2");
    assert!(one.len() >= 30, "{:?}", one.keys());
    assert!(one == two, "same seed, different files");
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &one {
        assert_ne!(bytes, &other[name], "{name} is the same under another seed");
    }
}

#[tokio::test]
async fn generate_small_run_lands_within_2_percent_of_lines_and_every_customer_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    let r = generate_ok(&out, &["--lines", "20000"]);
    let customers = 1280; // 20000 / 15.625
    assert_eq!(summary_value(&r, "customers"), customers);
    let ctx = orders_table(&out).await;
    let lines = scalar(&ctx, "select count(*) from orders").await;
    assert!(
        (lines - 20_000).abs() <= 400,
        "{lines} lines for --lines 20000"
    );
    assert_eq!(lines as u64, summary_value(&r, "lines"));
    let orders = scalar(&ctx, "select count(distinct order_no) from orders").await;
    assert_eq!(orders as u64, summary_value(&r, "orders"));
    // Every customer id 100001..=101280 appears, and no other.
    assert_eq!(
        scalar(&ctx, "select count(distinct client_id) from orders").await,
        customers as i64
    );
    assert_eq!(
        scalar(&ctx, "select min(client_id) from orders").await,
        100_001
    );
    assert_eq!(
        scalar(&ctx, "select max(client_id) from orders").await,
        100_000 + customers as i64
    );
    // order_no is SO-<client_id>-<kkkk>.
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where order_no not like concat('SO-', cast(client_id as varchar), '-____')"
        )
        .await,
        0
    );
    // Default: 36 months ending 2026-11.
    assert_eq!(summary_value(&r, "files"), 36);
    assert!(out.join("month=2023-12/part-0.parquet").exists());
    assert!(out.join("month=2026-11/part-0.parquet").exists());
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where created_at > timestamp '2026-11-21 23:59:59.999'"
        )
        .await,
        0
    );
}

#[test]
fn generate_writes_the_demo_source_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    generate_ok(&out, &["--lines", "5000", "--months", "3"]);
    let schema = |p: &Path| {
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).unwrap())
            .unwrap()
            .schema()
            .fields()
            .clone()
    };
    let demo = schema(&repo().join("fixtures/demo/orders/year=2025/part-0.parquet"));
    for (name, _) in snapshot_files(&out) {
        assert_eq!(schema(&out.join(&name)), demo, "{name}");
    }
}

#[tokio::test]
async fn generate_month_folders_match_each_rows_created_at_month() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    generate_ok(
        &out,
        &["--lines", "20000", "--months", "14", "--end", "2025-02-10"],
    );
    let ctx = orders_table(&out).await;
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where to_char(created_at, '%Y-%m') <> month"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&ctx, "select count(distinct month) from orders").await,
        14
    );
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where created_at < timestamp '2024-01-01' \
             or created_at >= timestamp '2025-02-11'"
        )
        .await,
        0
    );
    for (name, _) in snapshot_files(&out) {
        assert!(
            name.starts_with("month=") && name.ends_with("/part-0.parquet"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn generate_refund_lines_are_negative_returned_and_follow_a_completed_line_of_the_same_order()
{
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    generate_ok(&out, &["--lines", "40000"]);
    let ctx = orders_table(&out).await;
    let returned = scalar(
        &ctx,
        "select count(*) from orders where order_status = 'returned'",
    )
    .await;
    assert!(returned > 300, "{returned} refund lines in 40 k");
    // Refunds and only refunds are negative, in qty, net and cost.
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where (order_status = 'returned') <> \
             (qty < 0 and net_eur < 0 and cogs_eur < 0)"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders where order_status <> 'returned' \
             and (qty <= 0 or net_eur <= 0 or cogs_eur <= 0)"
        )
        .await,
        0
    );
    // Each refund line mirrors a completed line of the same order 3-31 days earlier.
    let sql = "select count(*) from orders r where r.order_status = 'returned' and not exists (
                 select 1 from orders o
                 where o.order_no = r.order_no and o.order_status = 'completed'
                   and o.sku = r.sku and o.qty = -r.qty and o.net_eur = -r.net_eur
                   and o.cogs_eur = -r.cogs_eur
                   and r.created_at >= o.created_at + interval '3 days'
                   and r.created_at < o.created_at + interval '31 days')";
    assert_eq!(scalar(&ctx, sql).await, 0);
    // Some refunds land in a later month than their order (found when that month is written).
    let later = "select count(*) from orders r join (
                   select order_no, min(month) as m from orders
                   where order_status = 'completed' group by order_no) o
                 on r.order_no = o.order_no
                 where r.order_status = 'returned' and r.month > o.m";
    assert!(scalar(&ctx, later).await > 0);
    // No order has a refund but no completed line, and cancelled orders are never refunded.
    assert_eq!(
        scalar(
            &ctx,
            "select count(*) from orders r join orders c on r.order_no = c.order_no \
             where r.order_status = 'returned' and c.order_status = 'cancelled'"
        )
        .await,
        0
    );
}

#[test]
fn generate_refuses_a_non_empty_out_with_exit_2_naming_it_and_leaves_it_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taken");
    std::fs::create_dir_all(out.join("month=2026-01")).unwrap();
    std::fs::write(out.join("month=2026-01/part-0.parquet"), b"not mine").unwrap();
    let before = snapshot_files(&out);
    let r = generate(&out, &["--lines", "5000"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains(out.to_str().unwrap()) && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(snapshot_files(&out), before);
}

#[test]
fn generate_with_too_few_lines_for_the_customers_exits_2_naming_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    let r = generate(&out, &["--lines", "1000", "--customers", "1000"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let err = error_line(&r);
    assert!(err.contains("--lines") && err.contains("too few"), "{err}");
    assert!(!out.exists());
}

#[test]
fn generate_bad_months_or_end_exits_2_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    for (args, flag) in [
        (&["--months", "0"][..], "--months"),
        (&["--months", "601"][..], "--months"),
        (&["--end", "2026-13-01"][..], "--end"),
        (&["--end", "yesterday"][..], "--end"),
    ] {
        let r = generate(&out, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(error_line(&r).contains(flag), "{args:?}: {}", r.stderr);
    }
    assert!(!out.exists());
}

/// Starts `generate` into `out` held after its first file (`first_file` says it exists),
/// sends SIGINT, lets it go on once it logged that it stops, and returns its stderr after
/// asserting exit 2 and the message.
pub fn sigint_while_paused(
    out: &str,
    env: &[(String, String)],
    dir: &Path,
    first_file: &dyn Fn() -> bool,
) -> String {
    let flag = dir.join("paused");
    let mut child = segflow_command()
        .args(["--log-format", "json", "generate", "--out", out])
        .args(["--lines", "20000", "--threads", "1"])
        .env(
            "SEGFLOW_FAILPOINTS",
            format!("generate_file_written=pause:{}", flag.display()),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
        {
            let _ = tx.send(line);
        }
    });
    wait_until(
        &format!(
            "generate into {out} to pause after its first file (it creates {})",
            flag.display()
        ),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("generate into {out} exited ({status}) before it paused");
            }
            flag.exists().then_some(())
        },
    );
    assert!(first_file(), "paused before the first file was complete");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    // Let the worker go on only once the signal was taken.
    let mut lines = Vec::new();
    let deadline = Deadline::after(Duration::from_secs(60));
    while !lines.iter().any(|l: &String| l.contains("stopping")) {
        deadline.check(|| {
            format!(
                "generate into {out} (pid {}) to log that it stops on SIGINT; it logged:\n{}",
                child.id(),
                lines.join("\n")
            )
        });
        match rx.recv_timeout(deadline.remaining()) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!(
                "generate into {out} closed its stderr without logging that it stops:\n{}",
                lines.join("\n")
            ),
        }
    }
    std::fs::remove_file(&flag).unwrap();
    let status = output_within(child, RUN_DEADLINE, "generate to exit after SIGINT").status;
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let stderr = lines.join("\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT") && stderr.contains("removed"),
        "{stderr}"
    );
    stderr
}

#[test]
fn generate_sigint_exits_2_and_removes_everything_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orders");
    std::fs::create_dir(&out).unwrap();
    sigint_while_paused(out.to_str().unwrap(), &[], tmp.path(), &|| {
        out.join("month=2023-12/part-0.parquet").exists()
    });
    // The output directory existed before: it is kept, and empty.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test]
async fn generate_output_runs_with_the_demo_mapping_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = tmp.path().join("orders");
    let r = generate_ok(&orders, &["--lines", "30000", "--end", "2026-06-30"]);
    let customers = summary_value(&r, "customers");
    let config = demo_config_with(
        tmp.path(),
        &format!("uri = \"{}\"", demo_orders()),
        &format!("uri = \"{}\"", orders.display()),
    );
    let r = run_ok(&config, &[]);
    assert!(
        r.stdout.contains("published as_of=2026-06-30"),
        "{}",
        r.stdout
    );
    let m = manifest(&tmp.path().join("out"), "2026-06-30");
    let facts = m["tables"]["customer_facts"]["rows"].as_u64().unwrap();
    // Customers whose only orders were cancelled drop out with the cancelled lines.
    assert!(
        facts <= customers && facts as f64 > customers as f64 * 0.95,
        "{facts} of {customers}"
    );
    let cohorts = read_table(&tmp.path().join("out"), "cohort_retention", "2026-06-30").await;
    assert!(!cohorts.is_empty());
}
