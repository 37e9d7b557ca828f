//! Folding the files of a process that exited into archive files of the same
//! format, so that its counters and histograms live on while the directory
//! holds a bounded number of files however many processes have died.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::clock::monotonic_seconds;
use crate::exemplar;
use crate::native_histogram;
use crate::storage::lock::DirectoryLock;
use crate::storage::reader::{read_entries, read_used};
use crate::storage::MmapWriter;

/// Where a worker leaves the reason it exited, for the master to read.
pub fn exit_note_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("exit_{pid}.note"))
}

/// Names this core gives a worker's own files: `<type>_worker<pid>.db`, apart
/// from the `<type>_<pid>.db` files prometheus_client writes in the same process.
pub fn worker_file_id(pid: u32) -> String {
    format!("worker{pid}")
}

/// What happens to one file of a process that exited.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Add every value into `<prefix>_archive.db`.
    Sum,
    /// Merge gauges into `gauge_<mode>_archive.db` as their mode merges.
    Merge(&'static str),
    /// A live gauge: gone with its process.
    Drop,
    /// A gauge of mode `all`: prometheus_client keeps one series per pid.
    Keep,
}

fn fate(name: &str) -> Option<(Fate, String)> {
    let stem = name.strip_suffix(".db")?;
    let (kind, rest) = stem.split_once('_')?;
    match kind {
        "counter" | "histogram" | "summary" => Some((Fate::Sum, format!("{kind}_archive.db"))),
        "gauge" => {
            let mode = rest.split('_').next()?;
            let fate = match mode {
                m if m.starts_with("live") => Fate::Drop,
                "all" => Fate::Keep,
                "min" => Fate::Merge("min"),
                "max" => Fate::Merge("max"),
                "sum" => Fate::Merge("sum"),
                "mostrecent" => Fate::Merge("mostrecent"),
                _ => return None,
            };
            Some((fate, format!("gauge_{mode}_archive.db")))
        }
        _ => None,
    }
}

/// Keeps the archive files open across deaths.
#[derive(Default)]
pub struct ArchiveCompactor {
    archives: HashMap<PathBuf, MmapWriter>,
}

impl ArchiveCompactor {
    /// Folds every file of `pid` (prometheus_client's and this core's) into the
    /// archives and removes it, under the directory lock. Returns the exit note
    /// the process left, if any.
    pub fn retire(&mut self, dir: &Path, pid: u32) -> io::Result<Option<String>> {
        let ids = [pid.to_string(), worker_file_id(pid)];
        let _lock = DirectoryLock::exclusive(dir)?;
        let mut buf = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".db") else {
                continue;
            };
            if !ids
                .iter()
                .any(|id| stem.rsplit('_').next() == Some(id.as_str()))
            {
                continue;
            }
            let Some((fate, archive)) = fate(&name) else {
                continue;
            };
            let path = dir.join(&name);
            if fate == Fate::Keep {
                continue;
            }
            if fate != Fate::Drop && read_used(&path, &mut buf).is_ok() {
                let writer = self.archive(dir, &archive)?;
                let now = monotonic_seconds();
                let (entries, _) = read_entries(&buf);
                for e in entries {
                    fold(writer, &fate, e.key, e.value, e.timestamp, now)?;
                }
            }
            remove_if_present(&path)?;
        }
        // Native histogram buckets (`*.ndb`): summed into their own archive.
        let native = dir.join(native_histogram::file_name(pid));
        if native.exists() {
            native_histogram::fold_into(self.archive(dir, native_histogram::ARCHIVE)?, &native)?;
            remove_if_present(&native)?;
        }
        // Exemplars: the latest of each sample is kept.
        let exemplars = dir.join(exemplar::file_name(pid));
        if exemplars.exists() {
            exemplar::fold_into(self.archive(dir, exemplar::ARCHIVE)?, &exemplars)?;
            remove_if_present(&exemplars)?;
        }
        let note_path = exit_note_path(dir, pid);
        let note = fs::read_to_string(&note_path)
            .ok()
            .map(|s| s.trim().to_owned());
        remove_if_present(&note_path)?;
        Ok(note)
    }

    fn archive(&mut self, dir: &Path, name: &str) -> io::Result<&mut MmapWriter> {
        let path = dir.join(name);
        if !self.archives.contains_key(&path) || !path.exists() {
            // Also reopens an archive that a restart of the directory removed.
            self.archives.insert(path.clone(), MmapWriter::open(&path)?);
        }
        Ok(self.archives.get_mut(&path).expect("just inserted"))
    }
}

