//! `_catalog/`: DDL that opens every published table by name, for DuckDB (`duckdb.sql`) and
//! Spark SQL (`spark.sql`), with a `README.md` saying how to attach them. Rewritten from the
//! kept snapshots' manifests after every publish and retention, so it is never ahead of the
//! manifest: for each model of the newest snapshot, `<model>` (that snapshot, the model's
//! columns) and `<model>_history` (every kept snapshot holding the model, with `as_of`).
//!
//! Locations are absolute (local paths or the output's URL). DuckDB's views read the files
//! the manifests list, so they never see a table mid-replacement; Spark's `<model>_history`
//! is an external table over `<output>/<model>/` with one partition per published directory.

use std::fmt::Write as _;
use std::str::FromStr;

use datafusion::arrow::datatypes::DataType;

use crate::error::Result;
use crate::publish::layout::catalog_rel;
use crate::publish::manifest::{Manifest, TableEntry};
use crate::publish::Output;
use crate::storage::Location;

/// One published model across the kept snapshots.
struct Model<'a> {
    name: &'a str,
    /// The newest snapshot's entry.
    newest: &'a TableEntry,
    newest_as_of: chrono::NaiveDate,
    /// Every kept snapshot holding the model, oldest first.
    history: Vec<(chrono::NaiveDate, &'a TableEntry)>,
}

impl Model<'_> {
    /// The model's columns, names and types, in the newest snapshot's order.
    fn columns(&self) -> Vec<(&str, DataType)> {
        self.newest
            .columns
            .iter()
            .map(|c| {
                let t = DataType::from_str(&c.data_type).unwrap_or(DataType::Utf8);
                (c.name.as_str(), t)
            })
            .collect()
    }

    /// The history's columns: the columns stored in the files, `as_of`, then the model's
    /// partition columns (the order of the directories, and of Spark's partitioned tables).
    fn history_columns(&self) -> Vec<(&str, DataType)> {
        let partition = |n: &str| self.newest.partition_by.iter().any(|p| p == n);
        let columns = self.columns();
        let mut out: Vec<(&str, DataType)> = columns
            .iter()
            .filter(|(n, _)| !partition(n))
            .cloned()
            .collect();
        out.push(("as_of", DataType::Date32));
        for p in &self.newest.partition_by {
            let t = columns
                .iter()
                .find(|(n, _)| n == p)
                .map_or(DataType::Utf8, |(_, t)| t.clone());
            out.push((p.as_str(), t));
        }
        out
    }
}

/// The models of the newest snapshot, each with its history over `manifests` (oldest
/// first).
fn models(manifests: &[Manifest]) -> Vec<Model<'_>> {
    let Some(newest) = manifests.last() else {
        return Vec::new();
    };
    newest
        .tables
        .iter()
        .map(|(name, entry)| Model {
            name,
            newest: entry,
            newest_as_of: newest.as_of,
            history: manifests
                .iter()
                .filter_map(|m| m.tables.get(name).map(|t| (m.as_of, t)))
                .collect(),
        })
        .collect()
}

/// `'text'` with quotes doubled.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"name"` (DuckDB) with quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `` `name` `` (Spark) with backticks doubled.
fn spark_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// DuckDB's name of an Arrow type.
fn duckdb_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", duckdb_type(f.data_type())),
        DataType::Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("{} {}", ident(f.name()), duckdb_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "VARCHAR".into(),
    }
}

/// Spark SQL's name of an Arrow type.
fn spark_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INT".into(),
        DataType::Int64 | DataType::UInt32 => "BIGINT".into(),
        DataType::UInt64 => "DECIMAL(20, 0)".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("ARRAY<{}>", spark_type(f.data_type()))
        }
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{}: {}", spark_ident(f.name()), spark_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "STRING".into(),
    }
}

