//! `segflow check`: parses and plans every model, check and data test against the real
//! input schemas without reading any data, taking the lock or writing under the output, and
//! reports every problem at once, compiler style:
//!
//! ```text
//! models/rfm.sql:12:8: error: column 'revenu' not found (help: did you mean 'revenue'?)
//!    12 |        revenu
//!       |        ^
//! ```
//!
//! Errors are findings in models, data tests, checks and params (exit 1); warnings alone
//! exit 0; a config, input or I/O problem means the check could not run (exit 2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::ingest::input_schemas;
use crate::models::{
    check_queries, model_params, plan_model, plan_models, unused_params, CheckQuery, PlanReport,
};
use crate::models::{
    discover_models_lenient, discover_tests_lenient, order_models, DataTest, Model, ModelSources,
    INPUT_TABLES,
};
use crate::session::build_session;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One problem, located as precisely as known.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// The file (a model, a data test, the config) or `environment`.
    pub file: String,
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// What `segflow check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// Models planned without a problem, of all models found.
    pub models_ok: usize,
    pub models: usize,
    pub tests: usize,
    /// Models not planned because a model they read is broken: (model, the broken one).
    pub skipped: Vec<(String, String)>,
}

impl CheckReport {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// The report as printed: each finding with its source line and a caret, paths relative
    /// to `cwd` when below it, then a summary line.
    pub fn render(&self, cwd: &Path) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let file = Path::new(&f.file)
                .strip_prefix(cwd)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| f.file.clone());
            let level = match f.level {
                Level::Error => "error",
                Level::Warning => "warning",
            };
            match f.at {
                Some((line, col)) => {
                    out.push_str(&format!("{file}:{line}:{col}: {level}: {}\n", f.message))
                }
                None => out.push_str(&format!("{file}: {level}: {}\n", f.message)),
            }
            if let Some(snippet) = f.at.and_then(|at| snippet(&f.file, at)) {
                out.push_str(&snippet);
            }
        }
        for (model, broken) in &self.skipped {
            out.push_str(&format!(
                "note: model `{model}` not checked: it reads `{broken}`, which has errors\n"
            ));
        }
        out.push_str(&format!(
            "checked {} model(s) and {} data test(s): {} error(s), {} warning(s)\n",
            self.models,
            self.tests,
            self.errors(),
            self.warnings()
        ));
        out
    }
}

