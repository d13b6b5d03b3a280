//! Published tables read back as any hive reader would, compared with hand-computed CSV
//! files, and small Parquet inputs written by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::run_ok;

/// The manifest of snapshot `as_of` under `out`.
pub(crate) fn manifest(out: &Path, as_of: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(format!("_manifest/as_of={as_of}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Reads a published table back (as any hive reader would) into rows of display strings.
pub(crate) async fn read_table(
    out: &Path,
    model: &str,
    as_of: &str,
) -> Vec<BTreeMap<String, Option<String>>> {
    let m = manifest(out, as_of);
    let entry = &m["tables"][model];
    assert!(entry.is_object(), "table {model} missing from manifest");
    let dir = out.join(format!("{model}/as_of={as_of}/"));
    let parts: Vec<(String, DataType)> = if entry["rows"].as_u64() == Some(0) {
        vec![]
    } else {
        entry["partition_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p.as_str().unwrap().to_string(), DataType::Utf8))
            .collect()
    };
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(
            format!("{}/", dir.display()),
            ParquetReadOptions::default().table_partition_cols(parts),
        )
        .await
        .unwrap();
    display_rows(&df.collect().await.unwrap())
}

/// Rows of display strings (NULL as `None`), by column name.
pub(crate) fn display_rows(batches: &[RecordBatch]) -> Vec<BTreeMap<String, Option<String>>> {
    let mut rows = Vec::new();
    let opts = FormatOptions::default();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (j, f) in b.schema().fields().iter().enumerate() {
                let v = (!b.column(j).is_null(i)).then(|| formatters[j].value(i).to_string());
                row.insert(f.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

/// The rows as sorted debug strings: equal dumps, equal tables.
pub(crate) fn sorted_dump(rows: &[BTreeMap<String, Option<String>>]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

fn same_value(expected: &str, actual: Option<&str>) -> bool {
    match (expected, actual) {
        ("NULL", None) => true,
        ("NULL", Some(_)) | (_, None) => false,
        (e, Some(a)) if e == a => true,
        (e, Some(a)) => match (e.parse::<f64>(), a.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-3),
            _ => false,
        },
    }
}

/// Compares a published table with a hand-computed CSV (columns in the CSV only).
pub(crate) async fn assert_matches_csv(out: &Path, model: &str, as_of: &str, csv: &Path) {
    assert_rows_match_csv(read_table(out, model, as_of).await, model, csv);
}

/// Every row of the CSV matches exactly one row of `actual`, and there are as many rows.
pub(crate) fn assert_rows_match_csv(
    actual: Vec<BTreeMap<String, Option<String>>>,
    model: &str,
    csv: &Path,
) {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let expected: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(
        actual.len(),
        expected.len(),
        "{model}: expected {} rows, got {}",
        expected.len(),
        actual.len()
    );
    let mut unmatched: Vec<&BTreeMap<String, Option<String>>> = actual.iter().collect();
    for e in &expected {
        let pos = unmatched.iter().position(|a| {
            header.iter().zip(e.iter()).all(|(h, v)| {
                same_value(
                    v,
                    a.get(*h)
                        .unwrap_or_else(|| panic!("{model}: no column {h}"))
                        .as_deref(),
                )
            })
        });
        match pos {
            Some(p) => {
                unmatched.remove(p);
            }
            None => {
                // Show the row with the same key for a useful diff.
                let key = e[0];
                let near: Vec<_> = actual
                    .iter()
                    .filter(|a| a.get(header[0]).and_then(|v| v.as_deref()) == Some(key))
                    .collect();
                panic!("{model}: no row matches expected {e:?}\nheader {header:?}\nrows with the same key: {near:#?}");
            }
        }
    }
}

/// Order lines with optional customer ids and dates (NULL where `None`).
pub(crate) fn write_orders_with_nulls(path: &Path, rows: &[(Option<&str>, Option<&str>, f64)]) {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let days: Vec<Option<i32>> = rows
        .iter()
        .map(|(_, d, _)| {
            d.map(|d| {
                (chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap() - epoch).num_days()
                    as i32
            })
        })
        .collect();
    let customers: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
    let revenue: Vec<f64> = rows.iter().map(|r| r.2).collect();
    write_columns(
        path,
        vec![
            ("customer_id", Arc::new(StringArray::from(customers)), true),
            ("order_ts", Arc::new(Date32Array::from(days)), true),
            ("revenue", Arc::new(Float64Array::from(revenue)), false),
        ],
    );
}

/// Writes one Parquet file of the given columns: (name, values, nullable).
pub(crate) fn write_columns(path: &Path, columns: Vec<(&str, ArrayRef, bool)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, values, nullable)| Field::new(*name, values.data_type().clone(), *nullable))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, values, _)| values).collect(),
    )
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Writes a minimal orders file: customer_id, a Date32 order_ts, revenue — nothing else.
pub(crate) fn write_minimal_orders(path: &Path, rows: &[(&str, &str, f64)]) {
    let rows: Vec<_> = rows
        .iter()
        .map(|(c, d, r)| (Some(*c), Some(*d), *r))
        .collect();
    write_orders_with_nulls(path, &rows);
}

/// Runs the built-in library over (customer, date, revenue) lines with `as_of` and `extra`
/// config text; returns the output folder.
pub(crate) fn run_minimal(
    dir: &Path,
    as_of: &str,
    rows: &[(&str, &str, f64)],
    extra: &str,
) -> PathBuf {
    write_minimal_orders(&dir.join("orders.parquet"), rows);
    let config = dir.join("segflow.toml");
    std::fs::write(
        &config,
        format!("as_of = \"{as_of}\"\n[input.orders]\nuri = \"orders.parquet\"\n[output]\nuri = \"out\"\n{extra}"),
    )
    .unwrap();
    run_ok(&config, &[]);
    dir.join("out")
}
