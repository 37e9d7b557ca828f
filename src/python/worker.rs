//! The worker side of the compiled module: `WorkerMeter`, the per-request
//! instrumentation, and the worker's start-up chores.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{ffi, intern};

use super::access_log;
use super::request::{
    borrowed_item, captured_span, content_length, environ_of_exception, environ_route,
    environ_traceparent, method_of, request_traceparent, scope_headers, scope_route, status_of,
    utf8_of, wsgi_method,
};
use super::settings::Settings;
use crate::exemplar::TraceParent;
use crate::failures;
use crate::meter::{MeterConfig, WorkerMeter as Meter};
use crate::queue_time;
use crate::route::NO_ROUTE;
use crate::server;

/// Attribute of Gunicorn's request object that carries the start time, when
/// its thread has more than one request in flight (greenlets).
const STARTED: &str = "_prometheus_started_ns";

/// The WSGI requests a thread has in flight. Gunicorn's sync and gthread
/// workers handle one at a time per thread: its start is kept here, with a
/// reference to the request (so that identity is exact), and nothing is set
/// on the request object. A second one in the same thread (a greenlet
/// worker) moves every start onto its request (`STARTED`).
struct InFlight {
    depth: u32,
    /// The only request in flight, and when it started.
    only: Option<(Py<PyAny>, u64)>,
}

thread_local! {
    static IN_FLIGHT: RefCell<InFlight> = const { RefCell::new(InFlight { depth: 0, only: None }) };
}

/// Keeps the start of `req`, which began now in this thread.
fn keep_start(req: &Bound<'_, PyAny>, started: u64) {
    let py = req.py();
    let moved = IN_FLIGHT.with(|cell| {
        let mut state = cell.borrow_mut();
        state.depth += 1;
        if state.depth == 1 {
            state.only = Some((req.clone().unbind(), started));
            return None;
        }
        Some(state.only.take())
    });
    if let Some(moved) = moved {
        if let Some((other, other_started)) = moved {
            // Released as a Bound: attached, not through PyO3's deferred pool
            // (this runs under `fast_methods`, outside PyO3's own trampoline).
            let other = other.into_bound(py);
            let _ = other.setattr(intern!(py, STARTED), other_started);
        }
        let _ = req.setattr(intern!(py, STARTED), started);
    }
}

/// Takes the start of `req` (it is counted once): `None` if it was not
/// begun by `wsgi_started` or was already answered.
fn take_start(req: &Bound<'_, PyAny>) -> Option<u64> {
    let kept = IN_FLIGHT.with(|cell| {
        let mut state = cell.borrow_mut();
        match &state.only {
            Some((only, _)) if only.is(req) => state.only.take(),
            _ => None,
        }
    });
    if let Some((only, started)) = kept {
        // Released here, attached (a Py dropped where PyO3 cannot tell would
        // wait in its pool of deferred references).
        drop(only.into_bound(req.py()));
        return Some(started);
    }
    // More than one in flight here: the request carries its own start.
    let py = req.py();
    let attributes = req.getattr(intern!(py, "__dict__")).ok()?;
    let attributes = attributes.cast::<PyDict>().ok()?;
    let started = attributes
        .get_item(intern!(py, STARTED))
        .ok()??
        .extract::<u64>()
        .ok()?;
    if started == 0 {
        return None;
    }
    let _ = attributes.set_item(intern!(py, STARTED), 0);
    Some(started)
}

/// A WSGI request of this thread left (answered or not). One that leaves
/// unanswered keeps its start on the request object: Gunicorn logs the error
/// page of a failed request after its handler returned (`handle_error`).
fn forget_start(py: Python<'_>) {
    let unanswered = IN_FLIGHT.with(|cell| {
        let mut state = cell.borrow_mut();
        state.depth = state.depth.saturating_sub(1);
        if state.depth == 0 {
            state.only.take()
        } else {
            None
        }
    });
    // Outside the borrow: setting an attribute may run Python code.
    if let Some((req, started)) = unanswered {
        let _ = req.into_bound(py).setattr(intern!(py, STARTED), started);
    }
}

