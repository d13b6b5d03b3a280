//! Process memory hygiene for bounded runs.
//!
//! DataFusion's memory pool bounds what operators hold, not what the allocator keeps. The
//! binary allocates with mimalloc (faster than glibc's malloc for DataFusion's many
//! short-lived buffers). Handing freed pages back to the system is what costs: every page
//! returned is faulted in and zeroed again by the next batch (a 10 M-line run spent a third of
//! its CPU time in the kernel doing that). So segflow keeps freed pages mapped for reuse and
//! returns them only when the process grows past a threshold ([`Governor`]), and it opts out
//! of transparent huge pages, whose 2 MiB clears cost more than they save for these
//! allocation patterns.
//!
//! Measured on a 10 M-line run (2 cores, `memory_limit = "4g"`): pages returned after 10 ms
//! and huge pages on 25-27 s, peak RSS 1.9 GiB; kept and huge pages off 17 s, 2.6 GiB. At
//! 100 M lines keeping every page grows past 5 GiB, which the governor prevents.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49 binds the
/// v2 numbering only; `MIMALLOC_VERBOSE=1 segflow --version` lists the options in order).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed pages stay mapped before mimalloc returns them on its own: a day, that is
/// never within a run; the [`Governor`] forces the return earlier. `MIMALLOC_PURGE_DELAY`
/// overrides it.
const PURGE_DELAY_MS: std::os::raw::c_long = 86_400_000;

/// Share of the memory limit the process may reach before freed pages are returned.
const GOVERNOR_SHARE: f64 = 0.7;

/// Share of physical memory used as the threshold when the run has no memory limit.
const UNLIMITED_SHARE: f64 = 0.5;

/// How often the governor looks at the resident set size.
const GOVERNOR_TICK: Duration = Duration::from_millis(20);

/// How long the governor waits after a return left the process above the threshold.
const GOVERNOR_BUSY_TICK: Duration = Duration::from_millis(250);

/// Tells mimalloc to keep freed pages for reuse (see the module docs), turns transparent huge
/// pages off for the process and caps glibc's malloc arenas (C libraries). Call once, before
/// worker threads start.
pub fn tune_allocators() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option only changes allocator tuning.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only changes how later page faults of this process are
    // served; failure (an old kernel) leaves the default in place.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the operating system: mimalloc's (the binary's global
/// allocator) and glibc's (used by C libraries).
pub fn release_freed() {
    // SAFETY: mi_collect only returns free pages; it may be called from any thread.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process in bytes (Linux; `None` elsewhere or when unreadable).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size > 0 {
            return size as u64;
        }
    }
    4096
}

fn physical_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
        if pages > 0 {
            return Some(pages as u64 * page_size());
        }
    }
    None
}

/// Watches the resident set size while a run works and returns freed pages to the system
/// whenever it passes the threshold: 70 % of `memory_limit` (the pool bounds what operators
/// hold; the rest of the limit is headroom for what they do not account), or half the
/// physical memory without a limit. Below it, freed pages stay mapped and are reused without
/// page faults. Stops when dropped.
pub struct Governor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Governor {
    /// Starts the watch; `None` when the threshold cannot be known (no limit and no
    /// physical-memory figure) or the thread cannot start.
    pub fn start(memory_limit: Option<usize>) -> Option<Governor> {
        let threshold = match memory_limit {
            Some(limit) => (limit as f64 * GOVERNOR_SHARE) as u64,
            None => (physical_bytes()? as f64 * UNLIMITED_SHARE) as u64,
        };
        resident_bytes()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("segflow-memory".into())
            .spawn(move || {
                let mut wait = GOVERNOR_TICK;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(wait);
                    wait = GOVERNOR_TICK;
                    if resident_bytes().is_some_and(|rss| rss > threshold) {
                        release_freed();
                        let after = resident_bytes();
                        debug!(threshold, after, "freed memory returned to the system");
                        if after.is_some_and(|rss| rss > threshold) {
                            // What is left is in use: returning again at once would only
                            // walk the heaps and unmap pages the next batch faults back in.
                            wait = GOVERNOR_BUSY_TICK;
                        }
                    }
                }
            })
            .ok()?;
        Some(Governor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Governor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_size_grows_when_pages_are_touched() {
        let before = resident_bytes().expect("statm readable on Linux");
        let block = vec![1u8; 64 << 20];
        let after = resident_bytes().expect("statm readable on Linux");
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        drop(block);
    }
}
