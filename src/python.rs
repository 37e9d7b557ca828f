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
use crate::labels::{parse_status, Method};
use crate::master_meter;
use crate::meter::{MeterConfig, WorkerMeter as Meter};
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
    let len = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
    if len < 0 {
        return None;
    }
    let n = (len as usize).min(N);
    for (i, slot) in buf.iter_mut().enumerate().take(n) {
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

/// The Content-Length of an ASGI scope's headers (a list of (bytes, bytes)).
fn scope_content_length(scope: &Bound<'_, PyAny>) -> u64 {
    let py = scope.py();
    let Ok(Some(headers)) = scope
        .cast::<PyDict>()
        .map(|s| s.get_item(intern!(py, "headers")).ok().flatten())
    else {
        return 0;
    };
    let Ok(headers) = headers.try_iter() else {
        return 0;
    };
    for header in headers.flatten() {
        let (Ok(name), Ok(value)) = (header.get_item(0), header.get_item(1)) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (name.cast::<PyBytes>(), value.cast::<PyBytes>()) else {
            continue;
        };
        if name.as_bytes().eq_ignore_ascii_case(b"content-length") {
            return std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
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
}

#[pymethods]
impl WorkerMeter {
    #[new]
    fn new(
        directory: PathBuf,
        pid: u32,
        worker_id: u32,
        prefix: String,
        duration_buckets: Vec<f64>,
        sample_interval: f64,
    ) -> PyResult<Self> {
        let config = MeterConfig {
            directory,
            pid,
            worker_id,
            prefix,
            duration_buckets,
        };
        let meter = Arc::new(Meter::open(&config).map_err(|e| PyOSError::new_err(e.to_string()))?);
        meter
            .start_sampler(Duration::from_secs_f64(sample_interval))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(WorkerMeter { meter })
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
        let method = method_of(scope);
        self.meter
            .record(started, method, status, scope_content_length(scope), sent);
        if let Some(trace) = request_traceparent(scope) {
            self.meter.exemplar(started, method, status, &trace);
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
        let method = method_of(req);
        self.meter
            .record(started, method, status, content_length(environ), sent);
        if let Some(trace) = environ_traceparent(environ) {
            self.meter.exemplar(started, method, status, &trace);
        }
    }

    /// Leaves the reason this worker exits (`max_requests`, `graceful`, `crashed`).
    fn note_exit(&self, reason: &str) -> PyResult<()> {
        self.meter
            .note_exit(reason)
            .map_err(|e| PyOSError::new_err(e.to_string()))
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
        let method = method_of(req);
        self.meter.fail(method, &name);
        if let Some(trace) = request_traceparent(req) {
            self.meter.fail_exemplar(method, &name, &trace);
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
    source: Arc<ScrapeSource>,
}

#[pymethods]
impl Exporter {
    /// The master's listeners as (name, file descriptor), for the listen backlog.
    fn set_listeners(&self, listeners: Vec<(String, i32)>) {
        self.source.set_listeners(listeners);
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
    fn new(directory: PathBuf, pid: u32, prefix: &str) -> PyResult<Self> {
        let meter = master_meter::MasterMeter::open(&directory, pid, prefix)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(MasterMeter { meter })
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
#[pyclass(module = "gunicorn_prometheus_exporter._core")]
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

    /// Retires `pid`: returns the exit note it left, if any.
    fn retire(&mut self, py: Python<'_>, directory: PathBuf, pid: u32) -> PyResult<Option<String>> {
        let inner = &mut self.inner;
        py.detach(|| inner.retire(&directory, pid))
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }
}

/// Starts the metrics server for `directory` on a thread of the core.
/// `created`: when the directory's counters started (OpenMetrics `_created`).
#[pyfunction]
#[pyo3(signature = (directory, bind_address, port, prefix, build_info, web_config_file=None, created=None))]
fn start_exporter(
    directory: PathBuf,
    bind_address: &str,
    port: u16,
    prefix: String,
    build_info: Vec<(String, String)>,
    web_config_file: Option<PathBuf>,
    created: Option<f64>,
) -> PyResult<Exporter> {
    let ip = bind_address
        .parse()
        .map_err(|_| PyValueError::new_err(format!("bad bind address {bind_address:?}")))?;
    let web = match web_config_file {
        Some(path) => WebConfig::load(&path).map_err(PyValueError::new_err)?,
        None => WebConfig::open(),
    };
    let source = Arc::new(ScrapeSource::new(directory, prefix, build_info, created));
    let server =
        server::start(SocketAddr::new(ip, port), web, Arc::clone(&source)).map_err(|e| {
            PyOSError::new_err(format!(
                "cannot serve metrics on {bind_address}:{port}: {e} (PROMETHEUS_METRICS_PORT)"
            ))
        })?;
    Ok(Exporter {
        host: server.local_addr.ip().to_string(),
        port: server.local_addr.port(),
        source,
    })
}

/// In a forked worker: closes the metrics sockets inherited from the master,
/// so that an orphaned worker does not keep the port. Returns how many.
#[pyfunction]
fn close_inherited_metrics_sockets() -> usize {
    server::inherited::close_inherited_sockets()
}

/// Makes the directory and clears files of an earlier run.
#[pyfunction]
fn prepare_directory(directory: PathBuf) -> PyResult<()> {
    directory::prepare(&directory).map_err(|e| {
        PyOSError::new_err(format!(
            "PROMETHEUS_MULTIPROC_DIR={:?} is not usable: {e}",
            directory.display().to_string()
        ))
    })
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