/// The instrumentation of one worker process. Its methods never raise: a
/// metrics problem must not break a request.
///
/// Each request is told in the same three steps: `wsgi_started(req)`,
/// `wsgi_answered(resp, req, environ)` (where Gunicorn logs it:
/// `MeteredLog.access`) and `wsgi_left()` on the WSGI path; `asgi_started()`,
/// `asgi_answered(started, scope, status, sent)` and `asgi_left()` on the
/// ASGI path. `request_failed` or `request_timed_out` come before the last
/// step when that happened.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct WorkerMeter {
    meter: Arc<Meter>,
    /// Route template (str) -> id: the hot path's lookup, no allocation.
    route_ids: Py<PyDict>,
    /// The application uses OpenTelemetry: read the span ids the worker
    /// left in the environ / scope (off: no lookup at all).
    spans: AtomicBool,
    /// The application loaded Flask: look for its request's rule in the
    /// environ (off: one dictionary look-up less per request).
    flask: AtomicBool,
}

impl WorkerMeter {
    /// A WSGI request starts (Gunicorn's `req`): counts it in flight and
    /// keeps its start (`fast_methods` makes it the Python method).
    pub(super) fn wsgi_started(&self, req: &Bound<'_, PyAny>) {
        keep_start(req, self.meter.begin());
    }

    /// The span ids the worker captured in `environ` (or an ASGI scope), when
    /// the application uses OpenTelemetry.
    fn captured_span(&self, environ: &Bound<'_, PyAny>) -> Option<TraceParent> {
        if !self.spans.load(Ordering::Relaxed) {
            return None;
        }
        captured_span(environ)
    }

    /// The route template of a WSGI request (`request::environ_route`).
    fn environ_route<'py>(&self, environ: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        environ_route(environ, self.flask.load(Ordering::Relaxed))
    }

    /// The id of a route template object (`None`: nothing matched).
    fn route_id(&self, route: Option<Bound<'_, PyAny>>) -> u16 {
        let Some(route) = route else {
            return NO_ROUTE;
        };
        let py = route.py();
        let ids = self.route_ids.bind(py);
        if let Ok(Some(id)) = ids.get_item(&route) {
            return id.extract().unwrap_or(NO_ROUTE);
        }
        let Some(name) = route
            .cast::<PyString>()
            .ok()
            .and_then(|r| r.to_cow().ok().map(|n| n.into_owned()))
        else {
            return NO_ROUTE;
        };
        let (id, folded) = self.meter.route_id(&name);
        if !folded {
            let _ = ids.set_item(&route, id);
        }
        id
    }

    /// Queue time of a WSGI request begun at `started`, answered now: from the
    /// proxy's stamp, else from the kernel (the client socket `resp.sock`).
    fn observe_queue(&self, started: u64, resp: &Bound<'_, PyAny>, environ: &Bound<'_, PyAny>) {
        let py = resp.py();
        let now = crate::clock::monotonic_ns();
        let handled = now.saturating_sub(started) as f64 / 1e9;
        if let Ok(environ) = environ.cast::<PyDict>() {
            for key in [
                intern!(py, "HTTP_X_REQUEST_START"),
                intern!(py, "HTTP_X_QUEUE_START"),
            ] {
                let Some(value) = borrowed_item(environ, key) else {
                    continue;
                };
                let stamped = utf8_of(&value)
                    .map(|v| &v[..v.len().min(32)]) // a stamp is short: no 8 KiB parse
                    .and_then(queue_time::parse_request_start);
                let began = crate::clock::unix_seconds() - handled;
                if let Some(waited) = stamped.and_then(|t| queue_time::from_stamp(t, began)) {
                    self.meter.observe_queue(waited);
                    return;
                }
            }
        }
        if !self.meter.should_probe_kernel(started, now) {
            return;
        }
        let Ok(sock) = resp.getattr(intern!(py, "sock")) else {
            return;
        };
        // SAFETY: `sock` is a live object; the call has no other precondition.
        let fd = unsafe { ffi::PyObject_AsFileDescriptor(sock.as_ptr()) };
        if fd < 0 {
            let _ = PyErr::take(py);
            return;
        }
        self.meter.observe_kernel_wait(fd, handled);
    }
}

