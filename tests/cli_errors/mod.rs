//! Bad input: every config, environment, input and model mistake exits 2 (1 for a failed
//! check) with an error naming what is wrong (key, variable, file, line, column), never a
//! panic, and publishes nothing.

use crate::util::{
    assert_model_fails, demo_config, demo_config_with, demo_orders, error_line, failing,
    run_at_env, run_command, run_ok, snapshot_files, with_model, DEMO_AS_OF,
};

#[test]
fn unknown_config_key_is_named() {
    let (code, err) = failing(|d| demo_config(d, "[runtime]\nmemroy_limit = \"4g\"\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("memroy_limit") && err.contains("segflow.toml"),
        "{err}"
    );
}

#[test]
fn unknown_datafusion_key_is_named() {
    let (code, err) =
        failing(|d| demo_config(d, "[datafusion]\n\"execution.no_such_key\" = \"2\"\n"));
    assert_eq!(code, 2);
    assert!(err.contains("execution.no_such_key"), "{err}");
}

#[test]
fn enormous_sizes_and_durations_exit_2_naming_the_key() {
    for (extra, key) in [
        (
            "[runtime]\nmemory_limit = \"99999999999999t\"\n",
            "runtime.memory_limit",
        ),
        (
            "[output]\nlock_timeout = \"99999999999999999d\"\n",
            "output.lock_timeout",
        ),
    ] {
        let (code, err) = failing(|d| {
            let c = demo_config(d, "");
            let text = std::fs::read_to_string(&c).unwrap();
            // The demo config has an [output] table already: add the key there.
            let text = if extra.starts_with("[output]") {
                text.replace("[output]\n", extra)
            } else {
                format!("{text}\n{extra}")
            };
            std::fs::write(&c, text).unwrap();
            c
        });
        assert_eq!(code, 2, "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("panicked"), "{key}: {err}");
    }
}

#[test]
fn environment_mistakes_exit_2_naming_the_variable_without_panicking() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let run = |key: &str, value: &OsStr| {
        let out = run_command(&[], &config, DEMO_AS_OF)
            .env_remove("SEGFLOW_CONFIG")
            .env(key, value)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("SEGFLOW_PARAM_LABEL", OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SEGFLOW_PARAM_LABEL") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = run("SEGFLOW_INPUT_URI", OsStr::new("/tmp/x"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SEGFLOW_INPUT_URI") && err.contains("SEGFLOW_INPUT_<NAME>_URI"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !tmp.path().join("out/_manifest").exists(),
        "nothing is published"
    );
    // Variables outside SEGFLOW_* may hold any bytes.
    let (code, err) = run("SOME_OTHER_TOOL_SETTING", OsStr::from_bytes(b"\xff\xfe"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn missing_input_path_is_named() {
    let (code, err) = failing(|d| demo_config_with(d, &demo_orders(), "/nonexistent/orders"));
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/orders") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn missing_mapped_column_names_source_and_canonical_column() {
    let (code, err) = failing(|d| demo_config_with(d, "\"created_at\"", "\"created_on\""));
    assert_eq!(code, 2);
    assert!(
        err.contains("created_on") && err.contains("order_ts"),
        "{err}"
    );
}

#[test]
fn empty_input_fails_naming_the_uri() {
    let (code, err) = failing(|d| {
        let empty = d.join("empty_orders");
        std::fs::create_dir_all(&empty).unwrap();
        demo_config_with(d, &demo_orders(), &empty.display().to_string())
    });
    assert_eq!(code, 2);
    assert!(
        err.contains("empty_orders") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn model_cycle_names_the_chain() {
    let (code, err) = failing(|d| {
        with_model(d, "cyc_a.sql", "select * from cyc_b");
        with_model(d, "cyc_b.sql", "select * from cyc_a")
    });
    assert_eq!(code, 2);
    assert!(err.contains("cyc_a -> cyc_b -> cyc_a"), "{err}");
}

#[test]
fn symlink_loop_under_a_model_folder_exits_2_naming_it() {
    let (code, err) = failing(|d| {
        let c = with_model(d, "ok.sql", "select 1 as x");
        std::os::unix::fs::symlink(d.join("models"), d.join("models/again")).unwrap();
        c
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("symlink loop") && err.contains("models/again"),
        "{err}"
    );
}

#[test]
fn unknown_table_names_the_table_and_the_file() {
    assert_model_fails(
        "uses_missing.sql",
        "select * from custmer_facts",
        2,
        &["custmer_facts", "uses_missing.sql"],
    );
}

#[test]
fn ddl_and_dml_in_a_model_are_rejected_naming_the_file() {
    for (file, sql, kind) in [
        ("make_table.sql", "create table t as select 1", "CREATE"),
        ("add_rows.sql", "insert into t values (1)", "INSERT"),
        ("export.sql", "copy (select 1) to '/tmp/x.parquet'", "COPY"),
        (
            "settings.sql",
            "set datafusion.execution.batch_size = 1",
            "SET",
        ),
    ] {
        assert_model_fails(file, sql, 2, &[file, kind]);
    }
}

#[test]
fn unparsable_front_matter_names_file_and_line() {
    let sql = "/*---\ndescription = \"ok\"\ngrain = [\"customer_id\"\npublish = true\n---*/\nselect 1 as x";
    assert_model_fails("bad_header.sql", sql, 2, &["bad_header.sql:4"]);
}

#[test]
fn sql_error_points_at_file_line_and_column() {
    let sql =
        "/*---\ndescription = \"x\"\n---*/\nselect\n  customer_id,\n  revenu\nfrom customer_facts";
    assert_model_fails("typo.sql", sql, 2, &["typo.sql:6:3", "revenu"]);
}

#[test]
fn undefined_parameter_is_named() {
    let sql = "select * from customer_facts where tenure_days > $min_tenure";
    assert_model_fails("param.sql", sql, 2, &["$min_tenure", "param.sql"]);
}

#[test]
fn unknown_clv_time_unit_exits_2_naming_the_parameter_and_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let config = demo_config(tmp.path(), "");
    let r = run_at_env(
        &config,
        DEMO_AS_OF,
        &[("SEGFLOW_PARAM_TIME_UNIT".into(), "months".into())],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // The first model to compute with it stops the run: the BTYD summary of the holdout's
    // calibration or of as_of, whichever the schedule reaches first.
    let line = error_line(&r);
    assert!(
        (line.contains("`clv_holdout_summary`") || line.contains("`btyd_summary`"))
            && line.contains("time_unit must be days or weeks"),
        "{line}"
    );
    let out = tmp.path().join("out");
    assert!(
        !out.exists() || snapshot_files(&out).is_empty(),
        "nothing published"
    );
}

#[test]
fn failed_model_check_exits_1_and_publishes_nothing() {
    let sql = "/*---\n[checks]\nunique = [\"acquisition_channel\"]\n---*/\nselect customer_id, acquisition_channel from customer_facts";
    assert_model_fails(
        "checked.sql",
        sql,
        1,
        &["checked.sql", "unique(acquisition_channel)"],
    );
}

#[test]
fn unique_check_ignores_null_keys_and_still_catches_duplicates() {
    // Two rows with a NULL key and one with 'x': unique passes (NULL keys take no part).
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(
        tmp.path(),
        "keys.sql",
        "/*---\n[checks]\nunique = [\"k\", \"k, j\"]\n---*/\n\
         select * from (values (cast(null as varchar), 1), (cast(null as varchar), 1), ('x', 1)) as t(k, j)",
    );
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    // Two rows with 'x': a duplicate.
    assert_model_fails(
        "keys.sql",
        "/*---\n[checks]\nunique = [\"k\"]\n---*/\n\
         select * from (values (cast(null as varchar)), ('x'), ('x')) as t(k)",
        1,
        &["keys.sql", "unique(k): 1 duplicated value(s)"],
    );
}

/// A published model that selects a personal-data column (`email`, or a name added by
/// `[privacy] pii_columns`) is an error at the line that names it: `check` exits 1 and `run`
/// exits 1 with nothing published; `[privacy] publish_pii` lets it through.
#[test]
fn a_model_publishing_personal_data_is_refused_at_its_line_unless_allowed() {
    let sql = "/*---\ndescription = \"Contacts.\"\n---*/\nselect customer_id,\n       email\nfrom customers\n";
    assert_model_fails(
        "contacts.sql",
        sql,
        1,
        &["contacts.sql:5", "`contacts`", "`email`", "publish_pii"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(tmp.path(), "contacts.sql", sql);
    let r = crate::util::segflow(&["check", "--config", config.to_str().unwrap()]);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "{said}");
    assert!(
        said.contains("contacts.sql:5") && said.contains("`email`"),
        "{said}"
    );
    // A name of one's own, declared personal, the same way.
    let own = "select customer_id, 'x' as loyalty_card from customers";
    let (code, err) = failing(|d| {
        let config = with_model(d, "cards.sql", own);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!("{text}\n[privacy]\npii_columns = [\"Loyalty_Card\"]\n"),
        )
        .unwrap();
        config
    });
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cards.sql:1") && err.contains("`loyalty_card`"),
        "{err}"
    );
    // Allowed: published.
    let tmp = tempfile::tempdir().unwrap();
    let config = with_model(tmp.path(), "contacts.sql", sql);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[privacy]\npublish_pii = [\"email\"]\n"),
    )
    .unwrap();
    run_ok(&config, &["--as-of", DEMO_AS_OF]);
    assert!(tmp
        .path()
        .join(format!("out/contacts/as_of={DEMO_AS_OF}"))
        .exists());
}

/// `pseudonymise = true` needs the key: without it the run exits 2 naming the variable.
#[test]
fn pseudonymising_without_a_key_exits_2_naming_the_variable() {
    let (code, err) = failing(|d| demo_config(d, "[privacy]\npseudonymise = true\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("SEGFLOW_PSEUDONYM_KEY") && err.contains("pseudonymise"),
        "{err}"
    );
}