/// A typed empty DuckDB query with `columns` (a table without files).
fn duckdb_empty(columns: &[(&str, DataType)]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|(n, t)| format!("CAST(NULL AS {}) AS {}", duckdb_type(t), ident(n)))
        .collect();
    format!("SELECT {} WHERE false", cols.join(", "))
}

/// DuckDB: `SELECT columns FROM read_parquet([files], hive_partitioning, typed partitions)`.
fn duckdb_select(
    loc: &Location,
    columns: &[(&str, DataType)],
    partitions: &[(&str, DataType)],
    files: &[&String],
) -> String {
    if files.is_empty() {
        return duckdb_empty(columns);
    }
    let list: Vec<String> = files
        .iter()
        .map(|f| format!("    {}", quoted(&loc.display(f))))
        .collect();
    let hive: Vec<String> = partitions
        .iter()
        .map(|(n, t)| format!("{}: {}", quoted(n), duckdb_type(t)))
        .collect();
    let names: Vec<String> = columns.iter().map(|(n, _)| ident(n)).collect();
    format!(
        "SELECT {} FROM read_parquet([\n{}\n], hive_partitioning = true, union_by_name = true, hive_types = {{{}}})",
        names.join(", "),
        list.join(",\n"),
        hive.join(", ")
    )
}

/// `_catalog/duckdb.sql`.
fn duckdb_sql(loc: &Location, manifests: &[Manifest]) -> String {
    let mut out = header(loc, manifests, "DuckDB (and MotherDuck)");
    for m in models(manifests) {
        if m.newest.delta_version.is_some() {
            out.push_str(&duckdb_delta(loc, &m));
            continue;
        }
        let history = m.history_columns();
        let partitions: Vec<(&str, DataType)> = history
            .iter()
            .filter(|(n, _)| *n == "as_of" || m.newest.partition_by.iter().any(|p| p == n))
            .cloned()
            .collect();
        let newest: Vec<&String> = m.newest.files.iter().collect();
        let _ = writeln!(
            out,
            "\n-- {}: the snapshot of {}\nCREATE OR REPLACE VIEW {} AS\n{};",
            m.name,
            m.newest_as_of,
            ident(m.name),
            duckdb_select(loc, &m.columns(), &partitions, &newest)
        );
        let all: Vec<&String> = m.history.iter().flat_map(|(_, t)| &t.files).collect();
        let _ = writeln!(
            out,
            "\n-- {}: every kept snapshot ({})\nCREATE OR REPLACE VIEW {} AS\n{};",
            m.name,
            as_of_list(&m.history),
            ident(&format!("{}_history", m.name)),
            duckdb_select(loc, &history, &partitions, &all)
        );
    }
    out
}

/// DuckDB views of a Delta table (its delta extension's `delta_scan`): `<model>_history` is
/// the table, `<model>` its newest snapshot's partition.
fn duckdb_delta(loc: &Location, m: &Model<'_>) -> String {
    let names: Vec<String> = m.columns().iter().map(|(n, _)| ident(n)).collect();
    let scan = format!("delta_scan({})", quoted(&loc.display(m.name)));
    format!(
        "\n-- {name}: the snapshot of {as_of} (Delta table, version {version})\n\
         CREATE OR REPLACE VIEW {view} AS\nSELECT {cols} FROM {scan} WHERE \"as_of\" = DATE {date};\n\
         \n-- {name}: every kept snapshot ({history})\n\
         CREATE OR REPLACE VIEW {history_view} AS\nSELECT {cols}, \"as_of\" FROM {scan};\n",
        name = m.name,
        as_of = m.newest_as_of,
        version = m.newest.delta_version.unwrap_or_default(),
        view = ident(m.name),
        cols = names.join(", "),
        date = quoted(&m.newest_as_of.to_string()),
        history = as_of_list(&m.history),
        history_view = ident(&format!("{}_history", m.name)),
    )
}