#[pymethods]
impl WorkerMeter {
    /// Opens the worker's files in `directory` with the master's `settings`
    /// (prefix, duration buckets, label cap) and starts the resource sampler.
    #[new]
    fn new(
        py: Python<'_>,
        settings: &Settings,
        directory: PathBuf,
        pid: u32,
        worker_id: u32,
        sample_interval: f64,
    ) -> Self {
        let settings = &settings.0;
        let config = MeterConfig {
            directory,
            pid,
            worker_id,
            prefix: settings.prefix.clone(),
            duration_buckets: settings.duration_buckets.clone(),
            max_label_values: settings.max_label_values,
        };
        // Never fails: a metrics problem must not keep the worker from booting.
        let meter = Arc::new(Meter::open(&config));
        if let Err(e) = meter.start_sampler(Duration::from_secs_f64(sample_interval)) {
            failures::write_error(1, format_args!("cannot start the resource sampler: {e}"));
        }
        WorkerMeter {
            meter,
            route_ids: PyDict::new(py).unbind(),
            spans: AtomicBool::new(false),
            flask: AtomicBool::new(false),
        }
    }

    /// Makes `log.access` count each response (`wsgi_answered`) before it
    /// logs it; returns the logger the worker uses from then on (`log`, or a
    /// wrapper around it: `access_log`).
    fn watch_log(slf: &Bound<'_, Self>, log: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        access_log::watch(slf, log)
    }

    /// The WSGI request `wsgi_started` began left the worker's hands,
    /// answered or not: ends it (in flight, busy time).
    pub(super) fn wsgi_left(&self, py: Python<'_>) {
        forget_start(py);
        self.meter.end();
    }

    /// An ASGI request starts: counts it in flight, returns its start time
    /// for `asgi_answered`; then `request_left`.
    fn asgi_started(&self) -> u64 {
        self.meter.begin()
    }

    /// An ASGI request that started at `started` (`asgi_started`) was
    /// answered with `status` and `sent` body bytes: counts it once.
    fn asgi_answered(&self, started: u64, scope: &Bound<'_, PyAny>, status: u16, sent: u64) {
        let (length, stamped) = scope_headers(scope);
        if let Some(stamped) = stamped {
            let handled = crate::clock::monotonic_ns().saturating_sub(started) as f64 / 1e9;
            let began = crate::clock::unix_seconds() - handled;
            if let Some(waited) = queue_time::from_stamp(stamped, began) {
                self.meter.observe_queue(waited);
            }
        }
        let method = method_of(scope);
        let route = self.route_id(scope_route(scope));
        self.meter
            .record(started, method, status, length, sent, route);
        // The header the caller sent wins over the span the application ran in.
        if let Some(trace) = request_traceparent(scope).or_else(|| self.captured_span(scope)) {
            self.meter.exemplar(started, method, status, route, &trace);
        }
    }

    /// The ASGI request `asgi_started` began left the worker's hands,
    /// answered or not: ends it (in flight, busy time).
    fn asgi_left(&self) {
        self.meter.end();
    }

    /// Gunicorn logged the response `resp` of `req` (`log.access`, with the
    /// WSGI `environ`): counts the request `wsgi_started` began, once.
    pub(super) fn wsgi_answered(
        &self,
        resp: &Bound<'_, PyAny>,
        req: &Bound<'_, PyAny>,
        environ: &Bound<'_, PyAny>,
    ) {
        let py = req.py();
        let Some(status) = resp
            .getattr(intern!(py, "status"))
            .ok()
            .and_then(|s| status_of(&s))
        else {
            return; // no start_response yet: Gunicorn logs again once it answers
        };
        let Some(started) = take_start(req) else {
            return;
        };
        let sent = resp
            .getattr(intern!(py, "sent"))
            .and_then(|v| v.extract::<u64>())
            .unwrap_or(0);
        self.observe_queue(started, resp, environ);
        let method = wsgi_method(req, Some(environ));
        let route = self.route_id(self.environ_route(environ));
        self.meter.record(
            started,
            method,
            status,
            content_length(environ),
            sent,
            route,
        );
        // The header the caller sent wins over the span the application ran in.
        if let Some(trace) = environ_traceparent(environ).or_else(|| self.captured_span(environ)) {
            self.meter.exemplar(started, method, status, route, &trace);
        }
    }

