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
use crate::failures;
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
    ) -> Self {
        let config = MeterConfig {
            directory,
            pid,
            worker_id,
            prefix,
            duration_buckets,
        };
        // Never fails: a metrics problem must not keep the worker from booting.
        let meter = Arc::new(Meter::open(&config));
        if let Err(e) = meter.start_sampler(Duration::from_secs_f64(sample_interval)) {
            failures::write_error(1, format_args!("cannot start the resource sampler: {e}"));
        }
        WorkerMeter { meter }
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
        self.meter.record(
            started,
            method_of(scope),
            status,
            scope_content_length(scope),
            sent,
        );
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
        self.meter.record(
            started,
            method_of(req),
            status,
            content_length(environ),
            sent,
        );
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
        self.meter.fail(method_of(req), &name);
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
