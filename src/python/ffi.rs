//! The CPython C API this core calls beyond what pyo3-ffi declares for an
//! abi3 module built for Python 3.9, in one place.
//!
//! The contract: the one `cp39-abi3` wheel runs on every CPython from 3.9,
//! so each item here must be exported, with this signature and meaning, by
//! CPython 3.9 and every later version. pyo3-ffi declares these only for a
//! limited API of the version that made them part of it (3.10 or 3.12), but
//! CPython exported them, unchanged, before that:
//! - `METH_FASTCALL` (limited API in 3.10): CPython has called methods of this
//!   convention the same way since 3.7 (`Include/methodobject.h`, 0x0080);
//! - `PyUnicode_AsUTF8AndSize` (limited API in 3.10): public since 3.3;
//! - `PyObject_VectorcallDict` (limited API in 3.12): exported since 3.9.
//!
//! Everything else goes through pyo3-ffi's declarations.

use pyo3::ffi;

/// The calling convention that passes arguments as a C array, no tuple.
pub(super) const METH_FASTCALL: std::os::raw::c_int = 0x0080;

extern "C" {
    /// The UTF-8 bytes of a `str`, owned by the object, and their length;
    /// NULL with an exception set if it has no UTF-8 form.
    pub(super) fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const std::os::raw::c_char;

    /// Calls `callable` with `args` (and a dict of keyword arguments, or
    /// NULL) through its vectorcall when it has one; a new reference, or
    /// NULL with an exception set.
    pub(super) fn PyObject_VectorcallDict(
        callable: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: usize,
        kwargs: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
}
