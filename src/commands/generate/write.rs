//! Writing a month: its lines in Arrow batches, through `AsyncArrowWriter` into a buffered
//! (multipart) upload, one month per worker thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use indicatif::ProgressBar;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::redact::redact;
use crate::storage::Location;

use super::*;

/// The order-level values of a row.
pub(super) struct Row<'a> {
    pub(super) client_id: i64,
    pub(super) order_no: &'a str,
    pub(super) channel: Option<&'static str>,
    pub(super) country: &'static str,
    pub(super) device: &'static str,
}

/// The line-level values of a row (refund rows negate qty and money).
pub(super) struct Line<'a> {
    pub(super) sku: &'a str,
    pub(super) category: Option<&'static str>,
    pub(super) qty: i64,
    pub(super) cents: i64,
    pub(super) cogs_ratio: f64,
}

/// Column builders of one batch.
pub(super) struct Rows {
    client_id: Int64Builder,
    order_no: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    sku: StringBuilder,
    product_category: StringBuilder,
    qty: Int32Builder,
    net_eur: Decimal128Builder,
    cogs_eur: Float64Builder,
    utm_source: StringBuilder,
    country_code: StringBuilder,
    device_type: StringBuilder,
    order_status: StringBuilder,
    pub(crate) len: usize,
}

impl Rows {
    pub(crate) fn new() -> Rows {
        let n = BATCH_ROWS;
        let text = |bytes_per_row: usize| StringBuilder::with_capacity(n, n * bytes_per_row);
        Rows {
            client_id: Int64Builder::with_capacity(n),
            order_no: text(16),
            created_at: TimestampMillisecondBuilder::with_capacity(n),
            sku: text(9),
            product_category: text(8),
            qty: Int32Builder::with_capacity(n),
            net_eur: Decimal128Builder::with_capacity(n)
                .with_data_type(DataType::Decimal128(12, 2)),
            cogs_eur: Float64Builder::with_capacity(n),
            utm_source: text(8),
            country_code: text(2),
            device_type: text(7),
            order_status: text(9),
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, row: &Row, line: &Line, ts: i64, sign: i64, status: &str) {
        let cents = sign * line.cents;
        self.client_id.append_value(row.client_id);
        self.order_no.append_value(row.order_no);
        self.created_at.append_value(ts);
        self.sku.append_value(line.sku);
        self.product_category.append_option(line.category);
        self.qty.append_value((sign * line.qty) as i32);
        self.net_eur.append_value(i128::from(cents));
        self.cogs_eur
            .append_value((cents as f64 * line.cogs_ratio).round() / 100.0);
        self.utm_source.append_option(row.channel);
        self.country_code.append_value(row.country);
        self.device_type.append_value(row.device);
        self.order_status.append_value(status);
        self.len += 1;
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.client_id.finish()),
            Arc::new(self.order_no.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.sku.finish()),
            Arc::new(self.product_category.finish()),
            Arc::new(self.qty.finish()),
            Arc::new(self.net_eur.finish()),
            Arc::new(self.cogs_eur.finish()),
            Arc::new(self.utm_source.finish()),
            Arc::new(self.country_code.finish()),
            Arc::new(self.device_type.finish()),
            Arc::new(self.order_status.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(orders_schema(), columns).map_err(|e| Error::Output {
            uri: "generate".into(),
            operation: "build a batch".into(),
            message: e.to_string(),
        })
    }
}

/// Counts of one month's file.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct MonthStats {
    pub(crate) lines: u64,
    /// Orders placed in the month.
    pub(crate) orders: u64,
    /// First orders placed in the month.
    pub(crate) customers: u64,
}

/// The Parquet file of one month, opened at its first batch (an empty month has no file).
pub(super) struct MonthFile<'a> {
    loc: &'a Location,
    rel: String,
    handle: &'a Handle,
    writer: Option<AsyncArrowWriter<BufWriter>>,
}

