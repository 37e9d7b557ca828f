//! Writing a file: entries appended under the owner's lock, values updated lock-free.
//!
//! # The contract of a mapped file
//! - The mapping covers `RESERVED_BYTES` of address space from the start, so
//!   it never moves when the file grows: a `ValueSlot` stays valid for the
//!   life of its `MmapWriter` without any lock on the hot path.
//! - Only bytes below `capacity` are ever touched, and `capacity` bytes are
//!   reserved on disk (`posix_fallocate`) before they are: on a full disk the
//!   append fails (the series is not recorded), it never faults later.
//! - A file is mapped for writing only if it is a regular file owned by our
//!   effective user with a single name (`open::is_own_file`): only that user
//!   (or root) could shrink it under the mapping, which would make a write
//!   past the new end raise SIGBUS. That is the trust boundary: the directory
//!   may be writable by others (they can unlink or replace names, which the
//!   mapping does not see), our files may not.
//! - Readers of other processes' files never map them: they `pread` the used
//!   length after checking it against `fstat` (`reader.rs`), so a file that
//!   another process truncates is a read error, never a SIGBUS.
//! - A process forked from the writer's (an application forking inside a
//!   request) must not write into the files: every mapping is listed in
//!   `MAPPED`, and `detach_inherited`, run in the child right after the fork,
//!   replaces each with private zeroed memory at the same address. Slots
//!   handed out before the fork stay valid and write nowhere; an append in
//!   the child fails (`MmapWriter::pid`): its series go to the sink.
//! - Memory orderings: the used length is stored with `Release` after the
//!   entry's bytes are written and loaded with `Acquire`, so whoever sees a
//!   length sees complete entries. Values and timestamps are independent
//!   8-byte cells updated with `Relaxed` atomics: each is always a whole
//!   double, and no other memory is published through them. A slot only one
//!   thread writes at a time (a worker's request series: see `WorkerMeter`)
//!   is added to with a plain load and store (`add_serialized`), no locked
//!   instruction; any other with a compare-and-swap loop (`add`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::open::{self, create_fresh, is_own_file, reserve, still_names};
use super::reader::read_used_from;
use super::{key_padding, read_entries, HEADER_BYTES, MAX_FILE_BYTES};
use crate::failures;

/// Size a new file starts with, as prometheus_client's `_INITIAL_MMAP_SIZE`.
const INITIAL_FILE_BYTES: usize = 1 << 16;
/// Address space reserved per file so the mapping never moves when the file
/// grows: values handed out stay valid without any lock on the hot path.
const RESERVED_BYTES: usize = MAX_FILE_BYTES;

/// Where the values of a series that could not be recorded go: one shared
/// pair of cells that nobody reads.
static SINK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// A pointer to the value double of one entry (the timestamp double follows it).
/// It must not outlive the `MmapWriter` that handed it out.
#[derive(Clone, Copy, Debug)]
pub struct ValueSlot(NonNull<AtomicU64>);

// SAFETY: the slot points into a shared mapping that its writer keeps alive
// for the life of the process (or into `SINK`); all access goes through atomics.
unsafe impl Send for ValueSlot {}
// SAFETY: as for Send: shared access is only through atomics.
unsafe impl Sync for ValueSlot {}

impl ValueSlot {
    /// A slot whose values go nowhere, for a series that could not be recorded.
    pub fn sink() -> ValueSlot {
        ValueSlot(NonNull::from(&SINK[0]))
    }

    #[inline]
    fn value(&self) -> &AtomicU64 {
        // SAFETY: the pointer is 8-byte aligned (entries are padded to 8) and
        // valid while the writer's mapping lives (the slot's contract).
        unsafe { self.0.as_ref() }
    }

    #[inline]
    fn timestamp(&self) -> &AtomicU64 {
        // SAFETY: every entry (and SINK) has its timestamp double right after
        // the value, inside the same reserved, allocated bytes.
        unsafe { &*self.0.as_ptr().add(1) }
    }

