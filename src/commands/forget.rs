//! `segflow forget --customers FILE`: erases customers from every kept snapshot and keeps
//! them out of later runs (see [`crate::publish::erase`]).
//!
//! The file lists ids as the source holds them: one per line (line ends stripped, nothing
//! else; blank lines skipped) or a Parquet file with a `customer_id` column (strings as
//! they are, integers as decimal text). With `[privacy] pseudonymise`, each id is erased as
//! its pseudonym, the id the snapshots publish.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use tracing::info;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::privacy::ErasedIds;
use crate::publish::erase::{Contacts, Erasure, SnapshotErasure};
use crate::publish::{LockInfo, Output};

/// What `segflow forget` did.
#[derive(Debug)]
pub struct ForgetSummary {
    /// Ids the file named.
    pub customers: u64,
    /// Of those, ids not erased before.
    pub new: u64,
    /// Ids erased from this output, all requests together.
    pub erased_total: u64,
    /// The snapshots rewritten.
    pub snapshots: Vec<SnapshotErasure>,
    pub output: String,
}

impl ForgetSummary {
    /// What `segflow forget` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "erased {} customer(s) ({} new; {} erased from {} in all)\n",
            self.customers, self.new, self.erased_total, self.output
        );
        if self.snapshots.is_empty() {
            out.push_str("  every kept snapshot was already without them\n");
        }
        for s in &self.snapshots {
            let _ = writeln!(
                out,
                "  as_of={}: {} row(s) removed, {} file(s) rewritten",
                s.as_of, s.rows_removed, s.files_rewritten
            );
        }
        out
    }
}

fn list_err(file: &Path, message: impl Into<String>) -> Error {
    Error::ForgetList {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// The ids `file` lists, as the source holds them, sorted and without repeats.
pub fn read_ids(file: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
    let mut ids = BTreeSet::new();
    if bytes.starts_with(b"PAR1") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .map_err(|e| list_err(file, format!("not a readable Parquet file: {e}")))?;
        let schema = reader.schema().clone();
        let Ok(field) = schema.field_with_name("customer_id") else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(list_err(
                file,
                format!("no column `customer_id` (columns: {})", names.join(", ")),
            ));
        };
        let integer = field.data_type().is_integer();
        if !integer
            && !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            return Err(list_err(
                file,
                format!(
                    "column `customer_id` is {}, not a string or an integer",
                    field.data_type()
                ),
            ));
        }
        let reader = reader
            .build()
            .map_err(|e| list_err(file, format!("cannot read: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| list_err(file, format!("cannot read: {e}")))?;
            let column = batch
                .column_by_name("customer_id")
                .ok_or_else(|| list_err(file, "no column `customer_id`"))?;
            let text = datafusion::arrow::compute::cast(column, &DataType::Utf8)
                .map_err(|e| list_err(file, format!("column `customer_id`: {e}")))?;
            let text = text.as_string::<i32>();
            for i in 0..text.len() {
                if text.is_valid(i) && !text.value(i).is_empty() {
                    ids.insert(text.value(i).to_string());
                }
            }
        }
    } else {
        let text = String::from_utf8(bytes)
            .map_err(|e| list_err(file, format!("neither Parquet nor UTF-8 text ({e})")))?;
        // A byte-order mark is not part of the first id.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for line in text.lines() {
            // A string id is erased exactly as the source holds it: nothing is trimmed.
            if !line.is_empty() {
                ids.insert(line.to_string());
            }
        }
    }
    if ids.is_empty() {
        return Err(list_err(file, "it lists no customer id"));
    }
    Ok(ids.into_iter().collect())
}

/// The address each erased customer (any of `ids`, earlier requests' too) has in the
/// `customers` input, as the audiences export it.
async fn contacts_of(settings: &Settings, ids: &Arc<ErasedIds>) -> Result<Contacts> {
    let mut contacts = Contacts::default();
    if !settings.inputs.contains_key("customers") {
        return Ok(contacts);
    }
    let ctx = crate::session::build_session(settings)?;
    crate::ingest::input_schemas(&ctx, settings).await?;
    ctx.register_udf(ids.udf());
    let engine = |e| Error::engine("read the erased customers' addresses from `customers`", e);
    let sql = format!(
        "select customer_id, {} as email from customers where segflow_erased(customer_id) \
         group by customer_id",
        crate::audiences::CONTACT_EMAIL
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(engine)?
        .collect()
        .await
        .map_err(engine)?;
    for b in &batches {
        let text = |i: usize| {
            datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8)
                .map_err(|e| engine(e.into()))
        };
        let (id, email) = (text(0)?, text(1)?);
        let (id, email) = (id.as_string::<i32>(), email.as_string::<i32>());
        for i in 0..b.num_rows() {
            if id.is_valid(i) && email.is_valid(i) {
                contacts.insert(id.value(i), email.value(i));
            }
        }
    }
    Ok(contacts)
}

/// `segflow forget`: takes the output's lock, adds the ids to the erased list, rewrites
/// every kept snapshot that holds one (or an id an earlier, interrupted request named).
pub async fn forget(settings: &Settings, file: &Path) -> Result<ForgetSummary> {
    let raw = read_ids(file)?;
    let published: Vec<String> = match &settings.privacy.pseudonym {
        Some(key) => raw.iter().map(|id| key.pseudonym(id)).collect(),
        None => raw,
    };
    let output = Output::open(&settings.output, &settings.s3, &settings.tables)?;
    let started = Utc::now();
    let run_id = format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id()
    );
    let lock = Arc::new(
        output
            .acquire_lock(&LockInfo::new(&run_id, started), settings.lock_timeout)
            .await?,
    );
    let heartbeat = lock.keep_alive(settings.lock_timeout);
    let result = async {
        output.recover(&run_id).await?;
        // Ids are erased as published: the key must be the snapshots'.
        crate::commands::run::check_pseudonyms(settings, &output).await?;
        let mut ids = match output.erased_ids().await? {
            Some(ids) => ids,
            None => ErasedIds::new_salted()
                .map_err(|e| output.err("draw the salt of the erased ids", e))?,
        };
        let new = published.iter().filter(|id| ids.insert(id)).count() as u64;
        if new > 0 {
            // First: from now on every run leaves them out, and a `forget` cut short is
            // finished by the next one.
            output.put_erased_ids(&ids, &run_id).await?;
            crate::failpoint::hit("erased_listed").await;
        }
        info!(
            customers = published.len(),
            new,
            erased = ids.len(),
            "erasing customers"
        );
        let ids = Arc::new(ids);
        let contacts = contacts_of(settings, &ids).await?;
        let erasure = Erasure {
            ids: &ids,
            contacts: &contacts,
            members_table: crate::audiences::MODEL,
            at: started,
            customers: published.len() as u64,
        };
        let erased = output.erase(&lock, &run_id, &erasure).await;
        // The catalog lists files by name: after the erasure it names the new ones (also
        // when it stopped part-way, after some snapshots).
        if let Err(e) = output.write_catalog(&run_id).await {
            tracing::warn!(error = %e, "cannot write the catalog; the next run will");
        }
        let snapshots = erased?;
        Ok(ForgetSummary {
            customers: published.len() as u64,
            new,
            erased_total: ids.len() as u64,
            snapshots,
            output: output.loc.uri.clone(),
        })
    }
    .await;
    drop(heartbeat);
    lock.release().await;
    result
}
