//! The analyst loop: `init`, `check`, `list`, `preview`, `explain`, `docs`, data tests,
//! model checks and parameter typos. Expected texts are written by hand from the model files
//! and the demo's fixtures; the long ones are kept in `tests/snapshots/`.

use std::path::{Path, PathBuf};

use crate::util::{
    assert_snapshot, demo_config, demo_config_with, demo_orders, error_line, failing, repo, run_at,
    run_at_env, run_ok, segflow, segflow_env, snapshot_files, Run, DEMO_AS_OF,
};

/// A project on the demo data with extra model files (path relative to `models/`).
fn project(dir: &Path, files: &[(&str, &str)], extra_config: &str) -> PathBuf {
    for (rel, text) in files {
        let path = dir.join("models").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(dir.join("models")).unwrap();
    demo_config(
        dir,
        &format!("[models]\npaths = [\"models\"]\n{extra_config}"),
    )
}

fn check(config: &Path, env: &[(String, String)]) -> Run {
    segflow_env(&["check", "--config", config.to_str().unwrap()], env)
}

#[test]
fn check_on_the_demo_project_is_clean_and_touches_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = check(&config, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "checked 25 model(s) and 0 data test(s): 0 error(s), 0 warning(s)\n"
    );
    assert!(!tmp.path().join("out").exists(), "check created the output");

    // With a published snapshot: the whole output tree is unchanged, no lock was taken.
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let before = snapshot_files(&tmp.path().join("out"));
    assert_eq!(check(&config, &[]).code, 0);
    assert_eq!(snapshot_files(&tmp.path().join("out")), before);
}