    /// Whether the application uses OpenTelemetry: the worker then leaves the
    /// current span's ids in the environ / scope (`spans.py`), the exemplar
    /// of a request that came without a `traceparent` header.
    fn set_span_exemplars(&self, on: bool) {
        self.spans.store(on, Ordering::Relaxed);
    }

    /// Whether the application loaded Flask (`routes.watch_frameworks`): the
    /// route may then be the rule of the Flask request in the environ.
    fn set_flask_routes(&self, on: bool) {
        self.flask.store(on, Ordering::Relaxed);
    }

    /// Whether to read queue time from the kernel (the worker has a TCP listener).
    fn set_kernel_wait(&self, on: bool) {
        self.meter.set_kernel_wait(on);
    }

    /// Requests this worker can serve at once.
    fn set_concurrency(&self, requests: u32) {
        self.meter.set_concurrency(requests);
    }

    /// The arbiter aborted this worker while it handled `req` (a Gunicorn
    /// request, with its WSGI `environ` when known, or an ASGI scope).
    #[pyo3(signature = (req, environ=None))]
    fn request_timed_out(&self, req: &Bound<'_, PyAny>, environ: Option<&Bound<'_, PyAny>>) {
        let route = match environ {
            Some(environ) => self.environ_route(environ),
            None => scope_route(req),
        };
        self.meter
            .timeout(wsgi_method(req, environ), self.route_id(route));
    }

    /// Leaves the reason this worker exits (`max_requests`, `graceful`,
    /// `crashed`); never raises (a failure is a counted write error).
    fn note_exit(&self, reason: &str) -> bool {
        self.meter.note_exit(reason)
    }

    /// The application raised `exc` while handling `req` (a Gunicorn request
    /// or an ASGI scope); `request_left` follows.
    pub(super) fn request_failed(&self, req: &Bound<'_, PyAny>, exc: &Bound<'_, PyAny>) {
        let py = exc.py();
        let mut exc = exc.clone();
        // Gunicorn turns an error after the headers were sent into StopIteration.
        if exc.is_instance_of::<pyo3::exceptions::PyConnectionError>() {
            return; // the client went away: not the application's failure
        }
        if exc.is_instance_of::<pyo3::exceptions::PySystemExit>()
            || exc.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>()
        {
            return; // the worker is exiting (a timeout abort, a signal): not a failure
        }
        if exc.is_instance_of::<pyo3::exceptions::PyStopIteration>() {
            if let Ok(context) = exc.getattr(intern!(py, "__context__")) {
                if !context.is_none() {
                    exc = context;
                }
            }
        }
        let name = exc
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into());
        let (method, route, span) = if req.cast::<PyDict>().is_ok() {
            (method_of(req), scope_route(req), self.captured_span(req))
        } else {
            let environ = environ_of_exception(&exc);
            let method = wsgi_method(req, environ.as_ref());
            let route = environ.as_ref().and_then(|e| self.environ_route(e));
            (method, route, environ.and_then(|e| self.captured_span(&e)))
        };
        let route = self.route_id(route);
        self.meter.fail(method, &name, route);
        // The header the caller sent wins over the span the application ran in.
        if let Some(trace) = request_traceparent(req).or(span) {
            self.meter.fail_exemplar(method, &name, route, &trace);
        }
    }
}

/// In a forked worker: closes the metrics sockets inherited from the master,
/// so that an orphaned worker does not keep the port. Returns how many.
#[pyfunction]
pub(super) fn close_inherited_metrics_sockets() -> usize {
    server::inherited::close_inherited_sockets()
}

/// In a process just forked from the master: closes the files its scrapes
/// hold open (`storage::held`), so that the child does not keep other
/// workers' files. Returns how many.
#[pyfunction]
pub(super) fn close_inherited_read_files() -> usize {
    crate::storage::held::close_inherited()
}
