//! Model discovery: SQL files, their TOML front matter, dependencies and run order.
//!
//! A model is one `*.sql` file holding one query; its file stem is the table name. Metadata
//! lives in a leading `/*--- ... ---*/` comment so the file stays plain SQL. Dependencies are
//! found by parsing the SQL for table references (no templating), and models are ordered
//! topologically; a cycle is an error naming the chain.

mod checks;
pub mod incremental;
pub mod keys;
mod plan;
mod schedule;
pub mod touched;

pub use checks::*;
pub use plan::*;
pub use schedule::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::ast::{
    self as sqlast, visit_expressions_mut, CastKind, ExactNumberInfo, Expr as SqlExpr,
    Statement as SqlStatement,
};
use include_dir::{include_dir, Dir};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The built-in model library, embedded at compile time.
pub static BUILTIN_MODELS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/sql");

/// Names of the input tables models may read.
pub const INPUT_TABLES: &[&str] = &["orders", "customers", "marketing_spend"];

/// Schema under which the previous published snapshot of each model is visible.
pub const PREVIOUS_SCHEMA: &str = "previous";

/// Front matter of a model file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// What the table holds; states the grain.
    #[serde(default)]
    pub description: String,
    /// Columns that identify a row.
    #[serde(default)]
    pub grain: Vec<String>,
    /// Hive partition columns of the published table.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// false = internal model: computed and reused, never written.
    #[serde(default = "default_true")]
    pub publish: bool,
    /// Parameter defaults (`$name` in the SQL); config `[params]` overrides them.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Column documentation.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Data checks run on the result before publishing.
    #[serde(default)]
    pub checks: Checks,
    /// `table` (default: computed from all its input each run) or `incremental` (kept as
    /// state; a run merges the new order lines into it with `merge`).
    #[serde(default)]
    pub materialized: Materialized,
    /// Incremental models: the query that merges `slice` (the model's query over the new
    /// order lines) into `state` (the kept rows whose grain `slice` holds); its rows replace
    /// those of `state`.
    #[serde(default)]
    pub merge: Option<String>,
}

/// How a model's table is computed from run to run.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Materialized {
    #[default]
    Table,
    Incremental,
}

fn default_true() -> bool {
    true
}

/// Checks declared in a model's front matter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// Columns (each, or a combination written `"a, b"`) whose values must be unique.
    #[serde(default)]
    pub unique: Vec<String>,
    /// Columns that must not contain NULL.
    #[serde(default)]
    pub not_null: Vec<String>,
    /// Column → allowed values.
    #[serde(default)]
    pub accepted_values: BTreeMap<String, Vec<String>>,
    /// Bounds on the number of rows.
    #[serde(default)]
    pub row_count: Option<RowCount>,
    /// SQL boolean expressions every row must satisfy.
    #[serde(default)]
    pub expression: Vec<String>,
    /// Column → `model.column` that must contain each non-NULL value.
    #[serde(default)]
    pub relationships: BTreeMap<String, String>,
    /// `error` (default: fails the run with exit 1) or `warn` (logged only).
    #[serde(default)]
    pub severity: Severity,
}

/// The columns of one `unique` entry (`"a, b"`).
pub fn unique_columns(entry: &str) -> impl Iterator<Item = &str> {
    entry.split(',').map(str::trim)
}

/// `row_count = { min = 1, max = 100 }`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCount {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// How a failed check is treated.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

/// One discovered model.
#[derive(Debug, Clone)]
pub struct Model {
    /// Table name (the file stem).
    pub name: String,
    /// The file as shown in messages (`sql/rfm.sql` for built-ins).
    pub file: String,
    /// The whole file text; front matter is a comment, so this is the query.
    pub sql: String,
    pub header: Header,
    /// Models this one reads (current run).
    pub deps: BTreeSet<String>,
    /// Models whose previous snapshot this one reads (`previous.<model>`).
    pub previous_deps: BTreeSet<String>,
    /// Input tables this one reads.
    pub inputs: BTreeSet<String>,
    /// `$name` parameters used in the SQL.
    pub params_used: BTreeSet<String>,
}

impl Model {
    /// Whether the model is kept as state and merged incrementally.
    pub fn incremental(&self) -> bool {
        self.header.materialized == Materialized::Incremental
    }

