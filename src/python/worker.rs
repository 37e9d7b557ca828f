//! The worker side of the compiled module: `WorkerMeter`, the per-request
//! instrumentation, and the worker's start-up chores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{ffi, intern};

use super::access_log;
use super::in_flight::{self, Answer, Ended, Left, Logged};
use super::request::{
    captured_span, content_length, environ_of_exception, environ_route, environ_traceparent, item,
    method_of, request_traceparent, scope_headers, scope_route, status_of, utf8_of, wsgi_method,
};
use super::settings::Settings;
use crate::failures;
use crate::server;
use crate::worker::exclude::ExcludePaths;
use crate::worker::exemplar::TraceParent;
use crate::worker::labels::Method;
use crate::worker::meter::{MeterConfig, WorkerMeter as Meter};
use crate::worker::queue_time;
use crate::worker::route::NO_ROUTE;

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
    /// Requests not counted in request series.
    exclude: ExcludePaths,
}

/// Key of the WSGI environ / ASGI scope where an application marks a request
/// (true) as not to be counted in request series, as `PROMETHEUS_EXCLUDE_PATHS`
/// does by path: through `exclude_request`, which also sets
/// `EXCLUDE_KEY_USED`, so that an application that never marks one pays no
/// look-up for it.
const EXCLUDE_KEY: &str = "gunicorn_prometheus_exporter.exclude";

/// An application of this process marked a request with `EXCLUDE_KEY`.
static EXCLUDE_KEY_USED: AtomicBool = AtomicBool::new(false);

/// `_core.exclude_request(request)`: marks the request of `request` (a WSGI
/// environ or an ASGI scope) as not to be counted in request series.
#[pyfunction]
pub(super) fn exclude_request(request: &Bound<'_, PyDict>) -> PyResult<()> {
    EXCLUDE_KEY_USED.store(true, Ordering::Relaxed);
    request.set_item(intern!(request.py(), EXCLUDE_KEY), true)
}

impl WorkerMeter {
    /// A WSGI request starts (Gunicorn's `req`): counts it in flight and
    /// keeps its start (`fast_methods` makes it the Python method).
    pub(super) fn wsgi_started(&self, req: &Bound<'_, PyAny>) {
        in_flight::start(req, self.meter.begin());
    }

    /// Counts a request Gunicorn answered as `answer` says.
    fn count(&self, answer: &Answer) {
        let a = answer;
        if a.excluded {
            return;
        }
        self.meter.record(
            a.seconds,
            a.method,
            a.status,
            a.request_bytes,
            a.response_bytes,
            a.route,
            a.trace.as_ref(),
        );
    }

    /// What Gunicorn logged of a WSGI request begun at `started` (its
    /// response `resp`, its `environ`), as it would be counted.
    fn answer(
        &self,
        started: u64,
        resp: &Bound<'_, PyAny>,
        req: &Bound<'_, PyAny>,
        environ: &Bound<'_, PyAny>,
    ) -> Answer {
        let py = req.py();
        // No status: the application never called start_response, and
        // Gunicorn writes the status line `HTTP/1.1 None`.
        let status = resp
            .getattr(intern!(py, "status"))
            .ok()
            .and_then(|s| status_of(&s))
            .unwrap_or(0);
        let response_bytes = resp
            .getattr(intern!(py, "sent"))
            .and_then(|v| v.extract::<u64>())
            .unwrap_or(0);
        let seconds = crate::clock::monotonic_ns().saturating_sub(started) as f64 / 1e9;
        // The header the caller sent wins over the span the application ran in.
        let trace = environ_traceparent(environ).or_else(|| self.captured_span(environ));
        let route = self.environ_route(environ);
        let excluded = self.excluded(environ, intern!(py, "PATH_INFO"), route.as_ref());
        Answer {
            method: wsgi_method(req, Some(environ)),
            status,
            excluded,
            route: self.route_id(route),
            request_bytes: content_length(environ),
            response_bytes,
            seconds,
            trace,
        }
    }

    /// The span ids the worker captured in `environ` (or an ASGI scope), when
    /// the application uses OpenTelemetry.
    fn captured_span(&self, environ: &Bound<'_, PyAny>) -> Option<TraceParent> {
        if !self.spans.load(Ordering::Relaxed) {
            return None;
        }
        captured_span(environ)
    }

