//! Folding the files of a process that exited into archive files of the same
//! format, so that its counters and histograms live on while the directory
//! holds a bounded number of files however many processes have died.
//!
//! Archives are written, never mapped (`MmapWriter::open_written`): their
//! entries live in the master's memory and each fold writes the file, so
//! that one removed, truncated or grown by another process is written again
//! from memory, and none can fault the master. Before each fold the file is
//! read back (`reconcile`): during Gunicorn's USR2 both masters fold into it.
//! The directory's owner also keeps the directory, its own files and the
//! archives every second (`sweep_in_background`).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::monotonic_seconds;
use crate::failures;
use crate::master::directory;
use crate::master::label_cap::LabelCap;
use crate::shared_cells::SharedCells;
use crate::storage::lock::DirectoryLock;
use crate::storage::names::{self, DbName, GaugeMode};
use crate::storage::open::{open_read, remove_entry};
use crate::storage::reader::{read_entries, read_used};
use crate::storage::{running_clock, MmapWriter};
use crate::worker::exemplar;
use crate::worker::native_histogram;

/// The longest a retire (in the arbiter, from `child_exit`) waits for the
/// directory lock, or for a fold running in the background, before it defers.
pub const RETIRE_WAIT: Duration = Duration::from_millis(200);
/// How often deferred folds are retried in the background.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often the directory's owner keeps the directory and looks for
/// processes of this core that died with no master left to retire them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a background retry may wait for the directory lock.
const RETRY_WAIT: Duration = Duration::from_secs(2);
/// An exit note is one word; anything longer is not ours.
const MAX_NOTE_BYTES: u64 = 64;

static DEFERRAL_LOGGED: AtomicU32 = AtomicU32::new(0);
static KEEP_LOGGED: AtomicU32 = AtomicU32::new(0);

/// The reasons a worker leaves in its exit note, as `instrument.py` names them.
const NOTE_REASONS: [&str; 4] = ["max_requests", "graceful", "reload", "crashed"];
/// One note per slot: `pid << 8 | reason + 1`; 0 is free.
const NOTE_SLOTS: usize = 4096 / 8;

/// Exit notes pass through a page the master shares with the workers it
/// forks (`share_exit_notes`), so that a worker leaves its note even where
/// it cannot write in the directory (removed, read-only, full); the file
/// `exit_<pid>.note` is the fallback (no page, a reason of its own).
static NOTES: SharedCells<NOTE_SLOTS> = SharedCells::new();

/// Maps the page of exit notes, in the master before it forks (once).
pub fn share_exit_notes() {
    NOTES.share();
}

/// Where a worker leaves the reason it exited, for the master to read.
pub fn exit_note_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(names::exit_note_file(pid))
}