    /// The tables the model reads, current or `previous.*`, but itself (a model may read
    /// its own previous snapshot).
    pub fn tables_read(&self) -> impl Iterator<Item = &String> {
        self.deps
            .iter()
            .chain(self.previous_deps.iter())
            .filter(move |d| **d != self.name)
    }
}

/// Where models come from.
#[derive(Debug, Clone)]
pub struct ModelSources {
    pub builtin: bool,
    pub paths: Vec<PathBuf>,
    /// Models the config generates (name, file as shown in messages, text): the
    /// `audience_members` of `[[audiences]]`.
    pub generated: Vec<(String, String, String)>,
}

impl ModelSources {
    /// The models of `settings`: the built-in library, its model paths, and those its
    /// `[[audiences]]` generate.
    pub fn of(settings: &crate::config::Settings) -> ModelSources {
        let generated = crate::audiences::model_sql(&settings.audiences)
            .map(|sql| {
                (
                    crate::audiences::MODEL.to_string(),
                    format!("[[audiences]] of {}", settings.config_path.display()),
                    sql,
                )
            })
            .into_iter()
            .collect();
        ModelSources {
            builtin: settings.builtin_models,
            paths: settings.model_paths.clone(),
            generated,
        }
    }
}

/// Finds every model: the built-in library (unless disabled), then each path in order,
/// later ones overriding same-named models. `*.sql` under a `tests/` subfolder are data
/// tests, not models. The first broken model file is the error.
pub fn discover_models(sources: &ModelSources) -> Result<Vec<Model>> {
    let (models, mut broken) = discover_models_lenient(sources)?;
    match broken.is_empty() {
        true => Ok(models),
        false => Err(broken.remove(0)),
    }
}

/// [`discover_models`] that keeps going: the models that parse, and an error for each file
/// that does not (for `segflow check`, which reports them all). A model folder that cannot
/// be read is still the error.
pub fn discover_models_lenient(sources: &ModelSources) -> Result<(Vec<Model>, Vec<Error>)> {
    let files = sql_files(sources, false)?;
    let mut models = Vec::new();
    let mut broken = Vec::new();
    for f in files {
        match f.and_then(|(name, file, sql)| parse_model(&name, &file, sql)) {
            Ok(m) => models.push(m),
            Err(e) => broken.push(e),
        }
    }
    Ok((models, broken))
}

/// A data test: a query over the models and inputs under a `tests/` folder beside the
/// models; any row it returns is a failure.
#[derive(Debug, Clone)]
pub struct DataTest {
    /// The test as a model (its name is the file stem; `header` holds its description and
    /// parameter defaults), so it is planned and bound like one.
    pub model: Model,
    pub severity: Severity,
}

/// Front matter of a data test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestHeader {
    #[serde(default)]
    description: String,
    /// `error` (default: the run fails with exit 1, nothing published) or `warn`.
    #[serde(default)]
    severity: Severity,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
}

/// Finds the data tests: `*.sql` under every `tests/` folder of the model paths (and of the
/// built-in library when it runs), later paths overriding same-named tests.
pub fn discover_tests(sources: &ModelSources) -> Result<Vec<DataTest>> {
    let (tests, mut broken) = discover_tests_lenient(sources)?;
    match broken.is_empty() {
        true => Ok(tests),
        false => Err(broken.remove(0)),
    }
}

/// [`discover_tests`] that keeps going (for `segflow check`).
pub fn discover_tests_lenient(sources: &ModelSources) -> Result<(Vec<DataTest>, Vec<Error>)> {
    let mut tests = Vec::new();
    let mut broken = Vec::new();
    for f in sql_files(sources, true)? {
        match f.and_then(|(name, file, sql)| parse_test(&name, &file, sql)) {
            Ok(t) => tests.push(t),
            Err(e) => broken.push(e),
        }
    }
    Ok((tests, broken))
}

fn parse_test(name: &str, file: &str, sql: String) -> Result<DataTest> {
    let header: TestHeader = parse_front_matter(file, &sql)?;
    let model = parse_model_with(
        name,
        file,
        sql,
        Header {
            description: header.description,
            publish: false,
            params: header.params,
            ..Header::default()
        },
    )?;
    Ok(DataTest {
        model,
        severity: header.severity,
    })
}

/// (name, file as shown, text) of every model file (`tests` false) or data test file
/// (`tests` true), later sources overriding same-named ones; a file whose name is not a
/// valid model name, or a name defined twice in one folder, is an error of that file.
type SqlFile = Result<(String, String, String)>;