    /// Whether a request is not counted in request series: its environ or
    /// scope carries `EXCLUDE_KEY` (true), or its path (under `path_key`) or
    /// route template is one of `PROMETHEUS_EXCLUDE_PATHS`.
    fn excluded(
        &self,
        request: &Bound<'_, PyAny>,
        path_key: &Bound<'_, PyString>,
        route: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        let Ok(request) = request.cast::<PyDict>() else {
            return false;
        };
        let py = request.py();
        if EXCLUDE_KEY_USED.load(Ordering::Relaxed)
            && item(request, intern!(py, EXCLUDE_KEY))
                .is_some_and(|v| v.is_truthy().unwrap_or(false))
        {
            return true;
        }
        if self.exclude.is_empty() {
            return false;
        }
        let path = item(request, path_key);
        let path = path.as_ref().and_then(utf8_of).unwrap_or_default();
        self.exclude.excludes(path, route.and_then(utf8_of))
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
        // Borrowed from the str: a route past the cap allocates nothing.
        let Some(name) = utf8_of(&route).and_then(|r| std::str::from_utf8(r).ok()) else {
            return NO_ROUTE;
        };
        let (id, folded) = self.meter.route_id(name);
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
                let Some(value) = item(environ, key) else {
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

    /// Gunicorn logged the response `resp` of `req` (`log.access`, with the
    /// WSGI `environ`): keeps what it says of a request whose handler runs,
    /// counts the error page Gunicorn answered a raising one with
    /// (`in_flight` says when each is counted).
    pub(super) fn wsgi_answered(
        &self,
        resp: &Bound<'_, PyAny>,
        req: &Bound<'_, PyAny>,
        environ: &Bound<'_, PyAny>,
    ) {
        match in_flight::logged(req) {
            Logged::Unknown => {}
            Logged::Handling { started } => {
                self.observe_queue(started, resp, environ);
                in_flight::keep_answer(req, self.answer(started, resp, req, environ));
            }
            Logged::ErrorPage {
                started,
                answer,
                failed,
            } => {
                if answer.is_none() {
                    self.observe_queue(started, resp, environ);
                }
                let page = self.answer(started, resp, req, environ);
                // The request's own environ (kept in `answer`, or the
                // failure's) says more than the page's fresh one.
                let (method, route) = failed
                    .or(answer.map(|a| (a.method, a.route)))
                    .unwrap_or((page.method, page.route));
                self.count(&Answer {
                    method,
                    route,
                    excluded: answer.map_or(page.excluded, |a| a.excluded),
                    request_bytes: answer.map_or(page.request_bytes, |a| a.request_bytes),
                    trace: answer.and_then(|a| a.trace).or(page.trace),
                    ..page
                });
            }
        }
    }

    /// Gunicorn's handler of the WSGI request `req` (of `worker`), begun by
    /// `wsgi_started`, ended as `ended`: counts what went on the wire, when
    /// that is known now (`in_flight`), and ends the request (in flight,
    /// busy time).
    pub(super) fn wsgi_left(
        slf: &Bound<'_, Self>,
        worker: &Bound<'_, PyAny>,
        req: &Bound<'_, PyAny>,
        ended: Ended,
    ) {
        let this = slf.get();
        match in_flight::leave(req, ended) {
            Left::Nothing => {}
            Left::Count(answer) => this.count(&answer),
            Left::Unlogged(started) => {
                if access_log::watch_again(slf, worker) {
                    // Gunicorn's log of it went elsewhere: counted with what
                    // is known (no status: `other`).
                    let seconds = crate::clock::monotonic_ns().saturating_sub(started) as f64 / 1e9;
                    this.count(&Answer {
                        excluded: false,
                        method: wsgi_method(req, None),
                        status: 0,
                        route: NO_ROUTE,
                        request_bytes: 0,
                        response_bytes: 0,
                        seconds,
                        trace: None,
                    });
                }
            }
        }
        this.meter.end();
    }

    /// Counts `exc` as a failure of (`method`, `route`), once: it is marked.
    fn fail(&self, exc: &Bound<'_, PyAny>, method: Method, route: u16, trace: Option<TraceParent>) {
        let py = exc.py();
        let mark = intern!(py, COUNTED_MARK);
        if exc.hasattr(mark).unwrap_or(false) {
            return;
        }
        let _ = exc.setattr(mark, true);
        let name = exc
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into());
        self.meter.fail(method, &name, route);
        if let Some(trace) = trace {
            self.meter.fail_exemplar(method, &name, route, &trace);
        }
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
            native_histogram_schema: settings.native_histogram_schema,
            worker_id_label: settings.worker_id_label,
            otel_names: settings.otel_names,
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
            exclude: settings.exclude_paths.clone(),
        }
    }

    /// Makes `log.access` count each response (`wsgi_answered`) before it
    /// logs it; returns the logger the worker uses from then on (`log`, or a
    /// wrapper around it: `access_log`).
    fn watch_log(slf: &Bound<'_, Self>, log: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        access_log::watch(slf, log)
    }

