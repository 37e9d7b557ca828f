//! The master's own series, kept in its own files like a worker's, so that a
//! sidecar exporter over the same directory serves them too.
//!
//! The files are written from memory (`MmapWriter::open_written`), never
//! mapped: a file truncated by another process cannot fault the master, and
//! the counts are written again from memory, by the next change or by the
//! directory's keeper (`ArchiveCompactor::keep_own`).

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalogue::{self, Series};
use crate::failures;
use crate::master::archive::ArchiveCompactor;
use crate::model::Kind;
use crate::storage::names;
use crate::storage::{MmapWriter, ValueSlot};

/// Why a worker was replaced.
pub const RESTART_REASONS: [&str; 6] = [
    "max_requests",
    "timeout",
    "killed",
    "crashed",
    "reload",
    "scale_down",
];
/// Signals of the master that are counted.
pub const MASTER_SIGNALS: [&str; 9] = [
    "hup", "ttin", "ttou", "usr1", "usr2", "winch", "int", "term", "quit",
];

static WRITE_LOGGED: AtomicU32 = AtomicU32::new(0);

/// One of the master's files: its slots are changed and the file written
/// under its lock, so that the keeper never writes a half-made change.
struct OwnFile {
    writer: Option<Arc<Mutex<MmapWriter>>>,
}

impl OwnFile {
    fn open(path: &Path, compactor: Option<&ArchiveCompactor>) -> OwnFile {
        let writer = match MmapWriter::open_written(path) {
            Ok(w) => Some(Arc::new(Mutex::new(w))),
            Err(e) => {
                failures::write_error(
                    1,
                    format_args!("cannot keep {}: {e}; it is not recorded", path.display()),
                );
                None
            }
        };
        if let (Some(writer), Some(compactor)) = (&writer, compactor) {
            compactor.keep_own(Arc::clone(writer));
        }
        OwnFile { writer }
    }

    fn slot(&self, key: &str) -> ValueSlot {
        let made = self.writer.as_ref().map(|w| {
            let mut w = w.lock();
            let slot = w.slot(key);
            (slot, w.flush())
        });
        match made {
            Some((Ok(slot), _)) => slot,
            _ => ValueSlot::sink(),
        }
    }

    /// Applies `change` to the slots and writes the file.
    fn change(&self, change: impl FnOnce()) {
        let Some(writer) = &self.writer else {
            return change();
        };
        let mut writer = writer.lock();
        change();
        if let Err(e) = writer.flush() {
            failures::write_error_logged_by(
                &WRITE_LOGGED,
                1,
                format_args!(
                    "cannot write {}: {e}; its values are kept in memory and written out \
                     once it can be",
                    writer.path().display()
                ),
            );
        }
    }
}

/// The master's own series: restarts by reason, signals, desired workers.
pub struct MasterMeter {
    restarts: Vec<ValueSlot>,
    signals: Vec<ValueSlot>,
    desired: ValueSlot,
    counters: OwnFile,
    gauges: OwnFile,
}

impl MasterMeter {
    /// Opens the master's files. Never fails: what cannot be recorded is
    /// counted as write errors, and Gunicorn starts all the same. With
    /// `compactor`, the files are kept with the directory.
    pub fn open(
        dir: &Path,
        pid: u32,
        prefix: &str,
        compactor: Option<&ArchiveCompactor>,
    ) -> MasterMeter {
        let owner = names::master_owner(pid);
        let counters = OwnFile::open(&dir.join(names::db_file(Kind::Counter, &owner)), compactor);
        let gauges = OwnFile::open(&dir.join(names::live_gauge_file(&owner)), compactor);
        let slot = |file: &OwnFile, series: &Series, labels: &[(&str, &str)]| {
            file.slot(&series.key(prefix, labels))
        };
        let restarts = RESTART_REASONS
            .iter()
            .map(|r| slot(&counters, &catalogue::RESTARTS, &[("reason", r)]))
            .collect();
        let signals = MASTER_SIGNALS
            .iter()
            .map(|s| slot(&counters, &catalogue::SIGNALS, &[("signal", s)]))
            .collect();
        let desired = slot(&gauges, &catalogue::WORKERS_DESIRED, &[]);
        MasterMeter {
            restarts,
            signals,
            desired,
            counters,
            gauges,
        }
    }

    /// Counts a restart; `false` for an unknown reason.
    pub fn restart(&self, reason: &str) -> bool {
        self.count(&self.restarts, &RESTART_REASONS, reason)
    }

    /// Counts a signal by its lower-case name without `SIG`; `false` if not counted.
    pub fn signal(&self, name: &str) -> bool {
        self.count(&self.signals, &MASTER_SIGNALS, name)
    }

    /// Sets the number of workers the master is configured to run.
    pub fn set_desired(&self, workers: u32) {
        self.gauges.change(|| self.desired.set(workers as f64));
    }

    fn count(&self, slots: &[ValueSlot], names: &[&str], name: &str) -> bool {
        match names.iter().position(|n| *n == name) {
            Some(i) => {
                self.counters.change(|| slots[i].add(1.0));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::aggregate::{collect, find};

    fn restarts(dir: &Path, reason: &str) -> Option<f64> {
        let families = collect(dir, crate::clock::monotonic_seconds());
        find(
            &families,
            "gunicorn_worker_restarts_total",
            &[("reason", reason)],
        )
    }

    #[test]
    fn the_masters_files_truncated_removed_or_grown_are_written_again_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let compactor = ArchiveCompactor::default();
        let meter = MasterMeter::open(d, 41, "gunicorn", Some(&compactor));
        meter.restart("killed");
        let counters = d.join("counter_master41.db");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&counters)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(restarts(d, "killed"), None);
        meter.restart("killed"); // no mapping to fault on: written again
        assert_eq!(restarts(d, "killed"), Some(2.0));
        std::fs::remove_file(&counters).unwrap();
        meter.restart("killed");
        assert_eq!(restarts(d, "killed"), Some(3.0));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&counters)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        compactor.keep_for_tests(d);
        assert!(std::fs::metadata(&counters).unwrap().len() < 1 << 20);
        assert_eq!(restarts(d, "killed"), Some(3.0));
    }
}
