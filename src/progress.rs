//! A progress line per model while a run computes it, on a terminal only: the model's place
//! in the run, its name and the time elapsed, then its rows and duration once it is staged.
//! Off a terminal (a scheduler, a pipe) nothing is drawn and the logs are as they were.
//!
//! Logs are written through [`Stderr`]: while a line is drawn, [`suspend`] clears it, writes
//! the log and draws it again, so logs and progress never tear each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Turns the display on (the binary does, when stderr is a terminal).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f` (a write to stderr) with the current progress line cleared.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = CURRENT.lock().ok().and_then(|g| g.clone());
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Standard error, written around the current progress line (logs go through it).
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The progress line of one model; cleared if dropped unfinished (the model failed).
pub struct ModelProgress {
    bar: Option<ProgressBar>,
}

impl ModelProgress {
    /// Starts the line of the `position`th of `total` models.
    pub fn start(model: &str, position: usize, total: usize) -> ModelProgress {
        if !ENABLED.load(Ordering::Relaxed) {
            return ModelProgress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{position}/{total}"));
        bar.set_message(model.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut current) = CURRENT.lock() {
            *current = Some(bar.clone());
        }
        ModelProgress { bar: Some(bar) }
    }

    /// Leaves the model's line on screen with its rows and duration.
    pub fn finish(mut self, model: &str, rows: u64, took: Duration) {
        if let Some(bar) = self.bar.take() {
            bar.set_style(
                ProgressStyle::with_template("done [{prefix}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(format!(
                "{model}: {rows} rows in {:.1} s",
                took.as_secs_f64()
            ));
            clear_current();
        }
    }
}

impl Drop for ModelProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            clear_current();
        }
    }
}

fn clear_current() {
    if let Ok(mut current) = CURRENT.lock() {
        *current = None;
    }
}