/// Leaves `reason` as the exit note of `pid`: in the page the master
/// shares, else in the note's file (whatever has its name, a planted
/// symlink included, is unlinked, never written through).
pub fn write_exit_note(dir: &Path, pid: u32, reason: &str) -> io::Result<()> {
    use std::io::Write;
    let code = NOTE_REASONS.iter().position(|r| *r == reason);
    if let (Some(slots), Some(code)) = (NOTES.get(), code) {
        let note = (u64::from(pid) << 8) | (code as u64 + 1);
        // Its own slot if it left a note already, else a free one.
        let mine = slots
            .iter()
            .find(|s| s.load(Ordering::Acquire) >> 8 == u64::from(pid));
        if let Some(slot) = mine {
            slot.store(note, Ordering::Release);
            return Ok(());
        }
        let free = slots.iter().any(|s| {
            s.compare_exchange(0, note, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if free {
            return Ok(());
        }
    }
    crate::storage::open::create_fresh(&exit_note_path(dir, pid))?.write_all(reason.as_bytes())
}

/// Takes the exit note of `pid`: from the shared page, else from a regular
/// note file, which is removed either way.
fn take_exit_note(dir: &Path, pid: u32) -> Option<String> {
    let shared = NOTES.get().and_then(|slots| {
        slots.iter().find_map(|slot| {
            let note = slot.load(Ordering::Acquire);
            if note == 0 || note >> 8 != u64::from(pid) {
                return None;
            }
            let _ = slot.compare_exchange(note, 0, Ordering::AcqRel, Ordering::Relaxed);
            NOTE_REASONS
                .get((note & 0xff) as usize - 1)
                .map(|r| r.to_string())
        })
    });
    let path = exit_note_path(dir, pid);
    let mut note = String::new();
    let read = open_read(&path).and_then(|f| f.take(MAX_NOTE_BYTES).read_to_string(&mut note));
    let _ = remove_entry(&path);
    shared.or_else(|| read.ok().map(|_| note.trim().to_owned()))
}

/// What happens to one file of a process that exited.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Add every value into `<kind>_archive.db`, stopping running clocks.
    Sum,
    /// Merge gauges into `gauge_<mode>_archive.db` as their mode merges.
    Merge(GaugeMode),
    /// A live gauge: gone with its process.
    Drop,
    /// A gauge of mode `all`: prometheus_client keeps one series per pid.
    Keep,
}

/// What happens to the file `name`, and the archive it is folded into.
fn fate(name: &str) -> Option<(Fate, String)> {
    let parsed = DbName::parse(name)?;
    let fate = match parsed.mode {
        None => Fate::Sum,
        Some(_) if parsed.live => Fate::Drop,
        Some(GaugeMode::All) => Fate::Keep,
        Some(mode) => Fate::Merge(mode),
    };
    Some((fate, names::archive_file(parsed.kind, parsed.mode)))
}

/// The `*.db` files of `pid` in `dir` (prometheus_client's and this core's,
/// a worker's or a master's: an old master's after a USR2 upgrade).
fn files_of(dir: &Path, pid: u32) -> io::Result<Vec<String>> {
    let owners = names::owners_of(pid);
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if names::owner_of(&name).is_some_and(|owner| owners.iter().any(|o| o == owner))
            && !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            found.push(name);
        }
    }
    Ok(found)
}

/// What one pass over the pending folds did.
struct Folded {
    /// Nothing is left to fold.
    all: bool,
    /// The directory lock could not be had in time.
    locked_out: bool,
}

/// Keeps the archives (written from memory) across deaths.
#[derive(Default)]
struct Archives {
    open: HashMap<PathBuf, MmapWriter>,
    /// The label cap of each directory's archives; `max_label_values` is its cap.
    caps: HashMap<PathBuf, LabelCap>,
    max_label_values: Option<usize>,
    /// Pids whose fold failed once: counted once, however often retried.
    failed: std::collections::HashSet<(PathBuf, u32)>,
}

/// Folds the files of processes that exited. Cheap to clone: clones share
/// the archives and the folds still to do.
#[derive(Clone, Default)]
pub struct ArchiveCompactor {
    archives: Arc<Mutex<Archives>>,
    /// (directory, pid) whose files still wait to be folded.
    pending: Arc<Mutex<Vec<(PathBuf, u32)>>>,
    retrying: Arc<Mutex<bool>>,
    sweeping: Arc<Mutex<bool>>,
    /// The master's own files (`MasterMeter`), kept with the directory.
    own: Arc<Mutex<Vec<Arc<Mutex<MmapWriter>>>>>,
}

impl ArchiveCompactor {
    /// Retires `pid`: returns the exit note it left, if any, and folds every
    /// file of it into the archives, then removes them. Waits at most about
    /// `RETIRE_WAIT` twice: if a scrape holds the directory lock that long,
    /// the files stay (scrapes still count them) and the fold is retried on
    /// the next retire and in the background.
    pub fn retire(&self, dir: &Path, pid: u32) -> io::Result<Option<String>> {
        // A directory removed meanwhile is made again first.
        self.keep(dir, RETIRE_WAIT);
        self.retire_kept(dir, pid)
    }

