//! Per-process files in prometheus_client's multiprocess format (`mmap_dict.py`).

pub mod float;
pub mod held;
pub mod incremental;
pub mod key;
pub mod lock;
pub mod mappings;
pub mod names;
pub mod open;
pub mod reader;
pub mod running_clock;
pub mod writer;

pub use reader::{read_entries, ReadError};
pub use writer::{MmapWriter, SeriesFile, ValueSlot};

/// Bytes of the header: a 4-byte used length and 4 bytes of padding.
pub const HEADER_BYTES: usize = 8;

/// Largest file this core writes or reads (prometheus_client's files hold
/// far less): a bigger one is foreign, and is never read into memory.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// Padding after a key so that the value that follows is 8-byte aligned,
/// exactly as `mmap_dict._init_value` computes it (always 1 to 8 bytes).
pub fn key_padding(key_len: usize) -> usize {
    8 - (key_len + 4) % 8
}

#[cfg(test)]
mod interop_tests;
