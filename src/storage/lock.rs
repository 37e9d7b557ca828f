//! The directory lock: scrapes hold it shared, compaction holds it exclusive,
//! so no scrape sees a dead process's values both in its file and in the
//! archive, or in neither. `flock` works across processes (a sidecar exporter).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const LOCK_FILE: &str = ".lock";

pub struct DirectoryLock {
    _file: File, // closing it releases the lock
}

impl DirectoryLock {
    pub fn shared(dir: &Path) -> io::Result<Self> {
        Self::take(dir, libc::LOCK_SH)
    }

    pub fn exclusive(dir: &Path) -> io::Result<Self> {
        Self::take(dir, libc::LOCK_EX)
    }

    fn take(dir: &Path, how: libc::c_int) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(LOCK_FILE))?;
        loop {
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(DirectoryLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
