//! Opening files of the multiprocess directory, which other users may be able
//! to write to (a Kubernetes emptyDir, a shared 0777 directory): symlinks are
//! never followed, a FIFO or device never blocks, every fd is close-on-exec,
//! and only regular files are handed out.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::names::PRIVATE_MARKER;

/// Flags of every open: no symlink, no blocking on a FIFO, no fd leaked to an
/// exec'd program.
const SAFE_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Opens `path` read-only; fails on anything but a regular file.
pub fn open_read(path: &Path) -> io::Result<File> {
    Ok(open_read_sized(path)?.0)
}

/// As `open_read`, with the file's size: one `fstat` per file on the scrape
/// path. O_NONBLOCK stays set: it has no effect on a regular file.
pub fn open_read_sized(path: &Path) -> io::Result<(File, u64)> {
    let (file, meta) = open_read_stat(path)?;
    Ok((file, meta.len()))
}

/// As `open_read`, with the file's `fstat` (size and identity).
pub fn open_read_stat(path: &Path) -> io::Result<(File, fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(SAFE_FLAGS)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, meta))
}

/// Opens `path` for reading and writing, creating it (mode 0644) if missing.
/// Fails on anything but a regular file.
pub fn open_write(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(SAFE_FLAGS)
        .open(path)?;
    regular(file)
}

/// Opens the regular file at `path` for reading and writing if it exists.
pub fn open_existing(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(SAFE_FLAGS)
        .open(path)?;
    regular(file)
}

/// Creates `path` afresh: whatever has that name (a symlink, a FIFO, a
/// corrupt or foreign file) is unlinked first, never opened or truncated.
pub fn create_fresh(path: &Path) -> io::Result<File> {
    remove_entry(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(SAFE_FLAGS)
        .open(path)?;
    regular(file)
}

/// Unlinks `path` if present. `unlink` acts on the name, never on what a
/// symlink points to. An empty directory put under the name is removed too.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => {
            fs::remove_dir(path).map_err(|_| e)
        }
        removed => removed,
    }
}

/// How the multiprocess directory is made again if someone removes it while
/// Gunicorn runs: the master records it before it forks, so that its
/// workers know it too.
struct DirectoryRule {
    path: PathBuf,
    /// Made by the master for itself: mode 0700, with the marker file.
    private: bool,
    /// Given to the workers' user and group (`--user`, `--group`).
    owner: Option<(u32, u32)>,
}

/// The rule; replaced (the old one leaked: a master records it once or
/// twice) and read without a lock, so that a process forked while another
/// thread records it reads a whole one.
static RULE: AtomicPtr<DirectoryRule> = AtomicPtr::new(std::ptr::null_mut());

fn rule() -> Option<&'static DirectoryRule> {
    // SAFETY: a non-null pointer comes from Box::leak below and is never freed.
    unsafe { RULE.load(Ordering::Acquire).as_ref() }
}

fn set_rule(rule: DirectoryRule) {
    RULE.store(Box::leak(Box::new(rule)), Ordering::Release);
}

/// Records how `dir` is made again: private (0700, marked) or as named.
pub fn remember_directory(dir: &Path, private: bool) {
    let owner = rule().filter(|r| r.path == dir).and_then(|r| r.owner);
    set_rule(DirectoryRule {
        path: dir.to_owned(),
        private,
        owner,
    });
}

/// Records that the directory is given to `uid`:`gid` (the workers' user).
pub fn remember_directory_owner(uid: u32, gid: u32) {
    if let Some(r) = rule() {
        set_rule(DirectoryRule {
            path: r.path.clone(),
            private: r.private,
            owner: Some((uid, gid)),
        });
    }
}

/// Makes `dir` again as its master made it (`remember_directory`); `false`
/// if it exists. Fails for a directory this process was not told about.
pub fn make_directory_again(dir: &Path) -> io::Result<bool> {
    let Some(rule) = rule().filter(|r| r.path == dir) else {
        return Err(io::ErrorKind::NotFound.into());
    };
    if let Some(parent) = dir.parent().filter(|_| !rule.private) {
        fs::create_dir_all(parent)?;
    }
    let mode = if rule.private { 0o700 } else { 0o777 };
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        made => made?,
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if let (Some((uid, gid)), 0) = (rule.owner, unsafe { libc::geteuid() }) {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    if rule.private {
        mark_private(dir)?;
    }
    Ok(true)
}

/// Whether `dir` is the one this process was told about, and private.
pub fn is_private(dir: &Path) -> bool {
    rule().is_some_and(|r| r.private && r.path == dir)
}

/// Leaves the marker of a master's private directory in `dir`.
pub fn mark_private(dir: &Path) -> io::Result<()> {
    let path = dir.join(PRIVATE_MARKER);
    match open_write(&path) {
        Ok(file) if is_own_file(&file)? => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
        _ => create_fresh(&path).map(drop),
    }
}

/// Whether `file` is a regular file this process may map for writing without
/// anyone else being able to shrink it under the mapping: owned by our
/// effective user, with no other name (hard link) elsewhere.
pub fn is_own_file(file: &File) -> io::Result<bool> {
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    Ok(meta.is_file() && meta.uid() == euid && meta.nlink() == 1)
}

/// Whether `path` still names the inode `file` has open.
pub fn still_names(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Reserves `len` bytes of disk for `file` (and extends it to `len`), so that
/// writing through a mapping of those bytes can never fault for want of
/// space: a full disk is an error here, never a SIGBUS later.
#[cfg(target_os = "linux")]
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    loop {
        // SAFETY: the fd is open for writing for the life of `file`; the
        // call only allocates blocks of that file.
        let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match err {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// macOS has no posix_fallocate: the file is only extended (its blocks are
/// not reserved, so a full disk can still fault a write through the mapping).
#[cfg(not(target_os = "linux"))]
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        // The file is regular: later reads and writes may block as usual.
        clear_nonblocking(&file)?;
        Ok(file)
    } else {
        Err(io::Error::other("not a regular file"))
    }
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd that `file` keeps open; F_GETFL/F_SETFL only
    // read and change its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_fifos_and_directories_are_refused_without_touching_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("counter_1.db");
        symlink(&target, &link).unwrap();
        assert!(open_read(&link).is_err());
        assert!(open_write(&link).is_err());
        let fifo = dir.path().join("counter_2.db");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(open_read(&fifo).is_err()); // returns at once: O_NONBLOCK
        assert!(open_write(&fifo).is_err());
        assert!(open_read(dir.path()).is_err());
        let fresh = create_fresh(&link).unwrap();
        assert!(is_own_file(&fresh).unwrap());
        assert!(still_names(&link, &fresh));
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn every_fd_is_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let file = open_write(&dir.path().join("a.db")).unwrap();
        // SAFETY: F_GETFD on an open fd.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn a_hard_linked_file_is_not_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let file = open_write(&path).unwrap();
        assert!(is_own_file(&file).unwrap());
        fs::hard_link(&path, dir.path().join("b")).unwrap();
        assert!(!is_own_file(&file).unwrap());
    }
}
