//! The mappings of this process's writers, as a fork, the SIGBUS guard and
//! the watcher of mapped files see them: a fixed table of atomics, so that
//! none of them needs a lock (a forked child runs no other thread yet, a
//! signal handler may take none, the watcher runs beside the hot path).
//!
//! - `detach_inherited`, in a child right after a fork: every inherited
//!   mapping becomes private zeroed memory at the same address, so whatever
//!   the child still records goes nowhere.
//! - `check_mapped`, a worker's sampler every second: a mapped file whose
//!   name is gone or names another file, or whose size changed, asks for a
//!   `repair` (`repair_wanted`).
//! - The SIGBUS guard (Linux): a store into a page of a mapped file that
//!   another process truncated puts private memory in place of the rest of
//!   that mapping, so the store lands and the worker lives.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::writer::RESERVED_BYTES;
use crate::failures;

/// A mapping of this process, as a fork (`detach_inherited`), the SIGBUS
/// guard and the watcher of mapped files (`check_mapped`) see it: atomics
/// only, so that they need no lock.
pub(super) struct Listed {
    /// Base address; 0: a free entry.
    pub(super) base: AtomicUsize,
    /// The mapped file's path (a C string never freed: see `c_path`); null
    /// for private memory that `flush` writes.
    pub(super) path: AtomicPtr<libc::c_char>,
    /// What the path must name: device, inode (0: no file yet) and size.
    pub(super) dev: AtomicU64,
    pub(super) ino: AtomicU64,
    pub(super) len: AtomicU64,
    /// Where private memory begins that took the place of a truncated
    /// file's pages (the SIGBUS guard, `forget_past`); 0: none.
    pub(super) detached: AtomicUsize,
}

/// Most mappings listed for a fork to detach (a worker has five, a master a
/// dozen); one past them is counted as a write error and not detached.
const MAX_MAPPED: usize = 64;

/// This process's mappings.
static MAPPED: [Listed; MAX_MAPPED] = [const {
    Listed {
        base: AtomicUsize::new(0),
        path: AtomicPtr::new(std::ptr::null_mut()),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
        len: AtomicU64::new(0),
        detached: AtomicUsize::new(0),
    }
}; MAX_MAPPED];

/// Set when a mapped file must be written out again (`check_mapped`, the
/// SIGBUS guard); taken by `take_repair_wanted`.
static REPAIR_WANTED: AtomicBool = AtomicBool::new(false);

/// Lists `base` in `MAPPED`; `None` if the list is full.
pub(super) fn list(base: usize) -> Option<&'static Listed> {
    let entry = MAPPED.iter().find(|entry| {
        entry
            .base
            .compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    });
    if let Some(entry) = entry {
        entry.detached.store(0, Ordering::Release);
    } else {
        failures::write_error(
            1,
            "more files mapped than a fork can detach: a process forked from this one \
             would write into them",
        );
    }
    entry
}

/// The path as a C string that lives as long as the process: the watcher
/// may read it at any time, even while its writer is dropped. One per path
/// opened (a worker opens five).
pub(super) fn c_path(path: &Path) -> *mut libc::c_char {
    match CString::new(path.as_os_str().as_bytes()) {
        Ok(c) => Box::leak(c.into_boxed_c_str()).as_ptr() as *mut libc::c_char,
        Err(_) => std::ptr::null_mut(),
    }
}

/// In a process just forked from one with open writers: replaces each
/// inherited mapping with private zeroed memory at the same address, so
/// that whatever the child still records goes nowhere. Returns how many.
pub fn detach_inherited() -> usize {
    let mut detached = 0;
    REPAIR_WANTED.store(false, Ordering::Relaxed);
    for entry in &MAPPED {
        entry.path.store(std::ptr::null_mut(), Ordering::Release);
        entry.detached.store(0, Ordering::Release);
        let base = entry.base.swap(0, Ordering::AcqRel);
        if base == 0 {
            continue;
        }
        // SAFETY: `base` is the start of a live mapping of `RESERVED_BYTES`
        // that a writer of the parent made and listed (it unlists before it
        // unmaps); the child inherited it and runs no other thread yet.
        // MAP_FIXED replaces it in one step with memory of the same size and
        // protection, so every pointer into it stays valid; the writer's own
        // copy unmaps the same range when dropped.
        let replaced = unsafe { map_private(base, RESERVED_BYTES) };
        if replaced {
            detached += 1;
        } else {
            failures::write_error(
                1,
                format_args!(
                    "cannot detach a mapping inherited by fork: {}",
                    io::Error::last_os_error()
                ),
            );
        }
    }
    detached
}