/// Spark SQL over a Delta table: `<model>_history` is the table at its location (schema
/// and partitions from its log), `<model>` a view of the newest snapshot.
fn spark_delta(loc: &Location, m: &Model<'_>) -> String {
    let table = spark_ident(&format!("{}_history", m.name));
    let names: Vec<String> = m.columns().iter().map(|(n, _)| spark_ident(n)).collect();
    format!(
        "\n-- {name}: every kept snapshot ({history}; Delta table)\nDROP TABLE IF EXISTS {table};\n\
         CREATE TABLE {table} USING delta LOCATION {location};\n\
         \n-- {name}: the snapshot of {as_of}\nCREATE OR REPLACE VIEW {view} AS\n\
         SELECT {cols} FROM {table} WHERE `as_of` = DATE {date};\n",
        name = m.name,
        history = as_of_list(&m.history),
        location = quoted(&loc.display(m.name)),
        as_of = m.newest_as_of,
        view = spark_ident(m.name),
        cols = names.join(", "),
        date = quoted(&m.newest_as_of.to_string()),
    )
}

/// The partition directories of a table's files: `model/as_of=D[/col=v]*`, in order.
fn partition_dirs(entry: &TableEntry) -> Vec<&str> {
    let mut dirs: Vec<&str> = entry
        .files
        .iter()
        .filter_map(|f| f.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs
}

/// `col=value` path segments of a partition directory below `<model>/`, values decoded.
fn partition_values(dir: &str) -> Vec<(String, String)> {
    dir.split('/')
        .skip(1)
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decoded(v)))
        .collect()
}

