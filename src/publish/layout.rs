//! Where everything lives under the output root, besides the tables themselves
//! (`<model>/as_of=D/...`): the names every part of segflow agrees on.

use chrono::NaiveDate;

/// The report's directory, next to the tables: `_report/as_of=D/`.
pub const REPORT: &str = "_report";
/// The report's file in that directory.
pub const REPORT_FILE: &str = "index.html";
/// The folder (a table name in staging) of the rows the gates left out.
pub const REJECTED: &str = "_rejected";

/// Folder of the kept incremental state, `_state/as_of=D/<model>/`.
pub const STATE: &str = "_state";

/// Folder of the audiences' upload files, `_audiences/as_of=D/<name>.csv`.
pub const AUDIENCES: &str = "_audiences";

/// Folder of what erasure keeps (`segflow forget`): `_privacy/erased.parquet`.
pub const PRIVACY: &str = "_privacy";

/// The erased customers' salted ids, relative to the output root.
pub const ERASED_FILE: &str = "_privacy/erased.parquet";

/// The catalog's directory: DDL that opens the tables by name (see `publish::catalog`).
pub const CATALOG: &str = "_catalog";

/// `_catalog/<file>`, relative to the output root.
pub fn catalog_rel(file: &str) -> String {
    format!("{CATALOG}/{file}")
}

/// `_staging/<run_id>`, relative to the output root.
pub fn staging_rel(run_id: &str) -> String {
    format!("_staging/{run_id}")
}

/// `_manifest/as_of=D.json`.
pub fn manifest_rel(as_of: NaiveDate) -> String {
    format!("_manifest/as_of={as_of}.json")
}

/// `_report/as_of=D`, relative to the output root.
pub fn report_rel(as_of: NaiveDate) -> String {
    format!("{REPORT}/as_of={as_of}")
}

/// `_report/as_of=D/index.html`, relative to the output root.
pub fn report_file_rel(as_of: NaiveDate) -> String {
    format!("{}/{REPORT_FILE}", report_rel(as_of))
}

/// The report of run `run_id` in its staging, relative to the output root.
pub fn staged_report_rel(run_id: &str, as_of: NaiveDate) -> String {
    format!("{}/{}", staging_rel(run_id), report_file_rel(as_of))
}
