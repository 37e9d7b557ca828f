//! The Python face of the core: `gunicorn_prometheus_exporter._core`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use pyo3::{ffi, intern};

use crate::archive;
use crate::config;
use crate::directory;
use crate::exemplar::TraceParent;
use crate::failures;
use crate::labels::{parse_status, Method};
use crate::master_meter;
use crate::meter::{MeterConfig, WorkerMeter as Meter};
use crate::queue_time;
use crate::route::{DEFAULT_MAX_LABEL_VALUES, NO_ROUTE};
use crate::scrape::ScrapeSource;
use crate::server;
use crate::web_config::WebConfig;

/// Attribute of Gunicorn's request object that carries the start time.
const STARTED: &str = "_prometheus_started_ns";

/// Copies up to `N` leading ASCII characters of a `str` without allocating
/// (the limited API of Python 3.9 has no borrowed UTF-8 view).
fn ascii_prefix<'b, const N: usize>(
    obj: &Bound<'_, PyAny>,
    buf: &'b mut [u8; N],
) -> Option<&'b [u8]> {
    let s = obj.cast::<PyString>().ok()?;
    // SAFETY: `s` is a live str object and the GIL is held (we have a Bound).
    let len = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
    if len < 0 {
        return None;
    }
    let n = (len as usize).min(N);
    for (i, slot) in buf.iter_mut().enumerate().take(n) {
        // SAFETY: as above, and `i < len`: the index is in range.
        let c = unsafe { ffi::PyUnicode_ReadChar(s.as_ptr(), i as ffi::Py_ssize_t) };
        *slot = if c < 128 { c as u8 } else { 0 };
    }
    Some(&buf[..n])
}

/// The method of a Gunicorn request (`req.method`) or of an ASGI scope (`scope["method"]`).
fn method_of(req: &Bound<'_, PyAny>) -> Method {
    let mut buf = [0u8; 8];
    let py = req.py();
    let method = match req.cast::<PyDict>() {
        Ok(scope) => scope.get_item(intern!(py, "method")).ok().flatten(),
        Err(_) => req.getattr(intern!(py, "method")).ok(),
    };
    method
        .and_then(|m| ascii_prefix(&m, &mut buf).map(Method::parse))
        .unwrap_or(Method::Other)
}

/// The Content-Length of an ASGI scope's headers (a list of (bytes, bytes)),
/// and the time a proxy stamped on the request (`X-Request-Start`).
fn scope_headers(scope: &Bound<'_, PyAny>) -> (u64, Option<f64>) {
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

/// The route template of a WSGI request: the environ key, or the rule of a
/// Flask / Werkzeug request still in flight. `None`: nothing matched.
fn environ_route<'py>(environ: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = environ.py();
    let environ = environ.cast::<PyDict>().ok()?;
    if let Ok(Some(route)) = environ.get_item(intern!(py, ROUTE_KEY)) {
        return Some(route);
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
/// Starlette / FastAPI route that matched (behind the mounts that led to it).
fn scope_route<'py>(scope: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = scope.py();
    let scope = scope.cast::<PyDict>().ok()?;
    if let Ok(Some(route)) = scope.get_item(intern!(py, ROUTE_KEY)) {
        return Some(route);
    }
    let route = scope.get_item(intern!(py, "route")).ok()??;
    let path = route.getattr(intern!(py, "path")).ok()?;
    let mounted = |key| {
        scope
            .get_item(key)
            .ok()
            .flatten()
            .and_then(|v| v.extract::<String>().ok())
    };
    let root = mounted(intern!(py, "root_path")).unwrap_or_default();
    let app_root = mounted(intern!(py, "app_root_path")).unwrap_or_default();
    match root.strip_prefix(&app_root) {
        Some(mount) if !mount.is_empty() => {
            let path = path.extract::<String>().ok()?;
            Some(PyString::new(py, &format!("{mount}{path}")).into_any())
        }
        _ => Some(path),
    }
}

/// The WSGI environ of the request an exception left: a local of the
/// handler's frame (cold path, when the application raised).
fn environ_of_exception<'py>(exc: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
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
fn environ_traceparent(environ: &Bound<'_, PyAny>) -> Option<TraceParent> {
    let environ = environ.cast::<PyDict>().ok()?;
    let value = environ
        .get_item(intern!(environ.py(), "HTTP_TRACEPARENT"))
        .ok()??;
    let mut buf = [0u8; 64];
    TraceParent::parse(ascii_prefix(&value, &mut buf)?)
}

/// The `traceparent` of an ASGI scope (bytes headers) or of a Gunicorn
/// request (`req.headers`: upper-case str pairs), if valid.
fn request_traceparent(req: &Bound<'_, PyAny>) -> Option<TraceParent> {
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
        let mut name_buf = [0u8; 12];
        if ascii_prefix(&name, &mut name_buf)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"traceparent"))
        {
            let mut buf = [0u8; 64];
            return TraceParent::parse(ascii_prefix(&value, &mut buf)?);
        }
    }
    None
}