    /// `retire`, the directory kept already.
    fn retire_kept(&self, dir: &Path, pid: u32) -> io::Result<Option<String>> {
        let note = take_exit_note(dir, pid);
        // Live gauges go with their process, lock or not.
        for name in files_of(dir, pid).unwrap_or_default() {
            if matches!(fate(&name), Some((Fate::Drop, _))) {
                let _ = remove_entry(&dir.join(name));
            }
        }
        self.pending.lock().push((dir.to_owned(), pid));
        let folded = match self.archives.try_lock_for(RETIRE_WAIT) {
            Some(mut archives) => self.fold_pending(&mut archives, RETIRE_WAIT),
            None => Folded {
                all: false,
                locked_out: true,
            },
        };
        if !folded.all {
            self.retry_in_background();
        }
        if folded.locked_out {
            failures::write_error_logged_by(
                &DEFERRAL_LOGGED,
                1,
                "the multiprocess directory lock is held (a slow scrape?): folding the \
                 files of exited workers is deferred and retried",
            );
        }
        Ok(note)
    }

    /// Holds the values of each capped label (`route`, `error_type`) of a
    /// worker slot in the archives to `max` (`master::label_cap`).
    pub fn cap_label_values(&self, max: usize) {
        let mut archives = self.archives.lock();
        archives.max_label_values = Some(max);
        archives.caps.clear();
    }

    /// Folds deferred pids now, waiting as long as it takes (tests, shutdown).
    pub fn fold_deferred(&self, wait: Duration) -> bool {
        self.fold_pending(&mut self.archives.lock(), wait).all
    }

    /// Keeps `file` (one of the master's own) written with the directory.
    pub fn keep_own(&self, file: Arc<Mutex<MmapWriter>>) {
        self.own.lock().push(file);
    }

    /// Keeps what the master writes in `dir`: makes the directory again if
    /// someone removed it (`directory::keep`), and writes again, from
    /// memory, the master's own files and the archives that are not as it
    /// wrote them (removed, truncated, grown, replaced). An archive is only
    /// written under the directory lock (at most `wait` for it: else at
    /// the next pass). A failure is counted once.
    fn keep(&self, dir: &Path, wait: Duration) {
        let remade = match directory::keep(dir) {
            Ok(remade) => remade,
            Err(e) => {
                failures::write_error_logged_by(
                    &KEEP_LOGGED,
                    1,
                    format_args!("cannot make {} again: {e}", dir.display()),
                );
                return;
            }
        };
        for file in self.own.lock().iter() {
            let mut file = file.lock();
            if remade || !file.looks_intact() {
                if let Err(e) = file.restore() {
                    failures::write_error_logged_by(
                        &KEEP_LOGGED,
                        1,
                        format_args!("cannot write {} again: {e}", file.path().display()),
                    );
                }
            }
        }
        let Some(mut archives) = self.archives.try_lock_for(wait) else {
            return;
        };
        if archives.changed(dir) {
            if let Ok(_lock) = DirectoryLock::exclusive(dir, wait) {
                archives.keep(dir);
            }
        }
    }

    /// One pass of the keeper, as the sweep runs it.
    #[cfg(test)]
    pub fn keep_for_tests(&self, dir: &Path) {
        self.keep(dir, RETRY_WAIT);
    }

    /// Number of pids whose files still wait to be folded.
    pub fn deferred(&self) -> usize {
        self.pending.lock().len()
    }