/// `%XX` escapes decoded (as DataFusion and object stores may write partition values).
fn percent_decoded(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `_catalog/spark.sql`.
fn spark_sql(loc: &Location, manifests: &[Manifest]) -> String {
    let mut out = header(loc, manifests, "Spark SQL (Databricks, EMR, Glue)");
    out.push_str(
        "-- It drops and re-creates each <model>_history table (external: dropping one never\n\
         -- deletes data): run it in a schema of its own, not beside managed tables of these names.\n",
    );
    for m in models(manifests) {
        if m.newest.delta_version.is_some() {
            out.push_str(&spark_delta(loc, &m));
            continue;
        }
        let table = spark_ident(&format!("{}_history", m.name));
        let history = m.history_columns();
        let columns: Vec<String> = history
            .iter()
            .map(|(n, t)| format!("  {} {}", spark_ident(n), spark_type(t)))
            .collect();
        let mut partition_by = vec![spark_ident("as_of")];
        partition_by.extend(m.newest.partition_by.iter().map(|p| spark_ident(p)));
        let _ = writeln!(
            out,
            "\n-- {}: every kept snapshot ({})\nDROP TABLE IF EXISTS {table};\nCREATE TABLE {table} (\n{}\n) USING parquet\nPARTITIONED BY ({})\nLOCATION {};",
            m.name,
            as_of_list(&m.history),
            columns.join(",\n"),
            partition_by.join(", "),
            quoted(&loc.display(m.name)),
        );
        let partitions: Vec<String> = m
            .history
            .iter()
            .flat_map(|(_, t)| partition_dirs(t))
            .map(|dir| {
                let values: Vec<String> = partition_values(dir)
                    .iter()
                    .map(|(k, v)| format!("{} = {}", spark_ident(k), quoted(v)))
                    .collect();
                format!(
                    "  PARTITION ({}) LOCATION {}",
                    values.join(", "),
                    quoted(&loc.display(dir))
                )
            })
            .collect();
        if !partitions.is_empty() {
            let _ = writeln!(
                out,
                "ALTER TABLE {table} ADD IF NOT EXISTS\n{};",
                partitions.join("\n")
            );
        }
        let names: Vec<String> = m.columns().iter().map(|(n, _)| spark_ident(n)).collect();
        let _ = writeln!(
            out,
            "\n-- {}: the snapshot of {}\nCREATE OR REPLACE VIEW {} AS\nSELECT {} FROM {table} WHERE `as_of` = DATE {};",
            m.name,
            m.newest_as_of,
            spark_ident(m.name),
            names.join(", "),
            quoted(&m.newest_as_of.to_string()),
        );
    }
    out
}

fn as_of_list(history: &[(chrono::NaiveDate, &TableEntry)]) -> String {
    let dates: Vec<String> = history.iter().map(|(d, _)| d.to_string()).collect();
    format!("as_of {}", dates.join(", "))
}

/// The comment every catalog file starts with.
fn header(loc: &Location, manifests: &[Manifest], engine: &str) -> String {
    let newest = manifests.last();
    format!(
        "-- segflow catalog for {engine}: the tables published at {}.\n\
         -- Written after the snapshot of as_of {} (run {}); rewritten after every publish.\n\
         -- See README.md beside this file for how to attach it.\n",
        loc.uri,
        newest.map_or("-".to_string(), |m| m.as_of.to_string()),
        newest.map_or("-", |m| m.run_id.as_str()),
    )
}

/// `_catalog/README.md`.
fn readme(loc: &Location, manifests: &[Manifest]) -> String {
    let dir = loc.display(&catalog_rel(""));
    let snapshots: Vec<String> = manifests.iter().map(|m| m.as_of.to_string()).collect();
    let tables: Vec<String> = manifests
        .last()
        .map(|m| m.tables.keys().map(|t| format!("`{t}`")).collect())
        .unwrap_or_default();
    format!(
        "# Catalog of {uri}\n\n\
Written by segflow after every publish (never ahead of the run manifests in `_manifest/`).\n\
Kept snapshots: {snapshots}. Tables: {tables}.\n\n\
For every table `<model>` (the newest snapshot, the model's columns) and `<model>_history`\n\
(every kept snapshot, with an `as_of` column of type DATE).\n\n\
## DuckDB / MotherDuck\n\n\
```sh\nduckdb my.duckdb -c \".read {dir}/duckdb.sql\"\n```\n\n\
The views read the exact files the manifests list (`read_parquet([...], hive_partitioning = true)`),\n\
so a reader never sees a table mid-replacement. Run it again after the next publish. For `s3://`\n\
outputs, first `INSTALL httpfs; LOAD httpfs;` and `CREATE SECRET (TYPE s3, PROVIDER credential_chain);`\n\
(or the key, region and endpoint of your store).\n\n\
## Spark / Databricks\n\n\
```python\nfor stmt in open(\"{dir}/spark.sql\").read().split(\";\\n\"):\n    if stmt.strip(\" \\n-\"):\n        spark.sql(stmt)\n```\n\n\
`<model>_history` is an external Parquet table over `<output>/<model>/`, partitioned by `as_of`\n\
then the model's `partition_by`, with one `ADD PARTITION ... LOCATION` per published directory;\n\
`<model>` is a view of its newest `as_of`. Dropping them never deletes data. Open-source Spark\n\
reads S3 as `s3a://` (replace the scheme, or map `s3://` to the S3A filesystem).\n\n\
## Trino / Athena\n\n\
Declare each `<model>_history` as an external table over `<output>/<model>/` with the columns\n\
and partitions of `spark.sql` (Hive DDL types are the same). Athena can skip `MSCK REPAIR` with\n\
partition projection on `as_of` (`projection.as_of.type = date`, `projection.as_of.format =\n\
yyyy-MM-dd`, `projection.as_of.range = <first as_of>,NOW`, `projection.enabled = true`) and,\n\
for a `partition_by` column, `projection.<col>.type = injected`; `storage.location.template =\n\
<output>/<model>/as_of=${{as_of}}` for a table without further partitions. Snapshots that\n\
retention deleted then read as empty.\n",
        uri = loc.uri,
        snapshots = snapshots.join(", "),
        tables = tables.join(", "),
    )
}

/// The README's section on Delta tables (empty when the newest snapshot has none).
fn delta_readme(manifests: &[Manifest]) -> String {
    let Some(newest) = manifests.last() else {
        return String::new();
    };
    let versions: Vec<String> = newest
        .tables
        .iter()
        .filter_map(|(n, t)| t.delta_version.map(|v| format!("`{n}` {v}")))
        .collect();
    if versions.is_empty() {
        return String::new();
    }
    format!(
        "\n## Delta tables\n\n\
Each model is one Delta Lake table at `<output>/<model>/`, partitioned by `as_of` (then the\n\
model's `partition_by`); the sections above apply with these differences. DuckDB needs its delta\n\
extension (`INSTALL delta; LOAD delta;`, then `.read duckdb.sql`: the views use `delta_scan`).\n\
Spark needs Delta Lake (`delta-spark`, or Databricks); `spark.sql` registers each table\n\
`USING delta LOCATION`. Trino: `CALL delta.system.register_table(schema_name => '...',\n\
table_name => '<model>_history', table_location => '<output>/<model>')`. Athena:\n\
`CREATE EXTERNAL TABLE <model>_history LOCATION '<output>/<model>/' TBLPROPERTIES\n\
('table_type' = 'DELTA')`. Fabric / Power BI Direct Lake: a OneLake shortcut to the table\n\
folder. polars: `pl.read_delta('<output>/<model>')`.\n\n\
Time travel: the run manifest `_manifest/as_of=D.json` names the table version that holds\n\
snapshot D (`tables.<model>.delta_version`); read `as_of = D` at that version or later. The\n\
newest snapshot ({as_of}) is at versions {versions}.\n",
        as_of = newest.as_of,
        versions = versions.join(", "),
    )
}

impl Output {
    /// Rewrites `_catalog/` from the kept snapshots' manifests (after a publish and its
    /// retention). No snapshot: nothing is written.
    pub async fn write_catalog(&self, run_id: &str) -> Result<()> {
        let mut manifests = Vec::new();
        for as_of in self.snapshots().await? {
            if let Some(m) = self.manifest(as_of).await? {
                manifests.push(m);
            }
        }
        if manifests.is_empty() {
            return Ok(());
        }
        let files = [
            ("duckdb.sql", duckdb_sql(&self.loc, &manifests)),
            ("spark.sql", spark_sql(&self.loc, &manifests)),
            (
                "README.md",
                readme(&self.loc, &manifests) + &delta_readme(&manifests),
            ),
        ];
        for (name, text) in files {
            self.put_atomic(&catalog_rel(name), text.into_bytes(), run_id)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_decoded_and_quoted_for_spark() {
        assert_eq!(
            partition_values("rfm/as_of=2026-11-21/segment=Can't Lose"),
            vec![
                ("as_of".to_string(), "2026-11-21".to_string()),
                ("segment".to_string(), "Can't Lose".to_string())
            ]
        );
        assert_eq!(percent_decoded("At%20Risk%2F2"), "At Risk/2");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(quoted("Can't"), "'Can''t'");
    }

    #[test]
    fn manifest_type_names_parse_back_into_arrow_types() {
        for (text, duck, spark) in [
            ("Utf8", "VARCHAR", "STRING"),
            ("Int64", "BIGINT", "BIGINT"),
            ("Float64", "DOUBLE", "DOUBLE"),
            ("Date32", "DATE", "DATE"),
            ("Boolean", "BOOLEAN", "BOOLEAN"),
            ("Decimal128(38, 6)", "DECIMAL(38, 6)", "DECIMAL(38, 6)"),
            ("Timestamp(µs, \"UTC\")", "TIMESTAMPTZ", "TIMESTAMP"),
        ] {
            let t = DataType::from_str(text).expect(text);
            assert_eq!(
                (duckdb_type(&t).as_str(), spark_type(&t).as_str()),
                (duck, spark)
            );
        }
    }
}