    /// The value.
    #[inline]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.value().load(Ordering::Relaxed))
    }

    /// Stores the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.value().store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `v` with a compare-and-swap loop: lock-free, never loses an update.
    #[inline]
    pub fn add(&self, v: f64) {
        let cell = self.value();
        let mut old = cell.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + v).to_bits();
            match cell.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => old = seen,
            }
        }
    }

    /// Adds `v` with a plain load and store. The caller guarantees that no
    /// other thread writes this slot meanwhile (else an update may be lost):
    /// a worker's request series are only written with the GIL held.
    #[inline]
    pub fn add_serialized(&self, v: f64) {
        let cell = self.value();
        let old = f64::from_bits(cell.load(Ordering::Relaxed));
        cell.store((old + v).to_bits(), Ordering::Relaxed);
    }

    /// The timestamp.
    #[inline]
    pub fn get_timestamp(&self) -> f64 {
        f64::from_bits(self.timestamp().load(Ordering::Relaxed))
    }

    /// Stores the timestamp.
    #[inline]
    pub fn set_timestamp(&self, ts: f64) {
        self.timestamp().store(ts.to_bits(), Ordering::Relaxed);
    }
}

/// One per-process file opened for writing.
pub struct MmapWriter {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    capacity: usize,
    used: usize,
    positions: HashMap<String, usize>,
    /// The process that opened it: a child forked from it never touches the file.
    pid: u32,
    /// Where its base address is listed in `MAPPED` (none: the list was full).
    listed: Option<&'static AtomicUsize>,
}

/// Most mappings listed for a fork to detach (a worker has five, a master a
/// dozen); one past them is counted as a write error and not detached.
const MAX_MAPPED: usize = 64;

/// Base addresses of this process's mappings; 0: a free entry.
static MAPPED: [AtomicUsize; MAX_MAPPED] = [const { AtomicUsize::new(0) }; MAX_MAPPED];

/// Lists `base` in `MAPPED`; `None` if the list is full.
fn list(base: usize) -> Option<&'static AtomicUsize> {
    let entry = MAPPED.iter().find(|entry| {
        entry
            .compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    });
    if entry.is_none() {
        failures::write_error(
            1,
            "more files mapped than a fork can detach: a process forked from this one \
             would write into them",
        );
    }
    entry
}

/// In a process just forked from one with open writers: replaces each
/// inherited mapping with private zeroed memory at the same address, so
/// that whatever the child still records goes nowhere. Returns how many.
pub fn detach_inherited() -> usize {
    let mut detached = 0;
    for entry in &MAPPED {
        let base = entry.swap(0, Ordering::AcqRel);
        if base == 0 {
            continue;
        }
        // SAFETY: `base` is the start of a live mapping of `RESERVED_BYTES`
        // that a writer of the parent made and listed (it unlists before it
        // unmaps); the child inherited it and runs no other thread yet.
        // MAP_FIXED replaces it in one step with memory of the same size and
        // protection, so every pointer into it stays valid; the writer's own
        // copy unmaps the same range when dropped.
        let replaced = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                RESERVED_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if replaced == libc::MAP_FAILED {
            failures::write_error(
                1,
                format_args!(
                    "cannot detach a mapping inherited by fork: {}",
                    io::Error::last_os_error()
                ),
            );
        } else {
            detached += 1;
        }
    }
    detached
}