    /// Folds every pending pid it can.
    fn fold_pending(&self, archives: &mut Archives, wait: Duration) -> Folded {
        let mut locked_out = false;
        let work: Vec<(PathBuf, u32)> = std::mem::take(&mut *self.pending.lock());
        let mut left = Vec::new();
        let mut by_dir: HashMap<PathBuf, Vec<u32>> = HashMap::new();
        for (dir, pid) in work {
            by_dir.entry(dir).or_default().push(pid);
        }
        for (dir, pids) in by_dir {
            let Ok(_lock) = DirectoryLock::exclusive(&dir, wait) else {
                locked_out = true;
                left.extend(pids.into_iter().map(|p| (dir.clone(), p)));
                continue;
            };
            for pid in pids {
                match archives.fold_pid(&dir, pid) {
                    Ok(()) => {
                        archives.failed.remove(&(dir.clone(), pid));
                    }
                    Err(e) => {
                        if archives.failed.insert((dir.clone(), pid)) {
                            failures::write_error(
                                1,
                                format_args!(
                                    "cannot fold the files of exited process {pid} in {}: {e}; \
                                 they are kept and retried",
                                    dir.display()
                                ),
                            );
                        }
                        left.push((dir.clone(), pid));
                    }
                }
            }
        }
        let mut pending = self.pending.lock();
        pending.extend(left);
        Folded {
            all: pending.is_empty(),
            locked_out,
        }
    }

    /// From now on, every `SWEEP_EVERY` on a thread of its own, retires the
    /// processes of this core in `dir` that died with no master left to
    /// retire them: after Gunicorn's USR2, the workers (and the own files)
    /// of whichever master was killed. A process is retired once it was
    /// seen gone at two passes in a row (a live master retires its own
    /// workers the moment it reaps them) and no retire of it is pending.
    /// Its exit note is dropped: it is no restart of the live pool. Started
    /// once per compactor, by the master that owns `dir`.
    pub fn sweep_in_background(&self, dir: PathBuf) {
        let mut sweeping = self.sweeping.lock();
        if *sweeping {
            return;
        }
        let compactor = self.clone();
        let spawned = std::thread::Builder::new()
            .name("gpe-sweep".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut gone_before = Vec::new();
                loop {
                    std::thread::sleep(SWEEP_EVERY);
                    gone_before = compactor.sweep(&dir, &gone_before);
                }
            });
        *sweeping = spawned.is_ok();
    }

    /// One pass of `sweep_in_background`: retires the processes gone now
    /// and at the pass before (`gone_before`); returns those gone now.
    fn sweep(&self, dir: &Path, gone_before: &[u32]) -> Vec<u32> {
        self.keep(dir, RETRY_WAIT);
        let me = std::process::id();
        let mut gone = Vec::new();
        let Ok(entries) = fs::read_dir(dir) else {
            return gone;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue; // not a file of any process
            }
            let name = entry.file_name();
            let pid = name.to_str().and_then(names::core_process_of);
            if let Some(pid) = pid.filter(|&p| p != me && !gone.contains(&p)) {
                if process_gone(pid) {
                    gone.push(pid);
                }
            }
        }
        let pending: Vec<u32> = self
            .pending
            .lock()
            .iter()
            .filter(|(d, _)| d == dir)
            .map(|(_, pid)| *pid)
            .collect();
        for &pid in gone
            .iter()
            .filter(|p| gone_before.contains(p) && !pending.contains(p))
        {
            // Still gone: a new worker may have been given the pid since.
            if !process_gone(pid) {
                continue;
            }
            if let Err(e) = self.retire_kept(dir, pid) {
                failures::write_error(
                    1,
                    format_args!("cannot retire the files of exited process {pid}: {e}"),
                );
            }
        }
        gone
    }

    fn retry_in_background(&self) {
        let mut retrying = self.retrying.lock();
        if *retrying {
            return;
        }
        let compactor = self.clone();
        let spawned = std::thread::Builder::new()
            .name("gpe-fold-retry".into())
            .stack_size(256 << 10)
            .spawn(move || loop {
                std::thread::sleep(RETRY_EVERY);
                let done = compactor
                    .fold_pending(&mut compactor.archives.lock(), RETRY_WAIT)
                    .all;
                let mut retrying = compactor.retrying.lock();
                if done && compactor.pending.lock().is_empty() {
                    *retrying = false;
                    return;
                }
            });
        *retrying = spawned.is_ok();
    }
}

/// Whether process `pid` has exited: it does not exist, or (Linux) it is a
/// zombie nobody reaps (an orphan in a container whose init does not).
pub(crate) fn process_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return true;
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last parenthesis.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        return state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'));
    }
    false
}