fn sql_files(sources: &ModelSources, tests: bool) -> Result<Vec<SqlFile>> {
    let mut by_name: BTreeMap<String, SqlFile> = BTreeMap::new();
    let mut broken = Vec::new();
    if sources.builtin {
        let mut files = Vec::new();
        collect_builtin(&BUILTIN_MODELS, &mut files, tests, false);
        for (rel, text) in files {
            let file = format!("sql/{rel}");
            match model_name(Path::new(&rel), &file) {
                Ok(name) => {
                    by_name.insert(name.clone(), Ok((name, file, text)));
                }
                Err(e) => broken.push(Err(e)),
            }
        }
    }
    for root in &sources.paths {
        if !root.is_dir() {
            return Err(Error::ModelFile {
                file: root.display().to_string(),
                message: "model path does not exist or is not a directory (check [models] paths)"
                    .into(),
            });
        }
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        let mut files = Vec::new();
        walk_sql(root, &mut files, &mut Vec::new(), tests, false)?;
        files.sort();
        for path in files {
            let file = path.display().to_string();
            let name = match model_name(&path, &file) {
                Ok(n) => n,
                Err(e) => {
                    broken.push(Err(e));
                    continue;
                }
            };
            if let Some(other) = found.insert(name.clone(), file.clone()) {
                broken.push(Err(Error::ModelFile {
                    file,
                    message: format!(
                        "{} `{name}` is also defined by {other}",
                        if tests { "data test" } else { "model" }
                    ),
                }));
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io("read model", &path, e))
                .map(|text| (name.clone(), file, text));
            by_name.insert(name, text);
        }
    }
    if !tests {
        for (name, file, text) in &sources.generated {
            if let Some(Ok((_, other, _))) = by_name.get(name) {
                broken.push(Err(Error::ModelFile {
                    file: other.clone(),
                    message: format!(
                        "model `{name}` is the table {file} publish: rename this model"
                    ),
                }));
                continue;
            }
            by_name.insert(name.clone(), Ok((name.clone(), file.clone(), text.clone())));
        }
    }
    broken.extend(by_name.into_values());
    Ok(broken)
}

fn collect_builtin(
    dir: &'static Dir<'static>,
    out: &mut Vec<(String, String)>,
    tests: bool,
    inside: bool,
) {
    if inside == tests {
        for f in dir.files() {
            let p = f.path();
            if p.extension().and_then(|e| e.to_str()) == Some("sql") {
                if let Some(text) = f.contents_utf8() {
                    out.push((p.to_string_lossy().into_owned(), text.to_string()));
                }
            }
        }
    }
    for d in dir.dirs() {
        let is_tests = d.path().file_name().and_then(|n| n.to_str()) == Some("tests");
        if tests || !is_tests {
            collect_builtin(d, out, tests, inside || is_tests);
        }
    }
}

/// Collects the `.sql` files under `dir`: outside `tests/` folders (`tests` false) or
/// inside them (`tests` true); `inside` says whether `dir` is within a `tests/` folder.
/// Symlinked folders are followed; `ancestors` holds the resolved folders being walked, so a
/// symlink leading back to one of them is an error naming it instead of an endless walk.
fn walk_sql(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    ancestors: &mut Vec<PathBuf>,
    tests: bool,
    inside: bool,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve model folder", dir, e))?;
    if let Some(first) = ancestors.iter().find(|a| **a == real) {
        return Err(Error::ModelFile {
            file: dir.display().to_string(),
            message: format!(
                "symlink loop: this folder is {}, which contains it",
                first.display()
            ),
        });
    }
    ancestors.push(real);
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list model folder", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list model folder", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            let is_tests = path.file_name().and_then(|n| n.to_str()) == Some("tests");
            if tests || !is_tests {
                walk_sql(&path, out, ancestors, tests, inside || is_tests)?;
            }
        } else if inside == tests && path.extension().and_then(|e| e.to_str()) == Some("sql") {
            out.push(path);
        }
    }
    ancestors.pop();
    Ok(())
}

fn model_name(path: &Path, file: &str) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let valid = stem
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if stem.starts_with('_') {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!("model names starting with `_` are reserved (`{stem}`)"),
        });
    }
    if !valid {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!(
                "model name `{stem}` must be lowercase letters, digits and `_`, starting with a letter"
            ),
        });
    }
    if INPUT_TABLES.contains(&stem.as_str()) || stem == PREVIOUS_SCHEMA {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!("model name `{stem}` is reserved for an input table"),
        });
    }
    Ok(stem)
}

