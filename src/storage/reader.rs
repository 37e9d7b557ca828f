//! Reading a file back: entries up to the published used length.
//!
//! Files of other processes are never mapped, only read with `pread` up to a
//! used length checked against `fstat`: a file that its writer (or anyone)
//! truncates meanwhile is a read error, never a SIGBUS. A file larger than
//! the format allows (grown by another process, sparse) is read up to its
//! used length if that is within the cap, and refused by its header
//! otherwise: never read whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::open::open_read_sized;
use super::{key_padding, HEADER_BYTES, MAX_FILE_BYTES};

/// One entry of a file: the key and its two doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: f64,
    pub timestamp: f64,
}

/// Why a file could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not openable: missing, not a regular file (symlink, FIFO), no permission.
    Io(String),
    BadHeader,
    Truncated,
    /// Its used length is larger than the format allows (`MAX_FILE_BYTES`):
    /// not read past its header.
    TooLarge,
    BadEntry {
        offset: usize,
    },
}

/// Reads the used bytes of the regular file at `path` into `buf` (reused
/// across files). On a truncated file `buf` still holds what could be read.
pub fn read_used(path: &Path, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    buf.clear();
    let (file, size) = open_read_sized(path).map_err(|e| ReadError::Io(e.to_string()))?;
    read_used_sized(&file, size, 0, buf)
}

/// As `read_used`, from a file just opened (its offset must be 0).
pub fn read_used_from(file: &File, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let size = file
        .metadata()
        .map_err(|e| ReadError::Io(e.to_string()))?
        .len();
    read_used_sized(file, size, 0, buf)
}

/// Reads from `file`, whose `fstat` size is `size` and whose used length was
/// `expected` when last read (0: unknown): a file that grew by less than
/// `READ_AHEAD` since is read with one `pread`.
pub(crate) fn read_used_sized(
    file: &File,
    size: u64,
    expected: usize,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let (len, read) = read_into(file, size, expected, buf);
    buf.truncate(len);
    read
}

/// A buffer reused for every file of every scrape: its length is kept (it
/// grows, zero-filled, when a file needs more room and never shrinks, so it
/// is not zeroed again before each read), and its bytes start on a cache
/// line. The kernel copies a file's (page-aligned) bytes fastest to a
/// destination aligned as they are: 8.3 ms against 10.5 to 13 ms to read the
/// 42.7 MB of 64 processes' histogram files at malloc's 16-byte offset, and
/// 30 ms at an 8-byte one (this project's 2-core machine).
#[derive(Default)]
pub(crate) struct ReadBuffer {
    bytes: Vec<u8>,
    /// Where the aligned bytes begin in `bytes`.
    start: usize,
}

/// The alignment of `ReadBuffer`'s bytes: a cache line.
const ALIGN: usize = 64;

impl ReadBuffer {
    /// The first `len` bytes.
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }

    /// The first `len` bytes, mutable.
    pub(crate) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len]
    }

    /// How many bytes it holds.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }
}

/// Room at the front of a buffer, for `read_into`.
trait Room {
    /// The first `len` bytes, made room for if need be (what they held is kept).
    fn room(&mut self, len: usize) -> &mut [u8];
}

impl Room for Vec<u8> {
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.len() < len {
            self.resize(len, 0);
        }
        &mut self[..len]
    }
}

impl Room for ReadBuffer {
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.len() < len {
            let kept = self.start..self.bytes.len();
            self.bytes.resize(self.start + len + ALIGN, 0);
            let misaligned = self.bytes.as_ptr() as usize % ALIGN;
            let start = (ALIGN - misaligned) % ALIGN;
            self.bytes.copy_within(kept, start);
            self.start = start;
        }
        self.bytes_mut(len)
    }
}

/// As `read_used_sized`, into the front of `buf`. Returns how many bytes at
/// its front are the file's: its used bytes, or what could be read of them
/// (`Truncated`); 0 on any other error (nothing of another file's bytes is
/// taken for this one's).
pub(crate) fn read_used_into(
    file: &File,
    size: u64,
    expected: usize,
    buf: &mut ReadBuffer,
) -> (usize, Result<(), ReadError>) {
    read_into(file, size, expected, buf)
}

