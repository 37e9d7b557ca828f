//! Reading a file back: entries up to the published used length.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{key_padding, HEADER_BYTES};

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
    Io(String),
    BadHeader,
    Truncated,
    BadEntry { offset: usize },
}

/// Reads the file's used bytes into `buf` (reused across files). On a
/// truncated file `buf` still holds what could be read.
pub fn read_used(path: &Path, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    buf.clear();
    let mut file = File::open(path).map_err(|e| ReadError::Io(e.to_string()))?;
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
    }
    let used = i32::from_le_bytes(header[..4].try_into().unwrap());
    // A file being created: no size yet, or no used length published yet.
    if got == 0 || (got == HEADER_BYTES && used == 0) {
        buf.extend_from_slice(&[0; HEADER_BYTES]);
        return Ok(());
    }
    if got < HEADER_BYTES || used < HEADER_BYTES as i32 {
        return Err(ReadError::BadHeader);
    }
    buf.extend_from_slice(&header);
    let rest = used as usize - HEADER_BYTES;
    let got = (&mut file)
        .take(rest as u64)
        .read_to_end(buf)
        .map_err(|e| ReadError::Io(e.to_string()))?;
    if got < rest {
        return Err(ReadError::Truncated);
    }
    Ok(())
}

/// Parses the entries of `data` (a file's first `used` bytes, header included).
/// Entries before a corrupt one are returned together with the error.
pub fn read_entries(data: &[u8]) -> (Vec<Entry<'_>>, Option<ReadError>) {
    let mut entries = Vec::new();
    if data.len() < HEADER_BYTES {
        return (entries, Some(ReadError::BadHeader));
    }
    let used = (i32::from_le_bytes(data[..4].try_into().unwrap()).max(0) as usize).min(data.len());
    if used < HEADER_BYTES {
        return (entries, (used != 0).then_some(ReadError::BadHeader));
    }
    let mut pos = HEADER_BYTES;
    while pos < used {
        let bad = Some(ReadError::BadEntry { offset: pos });
        if pos + 4 > used {
            return (entries, bad);
        }
        let len = i32::from_le_bytes(data[pos..pos + 4].try_into().unwrap());
        if len <= 0 {
            return (entries, bad);
        }
        let len = len as usize;
        let value_at = pos + 4 + len + key_padding(len);
        if value_at + 16 > used {
            return (entries, bad);
        }
        let Ok(key) = std::str::from_utf8(&data[pos + 4..pos + 4 + len]) else {
            return (entries, bad);
        };
        let value = f64::from_le_bytes(data[value_at..value_at + 8].try_into().unwrap());
        let timestamp = f64::from_le_bytes(data[value_at + 8..value_at + 16].try_into().unwrap());
        entries.push(Entry {
            key,
            value,
            timestamp,
        });
        pos = value_at + 16;
    }
    (entries, None)
}
