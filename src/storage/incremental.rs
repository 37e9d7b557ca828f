//! Reading the same files scrape after scrape, at the cost of what changed.
//!
//! Keys never move once written: a writer only appends an entry, then
//! publishes the used length that covers it (`writer.rs`). So a file read
//! before needs only its values and its new entries. For every file a
//! `FileCache` remembers each entry's offset and key, and what the caller
//! made of the key (a tag: where its value goes), so a key is parsed and
//! hashed once in the life of the file, not once per scrape.
//!
//! Nothing is trusted that was not checked. A read still takes the file's
//! used bytes with `pread` (as `reader.rs` does, never a mapping of another
//! process's file) and compares every remembered entry with the bytes of the
//! last read, length and key byte for byte, before it takes the value at the
//! remembered offset. A file replaced under the same name, an inode number
//! reused, or bytes rewritten in place are noticed at the first entry that
//! differs, and the file is parsed again from there. The last read's bytes
//! are kept per file (the buffers are swapped, not copied): both sides of
//! the comparison are read in file order, which is what makes it cheap.

use rustc_hash::FxHashMap as HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::held::HeldFile;
use super::open::open_read_stat;
use super::reader::{entry_at, read_used_sized, used_length, value_at_offset, ReadError};
use super::{key_padding, HEADER_BYTES};

/// Largest spare read buffer kept between reads.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

/// Largest file whose bytes are kept between reads, and most bytes kept for
/// all files together: past them a file is parsed whole at every read, as if
/// it were new, so that a directory of huge (or hostile) files costs time,
/// never unbounded memory.
const MAX_KEPT_FILE_BYTES: usize = 16 << 20;
const MAX_KEPT_BYTES: usize = 256 << 20;

/// An entry parsed before: where it starts, its key's length, and its tag.
struct Remembered<T> {
    offset: usize,
    key_len: usize,
    tag: T,
}

/// What is remembered of one file.
struct CachedFile<T> {
    /// Identity of the inode read last (`st_dev`, `st_ino`).
    identity: (u64, u64),
    /// That inode, held open for the next read (`held.rs`).
    held: Option<HeldFile>,
    entries: Vec<Remembered<T>>,
    /// Offset just past the last remembered entry.
    end: usize,
    /// The bytes of the last read: the remembered entries' keys are checked
    /// against them.
    bytes: Vec<u8>,
    /// The pass that read it last (see `FileCache::begin_pass`).
    pass: u64,
}

/// What a reader makes of a file's entries.
pub trait Visitor<T> {
    /// What the entry with this key is to the reader; called once per entry
    /// of a file (not again while the file keeps the entry).
    fn tag(&mut self, key: &str) -> T;
    /// An entry's value and timestamp, at every read.
    fn visit(&mut self, tag: &T, value: f64, timestamp: f64);
}

/// Remembers the entries of the files of directories read again and again.
pub struct FileCache<T> {
    files: HashMap<Box<str>, CachedFile<T>>,
    /// The buffer the next file is read into.
    buf: Vec<u8>,
    /// Bytes kept for all files (`CachedFile::bytes`), and the limits.
    kept: usize,
    max_file: usize,
    max_total: usize,
    pass: u64,
}

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        FileCache {
            files: HashMap::default(),
            buf: Vec::new(),
            kept: 0,
            max_file: MAX_KEPT_FILE_BYTES,
            max_total: MAX_KEPT_BYTES,
            pass: 0,
        }
    }
}

impl<T> FileCache<T> {
    /// Starts a pass over a directory: files not read again before
    /// `end_pass` are forgotten then.
    pub fn begin_pass(&mut self) {
        self.pass += 1;
    }

    /// Forgets the files not read since `begin_pass`.
    pub fn end_pass(&mut self) {
        let pass = self.pass;
        self.files.retain(|_, f| f.pass == pass);
        self.kept = self.files.values().map(|f| f.bytes.capacity()).sum();
        if self.buf.capacity() > KEPT_BUFFER_BYTES {
            self.buf = Vec::new();
        }
    }

    /// Forgets everything: every file is parsed again on its next read.
    pub fn forget(&mut self) {
        self.files.clear();
        self.kept = 0;
    }

