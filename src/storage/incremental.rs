//! Reading the same files scrape after scrape, at the cost of what changed.
//!
//! Keys never move once written: a writer only appends an entry, then
//! publishes the used length that covers it (`writer.rs`). So a file read
//! before needs only its values and its new entries. For every file a
//! `FileCache` remembers each entry's offset, its key (by the id the reader
//! interned it under) and what the reader made of the key (a tag: where its
//! value goes), so a key is parsed and hashed once in the life of the file,
//! not once per scrape.
//!
//! Nothing is trusted that was not checked. A read still takes the file's
//! used bytes with `pread` (as `reader.rs` does, never a mapping of another
//! process's file) and compares every remembered entry's length and key,
//! byte for byte, with the key it was remembered under before it takes the
//! value at the remembered offset. A file replaced under the same name, an
//! inode number reused, or bytes rewritten in place are noticed at the first
//! entry that differs, and the file is parsed again from there. The keys
//! compared against are the reader's, one copy of each distinct key for
//! every file (the processes of a directory write the same keys): a read
//! touches the file's bytes once, in one buffer reused for every file, and
//! the keys stay in the cache.

use rustc_hash::FxHashMap as HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::held::HeldFile;
use super::open::open_read_stat;
use super::reader::{entry_at, read_used_into, used_length, ReadBuffer, ReadError};
use super::{key_padding, HEADER_BYTES};

/// Largest read buffer kept between reads.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

/// Most entries remembered for one file, and for all files together: past
/// them a file's further entries are parsed at every read, as if they were
/// new, so that a directory of huge (or hostile) files costs time, never
/// unbounded memory (12 bytes an entry).
const MAX_FILE_ENTRIES: usize = 1 << 20;
const MAX_ENTRIES: usize = 1 << 22;

/// An entry parsed before: where it starts, the id of its key, and its tag.
#[derive(Clone, Copy)]
struct Remembered {
    offset: u32,
    key: u32,
    tag: u32,
}

/// What is remembered of one file.
struct CachedFile {
    /// Identity of the inode read last (`st_dev`, `st_ino`).
    identity: (u64, u64),
    /// That inode, held open for the next read (`held.rs`).
    held: Option<HeldFile>,
    /// The entries from the header on, in file order.
    entries: Vec<Remembered>,
    /// Offset just past the last remembered entry.
    end: usize,
    /// The used length read last: the next read asks for that much first.
    used: usize,
    /// The pass that read it last (see `FileCache::begin_pass`).
    pass: u64,
}

/// Keys one after the other in one buffer, by id: every file's remembered
/// entries are compared with them at each read, so the keys the processes
/// of a directory share are kept (and stay in the cache) once.
#[derive(Default)]
pub struct Keys {
    bytes: Vec<u8>,
    /// Where each key starts in `bytes`, and its length, by id.
    spans: Vec<(usize, usize)>,
}

impl Keys {
    /// Adds `key`; returns its id.
    pub fn add(&mut self, key: &[u8]) -> u32 {
        let id = self.spans.len() as u32;
        self.spans.push((self.bytes.len(), key.len()));
        self.bytes.extend_from_slice(key);
        id
    }

    /// The key `id`.
    #[inline]
    pub fn key(&self, id: u32) -> &[u8] {
        let (start, len) = self.spans[id as usize];
        &self.bytes[start..][..len]
    }

    /// How many keys there are (ids are below it).
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// Bytes of all keys.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

/// What a reader makes of a file's entries. Keys are interned by the
/// reader: an id names one key, and its bytes stay the same while any file
/// of the cache remembers it (a reader that forgets its keys forgets the
/// cache's files too, `FileCache::forget`).
pub trait Visitor {
    /// The keys interned, by id.
    fn keys(&self) -> &Keys;
    /// An entry not remembered: the id its key is interned as, and what the
    /// entry is to the reader (its tag). Called once per entry of a file
    /// (not again while the file keeps the entry).
    fn tag(&mut self, key: &str) -> (u32, u32);
    /// The values of a file's entries at a read, in file order.
    fn visit(&mut self, values: &[EntryValue]);
}

/// An entry's value and timestamp as read, with its key's id and tag.
#[derive(Clone, Copy, Debug)]
pub struct EntryValue {
    pub key: u32,
    pub tag: u32,
    pub value: f64,
    pub timestamp: f64,
}

/// Remembers the entries of the files of directories read again and again.
pub struct FileCache {
    files: HashMap<Box<str>, CachedFile>,
    /// The buffer every file is read into.
    buf: ReadBuffer,
    /// The values of the file being read.
    values: Vec<EntryValue>,
    /// Entries remembered for all files, and the limits.
    remembered: usize,
    max_file: usize,
    max_total: usize,
    pass: u64,
}

impl Default for FileCache {
    fn default() -> Self {
        FileCache {
            files: HashMap::default(),
            buf: ReadBuffer::default(),
            values: Vec::new(),
            remembered: 0,
            max_file: MAX_FILE_ENTRIES,
            max_total: MAX_ENTRIES,
            pass: 0,
        }
    }
}

impl FileCache {
    /// Starts a pass over a directory: files not read again before
    /// `end_pass` are forgotten then.
    pub fn begin_pass(&mut self) {
        self.pass += 1;
    }

