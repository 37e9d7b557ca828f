//! Files a reader keeps open between scrapes, so that a steady-state read of
//! a file costs an `lstat` of its name and one `pread`, not also an `open`
//! and a `close` (system calls are most of a scrape's time on some hosts).
//!
//! - At most `MAX_HELD` files are held per process, and never more than a
//!   quarter of its descriptor limit (`RLIMIT_NOFILE`): the master's own
//!   work (sockets, pipes, logs) always has room. Past them a file is opened
//!   and closed at each read, as before.
//! - Each held descriptor is listed in `HELD`, so that a process forked from
//!   the holder (a Gunicorn worker forked from the master) closes them
//!   (`close_inherited`) instead of keeping other workers' files, and never
//!   closes them again when its copy of the reader is dropped (`HeldFile`
//!   remembers the process that opened it).
//! - A held file is let go when its name leaves the directory (the reader
//!   forgets files not read in a pass), so a dead worker's file is freed at
//!   the next scrape.

use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// Most files held open per process.
pub const MAX_HELD: usize = 256;

const FREE: i32 = -1;

/// Descriptors held, by slot (`FREE`: none).
pub struct Registry([AtomicI32; MAX_HELD]);

impl Registry {
    const fn new() -> Self {
        Registry([const { AtomicI32::new(FREE) }; MAX_HELD])
    }
}

/// The process's held descriptors.
static HELD: Registry = Registry::new();

/// A file held open between reads, listed in a `Registry` while it is.
#[derive(Debug)]
pub struct HeldFile {
    file: Option<File>,
    slot: &'static AtomicI32,
    /// The process that opened it: only that one closes it.
    pid: u32,
}

impl HeldFile {
    /// Holds `file` if a slot is free; gives it back if not.
    pub fn hold(file: File) -> Result<HeldFile, File> {
        static ROOM: OnceLock<usize> = OnceLock::new();
        let room = *ROOM.get_or_init(|| room_under_the_limit(MAX_HELD));
        Self::hold_in(&HELD, room, file)
    }

    fn hold_in(registry: &'static Registry, room: usize, file: File) -> Result<HeldFile, File> {
        let fd = file.as_raw_fd();
        let free = registry.0[..room.min(MAX_HELD)].iter().find(|held| {
            held.compare_exchange(FREE, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        match free {
            Some(slot) => Ok(HeldFile {
                file: Some(file),
                slot,
                pid: std::process::id(),
            }),
            None => Err(file),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("a held file is open until dropped")
    }
}

impl Drop for HeldFile {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        if std::process::id() != self.pid {
            // A forked copy: `close_inherited` closed the descriptor, whose
            // number may be another file's by now. Not ours to close.
            let _ = file.into_raw_fd();
            return;
        }
        // Unlisted before it is closed: a fork in between inherits nothing listed.
        self.slot.store(FREE, Ordering::Release);
        drop(file);
    }
}

/// How many files may be held: `most`, and at most a quarter of the
/// process's soft descriptor limit.
fn room_under_the_limit(most: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer for getrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    most.min(usize::try_from(limit.rlim_cur / 4).unwrap_or(usize::MAX))
}

/// In a process just forked from one that held files: closes the inherited
/// descriptors (nothing in this process uses them). Returns how many.
pub fn close_inherited() -> usize {
    close_listed(&HELD)
}

fn close_listed(registry: &Registry) -> usize {
    let mut closed = 0;
    for held in &registry.0 {
        let fd = held.swap(FREE, Ordering::AcqRel);
        if fd != FREE {
            // SAFETY: `fd` was listed by a `HeldFile` of the parent, which
            // unlists before it closes; the child inherited it open and no
            // code of the child owns it (its copies of `HeldFile` never close
            // it: another pid).
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry of its own (tests run in parallel) and a file to open.
    fn scratch() -> (&'static Registry, tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        (Box::leak(Box::new(Registry::new())), dir, path)
    }

    #[test]
    fn held_files_are_listed_until_dropped_and_past_the_limit_given_back() {
        let (registry, _dir, path) = scratch();
        let listed = || {
            registry
                .0
                .iter()
                .filter(|h| h.load(Ordering::Relaxed) != FREE)
                .count()
        };
        let mut held = Vec::new();
        let mut given_back = 0;
        for _ in 0..MAX_HELD + 3 {
            match HeldFile::hold_in(registry, MAX_HELD, File::open(&path).unwrap()) {
                Ok(h) => held.push(h),
                Err(_) => given_back += 1,
            }
        }
        assert_eq!((listed(), held.len(), given_back), (MAX_HELD, MAX_HELD, 3));
        for h in &held {
            assert_eq!(h.slot.load(Ordering::Relaxed), h.file().as_raw_fd());
        }
        held.truncate(10);
        assert_eq!(listed(), 10);
        // What a forked child does: closes what is listed, and its copies
        // (another pid) close nothing more.
        // (Whether each number was closed is not checked here: tests run in
        // parallel and another may open a file under the same number.)
        for h in &mut held {
            h.pid = h.pid.wrapping_add(1);
        }
        assert_eq!(close_listed(registry), 10);
        assert_eq!(listed(), 0);
        drop(held); // must not close (again) numbers that are not its own
    }

    #[test]
    fn no_more_files_are_held_than_the_room_left_under_the_limit() {
        let (registry, _dir, path) = scratch();
        let held: Vec<_> = (0..8)
            .filter_map(|_| HeldFile::hold_in(registry, 5, File::open(&path).unwrap()).ok())
            .collect();
        assert_eq!(held.len(), 5);
        assert!(room_under_the_limit(MAX_HELD) <= MAX_HELD);
        assert_eq!(
            room_under_the_limit(3),
            3.min(room_under_the_limit(usize::MAX))
        );
    }
}
