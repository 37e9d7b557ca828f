//! Where Gunicorn logs a response (`log.access`), the core counts it first.
//!
//! `WorkerMeter.watch_log(log)` sets the logger's `access` attribute to a
//! built-in function of the core (`CountedAccess`, called with vectorcall):
//! Gunicorn's `self.log.access(...)` then finds it in the instance's
//! dictionary, with no method bound and no tuple packed. A logger whose
//! `access` cannot be replaced (a property, slots) is wrapped instead
//! (`MeteredLog`, every other attribute the logger's).

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::fast_methods;
use super::worker::WorkerMeter;

/// A logger's own `access`, counted by `meter` first.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct CountedAccess {
    /// The logger's `access`: when it is a method bound to the logger (as
    /// Gunicorn's is), its function, called with the logger first (no bound
    /// method to unwrap per call).
    access: Py<PyAny>,
    bound_to: Option<Py<PyAny>>,
    meter: Py<WorkerMeter>,
}

impl CountedAccess {
    /// Counts the response, then logs it with the logger's own `access`:
    /// `args` are `(resp, req, environ, request_time)`. A new reference, or
    /// NULL with the logger's exception set.
    pub(super) fn call(
        &self,
        py: Python<'_>,
        args: &[*mut pyo3::ffi::PyObject; 4],
    ) -> *mut pyo3::ffi::PyObject {
        // SAFETY: the four are live objects, borrowed for the call (no
        // reference counts change).
        let arg = |i: usize| unsafe { Bound::ref_from_ptr(py, &args[i]) };
        let (resp, req, environ) = (arg(0), arg(1), arg(2));
        // Never raises nor panics out: counting must not break the log.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.meter.get().wsgi_answered(resp, req, environ)
        }));
        let (args, count) = match &self.bound_to {
            Some(logger) => (
                &[logger.as_ptr(), args[0], args[1], args[2], args[3]][..],
                5,
            ),
            None => (&args[..], 4),
        };
        // SAFETY: `access` is live, `args` holds `count` live objects; the
        // result is a new reference or NULL with an exception set.
        unsafe {
            super::ffi::PyObject_VectorcallDict(
                self.access.as_ptr(),
                args.as_ptr(),
                count,
                std::ptr::null_mut(),
            )
        }
    }
}

/// Makes `log.access` count each response on `meter`; returns the logger to
/// use: `log` itself, or a `MeteredLog` around it.
pub(super) fn watch(meter: &Bound<'_, WorkerMeter>, log: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = log.py();
    let name = pyo3::intern!(py, "access");
    let access = log.getattr(name)?;
    let method_type = py.import("types")?.getattr("MethodType")?;
    let (access, bound_to) = if access.is_instance(&method_type)? {
        let bound_to = access.getattr(pyo3::intern!(py, "__self__"))?;
        (
            access.getattr(pyo3::intern!(py, "__func__"))?,
            Some(bound_to.unbind()),
        )
    } else {
        (access, None)
    };
    let counted = Bound::new(
        py,
        CountedAccess {
            access: access.unbind(),
            bound_to,
            meter: meter.clone().unbind(),
        },
    )?;
    let function = fast_methods::counted_access_function(&counted)?;
    if log.setattr(name, &function).is_ok() && log.getattr(name).is_ok_and(|a| a.is(&function)) {
        return Ok(log.unbind());
    }
    Ok(Bound::new(
        py,
        MeteredLog {
            log: log.unbind(),
            counted: counted.unbind(),
        },
    )?
    .into_any()
    .unbind())
}

/// Gunicorn's logger with its `access` also counting the response, for a
/// logger whose own attribute cannot be replaced; every other attribute is
/// the logger's.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct MeteredLog {
    log: Py<PyAny>,
    counted: Py<CountedAccess>,
}

#[pymethods]
impl MeteredLog {
    fn __getattr__<'py>(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        self.log.bind(name.py()).getattr(name)
    }
}

impl MeteredLog {
    /// `access(resp, req, environ, request_time)` (`fast_methods` makes it
    /// the Python method).
    pub(super) fn access(
        &self,
        py: Python<'_>,
        args: &[*mut pyo3::ffi::PyObject; 4],
    ) -> *mut pyo3::ffi::PyObject {
        self.counted.get().call(py, args)
    }
}

/// Whether `log` still counts each response through this core.
fn counts(log: &Bound<'_, PyAny>) -> bool {
    if log.is_instance_of::<MeteredLog>() {
        return true;
    }
    let py = log.py();
    log.getattr(pyo3::intern!(py, "access"))
        .and_then(|access| access.getattr(pyo3::intern!(py, "__self__")))
        .is_ok_and(|owner| owner.is_instance_of::<CountedAccess>())
}

/// This process already warned that its access logger was replaced.
static REPLACED_LOGGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Gunicorn logged nothing for a request `worker` answered. If the
/// application replaced the worker's logger or its `access` (nothing else
/// makes a handler that returned log nothing, but an application that took
/// the connection over), makes it count again, says so once, and returns
/// true: the request was answered but its log went elsewhere.
pub(super) fn watch_again(meter: &Bound<'_, WorkerMeter>, worker: &Bound<'_, PyAny>) -> bool {
    let py = worker.py();
    let name = pyo3::intern!(py, "log");
    let Ok(log) = worker.getattr(name) else {
        return false;
    };
    if counts(&log) {
        return false;
    }
    let Ok(watched) = watch(meter, log) else {
        return true;
    };
    let watched = watched.into_bound(py);
    let _ = worker.setattr(name, &watched);
    let pid = std::process::id();
    if REPLACED_LOGGED.swap(pid, std::sync::atomic::Ordering::Relaxed) != pid {
        let _ = watched.call_method1(
            pyo3::intern!(py, "warning"),
            (
                "gunicorn_prometheus_exporter: the application replaced the worker's access \
              logger (log.access): requests are counted through the new one from now on; \
              the one it replaced first is counted with status \"other\"",
            ),
        );
    }
    true
}
