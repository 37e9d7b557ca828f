//! Cells of memory a master shares with the workers it forks: one anonymous
//! shared mapping, made once before the first fork and never unmapped, so a
//! worker can hand the master a few words without any file (write errors,
//! exit notes).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// `LEN` atomic words, shared with every child forked after `share`.
pub struct SharedCells<const LEN: usize> {
    cells: AtomicPtr<AtomicU64>,
}

impl<const LEN: usize> SharedCells<LEN> {
    /// Not shared yet: `get` answers `None` until `share` succeeds.
    pub const fn new() -> Self {
        SharedCells {
            cells: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Maps the cells (once; later calls keep the first mapping). Where the
    /// mapping fails, `get` stays `None` and callers fall back.
    pub fn share(&self) {
        if !self.cells.load(Ordering::Acquire).is_null() {
            return;
        }
        let bytes = LEN * std::mem::size_of::<AtomicU64>();
        // SAFETY: an anonymous shared mapping, never unmapped once
        // published: the pointer stays valid for the life of this process
        // and of every child forked after this call. mmap zero-fills it;
        // AtomicU64 has no invalid bit patterns and the mapping is
        // page-aligned.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return;
        }
        if self
            .cells
            .compare_exchange(
                std::ptr::null_mut(),
                page.cast(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // SAFETY: the mapping was made just above and never published.
            unsafe { libc::munmap(page, bytes) };
        }
    }

    /// The cells, once shared.
    pub fn get(&self) -> Option<&'static [AtomicU64]> {
        let cells = self.cells.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published by `share` and points to
        // LEN cells of a mapping that is never unmapped.
        (!cells.is_null()).then(|| unsafe { std::slice::from_raw_parts(cells, LEN) })
    }
}