impl MonthFile<'_> {
    fn err(&self, operation: &str, e: impl std::fmt::Display) -> Error {
        Error::Output {
            uri: self.loc.display(&self.rel),
            operation: operation.into(),
            message: redact(&e.to_string()),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let upload = BufWriter::with_capacity(
                self.loc.store.clone(),
                self.loc.path(&self.rel),
                PART_BYTES,
            )
            .with_max_concurrency(PARTS_IN_FLIGHT);
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .set_statistics_enabled(EnabledStatistics::Page)
                // Nearly unique per row or order: a dictionary only costs time (and 16 %
                // more bytes, measured on 1 M lines); the other columns keep theirs.
                .set_column_dictionary_enabled("order_no".into(), false)
                .set_column_dictionary_enabled("created_at".into(), false)
                .set_column_dictionary_enabled("cogs_eur".into(), false)
                .build();
            let writer = AsyncArrowWriter::try_new(upload, orders_schema(), Some(props))
                .map_err(|e| self.err("open", e))?;
            self.writer = Some(writer);
        }
        let handle = self.handle;
        let result = match self.writer.as_mut() {
            Some(w) => handle.block_on(w.write(batch)),
            None => Ok(()),
        };
        result.map_err(|e| self.err("write", e))
    }

    /// Finishes the file (footer, last part, completes the upload).
    fn close(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => self
                .handle
                .block_on(w.close())
                .map(|_| ())
                .map_err(|e| self.err("close", e)),
            None => Ok(()),
        }
    }

    /// Abandons the file: aborts its multipart upload (nothing becomes visible).
    fn abort(&mut self) {
        if let Some(w) = self.writer.take() {
            let mut upload = w.into_inner();
            if let Err(e) = self.handle.block_on(upload.abort()) {
                tracing::warn!(file = %self.loc.display(&self.rel), error = %redact(&e.to_string()), "cannot abort an upload");
            }
        }
    }
}

/// State the worker threads share.
pub(super) struct Shared {
    pub(crate) plan: Plan,
    pub(super) loc: Location,
    pub(crate) stop: AtomicBool,
    pub(super) next_month: AtomicUsize,
    pub(super) progress: ProgressBar,
}

/// Writes month `m`: `Ok(None)` when stopped (the file abandoned).
pub(super) fn write_month(
    shared: &Shared,
    handle: &Handle,
    m: usize,
) -> Result<Option<MonthStats>> {
    let mut file = MonthFile {
        loc: &shared.loc,
        rel: format!("month={}/part-0.parquet", shared.plan.months[m].label),
        handle,
        writer: None,
    };
    let generated = shared
        .plan
        .generate_month(m, &shared.stop, &mut |batch: RecordBatch| {
            file.write(&batch)?;
            shared.progress.inc(batch.num_rows() as u64);
            Ok(())
        });
    match generated {
        Ok(Some(stats)) => {
            file.close()?;
            handle.block_on(failpoint::hit("generate_file_written"));
            Ok(Some(stats))
        }
        Ok(None) => {
            file.abort();
            Ok(None)
        }
        Err(e) => {
            file.abort();
            Err(e)
        }
    }
}

/// Runs the worker threads until every month is written, one stops, or `stop` is raised.
pub(super) fn write_all_months(
    shared: &Shared,
    handle: &Handle,
    threads: usize,
) -> Result<Vec<MonthStats>> {
    let worker = || -> Result<Vec<MonthStats>> {
        let mut done = Vec::new();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let m = shared.next_month.fetch_add(1, Ordering::Relaxed);
            if m >= shared.plan.months.len() {
                return Ok(done);
            }
            match write_month(shared, handle, m) {
                Ok(Some(stats)) => done.push(stats),
                Ok(None) => return Ok(done),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        workers.into_iter().map(|w| w.join()).collect()
    });
    let mut all = Vec::new();
    for r in results {
        match r {
            Ok(Ok(stats)) => all.extend(stats),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Output {
                    uri: shared.loc.uri.clone(),
                    operation: "generate".into(),
                    message: "a worker thread panicked".into(),
                })
            }
        }
    }
    Ok(all)
}