impl Drop for MmapWriter {
    fn drop(&mut self) {
        // Unlisted before the mapping goes (a fork meanwhile finds it gone).
        if let Some(entry) = self.listed {
            let _ = entry.compare_exchange(
                self.map.as_mut_ptr() as usize,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

impl MmapWriter {
    /// Opens or creates `path`. Entries already in the file are kept and reused,
    /// as prometheus_client does. Whatever cannot be used as our own file (a
    /// symlink, a FIFO, a foreign, oversized or corrupt file) is unlinked and
    /// a fresh file takes its name, with the entries that could be read.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = match open::open_write(path) {
            Ok(file) if is_own_file(&file)? => file,
            Ok(_) => return Self::replace(path, &[], "it is not our own file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => return Self::replace(path, &[], &e.to_string()),
        };
        let size = file.metadata()?.len() as usize;
        if size > RESERVED_BYTES {
            return Self::replace(path, &[], "it is larger than the format allows");
        }
        let mut buf = Vec::new();
        let read = read_used_from(&file, &mut buf);
        let (entries, error) = read_entries(&buf);
        if read.is_err() || error.is_some() {
            let salvaged: Vec<(&str, f64, f64)> = entries
                .iter()
                .map(|e| (e.key, e.value, e.timestamp))
                .collect();
            return Self::replace(path, &salvaged, "it is corrupt");
        }
        // A file that prometheus_client sized with ftruncate has no blocks yet.
        let capacity = size.max(INITIAL_FILE_BYTES);
        reserve(&file, capacity as u64)?;
        let base = buf.as_ptr() as usize;
        let positions = entries
            .iter()
            .map(|e| {
                let at = e.key.as_ptr() as usize - base + e.key.len() + key_padding(e.key.len());
                (e.key.to_owned(), at)
            })
            .collect();
        Self::map(path, file, capacity, buf.len().max(HEADER_BYTES), positions)
    }

    /// A fresh file at `path` holding `entries` (key, value, timestamp).
    fn replace(path: &Path, entries: &[(&str, f64, f64)], why: &str) -> io::Result<Self> {
        failures::write_error(
            1,
            format_args!("replaced {} with a fresh file: {why}", path.display()),
        );
        let file = create_fresh(path)?;
        reserve(&file, INITIAL_FILE_BYTES as u64)?;
        let mut writer = Self::map(path, file, INITIAL_FILE_BYTES, HEADER_BYTES, HashMap::new())?;
        for (key, value, timestamp) in entries {
            let slot = writer.slot(key)?;
            slot.set(*value);
            slot.set_timestamp(*timestamp);
        }
        Ok(writer)
    }

    fn map(
        path: &Path,
        file: File,
        capacity: usize,
        used: usize,
        positions: HashMap<String, usize>,
    ) -> io::Result<Self> {
        let map = MmapOptions::new().len(RESERVED_BYTES).map_raw(&file)?;
        let listed = list(map.as_mut_ptr() as usize);
        let writer = MmapWriter {
            path: path.to_owned(),
            file,
            map,
            capacity,
            used,
            positions,
            pid: std::process::id(),
            listed,
        };
        writer.used_cell().store(used as u32, Ordering::Release);
        Ok(writer)
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names this file and the file was not shrunk
    /// under the mapping (by root or by our own user): if not, it must be
    /// dropped without touching its mapping again.
    pub fn is_intact(&self) -> bool {
        still_names(&self.path, &self.file)
            && self
                .file
                .metadata()
                .is_ok_and(|m| m.len() >= self.capacity as u64)
    }

    /// Whether no one else appended to the file since this writer did (its
    /// used length is still the one this writer published).
    pub fn is_current(&self) -> bool {
        self.used_cell().load(Ordering::Acquire) as usize == self.used
    }

    /// Whether `key` already has an entry.
    pub fn contains(&self, key: &str) -> bool {
        self.positions.contains_key(key)
    }

    fn used_cell(&self) -> &AtomicU32 {
        // SAFETY: the first 4 bytes of the mapping are the used length, inside
        // the reserved capacity (at least INITIAL_FILE_BYTES); the mapping is
        // page-aligned and lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr() as *const AtomicU32) }
    }

    /// The value slot of `key`, appending a zeroed entry if it is new. The entry
    /// is fully written before the used length that covers it is published.
    pub fn slot(&mut self, key: &str) -> io::Result<ValueSlot> {
        let at = match self.positions.get(key) {
            Some(&at) => at,
            None => self.append(key)?,
        };
        // SAFETY: `at + 16 <= capacity <= RESERVED_BYTES`: inside the mapping.
        let ptr = unsafe { self.map.as_mut_ptr().add(at) } as *mut AtomicU64;
        Ok(ValueSlot(NonNull::new(ptr).expect("mapping is never null")))
    }

    fn append(&mut self, key: &str) -> io::Result<usize> {
        if std::process::id() != self.pid {
            // A forked child: the file is its parent's, never grown by it.
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let key_bytes = key.as_bytes();
        let padding = key_padding(key_bytes.len());
        let entry_len = 4 + key_bytes.len() + padding + 16;
        let end = self.used + entry_len;
        if end > RESERVED_BYTES {
            return Err(io::Error::other(format!("{} is full", self.path.display())));
        }
        if end > self.capacity {
            let mut capacity = self.capacity;
            while capacity < end {
                capacity *= 2;
            }
            let capacity = capacity.min(RESERVED_BYTES);
            // Space first: a full disk fails here, not as a SIGBUS on write.
            reserve(&self.file, capacity as u64)?;
            self.capacity = capacity;
        }
        let base = self.map.as_mut_ptr();
        // SAFETY: [used, end) lies below `capacity`, which is reserved on disk
        // and inside the mapping; no other process writes past the published
        // used length, and this writer's `&mut self` excludes other appends.
        unsafe {
            let entry = std::slice::from_raw_parts_mut(base.add(self.used), entry_len);
            entry[..4].copy_from_slice(&(key_bytes.len() as i32).to_le_bytes());
            entry[4..4 + key_bytes.len()].copy_from_slice(key_bytes);
            entry[4 + key_bytes.len()..4 + key_bytes.len() + padding].fill(b' ');
            entry[entry_len - 16..].fill(0);
        }
        let value_at = end - 16;
        self.used = end;
        self.used_cell().store(end as u32, Ordering::Release);
        self.positions.insert(key.to_owned(), value_at);
        Ok(value_at)
    }
}

/// A file a process records its own series in. It never fails: a file that
/// cannot be opened, or an entry that cannot be added (full disk, no inodes,
/// permissions), gives a slot that records nothing, counted as a write error.
pub struct SeriesFile {
    path: PathBuf,
    writer: Option<MmapWriter>,
}

impl SeriesFile {
    /// Opens (creates) the file at `path`; a failure is counted, not returned.
    pub fn open(path: &Path) -> SeriesFile {
        let writer = match MmapWriter::open(path) {
            Ok(w) => Some(w),
            Err(e) => {
                failures::write_error(
                    1,
                    format_args!(
                        "cannot open {}: {e}; its values are not recorded",
                        path.display()
                    ),
                );
                None
            }
        };
        SeriesFile {
            path: path.to_owned(),
            writer,
        }
    }

    /// The slot of `key`; a sink (and a counted write error) if it cannot be recorded.
    pub fn slot(&mut self, key: &str) -> ValueSlot {
        let Some(writer) = self.writer.as_mut() else {
            failures::write_error(1, format_args!("cannot record in {}", self.path.display()));
            return ValueSlot::sink();
        };
        writer.slot(key).unwrap_or_else(|e| {
            failures::write_error(
                1,
                format_args!(
                    "cannot add a series to {}: {e}; it is not recorded",
                    self.path.display()
                ),
            );
            ValueSlot::sink()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::reader::{read_entries, read_used, read_used_sized, used_length};

    #[test]
    fn a_forked_child_writes_nothing_into_its_parents_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker1.db");
        let mut writer = MmapWriter::open(&path).unwrap();
        let slot = writer.slot("k").unwrap();
        slot.set(1.0);
        // SAFETY: the child only detaches, writes through the mapping and
        // exits, allocating nothing.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let detached = detach_inherited();
            slot.set(99.0);
            let appended = writer.slot("new").is_ok();
            let code = if detached >= 1 && !appended && slot.get() == 99.0 {
                0
            } else {
                1
            };
            // SAFETY: leaves the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(slot.get(), 1.0);
        let mut buf = Vec::new();
        read_used(&path, &mut buf).unwrap();
        let (entries, error) = read_entries(&buf);
        assert!(error.is_none());
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].key, entries[0].value), ("k", 1.0));
    }

    #[test]
    fn a_file_read_with_a_stale_used_length_is_read_whole() {
        // The reader asks first for the used length it saw last (and the
        // room its buffer has): a file that grew more is read on from there.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_1.db");
        let mut w = MmapWriter::open(&path).unwrap();
        for i in 0..300 {
            w.slot(&format!("key number {i}")).unwrap().set(i as f64);
        }
        let file = File::open(&path).unwrap();
        let size = file.metadata().unwrap().len();
        for (expected, capacity) in [(0, 0), (24, 64), (24, 1 << 16), (1000, 0)] {
            let mut buf = Vec::with_capacity(capacity);
            read_used_sized(&file, size, expected, &mut buf).unwrap();
            assert_eq!(Some(buf.len()), used_length(&buf));
            let (entries, error) = read_entries(&buf);
            assert_eq!((entries.len(), error), (300, None));
            assert_eq!(entries[299].value, 299.0);
        }
    }

    #[test]
    fn entries_read_back_with_values_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_1.db");
        let mut w = MmapWriter::open(&path).unwrap();
        let a = w.slot("a").unwrap();
        let b = w.slot("a longer key that needs padding").unwrap();
        a.add(1.5);
        a.add(2.0);
        b.set(-3.0);
        b.set_timestamp(42.0);
        let mut buf = Vec::new();
        read_used(&path, &mut buf).unwrap();
        let (entries, err) = read_entries(&buf);
        assert!(err.is_none());
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].key, entries[0].value), ("a", 3.5));
        assert_eq!((entries[1].value, entries[1].timestamp), (-3.0, 42.0));
    }

