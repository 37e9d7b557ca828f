//! Gunicorn's request handlers, metered by the core: `meter_handler(cls,
//! name, handle, req_index)` makes `cls.<name>` a method of the core that
//! counts the request in flight (`wsgi_started`), calls Gunicorn's `handle`,
//! counts an exception the application let out (`request_failed`) and ends
//! the request (`wsgi_left`).
//!
//! A Python wrapper did the same in a frame of its own, with a `try`, an
//! attribute and three method calls. Here it is a method descriptor of the class
//! (`PyDescr_NewMethod`, `METH_FASTCALL | METH_KEYWORDS`): Python calls it
//! without binding a method or packing a tuple, and it calls Gunicorn's
//! handler with the same arguments through vectorcall.
//!
//! Gunicorn's handler is kept on the class (`_unmetered_<name>`, an
//! `UnmeteredHandler`), where the method finds it by name; the request is
//! counted on the meter of this process (`process_meter`), if it has one.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{ffi, intern};

use super::fast_methods::define;
use super::ffi::METH_FASTCALL;
use super::gil::ensure_gil;
use super::in_flight::Ended;
use super::process_meter;
use super::worker::WorkerMeter;

/// Gunicorn's own handler, kept on the metered class, the position of its
/// `req` among the arguments after `self`, and how Gunicorn answers when it
/// raises.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct UnmeteredHandler {
    handle: Py<PyAny>,
    req_index: usize,
    /// `None`: Gunicorn answers a raising handler with an error page it logs
    /// (`handle_error`). Else a tuple of exception classes: Gunicorn answers
    /// with a 500 it does not log, except for these (nothing is answered).
    unlogged_errors: Option<Py<PyTuple>>,
}

impl UnmeteredHandler {
    /// How the handler ended, by the exception it let out (`None`: returned).
    fn ended(&self, py: Python<'_>, error: Option<&PyErr>) -> Ended {
        use pyo3::exceptions::{PyOSError, PyStopIteration};
        let Some(error) = error else {
            return Ended::Done;
        };
        // The response was already on the wire, or the connection is gone.
        if error.is_instance_of::<PyStopIteration>(py) || error.is_instance_of::<PyOSError>(py) {
            return Ended::Done;
        }
        match &self.unlogged_errors {
            None => Ended::ErrorPageLogged,
            Some(quiet) if error.is_instance(py, quiet.bind(py)) => Ended::Done,
            Some(_) => Ended::Answered500,
        }
    }
}

/// The handlers the core can meter: the method's name, the class attribute
/// that keeps Gunicorn's handler (interned once), and the C function that
/// finds it there.
const HANDLERS: [(&CStr, KeptName, Handler); 2] = [
    (
        c"handle_request",
        |py| intern!(py, "_unmetered_handle_request"),
        by_name::<0>,
    ),
    (
        c"handle_http2_request",
        |py| intern!(py, "_unmetered_handle_http2_request"),
        by_name::<1>,
    ),
];

type KeptName = for<'py> fn(Python<'py>) -> &'py Bound<'py, PyString>;

type Handler = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// `_core.meter_handler(cls, name, handle, req_index, unlogged_errors)`:
/// `cls.<name>` counts each request `handle` (Gunicorn's handler, whose
/// argument `req_index` after `self` is the request) handles;
/// `unlogged_errors` as `UnmeteredHandler` keeps it.
#[pyfunction]
#[pyo3(signature = (cls, name, handle, req_index, unlogged_errors=None))]
pub(super) fn meter_handler(
    cls: &Bound<'_, PyType>,
    name: &str,
    handle: Py<PyAny>,
    req_index: usize,
    unlogged_errors: Option<Py<PyTuple>>,
) -> PyResult<()> {
    let Some((method, kept, by_name)) = HANDLERS
        .iter()
        .find(|(method, _, _)| method.to_str() == Ok(name))
    else {
        return Err(PyTypeError::new_err(format!(
            "the core cannot meter a handler named {name:?}"
        )));
    };
    let py = cls.py();
    ensure_gil(py)?;
    let handler = Py::new(
        py,
        UnmeteredHandler {
            handle,
            req_index,
            unlogged_errors,
        },
    )?;
    cls.setattr(kept(py), &handler)?;
    define(
        cls,
        method,
        *by_name as *mut std::ffi::c_void,
        METH_FASTCALL | ffi::METH_KEYWORDS,
        c"Gunicorn's handler of one request, metered by the core.",
    )
}