/// Splits off and parses the front matter; finds tables and parameters used.
pub fn parse_model(name: &str, file: &str, sql: String) -> Result<Model> {
    let header = parse_front_matter(file, &sql)?;
    parse_model_with(name, file, sql, header)
}

fn parse_model_with(name: &str, file: &str, sql: String, header: Header) -> Result<Model> {
    let statement = parse_statement(file, &sql)?;
    let (tables, _ctes) =
        resolve_table_references(&statement, true).map_err(|e| Error::ModelFile {
            file: file.into(),
            message: format!("cannot resolve table references: {e}"),
        })?;
    let mut deps = BTreeSet::new();
    let mut previous_deps = BTreeSet::new();
    let mut inputs = BTreeSet::new();
    for t in tables {
        match t.schema() {
            Some(s) if s == PREVIOUS_SCHEMA => {
                previous_deps.insert(t.table().to_string());
            }
            Some(_) => {
                // Any other schema is unknown; resolved against known tables later.
                deps.insert(t.to_string());
            }
            None if INPUT_TABLES.contains(&t.table()) => {
                inputs.insert(t.table().to_string());
            }
            None => {
                deps.insert(t.table().to_string());
            }
        }
    }
    let params_used = placeholders(file, &statement)?;
    let model = Model {
        name: name.into(),
        file: file.into(),
        sql,
        header,
        deps,
        previous_deps,
        inputs,
        params_used,
    };
    incremental::validate(&model)?;
    Ok(model)
}

/// Parses the model SQL into exactly one query statement; anything else names the file.
pub fn parse_statement(file: &str, sql: &str) -> Result<DFStatement> {
    let mut statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| syntax_error(file, sql, e))?;
    if statements.len() != 1 {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!(
                "a model file must hold exactly one query, found {} statements",
                statements.len()
            ),
        });
    }
    let statement = statements.pop_front().expect("one statement");
    let kind = match &statement {
        DFStatement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_) => None,
            other => Some(statement_kind(other)),
        },
        DFStatement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".to_string()),
        DFStatement::CopyTo(_) => Some("COPY".to_string()),
        DFStatement::Explain(_) => Some("EXPLAIN".to_string()),
        DFStatement::Reset(_) => Some("RESET".to_string()),
    };
    if let Some(kind) = kind {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!(
                "only queries (SELECT / WITH / VALUES) are allowed in a model, found {kind}"
            ),
        });
    }
    Ok(statement)
}

/// A parser error as `file:line:col: SQL syntax error: ...` (the end of the file when the
/// text ended too early).
fn syntax_error(file: &str, sql: &str, e: datafusion::error::DataFusionError) -> Error {
    use datafusion::sql::sqlparser::parser::ParserError;
    let text = match e.find_root() {
        datafusion::error::DataFusionError::SQL(p, _) => match p.as_ref() {
            ParserError::ParserError(s) | ParserError::TokenizerError(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.strip_backtrace(),
    };
    let (message, at) = match text.rsplit_once(" at Line: ") {
        Some((message, at)) => {
            let mut parts = at.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse::<usize>().ok());
            let col = parts.next().and_then(|c| c.trim().parse::<usize>().ok());
            (message.to_string(), line.zip(col))
        }
        None => (text.clone(), None),
    };
    let at = at.or_else(|| {
        // Ran off the end: point just past the last character.
        text.contains("EOF").then(|| {
            let last = sql.trim_end();
            let line = last.matches('\n').count() + 1;
            let col = last.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, col)
        })
    });
    Error::ModelFile {
        file: match at {
            Some((line, col)) => format!("{file}:{line}:{col}"),
            None => file.into(),
        },
        message: format!("SQL syntax error: {message}"),
    }
}

fn statement_kind(s: &SqlStatement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let first = words.first().copied().unwrap_or("statement").to_uppercase();
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" | "INSERT" | "TRUNCATE" => {
            format!(
                "{first} {} (DDL/DML)",
                words.get(1).copied().unwrap_or("").to_uppercase()
            )
        }
        "UPDATE" | "DELETE" | "MERGE" => format!("{first} (DML)"),
        _ => first,
    }
}

