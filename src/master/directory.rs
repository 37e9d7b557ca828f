//! The multiprocess directory: one master per directory, kept while it
//! runs, and the private directories of dead masters swept.
//!
//! The owner holds a POSIX record lock on `<dir>/.owner` (which also holds
//! its pid) for its whole life. Record locks belong to a process: workers
//! forked from it do not hold it, Gunicorn's HUP (same process) keeps it, and
//! it is gone the moment the owner dies, so a directory left by a dead master
//! is taken over. The fd is close-on-exec and never closed while it is the
//! owner file (closing any fd of the file would drop the lock).
//!
//! A directory removed while its master runs (a tmp cleaner under /tmp) is
//! made again by `keep`, as it was made (`storage::open::remember_directory`),
//! with a new `.owner` locked; every process then writes its files out again
//! from memory. A private directory (made by the master for itself) holds
//! the marker `.private`: a later master removes those whose owner is gone
//! (`sweep_private_directories`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::AtomicU32;

use parking_lot::Mutex;

use crate::failures;
use crate::master::archive::process_gone;
use crate::storage::names::{self, is_left_by_a_run, OWNER_FILE, PRIVATE_MARKER, PRIVATE_PREFIX};
use crate::storage::open::{
    self, create_fresh, is_own_file, make_directory_again, mark_private, open_read, open_write,
    still_names,
};

/// The owner lock's file, kept open for the life of the process (or until
/// the directory is made again), with the directory it is in.
static OWNER: Mutex<Option<(std::path::PathBuf, File)>> = Mutex::new(None);

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
/// exited and the lock is ours: its files can be folded then. `private`: the
/// master made `dir` for itself (it is marked, and made again as 0700).
pub fn prepare(
    dir: &Path,
    private: bool,
    old_master_gone: impl FnOnce(u32) + Send + 'static,
) -> Result<Takeover, PrepareError> {
    fs::create_dir_all(dir)?;
    open::remember_directory(dir, private);
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
        if private {
            mark_private(dir)?;
        }
        *OWNER.lock() = Some((dir.to_owned(), file));
        return Ok(Takeover::Fresh);
    }
    let owner = owner_pid(&file)?;
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    if owner != parent || owner == 0 {
        return Err(PrepareError::InUse { owner });
    }
    // The old master keeps the lock until it exits; then it is ours.
    let dir = dir.to_owned();
    std::thread::Builder::new()
        .name("gpe-owner".into())
        .stack_size(64 << 10)
        .spawn(move || {
            if lock(&file, true).unwrap_or(false) {
                let _ = write_pid(&file);
                if private {
                    let _ = mark_private(&dir);
                }
                *OWNER.lock() = Some((dir, file));
                old_master_gone(owner);
            }
        })?;
    Ok(Takeover::Upgrade { from: owner })
}

/// Makes the directory again if someone removed it (or its owner file)
/// while this master owns it: as it was made, with a new owner file locked,
/// and one warning line. `true` if it did: then every file of the master is
/// to be written out again (its workers notice on their own). Does nothing
/// in a master that does not own the directory (yet).
pub fn keep(dir: &Path) -> io::Result<bool> {
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let mut owner = OWNER.lock();
    let path = dir.join(OWNER_FILE);
    match owner.as_ref() {
        Some((owned, held)) if owned == dir && !still_names(&path, held) => {}
        _ => return Ok(false),
    }
    let made = make_directory_again(dir)?;
    let file = match open_write(&path) {
        Ok(file) if is_own_file(&file)? => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
        _ => create_fresh(&path)?,
    };
    if !lock(&file, false)? {
        // Another master started in the directory made again: it is its.
        let other = owner_pid(&file)?;
        *owner = None;
        failures::log_once(
            &TAKEN,
            format_args!(
                "the multiprocess directory {} was made again and is now owned by the \
                 master pid {other}: this master no longer keeps it",
                dir.display()
            ),
        );
        return Ok(false);
    }
    write_pid(&file)?;
    if open::is_private(dir) {
        mark_private(dir)?;
    }
    *owner = Some((dir.to_owned(), file));
    let what = if made {
        "was removed: made again"
    } else {
        "lost its owner file: taken again"
    };
    failures::warn(format_args!(
        "the multiprocess directory {} {what}; the master and every worker write their \
         values out again",
        dir.display()
    ));
    Ok(true)
}

/// Removes the private directories that masters of this user left in
/// `own`'s parent (a master killed with SIGKILL cannot clean up): a name
/// that begins as ours, a real directory (not a symlink) with our marker
/// file, no master holding its owner lock, and no process alive that any
/// name in it belongs to (the owner's pid, workers', prometheus_client's).
/// Returns how many; one line names them.
pub fn sweep_private_directories(own: &Path) -> usize {
    let Some(parent) = own.parent() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PRIVATE_PREFIX));
        if ours && path != own && left_by_a_dead_master(&path) && fs::remove_dir_all(&path).is_ok()
        {
            swept.push(path.display().to_string());
        }
    }
    if !swept.is_empty() {
        failures::info(format_args!(
            "removed {} private multiprocess directories of masters that died: {}",
            swept.len(),
            swept.join(", ")
        ));
    }
    swept.len()
}

/// See `sweep_private_directories`.
fn left_by_a_dead_master(dir: &Path) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let ours = |meta: &fs::Metadata| meta.uid() == euid;
    match fs::symlink_metadata(dir) {
        // Root may remove a directory it gave to the workers' user.
        Ok(meta) if meta.is_dir() && (ours(&meta) || euid == 0) => {}
        _ => return false,
    }
    match fs::symlink_metadata(dir.join(PRIVATE_MARKER)) {
        Ok(meta) if meta.is_file() && ours(&meta) => {}
        _ => return false,
    }
    let mut pids = Vec::new();
    match open_read(&dir.join(OWNER_FILE)) {
        Ok(file) => {
            if !matches!(lock_is_free(&file), Ok(true)) {
                return false;
            }
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&file, 32), &mut text);
            pids.extend(text.trim().parse::<u32>().ok());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return false,
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        pids.extend(entry.file_name().to_str().and_then(names::process_of));
    }
    pids.iter().all(|&pid| process_gone(pid))
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
        assert_eq!(prepare(dir.path(), false, |_| ()).unwrap(), Takeover::Fresh);
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