fn read_into(
    file: &File,
    size: u64,
    expected: usize,
    buf: &mut impl Room,
) -> (usize, Result<(), ReadError>) {
    // Never more than the cap is read, whatever the file's size.
    let size = size.min(MAX_FILE_BYTES as u64) as usize;
    // One pread of the header and the bytes used last time, and up to
    // `READ_AHEAD` more; never more than fstat says the file holds.
    let first = expected
        .saturating_add(READ_AHEAD)
        .min(size)
        .max(HEADER_BYTES);
    let got = match read_at_most(file, buf.room(first), 0) {
        Ok(got) => got,
        Err(e) => return (0, Err(e)),
    };
    let header = buf.room(HEADER_BYTES);
    let used = match got >= 4 {
        true => i32::from_le_bytes([header[0], header[1], header[2], header[3]]),
        false => 0,
    };
    // A file being created: no size yet, or no used length published yet.
    if got == 0 || (got >= HEADER_BYTES && used == 0) {
        header.fill(0);
        return (HEADER_BYTES, Ok(()));
    }
    if got < HEADER_BYTES || used < HEADER_BYTES as i32 {
        return (0, Err(ReadError::BadHeader));
    }
    let used = used as usize;
    if used > MAX_FILE_BYTES {
        return (0, Err(ReadError::TooLarge));
    }
    // Whatever the header claims, never more than fstat says the file holds.
    let readable = used.min(size);
    let len = if readable <= got {
        readable
    } else {
        match read_at_most(file, &mut buf.room(readable)[got..], got as u64) {
            Ok(more) => got + more,
            Err(e) => return (0, Err(e)),
        }
    };
    if len < used {
        return (len, Err(ReadError::Truncated));
    }
    (len, Ok(()))
}

/// How much past the used length last seen a read asks for, when its
/// buffer has the room: a file that grew by less is read with one `pread`.
const READ_AHEAD: usize = 512;

/// Fills `out` from `offset` until it is full or the file ends.
fn read_at_most(file: &File, out: &mut [u8], offset: u64) -> Result<usize, ReadError> {
    let mut got = 0;
    while got < out.len() {
        match file.read_at(&mut out[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
    }
    Ok(got)
}

/// Parses the entries of `data` (a file's first `used` bytes, header included).
/// Entries before a corrupt one are returned together with the error.
pub fn read_entries(data: &[u8]) -> (Vec<Entry<'_>>, Option<ReadError>) {
    let mut entries = Vec::new();
    let Some(used) = used_length(data) else {
        return (entries, Some(ReadError::BadHeader));
    };
    if used < HEADER_BYTES {
        return (entries, (used != 0).then_some(ReadError::BadHeader));
    }
    let mut pos = HEADER_BYTES;
    while pos < used {
        match entry_at(data, pos, used) {
            Ok((entry, next)) => {
                entries.push(entry);
                pos = next;
            }
            Err(e) => return (entries, Some(e)),
        }
    }
    (entries, None)
}

/// The used length a file's header claims, within `data`; `None` if `data`
/// has no header.
pub fn used_length(data: &[u8]) -> Option<usize> {
    if data.len() < HEADER_BYTES {
        return None;
    }
    Some((i32::from_le_bytes(data[..4].try_into().unwrap()).max(0) as usize).min(data.len()))
}

/// The entry that starts at `pos` of `data` (whose first `used` bytes are
/// the file's), and the offset of the next one.
pub fn entry_at(data: &[u8], pos: usize, used: usize) -> Result<(Entry<'_>, usize), ReadError> {
    let bad = ReadError::BadEntry { offset: pos };
    if pos + 4 > used {
        return Err(bad);
    }
    let len = i32::from_le_bytes(data[pos..pos + 4].try_into().unwrap());
    if len <= 0 {
        return Err(bad);
    }
    let len = len as usize;
    let value_at = pos + 4 + len + key_padding(len);
    if value_at + 16 > used {
        return Err(bad);
    }
    let Ok(key) = std::str::from_utf8(&data[pos + 4..pos + 4 + len]) else {
        return Err(bad);
    };
    let (value, timestamp) = value_at_offset(data, value_at);
    Ok((
        Entry {
            key,
            value,
            timestamp,
        },
        value_at + 16,
    ))
}

/// The value and timestamp stored at `at` (`at + 16 <= data.len()`).
#[inline]
pub fn value_at_offset(data: &[u8], at: usize) -> (f64, f64) {
    let pair: &[u8; 16] = data[at..at + 16].try_into().unwrap();
    (
        f64::from_le_bytes(pair[..8].try_into().unwrap()),
        f64::from_le_bytes(pair[8..].try_into().unwrap()),
    )
}
