//! The directory lock: scrapes hold it shared, compaction holds it exclusive,
//! so no scrape sees a dead process's values both in its file and in the
//! archive, or in neither.
//!
//! Two layers: an in-process RwLock (threads of one process), and a POSIX
//! record lock on `<dir>/.lock` (other processes, such as a sidecar exporter).
//! Record locks belong to the process and are not inherited by `fork`; a
//! `flock` would be, and a worker forked while a scrape held it would keep the
//! master from ever compacting again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const LOCK_FILE: &str = ".lock";

static IN_PROCESS: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

pub struct DirectoryLock {
    // Field order: the record lock is released (file closed) before the guard.
    _file: File,
    _guard: Guard,
}

impl DirectoryLock {
    pub fn shared(dir: &Path) -> io::Result<Self> {
        let guard = Guard::Shared(IN_PROCESS.read());
        Self::take(dir, libc::F_RDLCK, guard)
    }

    pub fn exclusive(dir: &Path) -> io::Result<Self> {
        let guard = Guard::Exclusive(IN_PROCESS.write());
        Self::take(dir, libc::F_WRLCK, guard)
    }

    fn take(dir: &Path, kind: libc::c_int, guard: Guard) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        let mut region: libc::flock = unsafe { std::mem::zeroed() };
        region.l_type = kind as libc::c_short;
        region.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &region) } == 0 {
                return Ok(DirectoryLock {
                    _file: file,
                    _guard: guard,
                });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let shared = DirectoryLock::shared(dir.path()).unwrap();
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe { libc::sleep(30) };
            unsafe { libc::_exit(0) };
        }
        drop(shared);
        let _exclusive = DirectoryLock::exclusive(dir.path()).unwrap();
        // Taken while the child that was forked under the shared lock still runs.
        assert_eq!(
            unsafe { libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG) },
            0
        );
        unsafe { libc::kill(child, libc::SIGKILL) };
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
}
