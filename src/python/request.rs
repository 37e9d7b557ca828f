//! Reading what Gunicorn and ASGI servers hand the worker: the method,
//! headers, route template, status and `traceparent` of a request, without
//! allocating on the hot path.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};
use pyo3::{ffi, intern};

use crate::worker::exemplar::TraceParent;
use crate::worker::labels::{parse_status, Method};
use crate::worker::queue_time;

/// The UTF-8 bytes of a `str`, borrowed from the object (CPython keeps them:
/// an ASCII string's own data, no copy). `None` for a non-str or a string
/// that has no UTF-8 form (lone surrogates).
pub(super) fn utf8_of<'a>(obj: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    let s = obj.cast::<PyString>().ok()?;
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: `s` is a live str and the GIL is held (we have a Bound); `len`
    // is a valid out-pointer.
    let data = unsafe { super::ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len) };
    if data.is_null() || len < 0 {
        let _ = PyErr::take(obj.py()); // UnicodeEncodeError: not ours to raise
        return None;
    }
    // SAFETY: CPython returns `len` bytes at `data`, owned by the str object,
    // which outlives `'a` (it is borrowed for `'a`) and is immutable.
    Some(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) })
}

/// `dict[key]`, without the copy of the key `PyDict::get_item` makes; `None`
/// when absent (or the look-up raised: not ours to raise).
pub(super) fn item<'py>(
    dict: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> Option<Bound<'py, PyAny>> {
    let py = dict.py();
    // SAFETY: both are live; the result is a borrowed reference, or NULL
    // (absent, or with an exception set).
    let value = unsafe { ffi::PyDict_GetItemWithError(dict.as_ptr(), key.as_ptr()) };
    if value.is_null() {
        // SAFETY: the thread is attached (we hold a Bound).
        if !unsafe { ffi::PyErr_Occurred() }.is_null() {
            let _ = PyErr::take(py);
        }
        return None;
    }
    // SAFETY: a live object the dictionary holds: a new reference to it is
    // taken at once, before any Python code can run.
    Some(unsafe { Bound::from_borrowed_ptr(py, value) })
}

/// The method of a Gunicorn request (`req.method`) or of an ASGI scope (`scope["method"]`).
pub(super) fn method_of(req: &Bound<'_, PyAny>) -> Method {
    let py = req.py();
    let method = match req.cast::<PyDict>() {
        Ok(scope) => scope.get_item(intern!(py, "method")).ok().flatten(),
        Err(_) => req.getattr(intern!(py, "method")).ok(),
    };
    method
        .and_then(|m| utf8_of(&m).map(Method::parse))
        .unwrap_or(Method::Other)
}

/// The method of a WSGI request as Gunicorn's access log shows it (the
/// environ's `REQUEST_METHOD`, a dictionary look-up); without one,
/// `method_of(req)` (a Gunicorn request, or an ASGI scope).
pub(super) fn wsgi_method(req: &Bound<'_, PyAny>, environ: Option<&Bound<'_, PyAny>>) -> Method {
    let environ = environ.and_then(|e| e.cast::<PyDict>().ok());
    let logged = environ.and_then(|e| item(e, intern!(e.py(), "REQUEST_METHOD")));
    match logged.as_ref().and_then(utf8_of) {
        Some(method) => Method::parse(method),
        None => method_of(req),
    }
}

/// The Content-Length of an ASGI scope's headers (a list of (bytes, bytes)),
/// and the time a proxy stamped on the request (`X-Request-Start`).
pub(super) fn scope_headers(scope: &Bound<'_, PyAny>) -> (u64, Option<f64>) {
    let py = scope.py();
    let Ok(Some(headers)) = scope
        .cast::<PyDict>()
        .map(|s| s.get_item(intern!(py, "headers")).ok().flatten())
    else {
        return (0, None);
    };
    let Ok(headers) = headers.try_iter() else {
        return (0, None);
    };
    let (mut length, mut stamped) = (0, None);
    for header in headers.flatten() {
        let (Ok(name), Ok(value)) = (header.get_item(0), header.get_item(1)) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (name.cast::<PyBytes>(), value.cast::<PyBytes>()) else {
            continue;
        };
        let name = name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        } else if stamped.is_none()
            && (name.eq_ignore_ascii_case(b"x-request-start")
                || name.eq_ignore_ascii_case(b"x-queue-start"))
        {
            stamped = queue_time::parse_request_start(value.as_bytes());
        }
    }
    (length, stamped)
}

/// Key of the WSGI environ / ASGI scope where any framework can leave the route template.
const ROUTE_KEY: &str = "gunicorn_prometheus_exporter.route";

/// The route template of a WSGI request: the environ key, or (`flask`: the
/// application loaded Flask) the rule of a Flask request still in flight.
/// `None`: nothing matched.
pub(super) fn environ_route<'py>(
    environ: &Bound<'py, PyAny>,
    flask: bool,
) -> Option<Bound<'py, PyAny>> {
    let py = environ.py();
    let environ = environ.cast::<PyDict>().ok()?;
    if let Some(route) = item(environ, intern!(py, ROUTE_KEY)) {
        return Some(route);
    }
    if !flask {
        return None;
    }
    let request = environ.get_item(intern!(py, "werkzeug.request")).ok()??;
    if request.is_none() {
        return None;
    }
    let rule = request.getattr(intern!(py, "url_rule")).ok()?;
    if rule.is_none() {
        return None;
    }
    rule.getattr(intern!(py, "rule")).ok()
}