fn status_of(status: &Bound<'_, PyAny>) -> Option<u16> {
    if status.is_none() {
        return None; // no start_response yet: Gunicorn logs again once it answers
    }
    let mut buf = [0u8; 4];
    if let Some(prefix) = ascii_prefix(status, &mut buf) {
        return Some(parse_status(prefix));
    }
    status.extract::<u16>().ok()
}

fn content_length(environ: &Bound<'_, PyAny>) -> u64 {
    let mut buf = [0u8; 20];
    let Ok(environ) = environ.cast::<PyDict>() else {
        return 0;
    };
    match environ.get_item(intern!(environ.py(), "CONTENT_LENGTH")) {
        Ok(Some(v)) => ascii_prefix(&v, &mut buf)
            .map(|d| {
                d.iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0u64, |a, b| {
                        a.saturating_mul(10).saturating_add((b - b'0') as u64)
                    })
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// The instrumentation of one worker process. Its methods never raise: a
/// metrics problem must not break a request.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
struct WorkerMeter {
    meter: Arc<Meter>,
    /// Route template (str) -> id: the hot path's lookup, no allocation.
    route_ids: Py<PyDict>,
}

impl WorkerMeter {
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
                let Ok(Some(value)) = environ.get_item(key) else {
                    continue;
                };
                let mut buf = [0u8; 32];
                let stamped =
                    ascii_prefix(&value, &mut buf).and_then(queue_time::parse_request_start);
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
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (directory, pid, worker_id, prefix, duration_buckets, sample_interval, max_label_values=DEFAULT_MAX_LABEL_VALUES))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        pid: u32,
        worker_id: u32,
        prefix: String,
        duration_buckets: Vec<f64>,
        sample_interval: f64,
        max_label_values: usize,
    ) -> Self {
        let config = MeterConfig {
            directory,
            pid,
            worker_id,
            prefix,
            duration_buckets,
            max_label_values,
        };
        // Never fails: a metrics problem must not keep the worker from booting.
        let meter = Arc::new(Meter::open(&config));
        if let Err(e) = meter.start_sampler(Duration::from_secs_f64(sample_interval)) {
            failures::write_error(1, format_args!("cannot start the resource sampler: {e}"));
        }
        WorkerMeter {
            meter,
            route_ids: PyDict::new(py).unbind(),
        }
    }

    /// A request starts: counts it in flight and notes its start on `req`.
    fn begin(&self, req: &Bound<'_, PyAny>) {
        let started = self.meter.begin();
        let _ = req.setattr(intern!(req.py(), STARTED), started);
    }

    /// A request starts (ASGI): counts it in flight, returns its start time.
    fn start(&self) -> u64 {
        self.meter.begin()
    }

    /// An ASGI request that started at `started` got a response.
    fn record(&self, started: u64, scope: &Bound<'_, PyAny>, status: u16, sent: u64) {
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
        if let Some(trace) = request_traceparent(scope) {
            self.meter.exemplar(started, method, status, route, &trace);
        }
    }

    /// The request left the worker's hands (answered or not).
    fn end(&self) {
        self.meter.end();
    }

    /// Gunicorn logged the response of `req`: count it once.
    fn access(&self, resp: &Bound<'_, PyAny>, req: &Bound<'_, PyAny>, environ: &Bound<'_, PyAny>) {
        let py = req.py();
        let Ok(started) = req
            .getattr(intern!(py, STARTED))
            .and_then(|v| v.extract::<u64>())
        else {
            return;
        };
        if started == 0 {
            return;
        }
        let Some(status) = resp
            .getattr(intern!(py, "status"))
            .ok()
            .and_then(|s| status_of(&s))
        else {
            return;
        };
        let _ = req.setattr(intern!(py, STARTED), 0);
        let sent = resp
            .getattr(intern!(py, "sent"))
            .and_then(|v| v.extract::<u64>())
            .unwrap_or(0);
        self.observe_queue(started, resp, environ);
        let method = method_of(req);
        let route = self.route_id(environ_route(environ));
        self.meter.record(
            started,
            method,
            status,
            content_length(environ),
            sent,
            route,
        );
        if let Some(trace) = environ_traceparent(environ) {
            self.meter.exemplar(started, method, status, route, &trace);
        }
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
    fn timeout(&self, req: &Bound<'_, PyAny>, environ: Option<&Bound<'_, PyAny>>) {
        let route = match environ {
            Some(environ) => environ_route(environ),
            None => scope_route(req),
        };
        self.meter.timeout(method_of(req), self.route_id(route));
    }

    /// Leaves the reason this worker exits (`max_requests`, `graceful`,
    /// `crashed`); never raises (a failure is a counted write error).
    fn note_exit(&self, reason: &str) -> bool {
        self.meter.note_exit(reason)
    }

    /// The application raised `exc` while handling `req` (a Gunicorn request
    /// or an ASGI scope).
    fn fail(&self, req: &Bound<'_, PyAny>, exc: &Bound<'_, PyAny>) {
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
        let route = if req.cast::<PyDict>().is_ok() {
            scope_route(req)
        } else {
            environ_of_exception(&exc).and_then(|e| environ_route(&e))
        };
        let method = method_of(req);
        let route = self.route_id(route);
        self.meter.fail(method, &name, route);
        if let Some(trace) = request_traceparent(req) {
            self.meter.fail_exemplar(method, &name, route, &trace);
        }
    }
}

/// Settings from the environment (or flags), validated.
#[pyclass(frozen, get_all, module = "gunicorn_prometheus_exporter._core")]
struct Settings {
    directory: Option<PathBuf>,
    port: u16,
    bind_address: String,
    web_config_file: Option<PathBuf>,
    duration_buckets: Vec<f64>,
    prefix: String,
    max_label_values: usize,
}

#[pymethods]
impl Settings {
    /// Reads `mapping` (os.environ by default); raises ValueError with one
    /// line naming the variable.
    #[staticmethod]
    #[pyo3(signature = (mapping))]
    fn from_mapping(mapping: &Bound<'_, PyAny>) -> PyResult<Settings> {
        let s = config::Settings::from_lookup(|name| {
            mapping
                .get_item(name)
                .ok()
                .and_then(|v| v.extract::<String>().ok())
        })
        .map_err(PyValueError::new_err)?;
        Ok(Settings {
            directory: s.directory,
            port: s.port,
            bind_address: s.bind_address.to_string(),
            web_config_file: s.web_config_file,
            duration_buckets: s.duration_buckets,
            prefix: s.prefix,
            max_label_values: s.max_label_values,
        })
    }
}

/// A running metrics server.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
struct Exporter {
    #[pyo3(get)]
    host: String,
    #[pyo3(get)]
    port: u16,
    listener_fd: i32,
    source: Arc<ScrapeSource>,
}

#[pymethods]
impl Exporter {
    /// The listening socket's descriptor number.
    fn listener_fd(&self) -> i32 {
        self.listener_fd
    }

    /// In the child Gunicorn forks to exec a new master (USR2): lets the
    /// listening socket survive the exec; returns its descriptor number.
    fn inherit_listener(&self) -> PyResult<i32> {
        server::inherited::make_inheritable(self.listener_fd)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(self.listener_fd)
    }

    /// The master's listeners as (name, file descriptor), for the listen backlog.
    fn set_listeners(&self, listeners: Vec<(String, i32)>) {
        self.source.set_listeners(listeners);
    }

    /// Listeners the master does not hold (each worker binds its own with
    /// --reuse-port) as (name, "host:port", configured backlog).
    fn set_bound_listeners(&self, listeners: Vec<(String, String, u32)>) -> PyResult<()> {
        let mut bound = Vec::with_capacity(listeners.len());
        for (name, address, backlog) in listeners {
            let addr = address
                .parse()
                .map_err(|e| PyValueError::new_err(format!("listener address {address:?}: {e}")))?;
            bound.push((name, addr, backlog));
        }
        self.source.set_bound_listeners(bound);
        Ok(())
    }
}

/// The master's own series: restarts by reason, signals, desired workers.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
struct MasterMeter {
    meter: master_meter::MasterMeter,
}

#[pymethods]
impl MasterMeter {
    #[new]
    fn new(directory: PathBuf, pid: u32, prefix: &str) -> Self {
        MasterMeter {
            meter: master_meter::MasterMeter::open(&directory, pid, prefix),
        }
    }

    fn restart(&self, reason: &str) -> PyResult<()> {
        if self.meter.restart(reason) {
            Ok(())
        } else {
            Err(PyValueError::new_err(format!(
                "unknown restart reason {reason:?}"
            )))
        }
    }

    /// Counts a signal by name (`hup`, `ttin`, ...); others are ignored.
    fn signal(&self, name: &str) -> bool {
        self.meter.signal(name)
    }

    fn set_desired(&self, workers: u32) {
        self.meter.set_desired(workers);
    }
}

/// Folds the files of exited processes into archives (keeps them open).
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
#[derive(Default)]
struct ArchiveCompactor {
    inner: archive::ArchiveCompactor,
}

#[pymethods]
impl ArchiveCompactor {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Retires `pid`: returns the exit note it left, if any. Waits for the
    /// directory lock only a short while: the fold is deferred otherwise.
    fn retire(&self, py: Python<'_>, directory: PathBuf, pid: u32) -> PyResult<Option<String>> {
        let inner = &self.inner;
        py.detach(|| inner.retire(&directory, pid))
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Number of exited processes whose files still wait to be folded.
    fn deferred(&self) -> usize {
        self.inner.deferred()
    }
}

/// Starts the metrics server for `directory` on a thread of the core.
/// `created`: when the directory's counters started (OpenMetrics `_created`).
/// `inherited_fd`: a listening socket the old master handed over (USR2); one
/// that is not listening on the configured address is ignored with a warning.
#[pyfunction]
#[pyo3(signature = (directory, bind_address, port, prefix, build_info, web_config_file=None, created=None, inherited_fd=None))]
#[allow(clippy::too_many_arguments)]
fn start_exporter(
    directory: PathBuf,
    bind_address: &str,
    port: u16,
    prefix: String,
    build_info: Vec<(String, String)>,
    web_config_file: Option<PathBuf>,
    created: Option<f64>,
    inherited_fd: Option<i32>,
) -> PyResult<Exporter> {
    let ip = bind_address
        .parse()
        .map_err(|_| PyValueError::new_err(format!("bad bind address {bind_address:?}")))?;
    let web = match web_config_file {
        Some(path) => WebConfig::load(&path).map_err(PyValueError::new_err)?,
        None => WebConfig::open(),
    };
    let source = Arc::new(ScrapeSource::new(directory, prefix, build_info, created));
    let addr = SocketAddr::new(ip, port);
    let inherited = inherited_fd.and_then(|fd| {
        server::inherited::adopt_listener(fd, addr)
            .map_err(|why| {
                eprintln!(
                    "[{}] [WARNING] gunicorn_prometheus_exporter: the metrics socket handed \
                     over by the old master is not used ({why}): binding {addr}",
                    std::process::id()
                )
            })
            .ok()
    });
    let started = match inherited {
        Some(listener) => server::start_with_listener(listener, web, Arc::clone(&source)),
        None => server::start(addr, web, Arc::clone(&source)),
    };
    let server = started.map_err(|e| {
        PyOSError::new_err(format!(
            "cannot serve metrics on {bind_address}:{port}: {e} (PROMETHEUS_METRICS_PORT)"
        ))
    })?;
    Ok(Exporter {
        host: server.local_addr.ip().to_string(),
        port: server.local_addr.port(),
        listener_fd: server.listener_fd,
        source,
    })
}

/// In a forked worker: closes the metrics sockets inherited from the master,
/// so that an orphaned worker does not keep the port. Returns how many.
#[pyfunction]
fn close_inherited_metrics_sockets() -> usize {
    server::inherited::close_inherited_sockets()
}

/// Makes the directory and takes it over for this master (one master per
/// directory). Returns the pid of the old master when this is Gunicorn's
/// USR2 upgrade (our parent owns the directory: nothing is cleared), else
/// None (files of an earlier run were cleared).
/// On an upgrade, `compactor` folds the old master's own files once it exited.
#[pyfunction]
#[pyo3(signature = (directory, compactor=None))]
fn prepare_directory(
    directory: PathBuf,
    compactor: Option<&ArchiveCompactor>,
) -> PyResult<Option<u32>> {
    failures::share_with_children();
    let shown = directory.display().to_string();
    let compactor = compactor.map(|c| c.inner.clone());
    let dir = directory.clone();
    let old_master_gone = move |pid: u32| {
        if let Some(compactor) = compactor {
            let _ = compactor.retire(&dir, pid);
        }
    };
    match directory::prepare(&directory, old_master_gone) {
        Ok(directory::Takeover::Fresh) => Ok(None),
        Ok(directory::Takeover::Upgrade { from }) => Ok(Some(from)),
        Err(directory::PrepareError::InUse { owner }) => Err(PyOSError::new_err(format!(
            "PROMETHEUS_MULTIPROC_DIR={shown:?} is in use by the Gunicorn master pid {owner} \
             (one master per directory)"
        ))),
        Err(directory::PrepareError::Io(e)) => Err(PyOSError::new_err(format!(
            "PROMETHEUS_MULTIPROC_DIR={shown:?} is not usable: {e}"
        ))),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<WorkerMeter>()?;
    m.add_class::<Settings>()?;
    m.add_class::<Exporter>()?;
    m.add_function(wrap_pyfunction!(start_exporter, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_directory, m)?)?;
    m.add_function(wrap_pyfunction!(close_inherited_metrics_sockets, m)?)?;
    m.add_class::<MasterMeter>()?;
    m.add_class::<ArchiveCompactor>()?;
    Ok(())
}