fn fold(
    w: &mut MmapWriter,
    fate: &Fate,
    key: &str,
    value: f64,
    ts: f64,
    now: f64,
) -> io::Result<()> {
    let is_new = !w.contains(key);
    let slot = w.slot(key)?;
    match fate {
        // A negative timestamp marks a running clock: stop it at its current value.
        Fate::Sum if ts < 0.0 => slot.add(value.max(now + ts)),
        Fate::Sum | Fate::Merge("sum") => slot.add(value),
        Fate::Merge("min") if is_new || value < slot.get() => slot.set(value),
        Fate::Merge("max") if is_new || value > slot.get() => slot.set(value),
        Fate::Merge("mostrecent") if is_new || ts > slot.get_timestamp() => {
            slot.set(value);
            slot.set_timestamp(ts);
        }
        _ => {}
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::collect;
    use crate::storage::key::encode;

    fn put(dir: &Path, file: &str, key: &str, value: f64, ts: f64) {
        let mut writer = MmapWriter::open(&dir.join(file)).unwrap();
        let slot = writer.slot(key).unwrap();
        slot.set(value);
        slot.set_timestamp(ts);
    }

    fn total(dir: &Path, name: &str) -> f64 {
        collect(dir, monotonic_seconds())
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| &*s.name == name)
            .map(|s| s.value)
            .sum()
    }

    #[test]
    fn retiring_keeps_counters_and_removes_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = encode("c", "c_total", &[("worker_id", "1")], "h");
        let g = encode("g", "g", &[], "h");
        put(d, "counter_worker10.db", &c, 3.0, 0.0);
        put(
            d,
            "counter_10.db",
            &encode("app", "app_total", &[], "h"),
            2.0,
            0.0,
        );
        put(d, "gauge_livesum_worker10.db", &g, 9.0, 0.0);
        put(d, "gauge_max_10.db", &g, 4.0, 0.0);
        put(d, "gauge_all_10.db", &g, 4.0, 0.0);
        put(d, "counter_worker11.db", &c, 5.0, 0.0);
        fs::write(exit_note_path(d, 10), "max_requests\n").unwrap();
        let mut compactor = ArchiveCompactor::default();
        assert_eq!(
            compactor.retire(d, 10).unwrap().as_deref(),
            Some("max_requests")
        );
        assert_eq!(total(d, "c_total"), 8.0);
        assert_eq!(total(d, "app_total"), 2.0);
        let mut names: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".lock",
                "counter_archive.db",
                "counter_worker11.db",
                "gauge_all_10.db",
                "gauge_max_archive.db"
            ]
        );
        put(d, "counter_worker12.db", &c, 1.0, 0.0);
        assert_eq!(compactor.retire(d, 12).unwrap(), None);
        assert_eq!(total(d, "c_total"), 9.0);
    }

    #[test]
    fn a_running_clock_is_stopped_when_folded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let busy = encode("b", "b_total", &[], "h");
        put(
            d,
            "counter_worker3.db",
            &busy,
            1.0,
            1.0 - (monotonic_seconds() - 2.0),
        );
        ArchiveCompactor::default().retire(d, 3).unwrap();
        let folded = total(d, "b_total");
        assert!((3.0..4.0).contains(&folded), "{folded}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(total(d, "b_total"), folded);
    }

    #[test]
    fn gauge_modes_fold_as_they_merge() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let g = encode("g", "g", &[], "h");
        let mut compactor = ArchiveCompactor::default();
        for (pid, v, ts) in [(1, 5.0, 10.0), (2, -3.0, 5.0), (3, 7.0, 1.0)] {
            for mode in ["min", "max", "sum", "mostrecent"] {
                put(d, &format!("gauge_{mode}_{pid}.db"), &g, v, ts);
            }
            compactor.retire(d, pid).unwrap();
        }
        let value = |mode: &str| {
            let mut buf = Vec::new();
            read_used(&d.join(format!("gauge_{mode}_archive.db")), &mut buf).unwrap();
            read_entries(&buf).0[0].value
        };
        assert_eq!(
            (
                value("min"),
                value("max"),
                value("sum"),
                value("mostrecent")
            ),
            (-3.0, 7.0, 9.0, 5.0)
        );
    }
}