/// Locates the `/*--- ... ---*/` block and parses it as TOML; errors carry file:line.
fn parse_front_matter<H: serde::de::DeserializeOwned>(file: &str, sql: &str) -> Result<H> {
    let trimmed = sql.trim_start();
    if !trimmed.starts_with("/*---") {
        return toml::from_str("").map_err(|e| Error::ModelFile {
            file: file.into(),
            message: format!("invalid front matter: {}", e.message()),
        });
    }
    let start = sql.len() - trimmed.len() + "/*---".len();
    let Some(len) = sql[start..].find("---*/") else {
        let line = line_of(sql, start);
        return Err(Error::ModelFile {
            file: format!("{file}:{line}"),
            message: "front matter opened with `/*---` is never closed with `---*/`".into(),
        });
    };
    let body = &sql[start..start + len];
    toml::from_str::<H>(body).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let line = line_of(sql, start + offset);
        Error::ModelFile {
            file: format!("{file}:{line}"),
            message: format!("invalid front matter: {}", e.message()),
        }
    })
}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Collects `$name` placeholders; positional `$1` is rejected (parameters have names).
fn placeholders(file: &str, statement: &DFStatement) -> Result<BTreeSet<String>> {
    let mut statement = statement.clone();
    let mut names = BTreeSet::new();
    let mut bad = None;
    if let DFStatement::Statement(s) = &mut statement {
        let _ = visit_expressions_mut(s.as_mut(), |expr| {
            if let SqlExpr::Value(v) = expr {
                if let sqlast::Value::Placeholder(p) = &v.value {
                    let name = p.trim_start_matches(['$', ':', '@']).to_string();
                    if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
                        bad = Some(p.clone());
                    } else {
                        names.insert(name.to_lowercase());
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if let Some(p) = bad {
        return Err(Error::ModelFile {
            file: file.into(),
            message: format!("positional parameter `{p}`: use named parameters like $as_of"),
        });
    }
    Ok(names)
}

/// Rewrites every `$name` placeholder to `CAST($name AS <type of its value>)`, so the
/// planner knows each parameter's type; the values are then bound by DataFusion.
pub fn type_placeholders(statement: &mut DFStatement, values: &BTreeMap<String, ScalarValue>) {
    if let DFStatement::Statement(s) = statement {
        let _ = visit_expressions_mut(s.as_mut(), |expr| {
            if let SqlExpr::Value(v) = expr {
                if let sqlast::Value::Placeholder(p) = &v.value {
                    let name = p.trim_start_matches(['$', ':', '@']).to_lowercase();
                    if let Some(data_type) = values.get(&name).and_then(sql_type_of) {
                        // Parameter names are case-insensitive, like SQL identifiers.
                        let mut inner = expr.clone();
                        if let SqlExpr::Value(v) = &mut inner {
                            v.value = sqlast::Value::Placeholder(format!("${name}"));
                        }
                        *expr = SqlExpr::Cast {
                            kind: CastKind::Cast,
                            expr: Box::new(inner),
                            data_type,
                            array: false,
                            format: None,
                        };
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
}

fn sql_type_of(v: &ScalarValue) -> Option<sqlast::DataType> {
    Some(match v {
        ScalarValue::Int64(_) => sqlast::DataType::BigInt(None),
        ScalarValue::Float64(_) => sqlast::DataType::Double(ExactNumberInfo::None),
        ScalarValue::Boolean(_) => sqlast::DataType::Boolean,
        ScalarValue::Utf8(_) => sqlast::DataType::Varchar(None),
        ScalarValue::Date32(_) => sqlast::DataType::Date,
        _ => return None,
    })
}

/// Orders models so each runs after the models it reads; rejects unknown tables and cycles.
///
/// `previous.<model>` needs that model's schema, so it orders like a normal dependency.
pub fn order_models(models: Vec<Model>) -> Result<Vec<Model>> {
    let names: BTreeSet<String> = models.iter().map(|m| m.name.clone()).collect();
    for m in &models {
        for d in m.deps.iter().chain(m.previous_deps.iter()) {
            if !names.contains(d) {
                let mut known: Vec<String> = INPUT_TABLES.iter().map(|s| s.to_string()).collect();
                known.extend(names.iter().cloned());
                return Err(Error::UnknownTable {
                    file: m.file.clone(),
                    model: m.name.clone(),
                    table: if m.previous_deps.contains(d) && !m.deps.contains(d) {
                        format!("{PREVIOUS_SCHEMA}.{d}")
                    } else {
                        d.clone()
                    },
                    known: known.join(", "),
                });
            }
        }
    }
    incremental::validate_reads(&models)?;
    let by_name: BTreeMap<String, Model> =
        models.into_iter().map(|m| (m.name.clone(), m)).collect();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = visiting, 2 = done
    let mut order: Vec<String> = Vec::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &'a BTreeMap<String, Model>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let pos = stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut chain: Vec<&str> = stack[pos..].to_vec();
                chain.push(name);
                return Err(Error::Cycle {
                    chain: chain.join(" -> "),
                });
            }
            _ => {}
        }
        state.insert(name, 1);
        stack.push(name);
        let model = &by_name[name];
        for d in model.deps.iter().chain(model.previous_deps.iter()) {
            if d != name || model.deps.contains(d) {
                visit(d, by_name, state, stack, order)?;
            }
        }
        stack.pop();
        state.insert(name, 2);
        order.push(name.to_string());
        Ok(())
    }
    let mut stack = Vec::new();
    for name in by_name.keys() {
        visit(name, &by_name, &mut state, &mut stack, &mut order)?;
    }
    let mut by_name = by_name;
    Ok(order
        .into_iter()
        .filter_map(|n| by_name.remove(&n))
        .collect())
}

/// Keeps the selected models and everything they read; returns the names to publish.
pub fn select_models(
    models: Vec<Model>,
    select: &[String],
) -> Result<(Vec<Model>, BTreeSet<String>)> {
    let names: BTreeSet<String> = models.iter().map(|m| m.name.clone()).collect();
    if select.is_empty() {
        return Ok((models, names));
    }
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for s in select {
        if !names.contains(s) {
            return Err(Error::ConfigValue {
                key: "--select".into(),
                message: format!(
                    "no model named `{s}` (models: {})",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        wanted.insert(s.clone());
    }
    let selected = wanted.clone();
    let deps: BTreeMap<String, BTreeSet<String>> = models
        .iter()
        .map(|m| {
            // Models a relationships check reads must be computed too.
            let checked = m
                .header
                .checks
                .relationships
                .values()
                .filter_map(|t| t.split_once('.').map(|(model, _)| model.to_string()))
                .filter(|t| names.contains(t));
            let mut deps: BTreeSet<String> = m.deps.union(&m.previous_deps).cloned().collect();
            deps.extend(checked);
            (m.name.clone(), deps)
        })
        .collect();
    let mut todo: Vec<String> = wanted.iter().cloned().collect();
    while let Some(n) = todo.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if wanted.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    Ok((
        models
            .into_iter()
            .filter(|m| wanted.contains(&m.name))
            .collect(),
        selected,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, sql: &str) -> Model {
        parse_model(name, &format!("{name}.sql"), sql.to_string()).unwrap()
    }

    #[test]
    fn dependencies_come_from_table_references_not_ctes() {
        let m = model(
            "b",
            "with x as (select * from a) select * from x join orders using (customer_id) join previous.b p using (customer_id)",
        );
        assert_eq!(m.deps.iter().collect::<Vec<_>>(), vec!["a"]);
        assert!(m.inputs.contains("orders"));
        assert!(m.previous_deps.contains("b"));
    }

    #[test]
    fn cycle_is_named_as_a_chain() {
        let err = order_models(vec![
            model("a", "select * from c"),
            model("b", "select * from a"),
            model("c", "select * from b"),
        ])
        .unwrap_err();
        assert_eq!(err.to_string(), "model dependency cycle: a -> c -> b -> a");
    }

    #[test]
    fn previous_of_itself_is_not_a_cycle() {
        let ordered = order_models(vec![model("a", "select * from previous.a")]).unwrap();
        assert_eq!(ordered.len(), 1);
    }

    #[test]
    fn front_matter_error_names_file_and_line() {
        let err = parse_model(
            "m",
            "models/m.sql",
            "/*---\ndescription = \"x\"\ngrain = [\n---*/\nselect 1".into(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("models/m.sql:3:"), "{err}");
    }

    #[test]
    fn ddl_is_rejected() {
        let err = parse_model("m", "m.sql", "create table t as select 1".into()).unwrap_err();
        assert!(err.to_string().contains("CREATE TABLE"), "{err}");
    }
}
