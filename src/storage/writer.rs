//! Writing a file: entries appended under the owner's lock, values updated lock-free.
//!
//! A writer keeps its entries in memory that never moves (`RESERVED_BYTES`
//! of address space taken at open), so a `ValueSlot` stays valid for the
//! life of its `MmapWriter` without any lock on the hot path. How that
//! memory reaches the file depends on who writes:
//!
//! - **Mapped** (a worker's files: the hot path). The memory is a shared
//!   mapping of the file: a store into a slot is a write to the file.
//! - **Written** (the master's own files and the archives). The memory is
//!   private and `flush` writes the file with `pwrite`. Nothing of the file
//!   is mapped: whoever truncates, grows or removes it cannot fault the
//!   master, and its values are written again from memory.
//!
//! # The contract of a mapped file
//! - Only bytes below `capacity` are ever touched, and `capacity` bytes are
//!   reserved on disk (`posix_fallocate`) before they are: on a full disk the
//!   append fails (the series is not recorded), it never faults later.
//! - A file is mapped for writing only if it is a regular file owned by our
//!   effective user with a single name (`open::is_own_file`): only that user
//!   (or root) can shrink it under the mapping. The directory may be
//!   writable by others: they can unlink or replace names, which the mapping
//!   does not see.
//! - If our user or root shrinks it anyway, the pages past its new end are
//!   gone, and a store there would raise SIGBUS. The guard (`mappings.rs`,
//!   Linux) puts private memory in their place at the first fault, so the
//!   store lands and the worker lives; its other faults go on to the handler
//!   that was there before.
//! - A file removed, replaced, truncated or grown by another process, or one
//!   that could not be made (no directory, no permission, no inode: the
//!   values are then kept in private memory), is noticed by `mappings::check_mapped`
//!   (a worker's sampler, every second, lock-free) and written out again by
//!   `repair`, under its name, from what the mapping holds; the new file is
//!   mapped at the same addresses. `repair` runs only where no slot of the
//!   writer is written meanwhile: a worker's slots are written with the GIL
//!   held, and `repair` runs with it. What a truncation took (values past the
//!   new end) is lost; keys are written again from the writer's own index.
//! - Readers of other processes' files never map them: they `pread` the used
//!   length after checking it against `fstat` (`reader.rs`), so a file that
//!   another process truncates is a read error, never a SIGBUS.
//! - A process forked from the writer's (an application forking inside a
//!   request) must not write into the files: every mapping is listed
//!   (`mappings.rs`), and `detach_inherited`, run in the child right after the fork,
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
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::mappings::{c_path, guard_sigbus, list, map_private, page_size, Listed};
use super::open::{self, create_fresh, is_own_file, reserve, still_names};
use super::reader::read_used_from;
use super::{key_padding, read_entries, HEADER_BYTES, MAX_FILE_BYTES};
use crate::failures;

/// Size a new file starts with, as prometheus_client's `_INITIAL_MMAP_SIZE`.
const INITIAL_FILE_BYTES: usize = 1 << 16;
/// Address space reserved per file so the memory never moves when the file
/// grows: values handed out stay valid without any lock on the hot path.
pub(super) const RESERVED_BYTES: usize = MAX_FILE_BYTES;

/// Where the values of a series that could not be recorded go: one shared
/// pair of cells that nobody reads.
static SINK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// A pointer to the value double of one entry (the timestamp double follows it).
/// It must not outlive the `MmapWriter` that handed it out.
#[derive(Clone, Copy, Debug)]
pub struct ValueSlot(NonNull<AtomicU64>);

// SAFETY: the slot points into memory that its writer keeps at the same
// address for its whole life (or into `SINK`); all access goes through atomics.
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
        // valid while the writer's memory lives (the slot's contract).
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

/// How the writer's memory reaches its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A shared mapping of the file (none yet while `file` is `None`).
    Mapped,
    /// Private memory, written to the file by `flush`.
    Written,
}

