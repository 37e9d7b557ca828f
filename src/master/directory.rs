//! The multiprocess directory at master start: one master per directory.
//!
//! The owner holds a POSIX record lock on `<dir>/.owner` (which also holds
//! its pid) for its whole life. Record locks belong to a process: workers
//! forked from it do not hold it, Gunicorn's HUP (same process) keeps it, and
//! it is gone the moment the owner dies, so a directory left by a dead master
//! is taken over. The fd is close-on-exec and never closed (closing any fd of
//! the file would drop the lock).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use parking_lot::Mutex;

use crate::storage::names::{is_left_by_a_run, OWNER_FILE};
use crate::storage::open::{create_fresh, is_own_file, open_write};

/// The owner lock's file, kept open for the life of the process.
static OWNER: Mutex<Option<File>> = Mutex::new(None);

/// How this master came to own the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// No live owner: files of an earlier run were cleared.
    Fresh,
    /// Gunicorn's USR2: the owner is our parent, the old master, whose
    /// workers still write here. Nothing is cleared; the lock is ours once
    /// the old master exits.
    Upgrade {
        /// The old master's pid.
        from: u32,
    },
}

/// Why the directory cannot be used.
#[derive(Debug)]
pub enum PrepareError {
    /// Another live master owns it.
    InUse {
        /// Its pid.
        owner: u32,
    },
    /// The directory could not be made, locked or cleared.
    Io(io::Error),
}

impl From<io::Error> for PrepareError {
    fn from(e: io::Error) -> Self {
        PrepareError::Io(e)
    }
}

/// Makes `dir` if needed and takes it over: clears the files an earlier run
/// left (`*.db`, native histograms' and exemplars' `*.ndb`, exit notes)
/// unless this is an upgrade (see `Takeover`). On an upgrade,
/// `old_master_gone` runs (on a thread) with the old master's pid once it has
/// exited and the lock is ours: its files can be folded then.
pub fn prepare(
    dir: &Path,
    old_master_gone: impl FnOnce(u32) + Send + 'static,
) -> Result<Takeover, PrepareError> {
    fs::create_dir_all(dir)?;
    let path = dir.join(OWNER_FILE);
    let file = match open_write(&path) {
        // Ours, or locked by its owner: never a hard link to a file elsewhere
        // (the owner's pid is written into it).
        Ok(file) if is_own_file(&file)? || !lock_is_free(&file)? => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e.into()),
        // A symlink, FIFO or foreign file planted under the name is replaced.
        _ => create_fresh(&path)?,
    };
    if lock(&file, false)? {
        write_pid(&file)?;
        clear(dir)?;
        *OWNER.lock() = Some(file);
        return Ok(Takeover::Fresh);
    }
    let owner = owner_pid(&file)?;
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    if owner != parent || owner == 0 {
        return Err(PrepareError::InUse { owner });
    }
    // The old master keeps the lock until it exits; then it is ours.
    std::thread::Builder::new()
        .name("gpe-owner".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let owned = lock(&file, true).unwrap_or(false);
            if owned {
                let _ = write_pid(&file);
            }
            *OWNER.lock() = Some(file);
            if owned {
                old_master_gone(owner);
            }
        })?;
    Ok(Takeover::Upgrade { from: owner })
}

/// Takes the owner's write lock on `file`; `false` if another process holds it.
fn lock(file: &File, wait: bool) -> io::Result<bool> {
    let region = region(libc::F_WRLCK as libc::c_short);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: fcntl on an fd `file` keeps open, with a valid flock struct.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &region) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn lock_is_free(file: &File) -> io::Result<bool> {
    Ok(owner_pid(file)? == 0)
}

/// The pid of the process that holds the lock (0 if none now).
fn owner_pid(file: &File) -> io::Result<u32> {
    let mut region = region(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_GETLK fills the flock struct we own; the fd is open.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut region) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if region.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(0);
    }
    Ok(region.l_pid.max(0) as u32)
}

fn region(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is a plain C struct for which all-zero is valid.
    let mut region: libc::flock = unsafe { std::mem::zeroed() };
    region.l_type = kind;
    region.l_whence = libc::SEEK_SET as libc::c_short;
    region
}

fn write_pid(file: &File) -> io::Result<()> {
    file.set_len(0)?;
    let mut line = Vec::new();
    writeln!(line, "{}", std::process::id())?;
    file.write_all_at(&line, 0)
}

/// Removes what an earlier run left. Only names are removed (`unlink` never
/// follows a symlink), whatever they are, except directories.
fn clear(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_left_by_a_run(&name) && !entry.file_type()?.is_dir() {
            crate::storage::open::remove_entry(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_taken_over_and_cleared_when_no_one_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("counter_1.db"), b"old").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("counter_2.db")).unwrap();
        fs::write(dir.path().join(OWNER_FILE), b"12345\n").unwrap();
        assert_eq!(prepare(dir.path(), |_| ()).unwrap(), Takeover::Fresh);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [OWNER_FILE]);
        assert_eq!(
            fs::read_to_string(dir.path().join(OWNER_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