impl Archives {
    /// Folds the files of `pid`, under the exclusive directory lock. A file
    /// that cannot be folded (or removed once folded) is kept, its archive
    /// as it was, and the error returned; one that is not readable is
    /// counted by scrapes as before and removed.
    fn fold_pid(&mut self, dir: &Path, pid: u32) -> io::Result<()> {
        // A new worker with the same pid owns these names now: its own
        // retire folds them, old entries included.
        let live = dir.join(names::live_gauge_file(&names::worker_owner(pid)));
        if fs::symlink_metadata(live).is_ok_and(|m| m.is_file()) {
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut result = Ok(());
        for name in files_of(dir, pid)? {
            let Some((fate, archive)) = fate(&name) else {
                continue;
            };
            let path = dir.join(&name);
            if fate == Fate::Keep {
                continue;
            }
            let folded = if fate != Fate::Drop && read_used(&path, &mut buf).is_ok() {
                let mut cap = self.take_cap(dir);
                let folded = self.fold_into(dir, &archive, &path, |w| {
                    fold_file(w, &fate, &buf, dir, &mut cap)
                });
                self.caps.insert(dir.to_owned(), cap);
                folded
            } else {
                remove_entry(&path)
            };
            if let Err(e) = folded {
                result = Err(e);
            }
        }
        // Native histogram buckets and exemplars (`*.ndb`): their own archives.
        for (path, archive, fold_into) in [
            (
                dir.join(names::native_file(pid)),
                names::NATIVE_ARCHIVE,
                native_histogram::fold_into as FoldInto,
            ),
            (
                dir.join(names::exemplar_file(pid)),
                names::EXEMPLAR_ARCHIVE,
                exemplar::fold_into,
            ),
        ] {
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let mut cap = self.take_cap(dir);
            let folded =
                self.fold_into(dir, archive, &path, |w| fold_into(w, &path, dir, &mut cap));
            self.caps.insert(dir.to_owned(), cap);
            if let Err(e) = folded {
                result = Err(e);
            }
        }
        result
    }

    /// Folds the file at `path` into the archive `name` with `fold`, writes
    /// the archive and removes the file. If any of it fails, the archive is
    /// as it was (in memory and, written again, on disk) and the file stays
    /// to be folded again: nothing is counted twice.
    fn fold_into(
        &mut self,
        dir: &Path,
        name: &str,
        path: &Path,
        fold: impl FnOnce(&mut MmapWriter) -> io::Result<()>,
    ) -> io::Result<()> {
        let archive = self.archive(dir, name)?;
        archive.reconcile()?;
        let before = archive.checkpoint();
        let folded = fold(archive).and_then(|()| archive.flush());
        if let Err(e) = folded {
            archive.rollback(before);
            return Err(e);
        }
        if let Err(e) = remove_entry(path) {
            archive.rollback(before);
            let _ = archive.flush();
            return Err(e);
        }
        Ok(())
    }

    /// The label cap of `dir`'s archives, taken out while a fold uses it
    /// (put back with `caps.insert`).
    fn take_cap(&mut self, dir: &Path) -> LabelCap {
        let max = self.max_label_values;
        self.caps
            .remove(dir)
            .unwrap_or_else(|| max.map_or_else(LabelCap::default, LabelCap::new))
    }

    fn archive(&mut self, dir: &Path, name: &str) -> io::Result<&mut MmapWriter> {
        let path = dir.join(name);
        if !self.open.contains_key(&path) {
            self.open
                .insert(path.clone(), MmapWriter::open_written(&path)?);
        }
        Ok(self.open.get_mut(&path).expect("just inserted"))
    }

    /// Whether an archive of `dir` is not as this master wrote it.
    fn changed(&self, dir: &Path) -> bool {
        self.open
            .iter()
            .any(|(path, w)| path.parent() == Some(dir) && !w.looks_intact())
    }

    /// Under the exclusive directory lock: every archive of `dir` that is
    /// not as this master wrote it is read back if another master wrote it,
    /// else written again from memory.
    fn keep(&mut self, dir: &Path) {
        for (path, w) in self.open.iter_mut() {
            if path.parent() == Some(dir) && !w.looks_intact() {
                if let Err(e) = w.reconcile() {
                    failures::write_error_logged_by(
                        &KEEP_LOGGED,
                        1,
                        format_args!("cannot write {} again: {e}", path.display()),
                    );
                }
            }
        }
    }
}

/// How a `*.ndb` file is folded into its archive, its labels capped.
type FoldInto = fn(&mut MmapWriter, &Path, &Path, &mut LabelCap) -> io::Result<()>;

/// Folds the entries of one file (`data`, its used bytes). Every entry is
/// created before any value moves, so a full disk leaves the archive's sums
/// as they were and the file can be folded again later.
fn fold_file(
    w: &mut MmapWriter,
    fate: &Fate,
    data: &[u8],
    dir: &Path,
    cap: &mut LabelCap,
) -> io::Result<()> {
    let now = monotonic_seconds();
    let (entries, _) = read_entries(data);
    let mut slots = Vec::with_capacity(entries.len());
    for e in &entries {
        let key = cap.admit(dir, e.key);
        let is_new = !w.contains(&key);
        slots.push((w.slot(&key)?, is_new));
    }
    for (e, (slot, is_new)) in entries.iter().zip(slots) {
        let (value, ts) = (e.value, e.timestamp);
        match fate {
            // A running clock is stopped at its current value.
            Fate::Sum => slot.add(running_clock::resolve(value, ts, now)),
            Fate::Merge(GaugeMode::Sum) => slot.add(value),
            Fate::Merge(GaugeMode::Min) if is_new || value < slot.get() => slot.set(value),
            Fate::Merge(GaugeMode::Max) if is_new || value > slot.get() => slot.set(value),
            Fate::Merge(GaugeMode::MostRecent) if is_new || ts > slot.get_timestamp() => {
                slot.set(value);
                slot.set_timestamp(ts);
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::aggregate::collect;
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
        let compactor = ArchiveCompactor::default();
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
    fn two_masters_fold_into_one_archive_and_an_old_masters_files_are_folded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (old, new) = (ArchiveCompactor::default(), ArchiveCompactor::default());
        let key = |n: u32| encode("c", "c_total", &[("n", &n.to_string())], "h");
        put(d, "counter_worker1.db", &key(1), 1.0, 0.0);
        new.retire(d, 1).unwrap(); // the new master's writer is open first
        for (pid, n) in [(2, 2), (3, 3)] {
            put(d, &format!("counter_worker{pid}.db"), &key(n), 1.0, 0.0);
            old.retire(d, pid).unwrap();
        }
        put(d, "counter_worker4.db", &key(4), 1.0, 0.0);
        new.retire(d, 4).unwrap(); // appends after the old master's entries
        put(d, "counter_master9.db", &key(1), 5.0, 0.0);
        put(
            d,
            "gauge_livesum_master9.db",
            &encode("w", "w", &[], "h"),
            2.0,
            0.0,
        );
        new.retire(d, 9).unwrap();
        assert_eq!(total(d, "c_total"), 9.0);
        assert_eq!(total(d, "w"), 0.0);
        let mut buf = Vec::new();
        read_used(&d.join("counter_archive.db"), &mut buf).unwrap();
        let (entries, error) = read_entries(&buf);
        assert!(error.is_none());
        assert_eq!(entries.len(), 4);
        assert!(!d.join("counter_master9.db").exists());
    }

    #[test]
    fn files_of_a_process_that_died_unretired_are_folded_at_the_second_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        // SAFETY: getppid has no preconditions.
        let alive = unsafe { libc::getppid() } as u32;
        let key = encode("c", "c_total", &[], "h");
        put(d, &format!("counter_worker{dead}.db"), &key, 2.0, 0.0);
        put(d, &format!("counter_worker{alive}.db"), &key, 3.0, 0.0);
        put(d, &format!("counter_{dead}.db"), &key, 4.0, 0.0); // prometheus_client's, same pid
        std::fs::write(d.join(names::exit_note_file(dead)), "graceful").unwrap();
        let compactor = ArchiveCompactor::default();
        let gone = compactor.sweep(d, &[]);
        assert_eq!(gone, vec![dead]);
        assert!(d.join(format!("counter_worker{dead}.db")).exists()); // seen gone once
        assert_eq!(compactor.sweep(d, &gone), vec![dead]);
        assert!(!d.join(format!("counter_worker{dead}.db")).exists());
        assert!(!d.join(format!("counter_{dead}.db")).exists());
        assert!(!d.join(names::exit_note_file(dead)).exists());
        assert!(d.join(format!("counter_worker{alive}.db")).exists());
        assert_eq!(total(d, "c_total"), 9.0);
        assert_eq!(compactor.sweep(d, &gone), Vec::<u32>::new());
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
        let compactor = ArchiveCompactor::default();
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

    #[test]
    fn an_archive_truncated_removed_or_grown_is_written_again_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let compactor = ArchiveCompactor::default();
        let archive = d.join("counter_archive.db");
        let fold = |pid: u32| {
            for i in 0..200 {
                let key = encode("c", "c_total", &[("n", &i.to_string())], "h");
                put(d, &format!("counter_worker{pid}.db"), &key, 1.0, 0.0);
            }
            compactor.retire(d, pid).unwrap();
        };
        fold(1);
        assert!(fs::metadata(&archive).unwrap().len() > 4096);
        let resize = |len: u64| {
            fs::OpenOptions::new()
                .write(true)
                .open(&archive)
                .unwrap()
                .set_len(len)
                .unwrap()
        };
        resize(20);
        fold(2); // no mapping to fault on; what was folded before is kept
        assert_eq!(total(d, "c_total"), 400.0);
        fs::remove_file(&archive).unwrap();
        compactor.keep_for_tests(d);
        assert_eq!(total(d, "c_total"), 400.0);
        resize(100 << 20);
        compactor.keep_for_tests(d);
        assert!(fs::metadata(&archive).unwrap().len() < 1 << 20);
        fold(3);
        assert_eq!(total(d, "c_total"), 600.0);
    }

    #[test]
    fn a_fold_is_deferred_while_another_process_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(
            d,
            "counter_worker4.db",
            &encode("c", "c_total", &[], "h"),
            2.0,
            0.0,
        );
        let (mut ready_r, mut ready_w) = std::os::unix::net::UnixStream::pair().unwrap();
        let lock_path = d.join(crate::storage::names::LOCK_FILE);
        fs::write(&lock_path, b"").unwrap();
        // SAFETY: the child takes a shared record lock, signals, sleeps and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let file = fs::File::open(&lock_path).unwrap();
            // SAFETY: all-zero flock is valid; fcntl on an open fd.
            unsafe {
                let mut region: libc::flock = std::mem::zeroed();
                region.l_type = libc::F_RDLCK as libc::c_short;
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::F_SETLKW,
                    &region,
                );
            }
            let _ = std::io::Write::write_all(&mut ready_w, b"x");
            // SAFETY: async-signal-safe calls only, in the forked child.
            unsafe {
                libc::sleep(30);
                libc::_exit(0)
            };
        }
        std::io::Read::read_exact(&mut ready_r, &mut [0u8; 1]).unwrap();
        let compactor = ArchiveCompactor::default();
        fs::write(exit_note_path(d, 4), "graceful").unwrap();
        assert_eq!(compactor.retire(d, 4).unwrap().as_deref(), Some("graceful"));
        assert_eq!(compactor.deferred(), 1);
        assert!(d.join("counter_worker4.db").exists());
        assert_eq!(total(d, "c_total"), 2.0);
        // SAFETY: kill and reap the child forked above.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(compactor.fold_deferred(Duration::from_secs(5)));
        assert!(!d.join("counter_worker4.db").exists());
        assert_eq!(total(d, "c_total"), 2.0);
    }
}