/// One per-process file opened for writing.
pub struct MmapWriter {
    path: PathBuf,
    /// The file; `None` while it could not be made (the values are in memory).
    file: Option<File>,
    /// `RESERVED_BYTES` at a fixed address: the file's shared mapping, or
    /// private memory.
    map: MmapRaw,
    backing: Backing,
    capacity: usize,
    used: usize,
    positions: HashMap<String, usize>,
    /// The process that opened it: a child forked from it never touches the file.
    pid: u32,
    /// Where its base address is listed in `MAPPED` (none: the list was full).
    listed: Option<&'static Listed>,
    /// A failure to make or write the file was counted: not again until it
    /// succeeds once more.
    failing: bool,
    /// Written: what the file holds as far as this writer knows (what it
    /// last wrote or read there): `flush` writes only the pages that differ.
    on_disk: Vec<u8>,
}

impl Drop for MmapWriter {
    fn drop(&mut self) {
        // Unlisted before the mapping goes (a fork meanwhile finds it gone).
        if let Some(entry) = self.listed {
            if entry.base.load(Ordering::Acquire) == self.base() {
                entry.path.store(std::ptr::null_mut(), Ordering::Release);
            }
            let _ =
                entry
                    .base
                    .compare_exchange(self.base(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// What `repair` found a mapped file to be.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    Intact,
    /// Larger than this writer made it (sparse growth by another process).
    Grown,
    /// Its name names something else, or nothing; or it was never made.
    Unnamed,
    /// Shorter than the bytes mapped: what lay past its end is gone.
    Shrunk(u64),
}

/// A copy of a written file's memory, to go back to when a fold could not
/// be written (`MmapWriter::rollback`).
pub struct Checkpoint {
    used: usize,
    bytes: Vec<u8>,
}

impl MmapWriter {
    /// Opens or creates `path`, mapped. Entries already in the file are kept
    /// and reused, as prometheus_client does. Whatever cannot be used as our
    /// own file (a symlink, a FIFO, a foreign, oversized or corrupt file) is
    /// unlinked and a fresh file takes its name, with the entries that could
    /// be read. A file that cannot be made (no directory, no permission, no
    /// inode, no space) is counted as a write error: the values are kept in
    /// memory until `repair` can write them out. Fails only without memory.
    pub fn open(path: &Path) -> io::Result<Self> {
        match Self::open_mapped(path) {
            Ok(writer) => Ok(writer),
            Err(e) => {
                let mut writer = Self::in_memory(path, Backing::Mapped)?;
                writer.failed("create", &e);
                Ok(writer)
            }
        }
    }

    /// Opens `path` to be written with `flush` from private memory (the
    /// master's files): the entries of a healthy file there are taken; any
    /// other (missing, corrupt, foreign) is replaced. A file that cannot be
    /// written is counted as a write error and written by a later `flush`.
    pub fn open_written(path: &Path) -> io::Result<Self> {
        let mut writer = Self::in_memory(path, Backing::Written)?;
        if let Err(e) = writer.reconcile() {
            writer.failed("write", &e);
        }
        Ok(writer)
    }

    fn open_mapped(path: &Path) -> io::Result<Self> {
        let file = match open::open_write(path) {
            Ok(file) if is_own_file(&file)? => file,
            Ok(_) => return Self::replace(path, &[], "it is not our own file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => return Self::replace(path, &[], &e.to_string()),
        };
        let size = file.metadata()?.len() as usize;
        let mut buf = Vec::new();
        let read = read_used_from(&file, &mut buf);
        let (entries, error) = read_entries(&buf);
        if read.is_err() || error.is_some() || size > RESERVED_BYTES {
            let salvaged: Vec<(&str, f64, f64)> = entries
                .iter()
                .map(|e| (e.key, e.value, e.timestamp))
                .collect();
            let why = if size > RESERVED_BYTES {
                "it is larger than the format allows"
            } else {
                "it is corrupt"
            };
            return Self::replace(path, &salvaged, why);
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
        let map = MmapOptions::new().len(RESERVED_BYTES).map_raw(&file)?;
        let used = buf.len().max(HEADER_BYTES);
        let mut writer = Self::assemble(path, Some(file), map, Backing::Mapped, capacity, used);
        writer.positions = positions;
        Ok(writer)
    }

    /// A fresh file at `path` holding `entries` (key, value, timestamp).
    fn replace(path: &Path, entries: &[(&str, f64, f64)], why: &str) -> io::Result<Self> {
        failures::write_error(
            1,
            format_args!("replaced {} with a fresh file: {why}", path.display()),
        );
        let file = create_fresh(path)?;
        reserve(&file, INITIAL_FILE_BYTES as u64)?;
        let map = MmapOptions::new().len(RESERVED_BYTES).map_raw(&file)?;
        let mut writer = Self::assemble(
            path,
            Some(file),
            map,
            Backing::Mapped,
            INITIAL_FILE_BYTES,
            HEADER_BYTES,
        );
        for (key, value, timestamp) in entries {
            let slot = writer.slot(key)?;
            slot.set(*value);
            slot.set_timestamp(*timestamp);
        }
        Ok(writer)
    }

    /// A writer with no file yet: its entries live in private memory.
    fn in_memory(path: &Path, backing: Backing) -> io::Result<Self> {
        let map: MmapRaw = MmapOptions::new()
            .len(RESERVED_BYTES)
            .no_reserve_swap()
            .map_anon()?
            .into();
        let capacity = match backing {
            Backing::Mapped => INITIAL_FILE_BYTES,
            Backing::Written => RESERVED_BYTES,
        };
        Ok(Self::assemble(
            path,
            None,
            map,
            backing,
            capacity,
            HEADER_BYTES,
        ))
    }

    fn assemble(
        path: &Path,
        file: Option<File>,
        map: MmapRaw,
        backing: Backing,
        capacity: usize,
        used: usize,
    ) -> Self {
        let listed = list(map.as_mut_ptr() as usize);
        let writer = MmapWriter {
            path: path.to_owned(),
            file,
            map,
            backing,
            capacity,
            used,
            positions: HashMap::new(),
            pid: std::process::id(),
            listed,
            failing: false,
            on_disk: Vec::new(),
        };
        writer.used_cell().store(used as u32, Ordering::Release);
        if backing == Backing::Mapped {
            if let Some(entry) = listed {
                entry.path.store(c_path(path), Ordering::Release);
            }
            writer.publish_identity();
            if writer.file.is_some() {
                guard_sigbus();
            }
        }
        writer
    }

    /// Tells the watcher (`check_mapped`) what the path must name.
    fn publish_identity(&self) {
        let Some(entry) = self.listed else {
            return;
        };
        let (dev, ino) = match self.file.as_ref().and_then(|f| f.metadata().ok()) {
            Some(meta) => (meta.dev(), meta.ino()),
            None => (0, 0),
        };
        entry.dev.store(dev, Ordering::Relaxed);
        entry.ino.store(ino, Ordering::Relaxed);
        entry.len.store(self.capacity as u64, Ordering::Relaxed);
    }

    fn base(&self) -> usize {
        self.map.as_mut_ptr() as usize
    }

    /// Counts a failure to make or write the file once, until it succeeds.
    fn failed(&mut self, what: &str, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            failures::write_error(
                1,
                format_args!(
                    "cannot {what} {}: {e}; its values are kept in memory and written \
                     out once it can be",
                    self.path.display()
                ),
            );
        }
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `key` already has an entry.
    pub fn contains(&self, key: &str) -> bool {
        self.positions.contains_key(key)
    }

    fn used_cell(&self) -> &AtomicU32 {
        // SAFETY: the first 4 bytes of the memory are the used length, inside
        // the capacity (at least INITIAL_FILE_BYTES, reserved on disk when
        // mapped); the memory is page-aligned and lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr() as *const AtomicU32) }
    }

    /// The value slot of `key`, appending a zeroed entry if it is new. The entry
    /// is fully written before the used length that covers it is published.
    pub fn slot(&mut self, key: &str) -> io::Result<ValueSlot> {
        let at = match self.positions.get(key) {
            Some(&at) => at,
            None => self.append(key)?,
        };
        // SAFETY: `at + 16 <= capacity <= RESERVED_BYTES`: inside the memory.
        let ptr = unsafe { self.map.as_mut_ptr().add(at) } as *mut AtomicU64;
        Ok(ValueSlot(NonNull::new(ptr).expect("memory is never null")))
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
            if let Some(file) = &self.file {
                reserve(file, capacity as u64)?;
            }
            self.capacity = capacity;
            self.publish_identity();
        }
        let base = self.map.as_mut_ptr();
        // SAFETY: [used, end) lies below `capacity`, which is reserved on disk
        // (or private memory) and inside the mapping; no other process writes
        // past the published used length, and this writer's `&mut self`
        // excludes other appends.
        unsafe { write_entry(base.add(self.used), key_bytes, padding) };
        let value_at = end - 16;
        self.used = end;
        self.used_cell().store(end as u32, Ordering::Release);
        self.positions.insert(key.to_owned(), value_at);
        Ok(value_at)
    }

    /// A mapped file: writes it out again where another process removed,
    /// replaced, truncated or grew it, or where it could not be made before
    /// (see the contract above). The caller guarantees that no slot of this
    /// writer is written meanwhile: a store racing the copy would be lost.
    /// A failure is counted once and retried at the next call.
    pub fn repair(&mut self) {
        if self.backing != Backing::Mapped || std::process::id() != self.pid {
            return;
        }
        let repaired = match self.health() {
            Health::Intact => Ok(()),
            Health::Grown => match &self.file {
                // Ours and mapped: only cut back to what this writer made.
                Some(file) => file.set_len(self.capacity as u64),
                None => Ok(()),
            },
            Health::Unnamed => self.write_out(),
            Health::Shrunk(len) => {
                self.forget_past(len);
                self.write_out()
            }
        };
        match repaired {
            Ok(()) => self.failing = false,
            Err(e) => self.failed("write", &e),
        }
    }

    fn health(&self) -> Health {
        let Some(file) = &self.file else {
            return Health::Unnamed;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.capacity as u64 {
            Health::Shrunk(len)
        } else if self.used_cell().load(Ordering::Acquire) as usize != self.used {
            Health::Shrunk(0) // cut and grown again: its pages are zero
        } else if !still_names(&self.path, file) {
            Health::Unnamed
        } else if len > self.capacity as u64 {
            Health::Grown
        } else {
            Health::Intact
        }
    }

    /// The mapped file was shrunk to `len` bytes: private memory takes the
    /// place of the pages past its end (nothing faults there again), and the
    /// header and every key are written again from this writer's index
    /// (their values there are lost: zero).
    fn forget_past(&mut self, len: u64) {
        static LOGGED: AtomicU32 = AtomicU32::new(0);
        let page = page_size();
        let from = self.base() + (len as usize).div_ceil(page) * page;
        // Up to where the guard already put memory (which holds what was
        // stored since): the file's pages past its end hold nothing.
        let end = match self.listed.map(|e| e.detached.load(Ordering::Acquire)) {
            Some(detached) if detached != 0 => detached,
            _ => self.base() + RESERVED_BYTES,
        };
        if from < end {
            // SAFETY: [from, end) is inside this writer's mapping; slots are
            // pointers, no reference to the bytes.
            unsafe { map_private(from, end - from) };
            if let Some(entry) = self.listed {
                entry.detached.store(from, Ordering::Release);
            }
        }
        let base = self.map.as_mut_ptr();
        for (key, &value_at) in &self.positions {
            let padding = key_padding(key.len());
            let at = value_at - padding - key.len() - 4;
            if at + 4 + key.len() + padding > len as usize {
                // SAFETY: `at` is where this writer wrote the entry, below
                // `used`; its bytes are now memory or the file below its end.
                // Only the key bytes are written, never a value another
                // thread may store into.
                unsafe { write_key(base.add(at), key.as_bytes(), padding) };
            }
        }
        self.used_cell().store(self.used as u32, Ordering::Release);
        failures::write_error_logged_by(
            &LOGGED,
            1,
            format_args!(
                "{} was truncated by another process: the values past its new end are \
                 lost; it is written again",
                self.path.display()
            ),
        );
    }

    /// Writes the mapped memory out to a fresh file under the path (making
    /// the directory again if it is gone) and maps that file at the same
    /// addresses.
    fn write_out(&mut self) -> io::Result<()> {
        let file = create_fresh_anywhere(&self.path)?;
        reserve(&file, self.capacity as u64)?;
        // SAFETY: [base, base + used) is this writer's memory (the old file
        // below its end, or private memory); the kernel reads it. The used
        // length last: a reader sees no entry before it is written.
        unsafe {
            let base = self.map.as_mut_ptr();
            pwrite_range(&file, base, HEADER_BYTES, self.used)?;
            pwrite_range(&file, base, 0, HEADER_BYTES.min(self.used))?;
        }
        // SAFETY: the range is this writer's whole mapping; MAP_FIXED
        // replaces it with the new file (whose first `capacity` bytes are
        // reserved and hold what the memory held) in one step, so every
        // slot keeps its address.
        let mapped = unsafe {
            libc::mmap(
                self.map.as_mut_ptr() as *mut libc::c_void,
                RESERVED_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // The range may be gone: memory again, with the file's bytes.
            // SAFETY: the writer's own range, as above.
            unsafe { map_private(self.base(), RESERVED_BYTES) };
            // SAFETY: the memory just mapped is private and writable.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.used) };
            let _ = file.read_exact_at(bytes, 0);
            self.file = None;
            self.publish_identity();
            return Err(e);
        }
        self.file = Some(file);
        if let Some(entry) = self.listed {
            entry.detached.store(0, Ordering::Release);
        }
        self.publish_identity();
        guard_sigbus();
        Ok(())
    }

    /// A written file: writes the memory to the file (a fresh one if the
    /// name no longer names it), the pages that differ from what the file
    /// holds (all of them unless it is as this writer left it), body first
    /// and the used length last, so a reader never sees entries not written
    /// yet; then cuts it to that length (another process may have grown it).
    pub fn flush(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.backing, Backing::Written);
        let file = match self.file.take() {
            Some(f) if still_names(&self.path, &f) && is_own_file(&f)? => f,
            _ => create_fresh_anywhere(&self.path)?,
        };
        let len = file.metadata()?.len();
        if len != self.on_disk.len() as u64 {
            self.on_disk.clear(); // not as this writer left it: all of it
        }
        let written = self.write_changed(&file, len);
        self.file = Some(file);
        if written.is_ok() {
            self.failing = false;
        } else {
            self.on_disk.clear();
        }
        written
    }

    fn write_changed(&mut self, file: &File, len: u64) -> io::Result<()> {
        if self.used > self.on_disk.len() {
            reserve(file, self.used as u64)?;
        }
        let base = self.map.as_mut_ptr();
        // SAFETY: [base, base + used) is this writer's private memory,
        // written only under its owner's lock, which the caller holds.
        let memory = unsafe { std::slice::from_raw_parts(base, self.used) };
        const PAGE: usize = 4096;
        let mut from = HEADER_BYTES;
        while from < self.used {
            let to = (from / PAGE + 1) * PAGE;
            let to = to.min(self.used);
            if self.on_disk.get(from..to) != Some(&memory[from..to]) {
                // SAFETY: as above; the kernel reads [from, to).
                unsafe { pwrite_range(file, base, from, to)? };
            }
            from = to;
        }
        let header = HEADER_BYTES.min(self.used);
        if self.on_disk.get(..header) != Some(&memory[..header]) {
            // SAFETY: as above.
            unsafe { pwrite_range(file, base, 0, header)? };
        }
        if len > self.used as u64 {
            file.set_len(self.used as u64)?;
        }
        self.on_disk.clear();
        self.on_disk.extend_from_slice(memory);
        Ok(())
    }

    /// A written file another process may append to (an archive both masters
    /// fold into during Gunicorn's USR2): takes the file's values and new
    /// entries if it is a healthy file that holds every entry of this memory
    /// where it is here; otherwise (removed, truncated, corrupt, foreign,
    /// replaced) writes it again from memory.
    pub fn reconcile(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.backing, Backing::Written);
        let Some((file, bytes)) = self.read_own() else {
            return self.flush();
        };
        // SAFETY: [base, base + used) is this writer's private memory,
        // written only under its owner's lock, which the caller holds.
        let memory = unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr(), self.used) };
        if bytes != memory {
            if !self.is_extended_by(&bytes) {
                return self.flush();
            }
            self.adopt(&bytes);
        }
        let len = file.metadata()?.len();
        self.file = Some(file);
        self.on_disk = bytes;
        if len > self.used as u64 {
            return self.flush(); // grown by another process: cut back
        }
        Ok(())
    }

    /// The file under the path and its used bytes, if it is our own
    /// regular file of the format with no corrupt entry.
    fn read_own(&self) -> Option<(File, Vec<u8>)> {
        let file = open::open_existing(&self.path).ok()?;
        if !is_own_file(&file).ok()? {
            return None;
        }
        let mut bytes = Vec::new();
        read_used_from(&file, &mut bytes).ok()?;
        Some((file, bytes))
    }

    /// Whether `bytes` (a file's) hold every entry of this memory at the
    /// same offset, and nothing corrupt.
    fn is_extended_by(&self, bytes: &[u8]) -> bool {
        let (entries, error) = read_entries(bytes);
        if error.is_some() || bytes.len() < self.used {
            return false;
        }
        let start = bytes.as_ptr() as usize;
        let mut ours = 0;
        for e in &entries {
            let at = e.key.as_ptr() as usize - start + e.key.len() + key_padding(e.key.len());
            match self.positions.get(e.key) {
                Some(&here) if here == at => ours += 1,
                Some(_) => return false,
                None if at < self.used => return false,
                None => {}
            }
        }
        ours == self.positions.len()
    }

    /// Takes `bytes` (a file's, `is_extended_by`) as this memory: values,
    /// and entries past this memory's used length.
    fn adopt(&mut self, bytes: &[u8]) {
        let base = self.map.as_mut_ptr();
        // SAFETY: `bytes` fits the private memory (at most MAX_FILE_BYTES).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, bytes.len()) };
        let (entries, _) = read_entries(bytes);
        let start = bytes.as_ptr() as usize;
        for e in entries {
            let at = e.key.as_ptr() as usize - start + e.key.len() + key_padding(e.key.len());
            if at >= self.used {
                self.positions.insert(e.key.to_owned(), at);
            }
        }
        self.used = bytes.len().max(HEADER_BYTES);
        self.used_cell().store(self.used as u32, Ordering::Release);
    }

    /// A written file only this process writes (the master's own): writes
    /// it again unless it holds exactly what memory holds.
    pub fn restore(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        let same = open::open_read_sized(&self.path).is_ok_and(|(file, size)| {
            size == self.used as u64
                && self.file.as_ref().is_some_and(|f| still_names(&self.path, f))
                && read_used_from(&file, &mut bytes).is_ok()
                && bytes.len() == self.used
                // SAFETY: [base, base + used) is this writer's private memory,
                // written only by the caller's thread (under its lock).
                && bytes == unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr(), self.used) }
        });
        if same {
            return Ok(());
        }
        self.on_disk.clear(); // not as this writer left it
        self.flush()
    }

    /// Whether the path still names the written file, with the length this
    /// writer gave it: two system calls, no read.
    pub fn looks_intact(&self) -> bool {
        self.file.as_ref().is_some_and(|f| {
            still_names(&self.path, f) && f.metadata().is_ok_and(|m| m.len() == self.used as u64)
        })
    }

    /// A copy of the written memory, to `rollback` to.
    pub fn checkpoint(&self) -> Checkpoint {
        // SAFETY: [base, base + used) is this writer's private memory.
        let bytes = unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr(), self.used) };
        Checkpoint {
            used: self.used,
            bytes: bytes.to_vec(),
        }
    }

    /// Goes back to `checkpoint`: what was added since is forgotten.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        let base = self.map.as_mut_ptr();
        // SAFETY: the checkpoint's bytes came from this memory.
        unsafe {
            std::ptr::copy_nonoverlapping(checkpoint.bytes.as_ptr(), base, checkpoint.bytes.len())
        };
        self.used = checkpoint.used;
        self.positions.retain(|_, at| *at < checkpoint.used);
        self.used_cell().store(self.used as u32, Ordering::Release);
    }
}

