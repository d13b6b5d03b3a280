//! Deadlines for everything a test waits for. A loop that polls a file, a port, a lock or a
//! log line, and a wait for a child process, fails naming what it waited for once its
//! deadline passes, instead of hanging the whole suite.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// How long a segflow run may take once nothing holds it back (a debug build on a loaded
/// machine takes minutes at worst).
pub(crate) const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// A point in time a wait must not pass.
pub(crate) struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            limit,
        }
    }

    /// Panics once the deadline has passed, saying what was waited for (which should say
    /// where: the path, the port).
    pub(crate) fn check(&self, what: impl FnOnce() -> String) {
        assert!(
            self.start.elapsed() < self.limit,
            "gave up after {} s waiting for {}",
            self.limit.as_secs(),
            what()
        );
    }

    /// The time left (zero once passed).
    pub(crate) fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.start.elapsed())
    }
}

/// Polls `poll` every `every` until it gives a value; panics after `timeout` naming `what`
/// (which should say where: the path, the port).
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut poll: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Deadline::after(timeout);
    loop {
        if let Some(v) = poll() {
            return v;
        }
        deadline.check(|| what.to_string());
        std::thread::sleep(every);
    }
}

/// `child.wait_with_output()`, or, once `timeout` has passed, the child killed and what it
/// had written as `Err`.
pub(crate) fn finish_within(child: Child, timeout: Duration) -> Result<Output, Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.expect("waits for the child")),
        Err(_) => {
            // SAFETY: a signal to our own child process, not reaped yet (its waiter has not
            // returned).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            Err(rx
                .recv()
                .expect("the waiter sends the output")
                .expect("waits for the child"))
        }
    }
}

/// `child.wait_with_output()`, but after `timeout` the child is killed and the test fails
/// naming `what` it was waiting for, with the end of what the child wrote to stderr.
pub(crate) fn output_within(child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    finish_within(child, timeout).unwrap_or_else(|out| {
        panic!(
            "gave up after {} s waiting for {what} (pid {pid}, now killed); its stderr ended:\n{}",
            timeout.as_secs(),
            stderr_tail(&out)
        )
    })
}

/// The last lines a process wrote to stderr.
pub(crate) fn stderr_tail(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits ([`RUN_DEADLINE`] at most) for a segflow process, `what` it is, and asserts it
/// exited 0.
pub(crate) fn assert_finishes_ok(child: Child, what: &str) {
    let out = output_within(child, RUN_DEADLINE, what);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
