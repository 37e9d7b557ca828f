//! The master side of the compiled module: the metrics server, the master's
//! own series, the directory takeover and the folding of exited workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use super::settings::Settings;
use crate::failures;
use crate::master::archive;
use crate::master::directory;

use crate::scrape::source::ScrapeSource;
use crate::server;
use crate::server::web_config::WebConfig;

/// A running metrics server.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct Exporter {
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
pub(super) struct MasterMeter {
    meter: crate::master::meter::MasterMeter,
}

#[pymethods]
impl MasterMeter {
    /// Opens the master's own files in `directory`, named with the prefix of
    /// `settings`; `compactor` keeps them with the directory.
    #[new]
    #[pyo3(signature = (settings, directory, pid, compactor=None))]
    fn new(
        settings: &Settings,
        directory: PathBuf,
        pid: u32,
        compactor: Option<&ArchiveCompactor>,
    ) -> Self {
        MasterMeter {
            meter: crate::master::meter::MasterMeter::open(
                &directory,
                pid,
                &settings.0.prefix,
                compactor.map(|c| &c.inner),
            ),
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
pub(super) struct ArchiveCompactor {
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

    /// Holds each worker slot's distinct `route` and `error_type` values in
    /// the archives to the cap of `settings` (`PROMETHEUS_MAX_LABEL_VALUES`).
    fn cap_label_values(&self, settings: &Settings) {
        self.inner.cap_label_values(settings.0.max_label_values);
    }
}

/// The directory is given to the workers' user and group (`--user`,
/// `--group`): made again if someone removes it, it is theirs again.
#[pyfunction]
pub(super) fn directory_owner(uid: u32, gid: u32) {
    crate::storage::open::remember_directory_owner(uid, gid);
}

/// Starts the metrics server for `directory` on a thread of the core, on
/// the address, prefix and web configuration of `settings`.
/// `created`: when the directory's counters started (OpenMetrics `_created`).
/// `inherited_fd`: a listening socket the old master handed over (USR2); one
/// that is not listening on the configured address is ignored with a warning.
#[pyfunction]
#[pyo3(signature = (settings, directory, build_info, created=None, inherited_fd=None))]
pub(super) fn start_exporter(
    settings: &Settings,
    directory: PathBuf,
    build_info: Vec<(String, String)>,
    created: Option<f64>,
    inherited_fd: Option<i32>,
) -> PyResult<Exporter> {
    let settings = &settings.0;
    let (ip, port) = (settings.bind_address, settings.port);
    let web = match &settings.web_config_file {
        Some(path) => WebConfig::load(path).map_err(PyValueError::new_err)?,
        None => WebConfig::open(),
    };
    let prefix = settings.prefix.clone();
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
            "cannot serve metrics on {ip}:{port}: {e} (PROMETHEUS_METRICS_PORT)"
        ))
    })?;
    Ok(Exporter {
        host: server.local_addr.ip().to_string(),
        port: server.local_addr.port(),
        listener_fd: server.listener_fd,
        source,
    })
}

/// Makes the directory and takes it over for this master (one master per
/// directory). Returns the pid of the old master when this is Gunicorn's
/// USR2 upgrade (our parent owns the directory: nothing is cleared), else
/// None (files of an earlier run were cleared).
/// `compactor` folds, once this master owns the directory (at once, or on
/// an upgrade when the old master exited: its own files first), the files
/// of processes that died with no master left to retire them, and keeps the
/// directory (made again if removed).
/// `private`: the master made it for itself (mode 0700, marked); the
/// private directories that killed masters left beside it are removed.
#[pyfunction]
#[pyo3(signature = (directory, compactor=None, private=false))]
pub(super) fn prepare_directory(
    directory: PathBuf,
    compactor: Option<&ArchiveCompactor>,
    private: bool,
) -> PyResult<Option<u32>> {
    failures::share_with_children();
    archive::share_exit_notes();
    let shown = directory.display().to_string();
    let compactor = compactor.map(|c| c.inner.clone());
    let (dir, sweeper) = (directory.clone(), compactor.clone());
    let old_master_gone = move |pid: u32| {
        if let Some(compactor) = compactor {
            let _ = compactor.retire(&dir, pid);
            compactor.sweep_in_background(dir);
        }
    };
    let prepared = directory::prepare(&directory, private, old_master_gone);
    if private && prepared.is_ok() {
        directory::sweep_private_directories(&directory);
    }
    match prepared {
        Ok(directory::Takeover::Fresh) => {
            if let Some(sweeper) = sweeper {
                sweeper.sweep_in_background(directory);
            }
            Ok(None)
        }
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