/// Writes an entry's length, key and padding at `at`, and zeroes its value
/// and timestamp.
///
/// # Safety
/// `[at, at + 4 + key.len() + padding + 16)` must be writable memory of the
/// writer that no other thread reads or writes meanwhile.
unsafe fn write_entry(at: *mut u8, key: &[u8], padding: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        write_key(at, key, padding);
        std::ptr::write_bytes(at.add(4 + key.len() + padding), 0, 16);
    }
}

/// Writes an entry's length, key and padding at `at`.
///
/// # Safety
/// `[at, at + 4 + key.len() + padding)` must be writable memory of the
/// writer that no other thread writes meanwhile.
unsafe fn write_key(at: *mut u8, key: &[u8], padding: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping((key.len() as i32).to_le_bytes().as_ptr(), at, 4);
        std::ptr::copy_nonoverlapping(key.as_ptr(), at.add(4), key.len());
        std::ptr::write_bytes(at.add(4 + key.len()), b' ', padding);
    }
}

/// Writes `[base + from, base + to)` to `file` at `from`.
///
/// # Safety
/// `[base + from, base + to)` must be readable memory of this process.
unsafe fn pwrite_range(file: &File, base: *const u8, from: usize, to: usize) -> io::Result<()> {
    let mut at = from;
    while at < to {
        // SAFETY: the caller's contract; the kernel copies from it.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                base.add(at) as *const libc::c_void,
                to - at,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n as usize;
    }
    Ok(())
}