/// Maps private zeroed memory over `[at, at + len)`, in place of whatever
/// is there. Async-signal-safe (one system call).
///
/// # Safety
/// `[at, at + len)` must lie inside a mapping of this process that no
/// reference to its bytes outlives (only pointers and atomics into it).
pub(super) unsafe fn map_private(at: usize, len: usize) -> bool {
    // SAFETY: the caller's contract; MAP_FIXED replaces the range in one step.
    let mapped = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

/// Whether a mapped file of this process must be written out again: its
/// name is gone or names another file, its size changed (truncated or
/// grown by another process), or it could not be made yet. Lock-free (a
/// worker's sampler calls it every second); a `true` is kept for
/// `take_repair_wanted`, for a thread that may repair.
pub fn check_mapped() -> bool {
    let mut wanted = false;
    for entry in &MAPPED {
        let path = entry.path.load(Ordering::Acquire);
        if path.is_null() || entry.base.load(Ordering::Acquire) == 0 {
            continue;
        }
        // SAFETY: all-zero is a valid `stat`; `path` is a NUL-terminated
        // string that is never freed (`c_path`).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; lstat only fills `st`.
        let named = unsafe { libc::lstat(path, &mut st) } == 0;
        if !named
            || st.st_ino as u64 != entry.ino.load(Ordering::Relaxed)
            || st.st_dev as u64 != entry.dev.load(Ordering::Relaxed)
            || st.st_size as u64 != entry.len.load(Ordering::Relaxed)
        {
            wanted = true;
        }
    }
    if wanted {
        REPAIR_WANTED.store(true, Ordering::Relaxed);
    }
    wanted || REPAIR_WANTED.load(Ordering::Relaxed)
}

/// Whether `check_mapped` or the SIGBUS guard asked for a `repair`: one
/// relaxed load, for the hot path.
#[inline]
pub fn repair_wanted() -> bool {
    REPAIR_WANTED.load(Ordering::Relaxed)
}

/// Takes the request for a `repair` (the caller repairs every writer it has).
pub fn take_repair_wanted() -> bool {
    REPAIR_WANTED.swap(false, Ordering::Relaxed)
}

/// The page size, read once: the SIGBUS guard may not call sysconf.
static PAGE: AtomicUsize = AtomicUsize::new(4096);

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as usize
    } else {
        4096
    }
}

/// The SIGBUS action that was there before the guard, for faults that are
/// not ours (leaked: the handler may read it at any time).
#[cfg(target_os = "linux")]
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

#[cfg(target_os = "linux")]
pub(super) static GUARDED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGBUS guard once per process (a forked child inherits
/// it): a fault on a page of a mapped file that another process truncated
/// puts private memory in place of the rest of that mapping and returns, so
/// that the store is done again there and lands (`repair` writes the file
/// out again later). Every other SIGBUS goes on to the action that was
/// there before (the default kills the process, as without the guard).
#[cfg(target_os = "linux")]
pub(super) fn guard_sigbus() {
    if GUARDED.swap(true, Ordering::AcqRel) {
        return;
    }
    PAGE.store(page_size(), Ordering::Relaxed);
    // SAFETY: all-zero is a valid sigaction; the fields set below are the
    // handler (with the SA_SIGINFO signature), its flags and an empty mask.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_sigbus as extern "C" fn(_, _, _) as libc::sighandler_t;
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: both structs are valid and owned here; sigaction swaps the
    // process's action for SIGBUS and returns the previous one.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let installed = unsafe {
        libc::sigemptyset(&mut ours.sa_mask);
        libc::sigaction(libc::SIGBUS, &ours, &mut previous)
    } == 0;
    if installed {
        PREVIOUS.store(Box::leak(Box::new(previous)), Ordering::Release);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn guard_sigbus() {}

/// The guard's handler. Async-signal-safe: atomics, `mmap`, `sigaction`,
/// `raise`, and the previous handler.
#[cfg(target_os = "linux")]
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: this thread's errno, restored before returning.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t; si_addr
    // is the faulting address of a fault (si_code > 0).
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code <= 0 || !detach_faulted(addr) {
        chain(signal, code, info, context);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// If `addr` lies in a listed mapping: private memory from its page up to
/// where private memory already begins (or the end of the mapping), so
/// that nothing stored there since an earlier fault is lost.
#[cfg(target_os = "linux")]
fn detach_faulted(addr: usize) -> bool {
    let page = PAGE.load(Ordering::Relaxed);
    let Some(entry) = MAPPED.iter().find(|entry| {
        let base = entry.base.load(Ordering::Acquire);
        base != 0 && addr >= base && addr < base + RESERVED_BYTES
    }) else {
        return false;
    };
    let base = entry.base.load(Ordering::Acquire);
    let from = addr & !(page - 1);
    let mut end = entry.detached.load(Ordering::Acquire);
    loop {
        if end != 0 && from >= end {
            // Another thread is replacing this page: the store is tried again.
            return true;
        }
        match entry
            .detached
            .compare_exchange(end, from, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => break,
            Err(seen) => end = seen,
        }
    }
    let end = if end == 0 { base + RESERVED_BYTES } else { end };
    // SAFETY: [from, end) is inside a mapping that a writer of this process
    // made and listed (it unlists before it unmaps), below any private
    // memory already there; slots are pointers into it, no reference to
    // its bytes.
    if !unsafe { map_private(from, end - from) } {
        return false;
    }
    REPAIR_WANTED.store(true, Ordering::Relaxed);
    true
}

/// A SIGBUS that is not ours: what the previous action would have done.
#[cfg(target_os = "linux")]
fn chain(
    signal: libc::c_int,
    code: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: a non-null pointer comes from Box::leak and is never freed.
    let previous = unsafe { PREVIOUS.load(Ordering::Acquire).as_ref() };
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_IGN && code <= 0 {
        return; // sent by someone, and ignored before
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // The default action: a fault happens again when this returns, a
        // sent signal is raised again (blocked until this returns).
        // SAFETY: all-zero with SIG_DFL is a valid sigaction; sigaction and
        // raise are async-signal-safe.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            if code <= 0 {
                libc::raise(libc::SIGBUS);
            }
        }
        return;
    }
    let flags = previous.map_or(0, |p| p.sa_flags);
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler has this signature (its installer's
        // contract with sigaction).
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: a plain handler has this signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}
