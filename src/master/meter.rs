//! The master's own series, kept in its own files like a worker's, so that a
//! sidecar exporter over the same directory serves them too.

use std::path::Path;

use crate::catalogue::{self, Series};
use crate::model::Kind;
use crate::storage::names;
use crate::storage::{SeriesFile, ValueSlot};

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

/// The master's own series: restarts by reason, signals, desired workers.
pub struct MasterMeter {
    restarts: Vec<ValueSlot>,
    signals: Vec<ValueSlot>,
    desired: ValueSlot,
    // Kept open for the life of the process: the slots point into them.
    _files: (SeriesFile, SeriesFile),
}

impl MasterMeter {
    /// Opens the master's files. Never fails: what cannot be recorded is
    /// counted as write errors, and Gunicorn starts all the same.
    pub fn open(dir: &Path, pid: u32, prefix: &str) -> MasterMeter {
        let owner = names::master_owner(pid);
        let mut counters = SeriesFile::open(&dir.join(names::db_file(Kind::Counter, &owner)));
        let mut gauges = SeriesFile::open(&dir.join(names::live_gauge_file(&owner)));
        let slot = |file: &mut SeriesFile, series: &Series, labels: &[(&str, &str)]| {
            file.slot(&series.key(prefix, labels))
        };
        let restarts = RESTART_REASONS
            .iter()
            .map(|r| slot(&mut counters, &catalogue::RESTARTS, &[("reason", r)]))
            .collect();
        let signals = MASTER_SIGNALS
            .iter()
            .map(|s| slot(&mut counters, &catalogue::SIGNALS, &[("signal", s)]))
            .collect();
        let desired = slot(&mut gauges, &catalogue::WORKERS_DESIRED, &[]);
        MasterMeter {
            restarts,
            signals,
            desired,
            _files: (counters, gauges),
        }
    }

    /// Counts a restart; `false` for an unknown reason.
    pub fn restart(&self, reason: &str) -> bool {
        Self::count(&self.restarts, &RESTART_REASONS, reason)
    }

    /// Counts a signal by its lower-case name without `SIG`; `false` if not counted.
    pub fn signal(&self, name: &str) -> bool {
        Self::count(&self.signals, &MASTER_SIGNALS, name)
    }

    /// Sets the number of workers the master is configured to run.
    pub fn set_desired(&self, workers: u32) {
        self.desired.set(workers as f64);
    }

    fn count(slots: &[ValueSlot], names: &[&str], name: &str) -> bool {
        match names.iter().position(|n| *n == name) {
            Some(i) => {
                slots[i].add(1.0);
                true
            }
            None => false,
        }
    }
}