    /// Reads the file `name` of `dir`: `visitor.visit` for every entry, in
    /// file order; `visitor.tag` only for an entry not remembered at its
    /// offset. Returns `None` if the file was read to its end, else why not:
    /// entries before a corrupt one are still visited, none if the file could
    /// not be opened or read (`ReadError::Io`).
    pub fn read(
        &mut self,
        dir: &Path,
        name: &str,
        visitor: &mut impl Visitor<T>,
    ) -> Option<ReadError> {
        let path = dir.join(name);
        let expected = self.files.get(name).map_or(0, |f| f.end);
        // The file held open since the last read, if the name still has it:
        // an lstat instead of an open, an fstat and a close.
        let held = self
            .files
            .get(name)
            .and_then(|f| Some((f.identity, f.held.as_ref()?)));
        let still_held = held.and_then(|(identity, held)| {
            let meta = std::fs::symlink_metadata(&path).ok()?;
            let same = meta.is_file() && (meta.dev(), meta.ino()) == identity;
            same.then_some((held.file(), meta))
        });
        let mut opened = None;
        let (file, meta) = match still_held {
            Some(found) => found,
            None => match open_read_stat(&path) {
                Ok((file, meta)) => (&*opened.insert(file), meta),
                Err(e) => {
                    if let Some(gone) = self.files.remove(name) {
                        self.kept = self.kept.saturating_sub(gone.bytes.capacity());
                    }
                    return Some(ReadError::Io(e.to_string()));
                }
            },
        };
        let read_error = read_used_sized(file, meta.len(), expected, &mut self.buf).err();
        let data = &self.buf[..];
        let used = used_length(data).unwrap_or(0);
        let identity = (meta.dev(), meta.ino());
        let cached = match self.files.get_mut(name) {
            Some(cached) => cached,
            None => self.files.entry(name.into()).or_insert(CachedFile {
                identity,
                held: None,
                entries: Vec::new(),
                end: HEADER_BYTES,
                bytes: Vec::new(),
                pass: 0,
            }),
        };
        cached.pass = self.pass;
        if cached.identity != identity {
            cached.identity = identity;
            cached.entries.clear();
            cached.end = HEADER_BYTES;
        }
        if let Some(file) = opened {
            // Held for the next read if a slot is free (else closed here).
            cached.held = HeldFile::hold(file).ok();
        }
        let before = &cached.bytes;
        let still = cached
            .entries
            .iter()
            .position(|r| !visit_if_same(data, used, before, r, visitor))
            .unwrap_or(cached.entries.len());
        if still < cached.entries.len() {
            cached.end = cached.entries[still].offset;
            cached.entries.truncate(still);
        }
        let mut error = None;
        if used < HEADER_BYTES {
            error = (used != 0).then_some(ReadError::BadHeader);
        } else {
            let mut pos = cached.end;
            while pos < used {
                match entry_at(data, pos, used) {
                    Ok((entry, next)) => {
                        let t = visitor.tag(entry.key);
                        visitor.visit(&t, entry.value, entry.timestamp);
                        cached.entries.push(Remembered {
                            offset: pos,
                            key_len: entry.key.len(),
                            tag: t,
                        });
                        pos = next;
                        cached.end = next;
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        // These bytes are what the next read is checked against; the
        // previous ones become the next read's buffer. Past the limits,
        // nothing is kept: the file is parsed whole at its next read.
        let others = self.kept.saturating_sub(cached.bytes.capacity());
        if self.buf.len() <= self.max_file && others + self.buf.capacity() <= self.max_total {
            std::mem::swap(&mut cached.bytes, &mut self.buf);
            self.kept = others + cached.bytes.capacity();
        } else {
            cached.bytes = Vec::new();
            cached.entries.clear();
            cached.end = HEADER_BYTES;
            self.kept = others;
        }
        read_error.or(error)
    }
}

/// Visits `r` if `data` (of which `used` bytes count) still holds at its
/// offset the length and key that `before` (the last read) held; `false` if not.
#[inline]
fn visit_if_same<T>(
    data: &[u8],
    used: usize,
    before: &[u8],
    r: &Remembered<T>,
    visitor: &mut impl Visitor<T>,
) -> bool {
    let key_end = r.offset + 4 + r.key_len;
    let value_at = key_end + key_padding(r.key_len);
    // `before` holds every remembered entry; `get` all the same: a slip here
    // must cost a reparse, never a panic of the scrape.
    if value_at + 16 > used || before.get(r.offset..key_end) != Some(&data[r.offset..key_end]) {
        return false;
    }
    let (value, timestamp) = value_at_offset(data, value_at);
    visitor.visit(&r.tag, value, timestamp);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::key::encode;
    use crate::storage::MmapWriter;

    fn key(i: usize) -> String {
        encode("c", "c_total", &[("i", &i.to_string())], "help")
    }

    #[derive(Default)]
    struct Seen {
        entries: Vec<(String, f64)>,
        tagged: usize,
    }

    impl Visitor<String> for Seen {
        fn tag(&mut self, key: &str) -> String {
            self.tagged += 1;
            key.to_owned()
        }
        fn visit(&mut self, tag: &String, value: f64, _: f64) {
            self.entries.push((tag.clone(), value));
        }
    }

    /// Reads `name` and returns (entries visited, keys tagged, error).
    fn read(
        cache: &mut FileCache<String>,
        dir: &Path,
        name: &str,
    ) -> (Vec<(String, f64)>, usize, Option<ReadError>) {
        let mut seen = Seen::default();
        let error = cache.read(dir, name, &mut seen);
        (seen.entries, seen.tagged, error)
    }

    #[test]
    fn a_file_read_again_parses_only_its_new_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MmapWriter::open(&dir.path().join("counter_1.db")).unwrap();
        for i in 0..3 {
            w.slot(&key(i)).unwrap().set(i as f64);
        }
        let mut cache = FileCache::default();
        cache.begin_pass();
        let (seen, tagged, error) = read(&mut cache, dir.path(), "counter_1.db");
        assert_eq!((seen.len(), tagged, error), (3, 3, None));
        w.slot(&key(1)).unwrap().set(10.0);
        w.slot(&key(3)).unwrap().set(3.0);
        let (seen, tagged, error) = read(&mut cache, dir.path(), "counter_1.db");
        assert_eq!((tagged, error), (1, None));
        let values: Vec<f64> = seen.iter().map(|s| s.1).collect();
        assert_eq!(values, [0.0, 10.0, 2.0, 3.0]);
        assert_eq!(seen[3].0, key(3));
    }

    #[test]
    fn a_file_replaced_or_rewritten_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_1.db");
        {
            let mut w = MmapWriter::open(&path).unwrap();
            w.slot(&key(1)).unwrap().set(1.0);
            w.slot(&key(2)).unwrap().set(2.0);
        }
        let mut cache = FileCache::default();
        cache.begin_pass();
        read(&mut cache, dir.path(), "counter_1.db");
        // Same length keys, other labels, rewritten in place (same inode).
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(key(2).len())
            .position(|w| w == key(2).as_bytes())
            .unwrap();
        bytes[at..at + key(2).len()].copy_from_slice(key(7).as_bytes());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .unwrap();
        let (seen, tagged, error) = read(&mut cache, dir.path(), "counter_1.db");
        assert_eq!((tagged, error), (1, None));
        assert_eq!(seen, [(key(1), 1.0), (key(7), 2.0)]);
        // Replaced by another file under the same name.
        std::fs::remove_file(&path).unwrap();
        MmapWriter::open(&path)
            .unwrap()
            .slot(&key(5))
            .unwrap()
            .set(5.0);
        let (seen, tagged, _) = read(&mut cache, dir.path(), "counter_1.db");
        assert_eq!((seen, tagged), (vec![(key(5), 5.0)], 1));
    }

    #[test]
    fn a_truncated_or_corrupt_file_keeps_what_checks_out_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_1.db");
        {
            let mut w = MmapWriter::open(&path).unwrap();
            for i in 0..3 {
                w.slot(&key(i)).unwrap().set(i as f64);
            }
        }
        let mut cache = FileCache::default();
        cache.begin_pass();
        read(&mut cache, dir.path(), "counter_1.db");
        let bytes = std::fs::read(&path).unwrap();
        let used = i32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        std::fs::write(&path, &bytes[..used - 20]).unwrap();
        let (seen, _, error) = read(&mut cache, dir.path(), "counter_1.db");
        assert_eq!(seen.len(), 2);
        assert_eq!(error, Some(ReadError::Truncated));
        std::fs::remove_file(&path).unwrap();
        let (seen, _, error) = read(&mut cache, dir.path(), "counter_1.db");
        assert!(seen.is_empty());
        assert!(matches!(error, Some(ReadError::Io(_))));
    }

    #[test]
    fn past_the_memory_limits_a_file_is_parsed_whole_every_time() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["counter_1.db", "counter_2.db"] {
            let mut w = MmapWriter::open(&dir.path().join(n)).unwrap();
            for i in 0..3 {
                w.slot(&key(i)).unwrap().set(i as f64);
            }
        }
        let mut cache = FileCache {
            max_file: 100,
            ..Default::default()
        };
        cache.begin_pass();
        for _ in 0..2 {
            let (seen, tagged, error) = read(&mut cache, dir.path(), "counter_1.db");
            assert_eq!((seen.len(), tagged, error), (3, 3, None));
        }
        assert_eq!(cache.kept, 0);
        // Room for one file's bytes in all: the second is parsed whole.
        let mut cache = FileCache::default();
        cache.begin_pass();
        read(&mut cache, dir.path(), "counter_1.db");
        cache.max_total = cache.kept;
        for _ in 0..2 {
            assert_eq!(read(&mut cache, dir.path(), "counter_1.db").1, 0);
            assert_eq!(read(&mut cache, dir.path(), "counter_2.db").1, 3);
        }
        cache.end_pass();
        assert_eq!(cache.kept, cache.max_total);
    }

    #[test]
    fn files_not_read_in_a_pass_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["counter_1.db", "counter_2.db"] {
            MmapWriter::open(&dir.path().join(n))
                .unwrap()
                .slot(&key(1))
                .unwrap()
                .set(1.0);
        }
        let mut cache = FileCache::default();
        cache.begin_pass();
        read(&mut cache, dir.path(), "counter_1.db");
        read(&mut cache, dir.path(), "counter_2.db");
        cache.end_pass();
        cache.begin_pass();
        read(&mut cache, dir.path(), "counter_2.db");
        cache.end_pass();
        assert_eq!(cache.files.len(), 1);
        cache.begin_pass();
        assert_eq!(read(&mut cache, dir.path(), "counter_1.db").1, 1);
    }
}