    #[test]
    fn reopening_reuses_existing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_2.db");
        MmapWriter::open(&path).unwrap().slot("k").unwrap().add(7.0);
        let mut w = MmapWriter::open(&path).unwrap();
        let k = w.slot("k").unwrap();
        assert_eq!(k.get(), 7.0);
        k.add(1.0);
        let mut buf = Vec::new();
        read_used(&path, &mut buf).unwrap();
        let (entries, _) = read_entries(&buf);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].value, 8.0);
    }

    #[test]
    fn file_grows_past_its_initial_size_without_moving_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("histogram_3.db");
        let mut w = MmapWriter::open(&path).unwrap();
        let first = w.slot("first").unwrap();
        for i in 0..2000 {
            w.slot(&format!("key number {i} with some length to it"))
                .unwrap()
                .add(1.0);
        }
        first.add(5.0);
        assert!(std::fs::metadata(&path).unwrap().len() > INITIAL_FILE_BYTES as u64);
        let mut buf = Vec::new();
        read_used(&path, &mut buf).unwrap();
        let (entries, err) = read_entries(&buf);
        assert!(err.is_none());
        assert_eq!(entries.len(), 2001);
        assert_eq!(entries[0].value, 5.0);
    }

    #[test]
    fn a_file_being_created_reads_as_empty_not_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_5.db");
        let mut buf = Vec::new();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read_used(&path, &mut buf), Ok(()));
        assert_eq!(read_entries(&buf), (vec![], None));
        std::fs::write(&path, [0u8; 64]).unwrap(); // sized, used length not yet published
        assert_eq!(read_used(&path, &mut buf), Ok(()));
        assert_eq!(read_entries(&buf), (vec![], None));
        std::fs::write(&path, [3u8, 0, 0, 0, 0]).unwrap();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::BadHeader));
    }

    #[test]
    fn truncated_and_garbage_files_are_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_4.db");
        let mut w = MmapWriter::open(&path).unwrap();
        w.slot("abc").unwrap().add(1.0);
        drop(w);
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..20]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::Truncated));
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        let (_, err) = read_entries(&garbage);
        assert!(err.is_some());
    }

    #[test]
    fn a_huge_sparse_file_is_refused_by_its_size_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_9.db");
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, &(1_500_000_000i32).to_le_bytes()).unwrap();
        file.set_len(2 << 30).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::TooLarge));
        assert_eq!(buf.capacity(), 0);
        // A used length past the end: only what the file holds is read.
        file.set_len(4096).unwrap();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::Truncated));
        assert_eq!(buf.len(), 4096);
    }

    #[test]
    fn a_corrupt_or_planted_own_file_is_replaced_keeping_what_could_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_6.db");
        let mut w = MmapWriter::open(&path).unwrap();
        w.slot("kept").unwrap().set(4.0);
        w.slot("lost").unwrap().set(5.0);
        drop(w);
        let mut data = std::fs::read(&path).unwrap();
        let second = 8 + 4 + 4 + key_padding(4) + 16;
        data[second..second + 4].copy_from_slice(&(-7i32).to_le_bytes());
        std::fs::write(&path, &data).unwrap();
        let mut w = MmapWriter::open(&path).unwrap();
        assert_eq!(w.slot("kept").unwrap().get(), 4.0);
        assert!(!w.contains("lost"));
        drop(w);
        let target = dir.path().join("target");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        MmapWriter::open(&path).unwrap().slot("k").unwrap().add(1.0);
        assert!(!target.exists());
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    }

    use crate::storage::ReadError;
}