/// The C function of the handler `HANDLERS[HANDLER]` names: finds
/// Gunicorn's handler on the class, under the name it keeps it.
unsafe extern "C" fn by_name<const HANDLER: usize>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the thread attached, `slf` live.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `slf` is live, borrowed for the call.
    let worker = unsafe { Bound::ref_from_ptr(py, &slf) };
    match unmetered(worker, (HANDLERS[HANDLER].1)(py)) {
        // SAFETY: CPython calls a METH_FASTCALL | METH_KEYWORDS method with these.
        Ok(handler) => unsafe { metered_call(handler.get(), slf, args, nargs, kwnames) },
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Calls Gunicorn's handler (`handler`), metered.
///
/// # Safety
/// The arguments of a METH_FASTCALL | METH_KEYWORDS method, as CPython passes
/// them: the thread attached, `slf` live, `nargs` positional arguments at
/// `args` followed by one value per name in `kwnames` (a tuple, or NULL).
unsafe fn metered_call(
    handler: &UnmeteredHandler,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the thread attached.
    let py = unsafe { Python::assume_attached() };
    // Every object below is borrowed from the caller for the call: no
    // reference counts change.
    // SAFETY: `slf` is live.
    let slf = unsafe { Bound::ref_from_ptr(py, &slf) };
    let positional = usize::try_from(nargs).unwrap_or(0);
    let names = if kwnames.is_null() {
        None
    } else {
        // SAFETY: a non-NULL `kwnames` is a live tuple.
        unsafe { Bound::ref_from_ptr(py, &kwnames) }
            .cast::<PyTuple>()
            .ok()
    };
    let keywords = names.map_or(0, |n| n.len());
    let args: &[*mut ffi::PyObject] = if positional + keywords == 0 {
        &[]
    } else {
        // SAFETY: `args` holds the positional arguments, then one per keyword.
        unsafe { std::slice::from_raw_parts(args, positional + keywords) }
    };
    let req = request(py, handler.req_index, args, positional, names);
    let meter = req.and_then(|req| started(py, req).map(|meter| (meter, req)));
    let result = call(py, handler.handle.bind(py), slf, args, positional, names);
    let Some((meter, req)) = meter else {
        return result;
    };
    // The exception the handler let out (if any) is put aside while the
    // core runs (it calls into Python), counted, then raised again as it was.
    let error = result.is_null().then(|| PyErr::fetch(py));
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Some(error) = &error {
            meter.get().request_failed(req, error.value(py).as_any());
        }
        let ended = handler.ended(py, error.as_ref());
        WorkerMeter::wsgi_left(&meter, slf, req, ended);
    }));
    if let Some(error) = error {
        error.restore(py);
    }
    result
}

/// `type(slf).<kept>`: Gunicorn's handler.
fn unmetered<'py>(
    slf: &Bound<'py, PyAny>,
    kept: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, UnmeteredHandler>> {
    Ok(slf
        .get_type()
        .getattr(kept)?
        .cast_into::<UnmeteredHandler>()?)
}

/// The request among the arguments: at `req_index`, or passed as `req=`.
fn request<'a, 'py>(
    py: Python<'py>,
    req_index: usize,
    args: &'a [*mut ffi::PyObject],
    positional: usize,
    names: Option<&Bound<'py, PyTuple>>,
) -> Option<&'a Bound<'py, PyAny>> {
    let at = if req_index < positional {
        Some(req_index)
    } else {
        let names = names?;
        (0..names.len())
            .find(|&i| {
                names
                    .get_item(i)
                    .is_ok_and(|n| n.eq("req").unwrap_or(false))
            })
            .map(|i| positional + i)
    }?;
    // SAFETY: every pointer in `args` is a live object borrowed for the call.
    Some(unsafe { Bound::ref_from_ptr(py, &args[at]) })
}

/// Counts `req` in flight on this process's meter (none: not metered).
fn started<'py>(py: Python<'py>, req: &Bound<'py, PyAny>) -> Option<Bound<'py, WorkerMeter>> {
    let meter = process_meter::current(py)?;
    catch_unwind(AssertUnwindSafe(|| meter.get().wsgi_started(req))).ok()?;
    Some(meter)
}

/// Calls `handle(slf, *args, **keywords)`; a new reference, or NULL with the
/// exception set.
fn call(
    py: Python<'_>,
    handle: &Bound<'_, PyAny>,
    slf: &Bound<'_, PyAny>,
    args: &[*mut ffi::PyObject],
    positional: usize,
    names: Option<&Bound<'_, PyTuple>>,
) -> *mut ffi::PyObject {
    let mut kwargs = None;
    if let Some(names) = names.filter(|n| !n.is_empty()) {
        let dict = PyDict::new(py);
        for (i, name) in names.iter().enumerate() {
            // SAFETY: the values follow the positional arguments, live.
            let value = unsafe { Bound::from_borrowed_ptr(py, args[positional + i]) };
            if let Err(e) = dict.set_item(name, value) {
                e.restore(py);
                return std::ptr::null_mut();
            }
        }
        kwargs = Some(dict);
    }
    // `self` first, then the positional arguments: on the stack when few.
    let mut stack = [std::mem::MaybeUninit::<*mut ffi::PyObject>::uninit(); 8];
    let mut heap = Vec::new();
    let all: *const *mut ffi::PyObject = if positional < stack.len() {
        stack[0].write(slf.as_ptr());
        for (to, from) in stack[1..=positional].iter_mut().zip(args) {
            to.write(*from);
        }
        stack.as_ptr().cast()
    } else {
        heap.push(slf.as_ptr());
        heap.extend_from_slice(&args[..positional]);
        heap.as_ptr()
    };
    let kwargs = kwargs.as_ref().map_or(std::ptr::null_mut(), |d| d.as_ptr());
    // SAFETY: `handle` is live, `all` holds `positional + 1` live objects
    // (written above) and `kwargs` is a dict or NULL; the result is a new
    // reference or NULL with an exception set.
    unsafe { super::ffi::PyObject_VectorcallDict(handle.as_ptr(), all, positional + 1, kwargs) }
}