/// The source line of `at` in `file` with a caret under the column (tabs kept, so the
/// caret lines up).
fn snippet(file: &str, (line, col): (usize, usize)) -> Option<String> {
    let text = source_text(file)?;
    let src = text.lines().nth(line.checked_sub(1)?)?;
    let pad: String = src
        .chars()
        .take(col.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let width = line.to_string().len();
    Some(format!(
        "{:>width$} | {src}\n{:>width$} | {pad}^\n",
        line,
        "",
        width = width + 1
    ))
}

/// The text of a model file: built-in ones (`sql/...`) from the binary.
fn source_text(file: &str) -> Option<String> {
    if let Some(rel) = file.strip_prefix("sql/") {
        if let Some(f) = crate::models::BUILTIN_MODELS.get_file(rel) {
            return f.contents_utf8().map(str::to_string);
        }
    }
    std::fs::read_to_string(file).ok()
}

/// Splits `path:line[:col]` as segflow's errors write locations.
fn split_location(file: &str) -> (String, Option<(usize, usize)>) {
    let mut parts = file.rsplitn(3, ':');
    let last = parts.next().and_then(|p| p.parse::<usize>().ok());
    let middle = parts.next();
    match (
        last,
        middle.and_then(|p| p.parse::<usize>().ok()),
        parts.next(),
    ) {
        (Some(col), Some(line), Some(path)) => (path.to_string(), Some((line, col))),
        (Some(line), _, _) => {
            let cut = file.rfind(':').unwrap_or(file.len());
            (file[..cut].to_string(), Some((line, 1)))
        }
        _ => (file.to_string(), None),
    }
}

/// 1-based (line, column) of the first whole-word `word` in `text` after `from` (a byte
/// offset), case-insensitive; columns count characters.
fn find_word(text: &str, word: &str, from: usize) -> Option<(usize, usize)> {
    let lower = text.to_lowercase();
    let needle = word.to_lowercase();
    if lower.len() != text.len() || needle.is_empty() {
        return None;
    }
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut start = from.min(lower.len());
    while let Some(i) = lower[start..].find(&needle) {
        let at = start + i;
        let end = at + needle.len();
        let before = lower[..at].chars().next_back();
        let after = lower[end..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            let line = text[..at].matches('\n').count() + 1;
            let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
            return Some((line, text[line_start..at].chars().count() + 1));
        }
        start = end;
    }
    None
}

/// Where the SQL starts: after the front matter, if any.
fn body_offset(sql: &str) -> usize {
    sql.find("---*/").map_or(0, |i| i + "---*/".len())
}

/// A finding from an error about a model or test file; `model` locates what the error
/// leaves unlocated (an unknown table is found in the SQL).
fn finding_from(e: &Error, model: Option<&Model>) -> Finding {
    let (file, at, message) = match e {
        Error::ModelFile { file, message } => {
            let (file, at) = split_location(file);
            (file, at, message.clone())
        }
        Error::Model { file, message, .. } => {
            let (file, at) = split_location(file);
            (file, at, message.clone())
        }
        Error::UnknownTable {
            file, table, known, ..
        } => {
            let at = model.and_then(|m| {
                let name = table.rsplit('.').next().unwrap_or(table);
                find_word(&m.sql, name, body_offset(&m.sql))
            });
            (
                file.clone(),
                at,
                format!("unknown table `{table}` (known: {known})"),
            )
        }
        other => (
            model.map(|m| m.file.clone()).unwrap_or_default(),
            None,
            other.to_string(),
        ),
    };
    Finding {
        level: Level::Error,
        file,
        at,
        message,
    }
}

/// A finding about a front-matter entry, located at its first mention after the `[checks]`
/// or `[columns]` table (or anywhere in the front matter).
fn header_finding(model: &Model, section: &str, word: &str, message: String) -> Finding {
    let from = model.sql.find(section).unwrap_or(0);
    let at = find_word(&model.sql, word, from)
        .filter(|(line, _)| {
            let end = body_offset(&model.sql);
            *line <= model.sql[..end].matches('\n').count() + 1
        })
        .or_else(|| find_word(&model.sql, section.trim_matches(['[', ']']), 0));
    Finding {
        level: Level::Error,
        file: model.file.clone(),
        at,
        message,
    }
}

/// Runs `segflow check`.
pub async fn check(settings: &Settings) -> Result<CheckReport> {
    let sources = ModelSources::of(settings);
    let mut report = CheckReport::default();
    let (mut models, broken) = discover_models_lenient(&sources)?;
    let (tests, broken_tests) = discover_tests_lenient(&sources)?;
    report.models = models.len() + broken.len();
    report.tests = tests.len() + broken_tests.len();
    for e in broken.iter().chain(broken_tests.iter()) {
        report.findings.push(finding_from(e, None));
    }
    let ordered = order_reporting(&mut models, &mut report)?;

    // Plan against the real input schemas (Parquet footers only).
    let ctx = build_session(settings)?;
    let orders_schema = input_schemas(&ctx, settings).await?;
    let as_of = settings.as_of.unwrap_or_else(|| Utc::now().date_naive());
    let planned = plan_models(&ctx, settings, orders_schema, &ordered, as_of, true).await?;
    for (name, e) in &planned.failures {
        let m = ordered.iter().find(|m| &m.name == name);
        report.findings.push(finding_from(e, m));
    }
    report.skipped.extend(planned.skipped.iter().cloned());
    for m in &ordered {
        if let Some(schema) = planned.schemas.get(&m.name) {
            report
                .findings
                .extend(header_findings(m, schema, &planned.schemas));
            let checks = check_findings(m, schema, &planned.planner).await;
            report.findings.extend(checks);
        }
    }
    report.models_ok = planned.schemas.len();
    check_data_tests(&tests, &ordered, &planned, as_of, settings, &mut report).await;
    report
        .findings
        .extend(unused_param_findings(settings, &models, &tests));
    report.findings.sort_by(|a, b| {
        (&a.file, a.at, a.level, &a.message).cmp(&(&b.file, b.at, b.level, &b.message))
    });
    Ok(report)
}

/// Orders `models`, reporting each model that reads an unknown table and each dependency
/// cycle: such models are dropped from `models` (one reading a model dropped before is
/// noted as skipped, not reported), and the rest ordered.
fn order_reporting(models: &mut Vec<Model>, report: &mut CheckReport) -> Result<Vec<Model>> {
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for (name, e) in crate::models::incremental::read_errors(models) {
        let m = models.iter().find(|m| m.name == name).cloned();
        report.findings.push(finding_from(&e, m.as_ref()));
        models.retain(|m| m.name != name);
        removed.insert(name);
    }
    loop {
        match order_models(models.clone()) {
            Ok(ordered) => return Ok(ordered),
            Err(Error::UnknownTable {
                file,
                model,
                table,
                known,
            }) => {
                let m = models.iter().find(|m| m.name == model).cloned();
                if removed.contains(&table) {
                    report.skipped.push((model.clone(), table));
                } else {
                    let e = Error::UnknownTable {
                        file,
                        model: model.clone(),
                        table,
                        known,
                    };
                    report.findings.push(finding_from(&e, m.as_ref()));
                }
                models.retain(|m| m.name != model);
                removed.insert(model);
            }
            Err(Error::Cycle { chain }) => {
                let names: BTreeSet<&str> = chain.split(" -> ").collect();
                let first = models.iter().find(|m| names.contains(m.name.as_str()));
                report.findings.push(Finding {
                    level: Level::Error,
                    file: first.map(|m| m.file.clone()).unwrap_or_default(),
                    at: None,
                    message: format!("model dependency cycle: {chain}"),
                });
                models.retain(|m| !names.contains(m.name.as_str()));
                removed.extend(names.iter().map(|n| n.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `[checks]` of `m` (planned with `schema`) that cannot run, each planned on `planner`.
/// A check naming a column `m` does not output is left out: [`header_findings`] reports it.
async fn check_findings(m: &Model, schema: &SchemaRef, planner: &SessionContext) -> Vec<Finding> {
    let mut out = Vec::new();
    for CheckQuery { label, sql, .. } in check_queries(m) {
        let kind = label.split(':').next().unwrap_or_default().to_string();
        let (name, args) = kind.split_once('(').unwrap_or((&kind, ""));
        let args = args.trim_end_matches(')');
        // A missing column of these is reported by `header_findings` already.
        let columns_named = matches!(name, "unique" | "not_null" | "accepted_values")
            .then(|| args.split(',').map(str::trim).collect::<Vec<_>>())
            .or_else(|| {
                (name == "relationships")
                    .then(|| vec![args.split(" -> ").next().unwrap_or_default()])
            });
        if columns_named.is_some_and(|cs| cs.iter().any(|c| schema.field_with_name(c).is_err())) {
            continue;
        }
        if let Err(e) = planner.sql(&sql).await {
            let word = args.split(',').next().unwrap_or(args).trim();
            let message = e.strip_backtrace().replace('\n', " ");
            out.push(header_finding(
                m,
                "[checks]",
                if word.is_empty() { name } else { word },
                format!("check {kind} cannot run: {message}"),
            ));
        }
    }
    out
}

/// Plans the data tests against the same empty tables as the `ordered` models: a test
/// reading an unknown table, or that does not plan, is a finding; one reading a model that
/// did not plan is skipped.
async fn check_data_tests(
    tests: &[DataTest],
    ordered: &[Model],
    planned: &PlanReport,
    as_of: NaiveDate,
    settings: &Settings,
    report: &mut CheckReport,
) {
    let all: BTreeSet<String> = ordered.iter().map(|m| m.name.clone()).collect();
    for t in tests {
        let m = &t.model;
        let tables = m.deps.iter().chain(m.previous_deps.iter());
        if let Some(unknown) = tables.clone().find(|d| !all.contains(*d)) {
            let mut known: Vec<String> = INPUT_TABLES.iter().map(|s| s.to_string()).collect();
            known.extend(all.iter().cloned());
            let e = Error::UnknownTable {
                file: m.file.clone(),
                model: m.name.clone(),
                table: unknown.clone(),
                known: known.join(", "),
            };
            report.findings.push(finding_from(&e, Some(m)));
            continue;
        }
        if let Some(broken) = tables.clone().find(|d| !planned.schemas.contains_key(*d)) {
            report.skipped.push((m.name.clone(), broken.clone()));
            continue;
        }
        let planned_test = match model_params(m, as_of, &settings.params) {
            Ok(params) => plan_model(&planned.planner, m, &params).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = planned_test {
            report.findings.push(finding_from(&e, Some(m)));
        }
    }
}

/// Parameters (of the config or the environment) that none of `models` and `tests` uses,
/// located in the config's `[params]`.
fn unused_param_findings(
    settings: &Settings,
    models: &[Model],
    tests: &[DataTest],
) -> Vec<Finding> {
    let config_text = std::fs::read_to_string(&settings.config_path).unwrap_or_default();
    let params_at = config_text.find("[params]").unwrap_or(0);
    let users = models.iter().chain(tests.iter().map(|t| &t.model));
    unused_params(&settings.params, users)
        .into_iter()
        .map(|(source, name)| {
            let from_env = source.starts_with("SEGFLOW_");
            Finding {
                level: Level::Error,
                file: if from_env {
                    "environment".into()
                } else {
                    settings.config_path.display().to_string()
                },
                at: (!from_env)
                    .then(|| find_word(&config_text, &name, params_at))
                    .flatten(),
                message: format!("{source}: no model or data test uses the parameter `${name}`"),
            }
        })
        .collect()
}

/// Front-matter entries that name columns the model does not output: `grain`, `[columns]`
/// docs, `[checks]` columns, `relationships` targets; and, as warnings, output columns a
/// model with `[columns]` docs leaves undocumented.
fn header_findings(
    m: &Model,
    schema: &SchemaRef,
    schemas: &BTreeMap<String, SchemaRef>,
) -> Vec<Finding> {
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let listed = columns.join(", ");
    let has = |c: &str| columns.contains(&c);
    let mut out = Vec::new();
    let mut absent = Vec::new();
    let mut missing = |section: &str, what: String, c: &str| {
        absent.push(header_finding(
            m,
            section,
            c,
            format!(
                "{what} names column `{c}`, which model `{}` does not output (columns: {listed})",
                m.name
            ),
        ))
    };
    for g in &m.header.grain {
        if !has(g) {
            missing("grain", "grain".into(), g);
        }
    }
    for c in m.header.columns.keys() {
        if !has(c) {
            missing("[columns]", "[columns]".into(), c);
        }
    }
    let checks = &m.header.checks;
    for cols in &checks.unique {
        for c in crate::models::unique_columns(cols) {
            if !has(c) {
                missing("[checks]", "[checks] unique".into(), c);
            }
        }
    }
    for c in &checks.not_null {
        if !has(c) {
            missing("[checks]", "[checks] not_null".into(), c);
        }
    }
    for c in checks.accepted_values.keys() {
        if !has(c) {
            missing("[checks]", "[checks] accepted_values".into(), c);
        }
    }
    for c in checks.relationships.keys() {
        if !has(c) {
            missing("[checks]", "[checks] relationships".into(), c);
        }
    }
    out.append(&mut absent);
    for (c, target) in &checks.relationships {
        let ok = target.split_once('.').is_some_and(|(tm, tc)| {
            schemas
                .get(tm)
                .is_some_and(|s| s.field_with_name(tc).is_ok())
        });
        if !ok {
            out.push(header_finding(
                m,
                "[checks]",
                target.split('.').next().unwrap_or(target),
                format!(
                    "[checks] relationships.{c} = \"{target}\": no such model column (write `model.column`)"
                ),
            ));
        }
    }
    if !m.header.columns.is_empty() {
        for c in &columns {
            if !m.header.columns.contains_key(*c) {
                let mut f = header_finding(
                    m,
                    "[columns]",
                    "[columns]",
                    format!(
                        "column `{c}` of model `{}` is not documented in [columns]",
                        m.name
                    ),
                );
                f.level = Level::Warning;
                f.at = find_word(&m.sql, "columns", 0);
                out.push(f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_off_paths_and_words_are_found_whole() {
        assert_eq!(
            split_location("models/a.sql:12:8"),
            ("models/a.sql".into(), Some((12, 8)))
        );
        assert_eq!(
            split_location("models/a.sql:3"),
            ("models/a.sql".into(), Some((3, 1)))
        );
        assert_eq!(
            split_location("models/a.sql"),
            ("models/a.sql".into(), None)
        );
        let sql = "/*---\n---*/\nselect revenue_x, revenue\nfrom orders";
        assert_eq!(find_word(sql, "revenue", 0), Some((3, 19)));
        assert_eq!(find_word(sql, "ORDERS", 0), Some((4, 6)));
        assert_eq!(find_word(sql, "order", 0), None);
    }

    #[test]
    fn a_snippet_puts_the_caret_under_the_column() {
        let dir = std::env::temp_dir().join(format!("segflow-snippet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.sql");
        std::fs::write(&file, "select\n\trevenu\nfrom orders\n").unwrap();
        let s = snippet(file.to_str().unwrap(), (2, 2)).unwrap();
        assert_eq!(s, " 2 | \trevenu\n   | \t^\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