#[test]
fn check_reports_every_broken_model_at_its_line_with_a_caret_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(
        tmp.path(),
        &[
            (
                "typo_column.sql",
                "/*---\ndescription = \"x\"\n---*/\nselect customer_id,\n       revenu\nfrom orders\n",
            ),
            (
                "typo_function.sql",
                "select customer_id, sumx(revenue) as r\nfrom orders group by 1\n",
            ),
            (
                "cut_short.sql",
                "select customer_id, sum(revenue) as r\nfrom orders group by 1 having\n",
            ),
            (
                "unknown_table.sql",
                "select *\nfrom typo_column join orderz using (customer_id)\n",
            ),
            (
                "header.sql",
                concat!(
                    "/*---\n",
                    "grain = [\"customer_id\", \"day\"]\n",
                    "[columns]\n",
                    "customer_id = \"c\"\n",
                    "spend = \"s\"\n",
                    "[checks]\n",
                    "not_null = [\"revenue\"]\n",
                    "expression = [\"r > 0 and nope\"]\n",
                    "---*/\n",
                    "select customer_id, sum(revenue) as r from orders group by 1\n",
                ),
            ),
            (
                "tests/bad_test.sql",
                "select * from header\nwhere r < 0 and x = 1\n",
            ),
        ],
        "[params]\nmin_revenu = 4\n",
    );
    let m = tmp.path().join("models").display().to_string();
    let c = config.display().to_string();
    let r = check(&config, &[("SEGFLOW_PARAM_ACTIV_DAYS".into(), "30".into())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    // Every finding, sorted by file and line; columns counted by hand in the files above.
    // `{m}` is the models folder, `{c}` the config file.
    assert_snapshot("check_broken_models", &r.stdout, &[("m", &m), ("c", &c)]);
    assert!(!tmp.path().join("out").exists(), "check created the output");
}

#[test]
fn check_that_cannot_read_its_input_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config_with(
        tmp.path(),
        &format!("uri = \"{}\"", demo_orders()),
        "uri = \"no_such_folder\"",
    );
    let r = check(&config, &[]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(error_line(&r).contains("no_such_folder"), "{}", r.stderr);
}

#[test]
fn a_parameter_no_model_uses_stops_the_run_naming_it() {
    let (code, err) = failing(|d| demo_config(d, "[params]\nactive_dayz = 30\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`params.active_dayz`")
            && err.contains("no model or data test uses the parameter `$active_dayz`"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = run_at_env(
        &config,
        DEMO_AS_OF,
        &[("SEGFLOW_PARAM_CHURN_DAYZ".into(), "200".into())],
    );
    assert_eq!(r.code, 2);
    assert!(
        error_line(&r).contains("SEGFLOW_PARAM_CHURN_DAYZ"),
        "{}",
        r.stderr
    );
    assert!(!tmp.path().join("out/_manifest").exists());
}

/// A data test that finds rows: exit 1, the test, the count and 5 sample rows named, the
/// published snapshot unchanged; with severity "warn" the run publishes.
#[test]
fn a_failing_data_test_names_count_and_samples_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), &[], "");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let before = snapshot_files(&tmp.path().join("out"));

    // rfm_segments (sql/rfm_segments.sql) holds 11 rules with priorities 1..11.
    let test =
        "select priority, segment from rfm_segments where priority >= $from order by priority";
    std::fs::create_dir_all(tmp.path().join("models/tests")).unwrap();
    let file = tmp.path().join("models/tests/late_rules.sql");
    std::fs::write(
        &file,
        format!(
            "/*---\ndescription = \"rules after the fourth\"\n[params]\nfrom = 5\n---*/\n{test}\n"
        ),
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains(&format!(
            "{}: data test `late_rules` returned 7 row(s), the first 5:",
            file.display()
        )),
        "{err}"
    );
    for p in 5..=9 {
        assert!(
            err.contains(&format!("| {p:<8} |")),
            "priority {p} missing: {err}"
        );
    }
    assert!(!err.contains("| 10 "), "{err}");
    assert_eq!(
        snapshot_files(&tmp.path().join("out")),
        before,
        "a failed run changed the output"
    );

    // The parameter can be set like a model's; no rows = pass.
    let r = run_at_env(
        &config,
        DEMO_AS_OF,
        &[("SEGFLOW_PARAM_FROM".into(), "12".into())],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Severity warn: logged, published.
    std::fs::write(
        &file,
        format!("/*---\nseverity = \"warn\"\n[params]\nfrom = 5\n---*/\n{test}\n"),
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("data test `late_rules` returned 7 row(s)"),
        "{}",
        r.stderr
    );
}

#[test]
fn list_shows_kind_grain_partitioning_reads_and_what_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let list = || segflow(&["list", "--config", config.to_str().unwrap()]);
    let r = list();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |stdout: &str, model: &str| -> Vec<String> {
        let l = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{model} ")))
            .unwrap_or_else(|| panic!("{model} not listed:\n{stdout}"))
            .to_string();
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    assert!(r.stdout.starts_with("MODEL "), "{}", r.stdout);
    // Values from the front matter and SQL of sql/rfm.sql and sql/purchase_orders.sql.
    let rfm = line(&r.stdout, "rfm");
    assert_eq!(
        rfm[..6],
        [
            "rfm",
            "table",
            "customer_id",
            "segment",
            "customer_facts, rfm_segments",
            "not yet"
        ]
    );
    assert!(
        rfm[6].starts_with("RFM scores and named segment."),
        "{rfm:?}"
    );
    let po = line(&r.stdout, "purchase_orders");
    assert_eq!(
        po[..6],
        [
            "purchase_orders",
            "incremental",
            "customer_id, order_id",
            "-",
            "orders",
            "never (internal)"
        ]
    );
    assert!(
        r.stdout.ends_with(&format!(
            "\n25 model(s); no snapshot published at {} yet\n",
            tmp.path().join("out").display()
        )),
        "{}",
        r.stdout
    );
    assert!(!tmp.path().join("out").exists(), "list created the output");

    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let r = list();
    assert_eq!(line(&r.stdout, "rfm")[5], format!("as_of={DEMO_AS_OF}"));
    assert!(
        r.stdout
            .contains(&format!("25 model(s); newest snapshot as_of={DEMO_AS_OF}")),
        "{}",
        r.stdout
    );
}

#[test]
fn preview_prints_the_first_rows_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let temp = tmp.path().join("scratch");
    let config = demo_config(
        tmp.path(),
        &format!("[runtime]\ntemp_dir = \"{}\"\n", temp.display()),
    );
    let r = segflow(&[
        "preview",
        "rfm_segments",
        "--config",
        config.to_str().unwrap(),
        "--limit",
        "2",
        "--as-of",
        DEMO_AS_OF,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The first two rules of sql/rfm_segments.sql.
    assert_snapshot("preview_rfm_segments", &r.stdout, &[]);
    assert!(
        !tmp.path().join("out").exists(),
        "preview created the output"
    );
    let left: Vec<_> = std::fs::read_dir(&temp).unwrap().collect();
    assert!(
        left.is_empty(),
        "preview left files in its temp dir: {left:?}"
    );

    let r = segflow(&[
        "preview",
        "rfm_segmentz",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        error_line(&r).contains("no model named `rfm_segmentz`"),
        "{}",
        r.stderr
    );
}

#[test]
fn explain_prints_the_plans_and_analyze_adds_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = segflow(&[
        "explain",
        "category_affinity",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "== logical_plan ==",
        "== physical_plan ==",
        "Aggregate: groupBy=[[customer_category_spend.customer_id]]",
        "AggregateExec",
    ] {
        assert!(
            r.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("output_rows="), "{}", r.stdout);
    let r = segflow(&[
        "explain",
        "category_affinity",
        "--analyze",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("output_rows="), "{}", r.stdout);
    assert!(
        !tmp.path().join("out").exists(),
        "explain created the output"
    );
}

#[test]
fn docs_writes_one_self_contained_page_with_models_columns_checks_and_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(
        tmp.path(),
        &[(
            "tests/no_negative_aov.sql",
            "/*---\ndescription = \"AOV is never negative.\"\n---*/\nselect * from customer_facts where aov < 0\n",
        )],
        "",
    );
    let docs = tmp.path().join("site");
    let r = segflow(&[
        "docs",
        "--out",
        docs.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let page = std::fs::read_to_string(docs.join("index.html")).unwrap();
    // Every built-in model (the files of sql/) has a section.
    for entry in std::fs::read_dir(repo().join("sql")).unwrap() {
        let name = entry
            .unwrap()
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            page.contains(&format!("<h3 id=\"{name}\">")),
            "{name} missing"
        );
    }
    // From sql/customer_facts.sql: a column's doc and type (cast as bigint), its checks.
    assert!(page.contains(
        "<tr><td><code>recency_days</code></td><td>Int64</td><td>as_of minus the last purchase date, in days.</td></tr>"
    ));
    assert!(page.contains("<li><code>unique(customer_id)</code></li>"));
    assert!(page.contains("<li><code>expression(orders &gt;= 1)</code></li>"));
    // The graph, the data test, and nothing fetched from anywhere.
    assert!(page.contains("<svg") && page.contains("<a href=\"#purchase_orders\">"));
    assert!(page.contains("<h3>no_negative_aov</h3><p>AOV is never negative.</p>"));
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("https://"));
    assert_eq!(page.matches("http://").count(), 1, "only the SVG namespace");
    assert!(!tmp.path().join("out").exists(), "docs created the output");
}

/// Each check kind, violated by a model over the 11 segment rules of sql/rfm_segments.sql
/// (counts read off that file): exit 1, the file, the check and the count named, and the
/// published snapshot byte-for-byte unchanged.
#[test]
fn row_checks_counted_together_report_each_failure_and_a_check_that_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), &[], "");
    let file = tmp.path().join("models/rules.sql");
    // Three row checks in one model: two fail, one passes; their counts as when run alone.
    std::fs::write(
        &file,
        "/*---\n[checks]\nnot_null = [\"segment\"]\nexpression = [\"r_max >= 4\", \"r_min >= 1\"]\naccepted_values = { m_min = [\"1\"] }\n---*/\nselect * from rfm_segments\n",
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = error_line(&r);
    let prefix = format!("{}: model `rules` check ", file.display());
    assert!(
        err.contains(&format!(
            "{prefix}accepted_values(m_min): 2 row(s) outside [1]"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{prefix}expression(r_max >= 4): 6 row(s) violate it"
        )),
        "{err}"
    );
    assert!(
        !err.contains("r_min >= 1") && !err.contains("not_null(segment)"),
        "{err}"
    );
    // One of them cannot run: that one is named.
    std::fs::write(
        &file,
        "/*---\n[checks]\nnot_null = [\"segment\"]\nexpression = [\"r_max >= 4\", \"nope > 1\"]\n---*/\nselect * from rfm_segments\n",
    )
    .unwrap();
    let r = run_at(&config, DEMO_AS_OF);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let err = error_line(&r);
    assert!(
        err.contains("check expression(nope > 1) cannot run"),
        "{err}"
    );
}

#[test]
fn every_check_kind_that_fails_names_the_check_and_count_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), &[], "");
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    let out = tmp.path().join("out");
    let before = snapshot_files(&out);
    let cases = [
        // r_min is 4, 3, 1, 1, 4, 5, 4, 3, 3, 2, 1: 4, 3 and 1 repeat.
        ("unique = [\"r_min\"]", "select * from rfm_segments", "unique(r_min): 3 duplicated value(s)"),
        // GROUP BY results that are not unique: a unique check is skipped only when the
        // plan proves it, never for a union or a join of grouped results.
        (
            "unique = [\"r_min\"]",
            "select r_min from rfm_segments group by r_min union all select r_min from rfm_segments where r_min = 4 group by r_min",
            "unique(r_min): 1 duplicated value(s)",
        ),
        (
            "unique = [\"r_min\"]",
            "select a.r_min from (select r_min from rfm_segments group by r_min) a join rfm_segments b on a.r_min = b.r_min",
            "unique(r_min): 3 duplicated value(s)",
        ),
        (
            "not_null = [\"segment\"]",
            "select priority, case when priority > 9 then null else segment end as segment from rfm_segments",
            "not_null(segment): 2 NULL row(s)",
        ),
        // m_min is 4 for Champions and Can't Lose, 1 elsewhere.
        ("accepted_values = { m_min = [\"1\"] }", "select * from rfm_segments", "accepted_values(m_min): 2 row(s) outside [1]"),
        ("row_count = { max = 10 }", "select * from rfm_segments", "row_count: 11 row(s), expected ..10"),
        // r_max is 5, 5, 2, 2, 5, 5, 4, 3, 3, 2, 1: six below 4.
        ("expression = [\"r_max >= 4\"]", "select * from rfm_segments", "expression(r_max >= 4): 6 row(s) violate it"),
        (
            "relationships = { segment = \"champions_only.segment\" }",
            "select * from rfm_segments",
            "relationships(segment -> champions_only.segment): 10 value(s) missing from champions_only.segment",
        ),
    ];
    std::fs::write(
        tmp.path().join("models/champions_only.sql"),
        "select 'Champions' as segment",
    )
    .unwrap();
    for (check, sql, expected) in cases {
        let file = tmp.path().join("models/rules.sql");
        std::fs::write(&file, format!("/*---\n[checks]\n{check}\n---*/\n{sql}\n")).unwrap();
        let r = run_at(&config, DEMO_AS_OF);
        assert_eq!(r.code, 1, "{check}: {}", r.stderr);
        let err = error_line(&r);
        assert!(
            err.contains(&format!(
                "{}: model `rules` check {expected}",
                file.display()
            )),
            "{check}: {err}"
        );
        assert_eq!(snapshot_files(&out), before, "{check}: the output changed");
    }
}

#[test]
fn init_scaffolds_a_project_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    let r = segflow(&["init", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.join("models/rfm.sql").exists());
    let r = run_ok(&dir.join("segflow.toml"), &[]);
    assert!(
        r.stdout.contains("published as_of=2026-11-21"),
        "{}",
        r.stdout
    );
    assert!(dir.join("out/rfm").exists());
    assert_eq!(segflow(&["init", dir.to_str().unwrap()]).code, 2);
}
