//! `segflow generate`: a deterministic synthetic order history for scale tests and
//! benchmarks, written as hive-partitioned Parquet in the demo's source schema.
//!
//! It needs neither Python nor DuckDB and runs in bounded memory at any size. The output is
//! `<out>/month=YYYY-MM/part-0.parquet`, one file per month of `created_at` (the month lives
//! only in the folder name), with the column names and types of `fixtures/demo/orders`, so
//! `fixtures/demo/segflow.toml`'s mapping reads it unchanged.
//!
//! Customer `i` (0-based) is `client_id` 100001 + i; its orders are numbered `k` = 0, 1, ..
//! (0 is the first, acquisition order; the others are not in time order) and `order_no` is
//! `SO-<client_id>-<k as 4 digits>`, e.g. `SO-100042-0003`; refund lines keep it.
//!
//! **Randomness.** Every draw is [`unit`]`(seed, a, b, stream)`: splitmix64 mixing of the
//! four numbers, 53 bits, in (0, 1). The keys mirror the Python script: a customer's
//! parameters are `(i, 0, 1..=16)` (its gamma rate `(i, 100 + n, 7)`), order `k`'s are
//! `(i, k, 20..=29 | 90 | 91)`, line `j`'s are `(8 i + j, k, 30..=43)`, a SKU's price is
//! `(u64::MAX - category, sku, 36 | 37)`. Nothing depends on the order of evaluation, so a
//! seed gives byte-identical files for any number of threads.
//!
//! **Streaming.** Nothing is stored per customer. The rate scale that makes the order count
//! match `--lines` is found by bisection, each step recomputing every customer's parameters
//! from the hash. Then the months are written one at a time per worker thread: for month
//! `m` the worker walks all customers and their orders and emits the lines (and refund
//! lines, which can land up to 31 days after their order) whose timestamp falls in `m`, in
//! batches of 64 k rows, through `AsyncArrowWriter` into an object_store `BufWriter` (a
//! multipart upload once a file passes 8 MiB; parquet's `ParquetObjectWriter` is a
//! deprecated wrapper of the same). Memory is a few batches, one row group and a few upload

mod population;
#[cfg(test)]
mod tests;
mod write;

pub use population::*;
use write::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use object_store::ObjectStoreExt;
use tokio::runtime::Handle;

use crate::config::S3Settings;
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::shutdown::Shutdown;
use crate::storage::{retrying, Location};

/// What to generate (the `segflow generate` flags).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Output root: a local path or an s3:// / gs:// / az:// URL; must hold no object.
    pub out: String,
    /// Target number of order lines.
    pub lines: u64,
    /// Customers; default `lines / 15.625`, rounded, at least 1.
    pub customers: Option<u64>,
    /// Months of history, 1..=600, ending with the month of `end`.
    pub months: u32,
    /// Last day of history, `YYYY-MM-DD`.
    pub end: String,
    pub seed: u64,
    /// Worker threads (the files do not depend on it).
    pub threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            out: String::new(),
            lines: DEFAULT_LINES,
            customers: None,
            months: DEFAULT_MONTHS,
            end: DEFAULT_END.to_string(),
            seed: 1,
            threads: 2,
            progress: false,
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub uri: String,
    pub target_lines: u64,
    pub lines: u64,
    pub orders: u64,
    /// Customers with at least one order (every customer orders at least once).
    pub customers: u64,
    /// Month partitions written, and the first and last month.
    pub months: usize,
    pub first_month: String,
    pub last_month: String,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl GenerateSummary {
    /// Deviation of the line count from the target, in percent.
    pub fn deviation_percent(&self) -> f64 {
        (self.lines as f64 - self.target_lines as f64) / self.target_lines as f64 * 100.0
    }

    /// What `segflow generate` prints.
    pub fn render(&self) -> String {
        let s = self;
        format!(
            "out:       {}\n\
             lines:     {} (target {}, {:+.2} %)\n\
             orders:    {}\n\
             customers: {}\n\
             months:    {} ({} .. {}, month=YYYY-MM partitions)\n\
             files:     {}\n\
             bytes:     {} ({:.1} MiB)\n\
             seconds:   {:.1}\n",
            s.uri,
            s.lines,
            s.target_lines,
            s.deviation_percent(),
            s.orders,
            s.customers,
            s.months,
            s.first_month,
            s.last_month,
            s.files,
            s.bytes,
            s.bytes as f64 / (1024.0 * 1024.0),
            s.seconds
        )
    }
}

/// Resolves `--out`: a URL as it is, a local path made absolute.
fn resolve_out(out: &str) -> Result<Location> {
    if out.trim().is_empty() {
        return Err(arg("--out", "must not be empty"));
    }
    let uri = if out.contains("://") {
        out.to_string()
    } else {
        let cwd =
            std::env::current_dir().map_err(|e| Error::io("read working directory", ".", e))?;
        crate::config::absolute(std::path::Path::new(out), &cwd)
            .to_string_lossy()
            .into_owned()
    };
    Location::resolve(&uri, &S3Settings::default())
}

/// Refuses an output that already holds anything. Returns whether a local output
/// directory existed before (it is kept when clean-up removes what was written).
async fn ensure_empty(loc: &Location) -> Result<bool> {
    if let Some(dir) = &loc.local {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Output {
                uri: loc.uri.clone(),
                operation: "open".into(),
                message: "exists and is not a directory".into(),
            });
        }
        return match std::fs::read_dir(dir) {
            Ok(mut entries) => match entries.next() {
                None => Ok(true),
                Some(entry) => Err(Error::OutputNotEmpty {
                    uri: loc.uri.clone(),
                    found: entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .unwrap_or_else(|e| e.to_string()),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("list", dir, e)),
        };
    }
    let prefix = loc.path("");
    let first = retrying("list", || async {
        loc.store.list(Some(&prefix)).next().await.transpose()
    })
    .await
    .map_err(|e| Error::Output {
        uri: loc.uri.clone(),
        operation: "list".into(),
        message: redact(&e.to_string()),
    })?;
    match first {
        None => Ok(false),
        Some(meta) => Err(Error::OutputNotEmpty {
            uri: loc.uri.clone(),
            found: loc
                .rel(&meta.location)
                .unwrap_or_else(|| meta.location.to_string()),
        }),
    }
}