/// The route template of an ASGI request: the scope key, or the path of the
/// Starlette / FastAPI route that matched; behind a mount, the template of the
/// whole path (`routes.mounted_route`, in Python: it walks the application's
/// mounts once), never the client's values of the mount's path parameters.
pub(super) fn scope_route<'py>(scope: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = scope.py();
    let scope = scope.cast::<PyDict>().ok()?;
    if let Some(route) = item(scope, intern!(py, ROUTE_KEY)) {
        return Some(route);
    }
    let route = item(scope, intern!(py, "route"))?;
    let root = item(scope, intern!(py, "root_path"));
    let app_root = item(scope, intern!(py, "app_root_path"));
    let root = root.as_ref().and_then(utf8_of).unwrap_or_default();
    let app_root = app_root.as_ref().and_then(utf8_of).unwrap_or_default();
    let mounted = root
        .strip_prefix(app_root)
        .is_some_and(|mount| !mount.is_empty());
    if !mounted {
        return route.getattr(intern!(py, "path")).ok();
    }
    static MOUNTED_ROUTE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let template = MOUNTED_ROUTE
        .get_or_try_init(py, || {
            py.import("gunicorn_prometheus_exporter.routes")?
                .getattr("mounted_route")
                .map(Bound::unbind)
        })
        .ok()?;
    let found = template.bind(py).call1((scope,)).ok()?;
    (!found.is_none()).then_some(found)
}

/// The WSGI environ of the request an exception left: a local of the
/// handler's frame (cold path, when the application raised).
pub(super) fn environ_of_exception<'py>(exc: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = exc.py();
    let mut tb = exc.getattr(intern!(py, "__traceback__")).ok()?;
    for _ in 0..8 {
        if tb.is_none() {
            return None;
        }
        let locals = tb
            .getattr(intern!(py, "tb_frame"))
            .and_then(|f| f.getattr(intern!(py, "f_locals")))
            .ok()?;
        if let Ok(environ) = locals.get_item("environ") {
            if environ.cast::<PyDict>().is_ok() {
                return Some(environ);
            }
        }
        tb = tb.getattr(intern!(py, "tb_next")).ok()?;
    }
    None
}

/// The `traceparent` of a WSGI environ, if valid.
pub(super) fn environ_traceparent(environ: &Bound<'_, PyAny>) -> Option<TraceParent> {
    let environ = environ.cast::<PyDict>().ok()?;
    let value = item(environ, intern!(environ.py(), "HTTP_TRACEPARENT"))?;
    TraceParent::parse(utf8_of(&value)?)
}

/// Key of the WSGI environ / ASGI scope where the worker leaves the ids of
/// the OpenTelemetry span current when the response started (`spans.py`):
/// a tuple (trace_id, span_id) of ints.
const SPAN_KEY: &str = "gunicorn_prometheus_exporter.span";

/// The trace context of the OpenTelemetry span the worker captured in the
/// WSGI environ or ASGI scope, if any: the exemplar of a request that came
/// without a `traceparent` header. Ids of zero are ignored, as in the header.
pub(super) fn captured_span(environ: &Bound<'_, PyAny>) -> Option<TraceParent> {
    let environ = environ.cast::<PyDict>().ok()?;
    let ids = environ.get_item(intern!(environ.py(), SPAN_KEY)).ok()??;
    let (trace_id, span_id) = ids.extract::<(u128, u64)>().ok()?;
    (trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id })
}

/// The `traceparent` of an ASGI scope (bytes headers) or of a Gunicorn
/// request (`req.headers`: upper-case str pairs), if valid.
pub(super) fn request_traceparent(req: &Bound<'_, PyAny>) -> Option<TraceParent> {
    let py = req.py();
    let headers = match req.cast::<PyDict>() {
        Ok(scope) => scope.get_item(intern!(py, "headers")).ok()??,
        Err(_) => req.getattr(intern!(py, "headers")).ok()?,
    };
    for header in headers.try_iter().ok()?.flatten() {
        let (Ok(name), Ok(value)) = (header.get_item(0), header.get_item(1)) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (name.cast::<PyBytes>(), value.cast::<PyBytes>()) {
            if name.as_bytes().eq_ignore_ascii_case(b"traceparent") {
                return TraceParent::parse(value.as_bytes());
            }
            continue;
        }
        if utf8_of(&name).is_some_and(|n| n.eq_ignore_ascii_case(b"traceparent")) {
            return TraceParent::parse(utf8_of(&value)?);
        }
    }
    None
}

pub(super) fn status_of(status: &Bound<'_, PyAny>) -> Option<u16> {
    if status.is_none() {
        return None; // no start_response yet: Gunicorn logs again once it answers
    }
    if let Some(status) = utf8_of(status) {
        return Some(parse_status(status));
    }
    status.extract::<u16>().ok()
}

pub(super) fn content_length(environ: &Bound<'_, PyAny>) -> u64 {
    let Ok(environ) = environ.cast::<PyDict>() else {
        return 0;
    };
    match item(environ, intern!(environ.py(), "CONTENT_LENGTH")) {
        Some(v) => utf8_of(&v)
            .map(|d| {
                d.iter()
                    .take(20)
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0u64, |a, b| {
                        a.saturating_mul(10).saturating_add((b - b'0') as u64)
                    })
            })
            .unwrap_or(0),
        _ => 0,
    }
}
