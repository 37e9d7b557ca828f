//! The directory lock: scrapes hold it shared, compaction holds it exclusive,
//! so no scrape sees a dead process's values both in its file and in the
//! archive, or in neither.
//!
//! Two layers: an in-process RwLock (threads of one process), and a POSIX
//! record lock on `<dir>/.lock` (other processes, such as a sidecar exporter).
//! Record locks belong to the process and are not inherited by `fork`; a
//! `flock` would be, and a worker forked while a scrape held it would keep the
//! master from ever compacting again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::names::LOCK_FILE;
use super::open::{create_fresh, open_write};

/// Between two attempts at a record lock held by another process.
const RETRY_EVERY: Duration = Duration::from_millis(5);

static IN_PROCESS: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// The directory lock, held until dropped.
pub struct DirectoryLock {
    // Field order: the record lock is released (file closed) before the guard.
    _file: File,
    _guard: Guard,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the directory lock is held")
}

impl DirectoryLock {
    /// Takes the lock shared, waiting at most `wait` (ErrorKind::TimedOut).
    pub fn shared(dir: &Path, wait: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + wait;
        let guard = Guard::Shared(IN_PROCESS.try_read_for(wait).ok_or_else(timed_out)?);
        Self::take(dir, libc::F_RDLCK as libc::c_short, guard, deadline)
    }

    /// Takes the lock exclusive, waiting at most `wait` (ErrorKind::TimedOut).
    pub fn exclusive(dir: &Path, wait: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + wait;
        let guard = Guard::Exclusive(IN_PROCESS.try_write_for(wait).ok_or_else(timed_out)?);
        Self::take(dir, libc::F_WRLCK as libc::c_short, guard, deadline)
    }

    // `kind` is c_short as in `flock.l_type`: F_RDLCK is a c_int on Linux, a c_short on macOS.
    fn take(dir: &Path, kind: libc::c_short, guard: Guard, deadline: Instant) -> io::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = match open_write(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            // A symlink or FIFO planted under the name: a regular file replaces it.
            Err(_) => create_fresh(&path)?,
        };
        // SAFETY: flock is a plain C struct for which all-zero is valid.
        let mut region: libc::flock = unsafe { std::mem::zeroed() };
        region.l_type = kind;
        region.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            // SAFETY: F_SETLK (never blocks) on an fd `file` keeps open, with
            // a valid flock struct.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &region) } == 0 {
                return Ok(DirectoryLock {
                    _file: file,
                    _guard: guard,
                });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => {}
                _ => return Err(err),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            std::thread::sleep(RETRY_EVERY.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let shared = DirectoryLock::shared(dir.path(), WAIT).unwrap();
        // SAFETY: the child only sleeps and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: async-signal-safe calls only, in the forked child.
            unsafe {
                libc::sleep(30);
                libc::_exit(0)
            };
        }
        drop(shared);
        let _exclusive = DirectoryLock::exclusive(dir.path(), WAIT).unwrap();
        // SAFETY: waitpid, kill and waitpid on the child forked above.
        unsafe {
            // Taken while the child that was forked under the shared lock still runs.
            assert_eq!(libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG), 0);
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }

    #[test]
    fn a_lock_held_by_another_process_times_out_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, b"").unwrap();
        let (mut ready_r, mut ready_w) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the child takes a record lock, signals, sleeps and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            // SAFETY: all-zero flock is valid; fcntl on an open fd.
            unsafe {
                let mut region: libc::flock = std::mem::zeroed();
                region.l_type = libc::F_WRLCK as libc::c_short;
                libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &region);
            }
            let _ = std::io::Write::write_all(&mut ready_w, b"x");
            // SAFETY: async-signal-safe calls only, in the forked child.
            unsafe {
                libc::sleep(30);
                libc::_exit(0)
            };
        }
        std::io::Read::read_exact(&mut ready_r, &mut [0u8; 1]).unwrap();
        let err = DirectoryLock::shared(dir.path(), Duration::from_millis(50))
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // SAFETY: kill and reap the child forked above.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(DirectoryLock::shared(dir.path(), WAIT).is_ok());
    }

    const WAIT: Duration = Duration::from_secs(5);
}
