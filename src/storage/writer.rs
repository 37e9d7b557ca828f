//! Writing a file: entries appended under the owner's lock, values updated lock-free.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::{key_padding, read_entries, HEADER_BYTES};

/// Size a new file starts with, as prometheus_client's `_INITIAL_MMAP_SIZE`.
const INITIAL_FILE_BYTES: usize = 1 << 16;
/// Address space reserved per file so the mapping never moves when the file
/// grows: values handed out stay valid without any lock on the hot path.
const RESERVED_BYTES: usize = 64 << 20;

/// A pointer to the value double of one entry (the timestamp double follows it).
/// It must not outlive the `MmapWriter` that handed it out.
#[derive(Clone, Copy, Debug)]
pub struct ValueSlot(NonNull<AtomicU64>);

// The slot points into a shared mapping that its writer keeps alive for the
// life of the process; all access goes through atomics.
unsafe impl Send for ValueSlot {}
unsafe impl Sync for ValueSlot {}

impl ValueSlot {
    #[inline]
    fn value(&self) -> &AtomicU64 {
        unsafe { self.0.as_ref() }
    }

    #[inline]
    fn timestamp(&self) -> &AtomicU64 {
        unsafe { &*self.0.as_ptr().add(1) }
    }

    #[inline]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.value().load(Ordering::Relaxed))
    }

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

    #[inline]
    pub fn get_timestamp(&self) -> f64 {
        f64::from_bits(self.timestamp().load(Ordering::Relaxed))
    }

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
}

impl MmapWriter {
    /// Opens or creates `path`. Entries already in the file are kept and reused,
    /// as prometheus_client does.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut capacity = file.metadata()?.len() as usize;
        if capacity == 0 {
            file.set_len(INITIAL_FILE_BYTES as u64)?;
            capacity = INITIAL_FILE_BYTES;
        }
        if capacity > RESERVED_BYTES {
            return Err(io::Error::other(format!(
                "{} is larger than {} bytes",
                path.display(),
                RESERVED_BYTES
            )));
        }
        let map = MmapOptions::new().len(RESERVED_BYTES).map_raw(&file)?;
        let mut writer = MmapWriter {
            path: path.to_owned(),
            file,
            map,
            capacity,
            used: 0,
            positions: HashMap::new(),
        };
        let used = writer.used_cell().load(Ordering::Acquire) as usize;
        if used == 0 {
            writer.used = HEADER_BYTES;
            writer
                .used_cell()
                .store(HEADER_BYTES as u32, Ordering::Release);
        } else {
            let data =
                unsafe { std::slice::from_raw_parts(writer.map.as_ptr(), used.min(capacity)) };
            let (entries, error) = read_entries(data);
            if error.is_some() {
                return Err(io::Error::other(format!("{} is corrupted", path.display())));
            }
            let base = data.as_ptr() as usize;
            for e in entries {
                let value_at =
                    e.key.as_ptr() as usize - base + e.key.len() + key_padding(e.key.len());
                writer.positions.insert(e.key.to_owned(), value_at);
            }
            writer.used = used;
        }
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `key` already has an entry.
    pub fn contains(&self, key: &str) -> bool {
        self.positions.contains_key(key)
    }

    fn used_cell(&self) -> &AtomicU32 {
        unsafe { &*(self.map.as_mut_ptr() as *const AtomicU32) }
    }

    /// The value slot of `key`, appending a zeroed entry if it is new. The entry
    /// is fully written before the used length that covers it is published.
    pub fn slot(&mut self, key: &str) -> io::Result<ValueSlot> {
        let at = match self.positions.get(key) {
            Some(&at) => at,
            None => self.append(key)?,
        };
        let ptr = unsafe { self.map.as_mut_ptr().add(at) } as *mut AtomicU64;
        Ok(ValueSlot(NonNull::new(ptr).expect("mapping is never null")))
    }

    fn append(&mut self, key: &str) -> io::Result<usize> {
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
            self.file.set_len(capacity.min(RESERVED_BYTES) as u64)?;
            self.capacity = capacity.min(RESERVED_BYTES);
        }
        let base = self.map.as_mut_ptr();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::reader::read_used;

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

    use crate::storage::ReadError;
}
