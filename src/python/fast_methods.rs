//! The two methods a WSGI request calls with arguments, defined with the
//! calling conventions that pass them without a tuple: `METH_O` for
//! `WorkerMeter.wsgi_started(req)` and `METH_FASTCALL` (vectorcall) for
//! `MeteredLog.access(resp, req, environ, request_time)`.
//!
//! PyO3 defines the methods of an abi3 module built for Python 3.9 with
//! `METH_VARARGS`: every call packs its arguments in a tuple and unpacks them
//! again, a quarter of what the core costs per request. `METH_FASTCALL` is
//! one of the items of `ffi`, which says why the one abi3 wheel can use it on
//! 3.9 as well. Everything else the methods do goes through PyO3's safe types.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::PyClass;

use std::sync::OnceLock;

use super::access_log::{CountedAccess, MeteredLog};
use super::ffi::METH_FASTCALL;
use super::worker::WorkerMeter;

/// Installs the methods on their classes (module start-up).
pub(super) fn install(py: Python<'_>) -> PyResult<()> {
    define(
        &py.get_type::<WorkerMeter>(),
        c"wsgi_started",
        wsgi_started as *mut std::ffi::c_void,
        ffi::METH_O,
        c"wsgi_started($self, req, /)\n--\n\nA WSGI request starts (Gunicorn's `req`): counts it in \
          flight and keeps its start. Its pair: `wsgi_answered`, then `wsgi_left`.",
    )?;
    define(
        &py.get_type::<MeteredLog>(),
        c"access",
        access as *mut std::ffi::c_void,
        METH_FASTCALL,
        c"access($self, resp, req, environ, request_time, /)\n--\n\nCounts the response, \
          then logs it as Gunicorn would.",
    )
}

/// Makes `function` (of the convention `flags` names) the method `name` of
/// `class`.
pub(super) fn define(
    class: &Bound<'_, PyType>,
    name: &'static std::ffi::CStr,
    function: *mut std::ffi::c_void,
    flags: std::os::raw::c_int,
    doc: &'static std::ffi::CStr,
) -> PyResult<()> {
    let definition = leak_definition(name, function, flags, doc);
    let py = class.py();
    // SAFETY: `class` is a live type object and `definition` lives forever;
    // the result is a new reference or NULL with an exception set.
    let method = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(class.as_type_ptr(), definition))
    }?;
    class.setattr(name.to_str().unwrap_or_default(), method)
}

/// A method definition that lives forever: CPython keeps a pointer to it for
/// as long as the method lives (leaked once per method made).
fn leak_definition(
    name: &'static std::ffi::CStr,
    function: *mut std::ffi::c_void,
    flags: std::os::raw::c_int,
    doc: &'static std::ffi::CStr,
) -> *mut ffi::PyMethodDef {
    Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            // SAFETY: C stores every calling convention in this field and
            // reads it back as the one `ml_flags` names; `function` has the
            // signature of that convention (below).
            PyCFunction: unsafe {
                std::mem::transmute::<*mut std::ffi::c_void, ffi::PyCFunction>(function)
            },
        },
        ml_flags: flags,
        ml_doc: doc.as_ptr(),
    }))
}

/// `None`, as a new reference (what a method returns).
fn none() -> *mut ffi::PyObject {
    // SAFETY: Py_None is immortal or reference-counted; either way the
    // caller receives a reference it owns, as the C API expects.
    unsafe {
        let none = ffi::Py_None();
        ffi::Py_IncRef(none);
        none
    }
}

/// `METH_O`: `WorkerMeter.wsgi_started(req)`; never raises.
unsafe extern "C" fn wsgi_started(
    slf: *mut ffi::PyObject,
    req: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the thread attached and with live
    // `self` and argument, borrowed for the call.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: both pointers are live objects borrowed for the call (above).
    let (slf, req) = unsafe { (Bound::ref_from_ptr(py, &slf), Bound::ref_from_ptr(py, &req)) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // The method descriptor checked that `self` is a WorkerMeter.
        if let Ok(meter) = slf.cast::<WorkerMeter>() {
            meter.get().wsgi_started(req);
        }
    }));
    none()
}

/// `METH_FASTCALL`: `MeteredLog.access(resp, req, environ, request_time)`.
unsafe extern "C" fn access(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL method with what `with_four` needs.
    unsafe { with_four::<MeteredLog>(slf, args, nargs, |log, py, args| log.access(py, args)) }
}

/// `METH_FASTCALL` with a `CountedAccess` as `self`: the logger's `access`
/// attribute that `WorkerMeter.watch_log` sets.
unsafe extern "C" fn counted_access(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: as in `access`; `slf` is the `CountedAccess` the function was
    // made with (`counted_access_function`).
    unsafe { with_four::<CountedAccess>(slf, args, nargs, |c, py, args| c.call(py, args)) }
}

/// Calls `f` with `slf` as a `T` and the four arguments of an `access` call;
/// NULL with an exception set when they are not that.
///
/// # Safety
/// CPython's arguments of a METH_FASTCALL function: the thread attached,
/// `slf` live, `nargs` live objects at `args`, all borrowed for the call.
unsafe fn with_four<T: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    f: impl FnOnce(&T, Python<'_>, &[*mut ffi::PyObject; 4]) -> *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the thread is attached (the caller's contract).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `args` holds `nargs` live objects (the caller's contract).
    let Some(args) = (unsafe { four(py, args, nargs) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `slf` is live, borrowed for the call (the caller's contract).
    let slf = unsafe { Bound::ref_from_ptr(py, &slf) };
    match slf.cast::<T>() {
        Ok(this) => f(this.get(), py, args),
        Err(e) => {
            PyErr::from(e).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// The built-in function `counted.call`, called with vectorcall.
pub(super) fn counted_access_function<'py>(
    counted: &Bound<'py, CountedAccess>,
) -> PyResult<Bound<'py, PyAny>> {
    static DEFINITION: OnceLock<usize> = OnceLock::new();
    let definition = *DEFINITION.get_or_init(|| {
        leak_definition(
            c"access",
            counted_access as *mut std::ffi::c_void,
            METH_FASTCALL,
            c"access(resp, req, environ, request_time, /)\n--\n\nCounts the response, then \
              logs it with the logger's own access.",
        ) as usize
    }) as *mut ffi::PyMethodDef;
    let py = counted.py();
    // SAFETY: `definition` lives forever and `counted` is live (the function
    // keeps a reference); the result is a new reference or NULL with an
    // exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(definition, counted.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// The four arguments of `access`, or NULL's exception set.
///
/// # Safety
/// `args` holds `nargs` live objects.
unsafe fn four<'a>(
    py: Python<'_>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> Option<&'a [*mut ffi::PyObject; 4]> {
    if nargs != 4 {
        PyTypeError::new_err(format!(
            "access() takes 4 positional arguments ({nargs} given)"
        ))
        .restore(py);
        return None;
    }
    // SAFETY: `args` holds 4 pointers (checked), live for the call.
    Some(unsafe { &*(args as *const [*mut ffi::PyObject; 4]) })
}
