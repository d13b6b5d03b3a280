//! A progress line per model while a run computes it, on a terminal only: the model's place
//! in the run, its name and the time elapsed, then its rows and duration once it is staged
//! (models computed side by side have a line each). Off a terminal (a scheduler, a pipe)
//! nothing is drawn and the logs are as they were.
//!
//! Logs are written through [`Stderr`]: while lines are drawn, [`suspend`] clears them,
//! writes the log and draws them again, so logs and progress never tear each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The lines drawn, once the first model starts.
fn lines() -> &'static MultiProgress {
    static LINES: OnceLock<MultiProgress> = OnceLock::new();
    LINES.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Turns the display on (the binary does, when stderr is a terminal).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f` (a write to stderr) with the progress lines cleared.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    if ENABLED.load(Ordering::Relaxed) {
        lines().suspend(f)
    } else {
        f()
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

/// A finished model's line, kept above the lines still drawn.
fn done_line(prefix: &str, model: &str, rows: u64, took: Duration) -> String {
    format!(
        "done [{prefix}] {model}: {rows} rows in {:.1} s",
        took.as_secs_f64()
    )
}

impl ModelProgress {
    /// Starts the line of the `position`th of `total` models.
    pub fn start(model: &str, position: usize, total: usize) -> ModelProgress {
        if !ENABLED.load(Ordering::Relaxed) {
            return ModelProgress { bar: None };
        }
        let bar = lines().add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{position}/{total}"));
        bar.set_message(model.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        ModelProgress { bar: Some(bar) }
    }

    /// Replaces the model's line by one with its rows and duration, printed above the
    /// lines of the models still running.
    pub fn finish(mut self, model: &str, rows: u64, took: Duration) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            lines().remove(&bar);
            // A line that cannot be drawn is not worth failing the run for.
            let _ = lines().println(done_line(&bar.prefix(), model, rows, took));
        }
    }
}

impl Drop for ModelProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            lines().remove(&bar);
        }
    }
}