    /// Forgets the files not read since `begin_pass`.
    pub fn end_pass(&mut self) {
        let pass = self.pass;
        self.files.retain(|_, f| f.pass == pass);
        self.remembered = self.files.values().map(|f| f.entries.len()).sum();
        if self.buf.len() > KEPT_BUFFER_BYTES {
            self.buf = ReadBuffer::default();
        }
        if self.values.capacity() > KEPT_BUFFER_BYTES / size_of::<EntryValue>() {
            self.values = Vec::new();
        }
    }

    /// Forgets every file's entries: each is parsed again on its next read
    /// (the files stay held).
    pub fn forget(&mut self) {
        for file in self.files.values_mut() {
            file.entries = Vec::new();
            file.end = HEADER_BYTES;
        }
        self.remembered = 0;
    }

    /// Reads the file `name` of `dir`: `visitor.visit` with every entry's
    /// value, in file order; `visitor.tag` only for an entry not remembered
    /// at its offset. Returns `None` if the file was read to its end, else
    /// why not: entries before a corrupt one are still visited, none if the
    /// file could not be opened or read (`ReadError::Io`).
    pub fn read(
        &mut self,
        dir: &Path,
        name: &str,
        visitor: &mut impl Visitor,
    ) -> Option<ReadError> {
        let path = dir.join(name);
        let expected = self.files.get(name).map_or(0, |f| f.used);
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
                        self.remembered -= gone.entries.len();
                    }
                    return Some(ReadError::Io(e.to_string()));
                }
            },
        };
        let (len, read) = read_used_into(file, meta.len(), expected, &mut self.buf);
        let data = self.buf.bytes(len);
        let used = used_length(data).unwrap_or(0);
        let identity = (meta.dev(), meta.ino());
        let cached = match self.files.get_mut(name) {
            Some(cached) => cached,
            None => self.files.entry(name.into()).or_insert(CachedFile {
                identity,
                held: None,
                entries: Vec::new(),
                end: HEADER_BYTES,
                used: 0,
                pass: 0,
            }),
        };
        cached.pass = self.pass;
        cached.used = used;
        if cached.identity != identity {
            cached.identity = identity;
            self.remembered -= cached.entries.len();
            cached.entries.clear();
            cached.end = HEADER_BYTES;
        }
        if let Some(file) = opened {
            // Held for the next read if a slot is free (else closed here).
            cached.held = HeldFile::hold(file).ok();
        }
        let values = &mut self.values;
        values.clear();
        let still = same_entries(&data[..used], &cached.entries, visitor.keys(), values);
        if still < cached.entries.len() {
            self.remembered -= cached.entries.len() - still;
            cached.end = cached.entries[still].offset as usize;
            cached.entries.truncate(still);
        }
        let mut error = None;
        if used < HEADER_BYTES {
            error = (used != 0).then_some(ReadError::BadHeader);
        } else {
            // Past the limits, entries are visited but not remembered (the
            // remembered ones are always the file's first).
            let mut remember = true;
            let mut pos = cached.end;
            while pos < used {
                match entry_at(data, pos, used) {
                    Ok((entry, next)) => {
                        let (key, tag) = visitor.tag(entry.key);
                        values.push(EntryValue {
                            key,
                            tag,
                            value: entry.value,
                            timestamp: entry.timestamp,
                        });
                        remember = remember
                            && cached.entries.len() < self.max_file
                            && self.remembered < self.max_total;
                        if remember {
                            cached.entries.push(Remembered {
                                offset: pos as u32,
                                key,
                                tag,
                            });
                            self.remembered += 1;
                            cached.end = next;
                        }
                        pos = next;
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        visitor.visit(values);
        read.err().or(error)
    }
}

/// Takes the values of the first `entries` that `data` (the file's used
/// bytes) still holds as they were remembered: the length and the bytes of
/// the key each was remembered under, at its offset. Returns how many do.
fn same_entries(
    data: &[u8],
    entries: &[Remembered],
    keys: &Keys,
    values: &mut Vec<EntryValue>,
) -> usize {
    values.reserve(entries.len());
    for (i, r) in entries.iter().enumerate() {
        let key = keys.key(r.key);
        let at = r.offset as usize;
        let value_at = 4 + key.len() + key_padding(key.len());
        // A slip here must cost a reparse, never a panic of the scrape.
        let Some((length, rest)) = data
            .get(at..at + value_at + 16)
            .and_then(|entry| entry.split_first_chunk::<4>())
        else {
            return i;
        };
        if u32::from_le_bytes(*length) as usize != key.len() || rest[..key.len()] != *key {
            return i;
        }
        let (value, timestamp) = rest[value_at - 4..].split_at(8);
        values.push(EntryValue {
            key: r.key,
            tag: r.tag,
            value: f64::from_le_bytes(value.try_into().expect("8 bytes")),
            timestamp: f64::from_le_bytes(timestamp.try_into().expect("8 bytes")),
        });
    }
    entries.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::key::encode;
    use crate::storage::MmapWriter;

    fn key(i: usize) -> String {
        encode("c", "c_total", &[("i", &i.to_string())], "help")
    }

    /// Keys interned in a table of their own; entries seen as (key, value).
    #[derive(Default)]
    struct Seen {
        keys: Keys,
        entries: Vec<(String, f64)>,
        tagged: usize,
    }

    impl Seen {
        fn key(&self, id: u32) -> String {
            String::from_utf8(self.keys.key(id).to_vec()).unwrap()
        }
    }

    impl Visitor for Seen {
        fn keys(&self) -> &Keys {
            &self.keys
        }
        fn tag(&mut self, key: &str) -> (u32, u32) {
            self.tagged += 1;
            let found =
                (0..self.keys.count() as u32).find(|&id| self.keys.key(id) == key.as_bytes());
            (found.unwrap_or_else(|| self.keys.add(key.as_bytes())), 0)
        }
        fn visit(&mut self, values: &[EntryValue]) {
            for v in values {
                self.entries.push((self.key(v.key), v.value));
            }
        }
    }

    /// A cache and the keys its reader interned.
    #[derive(Default)]
    struct Reader {
        cache: FileCache,
        seen: Seen,
    }

    impl Reader {
        /// Reads `name`: (entries visited, keys tagged, error).
        fn read(
            &mut self,
            dir: &Path,
            name: &str,
        ) -> (Vec<(String, f64)>, usize, Option<ReadError>) {
            self.seen.tagged = 0;
            let error = self.cache.read(dir, name, &mut self.seen);
            (
                std::mem::take(&mut self.seen.entries),
                self.seen.tagged,
                error,
            )
        }
    }

    #[test]
    fn a_file_read_again_parses_only_its_new_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MmapWriter::open(&dir.path().join("counter_1.db")).unwrap();
        for i in 0..3 {
            w.slot(&key(i)).unwrap().set(i as f64);
        }
        let mut r = Reader::default();
        r.cache.begin_pass();
        let (seen, tagged, error) = r.read(dir.path(), "counter_1.db");
        assert_eq!((seen.len(), tagged, error), (3, 3, None));
        w.slot(&key(1)).unwrap().set(10.0);
        w.slot(&key(3)).unwrap().set(3.0);
        let (seen, tagged, error) = r.read(dir.path(), "counter_1.db");
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
        let mut r = Reader::default();
        r.cache.begin_pass();
        r.read(dir.path(), "counter_1.db");
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
        let (seen, tagged, error) = r.read(dir.path(), "counter_1.db");
        assert_eq!((tagged, error), (1, None));
        assert_eq!(seen, [(key(1), 1.0), (key(7), 2.0)]);
        // Replaced by another file under the same name.
        std::fs::remove_file(&path).unwrap();
        MmapWriter::open(&path)
            .unwrap()
            .slot(&key(5))
            .unwrap()
            .set(5.0);
        let (seen, tagged, _) = r.read(dir.path(), "counter_1.db");
        assert_eq!((seen, tagged), (vec![(key(5), 5.0)], 1));
    }

    #[test]
    fn files_with_the_same_keys_are_checked_against_one_copy_of_them() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["counter_1.db", "counter_2.db"] {
            let mut w = MmapWriter::open(&dir.path().join(n)).unwrap();
            for i in 0..3 {
                w.slot(&key(i)).unwrap().set(i as f64);
            }
        }
        let mut r = Reader::default();
        r.cache.begin_pass();
        for _ in 0..2 {
            for n in ["counter_1.db", "counter_2.db"] {
                let (seen, _, error) = r.read(dir.path(), n);
                assert_eq!((seen.len(), error), (3, None));
            }
        }
        assert_eq!(r.seen.keys.count(), 3);
    }

    #[test]
    fn files_with_keys_in_other_orders_share_them_and_a_rewritten_key_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let orders: [&[usize]; 2] = [&[0, 1, 2, 3, 4], &[3, 4, 0, 2, 1]];
        let mut writers = Vec::new();
        for (n, order) in orders.iter().enumerate() {
            let mut w = MmapWriter::open(&dir.path().join(format!("counter_{n}.db"))).unwrap();
            for &i in *order {
                w.slot(&key(i)).unwrap().set((10 * n + i) as f64);
            }
            writers.push(w);
        }
        let mut r = Reader::default();
        r.cache.begin_pass();
        let expect = |n: usize| -> Vec<(String, f64)> {
            orders[n]
                .iter()
                .map(|&i| (key(i), (10 * n + i) as f64))
                .collect()
        };
        for _ in 0..2 {
            for n in 0..2 {
                let (seen, _, error) = r.read(dir.path(), &format!("counter_{n}.db"));
                assert_eq!((seen, error), (expect(n), None));
            }
        }
        // A key in the middle rewritten in place: the entries before it
        // keep their values, it and those after are parsed again.
        let path = dir.path().join("counter_1.db");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(key(0).len())
            .position(|w| w == key(0).as_bytes())
            .unwrap();
        bytes[at..at + key(0).len()].copy_from_slice(key(9).as_bytes());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .unwrap();
        let (seen, tagged, error) = r.read(dir.path(), "counter_1.db");
        let mut want = expect(1);
        want[2].0 = key(9);
        assert_eq!((seen, tagged, error), (want, 3, None));
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
        let mut r = Reader::default();
        r.cache.begin_pass();
        r.read(dir.path(), "counter_1.db");
        let bytes = std::fs::read(&path).unwrap();
        let used = i32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        std::fs::write(&path, &bytes[..used - 20]).unwrap();
        let (seen, _, error) = r.read(dir.path(), "counter_1.db");
        assert_eq!(seen.len(), 2);
        assert_eq!(error, Some(ReadError::Truncated));
        std::fs::remove_file(&path).unwrap();
        let (seen, _, error) = r.read(dir.path(), "counter_1.db");
        assert!(seen.is_empty());
        assert!(matches!(error, Some(ReadError::Io(_))));
    }

    #[test]
    fn past_the_memory_limits_entries_are_parsed_at_every_read() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["counter_1.db", "counter_2.db"] {
            let mut w = MmapWriter::open(&dir.path().join(n)).unwrap();
            for i in 0..3 {
                w.slot(&key(i)).unwrap().set(i as f64);
            }
        }
        // Room for two entries of a file: the third is parsed each time.
        let mut r = Reader::default();
        r.cache.max_file = 2;
        r.cache.begin_pass();
        for _ in 0..2 {
            let (seen, _, error) = r.read(dir.path(), "counter_1.db");
            assert_eq!((seen.len(), error), (3, None));
        }
        assert_eq!(r.read(dir.path(), "counter_1.db").1, 1);
        assert_eq!(r.cache.remembered, 2);
        // Room for three entries in all: the second file's are parsed each time.
        let mut r = Reader::default();
        r.cache.max_total = 3;
        r.cache.begin_pass();
        for first_tagged in [3, 0] {
            assert_eq!(r.read(dir.path(), "counter_1.db").1, first_tagged);
            assert_eq!(r.read(dir.path(), "counter_2.db").1, 3);
        }
        r.cache.end_pass();
        assert_eq!(r.cache.remembered, 3);
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
        let mut r = Reader::default();
        r.cache.begin_pass();
        r.read(dir.path(), "counter_1.db");
        r.read(dir.path(), "counter_2.db");
        r.cache.end_pass();
        r.cache.begin_pass();
        r.read(dir.path(), "counter_2.db");
        r.cache.end_pass();
        assert_eq!(r.cache.files.len(), 1);
        r.cache.begin_pass();
        assert_eq!(r.read(dir.path(), "counter_1.db").1, 1);
    }
}
