//! Failures that must stop nothing: values that could not be recorded are
//! counted (`<prefix>_exporter_write_errors_total`) and logged once per process.
//!
//! The count lives in one page of memory the master maps shared and anonymous
//! before it forks workers (`share_with_children`): every worker adds to the
//! same counter without any file, so a full disk or a directory a worker cannot
//! write to is still counted. A process that never called it (a test, the
//! standalone exporter) counts in a private counter.

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::shared_cells::SharedCells;

static PRIVATE_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
static SHARED_WRITE_ERRORS: SharedCells<1> = SharedCells::new();
/// The pid that already logged a write error: a forked child inherits the
/// value but has another pid, so it logs its own first error too.
static LOGGED_BY: AtomicU32 = AtomicU32::new(0);

/// Maps the shared counter (once; later calls keep the first mapping).
pub fn share_with_children() {
    SHARED_WRITE_ERRORS.share();
}

fn counter() -> &'static AtomicU64 {
    SHARED_WRITE_ERRORS
        .get()
        .map_or(&PRIVATE_WRITE_ERRORS, |cells| &cells[0])
}

/// Counts `n` values (entries, files) that could not be recorded, and logs
/// `what` if this process has not logged a write error yet.
pub fn write_error(n: u64, what: impl Display) {
    counter().fetch_add(n, Ordering::Relaxed);
    log_once(&LOGGED_BY, what);
}

/// As `write_error`, logged once per process through `flag` (its own kind of failure).
pub fn write_error_logged_by(flag: &AtomicU32, n: u64, what: impl Display) {
    counter().fetch_add(n, Ordering::Relaxed);
    log_once(flag, what);
}

/// Write errors counted so far (by this master and its workers).
pub fn write_errors() -> u64 {
    counter().load(Ordering::Relaxed)
}

/// Logs `what` on stderr (Gunicorn's error log by default) unless this
/// process already logged through `flag`.
pub fn log_once(flag: &AtomicU32, what: impl Display) {
    let pid = std::process::id();
    if flag.swap(pid, Ordering::Relaxed) != pid {
        eprintln!(
            "[{pid}] [WARNING] gunicorn_prometheus_exporter: {what} \
             (further failures of this kind in this process are only counted)"
        );
    }
}

/// Logs one warning line on stderr: an event an operator should know of
/// (the directory made again), not a failure repeated per request.
pub fn warn(what: impl Display) {
    eprintln!(
        "[{}] [WARNING] gunicorn_prometheus_exporter: {what}",
        std::process::id()
    );
}

/// Logs one informational line on stderr: housekeeping an operator may
/// want to read of, but need not act on.
pub fn info(what: impl Display) {
    eprintln!(
        "[{}] [INFO] gunicorn_prometheus_exporter: {what}",
        std::process::id()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_add_to_the_shared_count() {
        share_with_children();
        let before = write_errors();
        // SAFETY: the child only counts and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            write_error(2, "test");
            // SAFETY: leaves the child without running the test harness.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(write_errors() >= before + 2);
    }
}