/// Removes everything written under the output (which was empty before), keeping a local
/// output directory that existed. Returns a sentence for the error message.
async fn remove_written(loc: &Location, months: &[Month], local_dir_existed: bool) -> String {
    if let Some(dir) = &loc.local {
        let mut failed = Vec::new();
        for m in months {
            let p = dir.join(format!("month={}", m.label));
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}: {e}", p.display())),
            }
        }
        if !local_dir_existed {
            let _ = std::fs::remove_dir(dir);
        }
        return if failed.is_empty() {
            "everything written there was removed".into()
        } else {
            format!(
                "could not remove what was written, remove it by hand: {}",
                failed.join("; ")
            )
        };
    }
    let listed = match retrying("list", || loc.list("")).await {
        Ok(l) => l,
        Err(e) => {
            return format!(
                "could not list what was written, remove it by hand: {}",
                redact(&e.to_string())
            )
        }
    };
    let mut failed = 0usize;
    for meta in listed {
        match retrying("delete", || loc.store.delete(&meta.location)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(_) => failed += 1,
        }
    }
    if failed == 0 {
        "everything written there was removed".into()
    } else {
        format!("could not delete {failed} object(s) written there, remove them by hand")
    }
}

fn progress_bar(show: bool, target: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} lines ({rate}, ETA {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} lines/s", s.per_sec());
    })
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Generates the order history into `o.out`: validates the flags, refuses a non-empty
/// output, calibrates, writes every month. On an error or SIGTERM/SIGINT it removes
/// everything it wrote and returns [`Error::GenerateStopped`].
pub async fn generate(o: &GenerateOptions) -> Result<GenerateSummary> {
    let clock = Instant::now();
    let mut plan = Plan::new(o)?;
    let loc = resolve_out(&o.out)?;
    let local_dir_existed = ensure_empty(&loc).await?;
    let mut shutdown = Shutdown::install()?;
    let stopped = |reason: String, cleanup: &str| Error::GenerateStopped {
        uri: loc.uri.clone(),
        reason,
        cleanup: cleanup.to_string(),
    };
    tracing::info!(
        out = %loc.uri,
        lines = o.lines,
        customers = plan.customers,
        months = plan.months.len(),
        seed = o.seed,
        "generating"
    );

    // Calibrate (CPU only, nothing written yet).
    let stop = Arc::new(AtomicBool::new(false));
    let threads = o.threads;
    let mut calibration = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || plan.calibrate(threads, &stop).map(|s| (plan, s))
    });
    let calibrated = tokio::select! {
        r = &mut calibration => r,
        signal = shutdown.wait() => {
            stop.store(true, Ordering::Relaxed);
            let _ = calibration.await;
            return Err(stopped(format!("interrupted by {signal}"), "nothing was written"));
        }
    };
    match calibrated {
        Ok(Ok((p, Some(scale)))) => {
            plan = p;
            plan.scale = scale;
        }
        Ok(Ok((_, None))) => return Err(stopped("stopped".into(), "nothing was written")),
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(stopped(e.to_string(), "nothing was written")),
    }

    // Write the months.
    let progress = progress_bar(o.progress, o.lines);
    let shared = Arc::new(Shared {
        plan,
        loc: loc.clone(),
        stop: AtomicBool::new(false),
        next_month: AtomicUsize::new(0),
        progress: progress.clone(),
    });
    let threads = o.threads.min(shared.plan.months.len()).max(1);
    let handle = Handle::current();
    let mut writing = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || write_all_months(&shared, &handle, threads)
    });
    let written = tokio::select! {
        r = &mut writing => r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
        signal = shutdown.wait() => {
            progress.suspend(|| tracing::warn!(signal, "stopping: waiting for the workers, then removing what was written"));
            shared.stop.store(true, Ordering::Relaxed);
            let _ = writing.await;
            Err(format!("interrupted by {signal}"))
        }
    };
    progress.finish_and_clear();
    let listed = match written {
        Ok(stats) => retrying("list", || loc.list(""))
            .await
            .map(|l| (stats, l))
            .map_err(|e| format!("list the written files: {}", redact(&e.to_string()))),
        Err(e) => Err(e),
    };
    let (stats, listed) = match listed {
        Ok(x) => x,
        Err(reason) => {
            let cleanup = remove_written(&loc, &shared.plan.months, local_dir_existed).await;
            return Err(stopped(reason, &cleanup));
        }
    };

    let mut months: Vec<String> = listed
        .iter()
        .filter_map(|m| loc.rel(&m.location))
        .filter_map(|rel| {
            rel.strip_prefix("month=")
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .collect();
    months.sort();
    months.dedup();
    Ok(GenerateSummary {
        uri: loc.uri.clone(),
        target_lines: o.lines,
        lines: stats.iter().map(|s| s.lines).sum(),
        orders: stats.iter().map(|s| s.orders).sum(),
        customers: stats.iter().map(|s| s.customers).sum(),
        months: months.len(),
        first_month: months.first().cloned().unwrap_or_default(),
        last_month: months.last().cloned().unwrap_or_default(),
        files: listed.len(),
        bytes: listed.iter().map(|m| m.size).sum(),
        seconds: clock.elapsed().as_secs_f64(),
    })
}