    /// An ASGI request starts: counts it in flight, returns its start time
    /// for `asgi_answered`; then `asgi_left`.
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
        let seconds = crate::clock::monotonic_ns().saturating_sub(started) as f64 / 1e9;
        let route = scope_route(scope);
        let excluded = self.excluded(scope, intern!(scope.py(), "path"), route.as_ref());
        self.count(&Answer {
            method: method_of(scope),
            status,
            excluded,
            route: self.route_id(route),
            request_bytes: length,
            response_bytes: sent,
            seconds,
            // The header the caller sent wins over the span the application ran in.
            trace: request_traceparent(scope).or_else(|| self.captured_span(scope)),
        });
    }

    /// The ASGI request `asgi_started` began left the worker's hands,
    /// answered or not: ends it (in flight, busy time).
    fn asgi_left(&self) {
        self.meter.end();
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

    /// A framework answered the exception `exc` itself (Flask's and Django's
    /// `got_request_exception`), for the request of `request` (a WSGI
    /// environ or an ASGI scope) and the route template `route` it matched
    /// (`None`: as the environ or scope tells). Counted once, also if the
    /// exception then reaches the worker.
    #[pyo3(signature = (request, exc, route=None))]
    fn application_failed(
        &self,
        request: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        route: Option<Bound<'_, PyAny>>,
    ) {
        let py = request.py();
        let wsgi = request
            .cast::<PyDict>()
            .is_ok_and(|r| r.contains(intern!(py, "REQUEST_METHOD")).unwrap_or(false));
        let (route, trace, path_key) = if wsgi {
            let route = route.or_else(|| self.environ_route(request));
            (
                route,
                environ_traceparent(request),
                intern!(py, "PATH_INFO"),
            )
        } else {
            let route = route.or_else(|| scope_route(request));
            (route, request_traceparent(request), intern!(py, "path"))
        };
        if self.excluded(request, path_key, route.as_ref()) {
            return;
        }
        let route = self.route_id(route);
        let trace = trace.or_else(|| self.captured_span(request));
        self.fail(exc, wsgi_method(request, Some(request)), route, trace);
    }

    /// The application raised `exc` while handling `req` (a Gunicorn request
    /// or an ASGI scope) and it reached the worker; `wsgi_left` or
    /// `asgi_left` follows. Counted once: not again if a framework already
    /// told it (`application_failed`).
    pub(super) fn request_failed(&self, req: &Bound<'_, PyAny>, exc: &Bound<'_, PyAny>) {
        let Some(exc) = applications_own(exc) else {
            return;
        };
        let py = req.py();
        let (method, route, span, excluded) = if req.cast::<PyDict>().is_ok() {
            let route = scope_route(req);
            let excluded = self.excluded(req, intern!(py, "path"), route.as_ref());
            (method_of(req), route, self.captured_span(req), excluded)
        } else {
            let environ = environ_of_exception(&exc);
            let method = wsgi_method(req, environ.as_ref());
            let route = environ.as_ref().and_then(|e| self.environ_route(e));
            let excluded = environ
                .as_ref()
                .is_some_and(|e| self.excluded(e, intern!(py, "PATH_INFO"), route.as_ref()));
            (
                method,
                route,
                environ.and_then(|e| self.captured_span(&e)),
                excluded,
            )
        };
        if excluded {
            return;
        }
        let route = self.route_id(route);
        if req.cast::<PyDict>().is_err() {
            in_flight::note_failure(req, method, route);
        }
        // The header the caller sent wins over the span the application ran in.
        self.fail(&exc, method, route, request_traceparent(req).or(span));
    }
}

/// Attribute that marks an exception as counted (a framework told it, and
/// it may reach the worker too).
const COUNTED_MARK: &str = "_gunicorn_prometheus_counted";

/// The application's own exception behind `exc`, if it is one: not the
/// client going away, not the worker exiting; the error Gunicorn turned into
/// `StopIteration` (the headers were already sent) is its context.
fn applications_own<'py>(exc: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    use pyo3::exceptions::{PyConnectionError, PyKeyboardInterrupt, PyStopIteration, PySystemExit};
    if exc.is_instance_of::<PyConnectionError>()
        || exc.is_instance_of::<PySystemExit>()
        || exc.is_instance_of::<PyKeyboardInterrupt>()
    {
        return None;
    }
    if exc.is_instance_of::<PyStopIteration>() {
        if let Ok(context) = exc.getattr(intern!(exc.py(), "__context__")) {
            if !context.is_none() {
                return Some(context);
            }
        }
    }
    Some(exc.clone())
}

/// In a forked worker: closes the metrics sockets inherited from the master,
/// so that an orphaned worker does not keep the port. Returns how many.
#[pyfunction]
pub(super) fn close_inherited_metrics_sockets() -> usize {
    server::inherited::close_inherited_sockets()
}

/// In a process just forked (a worker from the master, or any process an
/// application forks): closes the files the parent's scrapes hold open
/// (`storage::held`) and detaches the mappings it writes through
/// (`storage::mappings::detach_inherited`), so that the child neither keeps
/// other processes' files nor writes into its parent's. Returns how many
/// of each.
#[pyfunction]
pub(super) fn forget_inherited_files() -> (usize, usize) {
    (
        crate::storage::held::close_inherited(),
        crate::storage::mappings::detach_inherited(),
    )
}
