//! `[output]` table format settings: Parquet folders or Delta Lake tables, and how a Delta
//! table ages (vacuum) and changes schema.

use std::time::Duration;

use super::{parse_duration, OutputConfig};
use crate::error::{Error, Result};

/// How published models are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableFormat {
    /// `<model>/as_of=D/[<col>=<v>/]*.parquet`, listed by the manifest.
    #[default]
    Parquet,
    /// One Delta Lake table per model at `<model>/`, partitioned by `as_of`.
    Delta,
}

/// What a Delta write does when a model's columns differ from its table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaChange {
    /// The run fails, naming the model and the difference.
    #[default]
    Fail,
    /// The table takes the new schema (Delta's overwriteSchema).
    Overwrite,
}

/// The `[output]` settings of the table format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    pub format: TableFormat,
    /// Delta: files a retention delete removed are vacuumed once older than this, so
    /// readers of an older version keep working until then.
    pub vacuum_after: Duration,
    pub schema_change: SchemaChange,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            format: TableFormat::Parquet,
            vacuum_after: Duration::from_secs(7 * 86_400),
            schema_change: SchemaChange::Fail,
        }
    }
}

impl TableFormat {
    /// Parses `[output] format` (`key` names where the value came from).
    pub fn parse(key: &str, value: &str) -> Result<TableFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "parquet" => Ok(TableFormat::Parquet),
            "delta" => Ok(TableFormat::Delta),
            _ => Err(Error::ConfigValue {
                key: key.to_string(),
                message: format!("must be \"parquet\" or \"delta\", not {value:?}"),
            }),
        }
    }
}

/// The table settings of `[output]`.
pub(super) fn table_settings(o: &OutputConfig) -> Result<TableSettings> {
    let mut out = TableSettings::default();
    if let Some(f) = &o.format {
        out.format = TableFormat::parse("output.format", f)?;
    }
    if let Some(v) = &o.vacuum_after {
        out.vacuum_after = parse_duration("output.vacuum_after", v)?;
    }
    if let Some(s) = &o.schema_change {
        out.schema_change = match s.trim().to_ascii_lowercase().as_str() {
            "fail" => SchemaChange::Fail,
            "overwrite" => SchemaChange::Overwrite,
            _ => {
                return Err(Error::ConfigValue {
                    key: "output.schema_change".into(),
                    message: format!("must be \"fail\" or \"overwrite\", not {s:?}"),
                })
            }
        };
    }
    let delta_only = [
        ("vacuum_after", o.vacuum_after.is_some()),
        ("schema_change", o.schema_change.is_some()),
    ];
    if out.format == TableFormat::Parquet {
        if let Some((key, _)) = delta_only.iter().find(|(_, set)| *set) {
            return Err(Error::ConfigValue {
                key: format!("output.{key}"),
                message:
                    "applies to Delta tables only: set [output] format = \"delta\" or remove it"
                        .into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(format: Option<&str>, vacuum: Option<&str>, schema: Option<&str>) -> OutputConfig {
        OutputConfig {
            format: format.map(str::to_string),
            vacuum_after: vacuum.map(str::to_string),
            schema_change: schema.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn parquet_is_the_default_and_delta_keeps_files_a_week() {
        let s = table_settings(&config(None, None, None)).unwrap();
        assert_eq!(s.format, TableFormat::Parquet);
        let s = table_settings(&config(Some("Delta"), None, None)).unwrap();
        assert_eq!(s.format, TableFormat::Delta);
        assert_eq!(s.vacuum_after, Duration::from_secs(604_800));
        assert_eq!(s.schema_change, SchemaChange::Fail);
        let s = table_settings(&config(Some("delta"), Some("36h"), Some("overwrite"))).unwrap();
        assert_eq!(s.vacuum_after, Duration::from_secs(36 * 3600));
        assert_eq!(s.schema_change, SchemaChange::Overwrite);
    }

    #[test]
    fn bad_table_settings_name_their_key() {
        for (c, key) in [
            (config(Some("orc"), None, None), "output.format"),
            (
                config(Some("delta"), Some("soon"), None),
                "output.vacuum_after",
            ),
            (
                config(Some("delta"), None, Some("merge")),
                "output.schema_change",
            ),
            (config(None, Some("7d"), None), "output.vacuum_after"),
            (
                config(Some("parquet"), None, Some("fail")),
                "output.schema_change",
            ),
        ] {
            match table_settings(&c) {
                Err(Error::ConfigValue { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