/// `create_fresh`, making the directory again (as its master made it) if
/// it is gone.
fn create_fresh_anywhere(path: &Path) -> io::Result<File> {
    match create_fresh(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                open::make_directory_again(dir)?;
            }
            create_fresh(path)
        }
        created => created,
    }
}

/// A file a process records its own series in. It never fails: a file that
/// cannot be opened, or an entry that cannot be added (full disk,
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

    /// `MmapWriter::repair`, with its contract.
    pub fn repair(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            writer.repair();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mappings::{check_mapped, detach_inherited, GUARDED};
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
    fn a_huge_sparse_file_is_refused_by_its_used_length_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_9.db");
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, &(1_500_000_000i32).to_le_bytes()).unwrap();
        file.set_len(2 << 30).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::TooLarge));
        assert!(buf.capacity() < 4096);
        // A used length past the end: only what the file holds is read.
        file.set_len(4096).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &8192i32.to_le_bytes(), 0).unwrap();
        assert_eq!(read_used(&path, &mut buf), Err(ReadError::Truncated));
        assert_eq!(buf.len(), 4096);
    }

    #[test]
    fn a_file_grown_past_the_cap_is_read_up_to_its_used_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_10.db");
        MmapWriter::open(&path).unwrap().slot("k").unwrap().set(3.0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_used(&path, &mut buf), Ok(()));
        assert!(buf.len() < 4096);
        assert_eq!(read_entries(&buf).0[0].value, 3.0);
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

    fn entries_of(path: &Path) -> Vec<(String, f64)> {
        let mut buf = Vec::new();
        read_used(path, &mut buf).unwrap();
        let (entries, error) = read_entries(&buf);
        assert_eq!(error, None);
        entries
            .iter()
            .map(|e| (e.key.to_owned(), e.value))
            .collect()
    }

    #[test]
    fn a_mapped_file_removed_is_written_out_again_with_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker1.db");
        let mut w = MmapWriter::open(&path).unwrap();
        let a = w.slot("a").unwrap();
        a.add(3.0);
        std::fs::remove_file(&path).unwrap();
        a.add(1.0); // into the unlinked file
        assert!(check_mapped());
        w.repair();
        a.add(1.0); // into the new file, at the same address
        w.slot("b").unwrap().set(7.0);
        assert_eq!(
            entries_of(&path),
            [("a".to_owned(), 5.0), ("b".to_owned(), 7.0)]
        );
        w.repair(); // intact: nothing to do
        assert_eq!(entries_of(&path).len(), 2);
    }

    #[test]
    fn a_mapped_file_truncated_faults_nowhere_and_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker2.db");
        let mut w = MmapWriter::open(&path).unwrap();
        let slots: Vec<ValueSlot> = (0..2000)
            .map(|i| {
                w.slot(&format!("a key long enough to fill pages {i}"))
                    .unwrap()
            })
            .collect();
        for slot in &slots {
            slot.add(1.0);
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= 2 * INITIAL_FILE_BYTES as u64);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        // Past the new end: a SIGBUS without the guard.
        for slot in &slots {
            slot.add(1.0);
        }
        w.repair();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let entries = entries_of(&path);
        assert_eq!(entries.len(), 2000);
        // The first page kept its values; past it, only what came after.
        assert_eq!(entries[0].1, 2.0);
        assert_eq!(entries[1999].1, 1.0);
        w.slot("new").unwrap().add(4.0);
        assert_eq!(entries_of(&path).last().unwrap(), &("new".to_owned(), 4.0));
    }

    #[test]
    fn a_file_that_cannot_be_made_is_kept_in_memory_and_written_out_later() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("not yet");
        let path = sub.join("counter_worker3.db");
        let before = failures::write_errors();
        let mut w = MmapWriter::open(&path).unwrap();
        assert!(failures::write_errors() > before);
        let a = w.slot("a").unwrap();
        a.add(2.0);
        w.repair(); // still no directory: counted once, kept in memory
        std::fs::create_dir(&sub).unwrap();
        w.repair();
        a.add(1.0);
        assert_eq!(entries_of(&path), [("a".to_owned(), 3.0)]);
    }

    #[test]
    fn a_mapped_file_grown_by_another_process_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker4.db");
        let mut w = MmapWriter::open(&path).unwrap();
        w.slot("a").unwrap().add(1.0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        w.repair();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            INITIAL_FILE_BYTES as u64
        );
        assert_eq!(entries_of(&path), [("a".to_owned(), 1.0)]);
    }

    #[test]
    fn a_file_replaced_by_an_empty_directory_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker5.db");
        let mut w = MmapWriter::open(&path).unwrap();
        w.slot("a").unwrap().add(1.0);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        w.repair();
        assert_eq!(entries_of(&path), [("a".to_owned(), 1.0)]);
    }

    #[test]
    fn a_written_file_rolls_back_and_takes_what_another_writer_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_archive.db");
        let mut ours = MmapWriter::open_written(&path).unwrap();
        ours.slot("a").unwrap().add(1.0);
        ours.flush().unwrap();
        let mut theirs = MmapWriter::open_written(&path).unwrap();
        theirs.slot("a").unwrap().add(1.0);
        theirs.slot("b").unwrap().add(5.0);
        theirs.flush().unwrap();
        ours.reconcile().unwrap();
        let before = ours.checkpoint();
        ours.slot("c").unwrap().add(9.0);
        ours.slot("a").unwrap().add(9.0);
        ours.rollback(before);
        ours.slot("a").unwrap().add(1.0);
        ours.flush().unwrap();
        assert_eq!(
            entries_of(&path),
            [("a".to_owned(), 3.0), ("b".to_owned(), 5.0)]
        );
        std::fs::write(&path, b"garbage").unwrap();
        ours.reconcile().unwrap(); // not ours any more: written again
        assert_eq!(entries_of(&path).len(), 2);
    }

    /// Runs `f` in a forked child; how the child ended (`waitpid` status).
    fn in_child(f: impl FnOnce()) -> i32 {
        // SAFETY: the child runs `f` and exits without returning to the
        // harness; `f` only maps, writes and signals.
        let child = unsafe { libc::fork() };
        if child == 0 {
            f();
            // SAFETY: leaves the child without running the test harness.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        status
    }

    /// In a forked child: the guard installed over the default action (the
    /// harness installs its own SIGBUS handler, a Python process has none).
    fn guard_over_the_default() {
        // SAFETY: signal with SIG_DFL has no preconditions.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        GUARDED.store(false, Ordering::Relaxed);
        guard_sigbus();
    }

    #[test]
    fn the_guard_lets_every_other_sigbus_kill_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_worker6.db");
        let mut w = MmapWriter::open(&path).unwrap();
        w.slot("a").unwrap().add(1.0);
        // A SIGBUS sent by someone: the default action.
        let sent = in_child(|| {
            guard_over_the_default();
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
        });
        assert!(libc::WIFSIGNALED(sent) && libc::WTERMSIG(sent) == libc::SIGBUS);
        // A fault on a mapping that is not a writer's.
        let other = dir.path().join("other");
        std::fs::write(&other, [0u8; 8192]).unwrap();
        let faulted = in_child(|| {
            guard_over_the_default();
            let file = File::options().read(true).write(true).open(&other).unwrap();
            let map = MmapOptions::new().len(8192).map_raw(&file).unwrap();
            file.set_len(0).unwrap();
            // SAFETY: deliberately past the file's end: the fault under test.
            unsafe { std::ptr::write_volatile(map.as_mut_ptr().add(4096), 1) };
        });
        assert!(libc::WIFSIGNALED(faulted) && libc::WTERMSIG(faulted) == libc::SIGBUS);
        // A fault on a writer's truncated file: the child lives.
        let guarded = in_child(|| {
            guard_over_the_default();
            let slot = w.slot("a").unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
            slot.add(1.0);
        });
        assert!(libc::WIFEXITED(guarded) && libc::WEXITSTATUS(guarded) == 0);
    }
}
