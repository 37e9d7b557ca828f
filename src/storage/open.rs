//! Opening files of the multiprocess directory, which other users may be able
//! to write to (a Kubernetes emptyDir, a shared 0777 directory): symlinks are
//! never followed, a FIFO or device never blocks, every fd is close-on-exec,
//! and only regular files are handed out.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

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
/// symlink points to.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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
