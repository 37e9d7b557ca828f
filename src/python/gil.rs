//! State of a worker process that its threads touch only with the GIL held:
//! the module declares that it uses the GIL (`gil_used = true`), and no
//! handler is metered, nor a meter installed, where a free-threaded CPython
//! runs without it (`ensure_gil`). Under that contract a `GilCell` needs no
//! lock: a request in flight costs no atomic instruction and no thread-local
//! look-up.

use std::cell::RefCell;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// A value only threads holding the GIL read or write.
pub(super) struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through `with`, which takes a `Python` token:
// the calling thread is attached to the interpreter, and the interpreter
// runs with its GIL (`ensure_gil` refused to meter otherwise), so no two
// threads are in `with` at once; the value itself is sent between threads.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub(super) const fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    /// Calls `f` with the value. `f` must not call into Python (which could
    /// come back here): a re-entry panics, it never aliases.
    pub(super) fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

/// Fails where the interpreter runs without its GIL (a free-threaded CPython
/// started with `PYTHON_GIL=0`): the core counts requests under the GIL.
pub(super) fn ensure_gil(py: Python<'_>) -> PyResult<()> {
    let enabled = match py.import("sys")?.getattr("_is_gil_enabled") {
        Ok(is_enabled) => is_enabled.call0()?.is_truthy()?,
        Err(_) => true, // a CPython that always has it
    };
    if enabled {
        return Ok(());
    }
    Err(PyRuntimeError::new_err(
        "gunicorn_prometheus_exporter counts requests under the GIL, and this free-threaded \
         CPython runs without it (PYTHON_GIL=0): start it with the GIL",
    ))
}
