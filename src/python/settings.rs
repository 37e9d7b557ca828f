//! The settings of the environment (or the standalone exporter's flags),
//! parsed once by `config` and handed back to the core as they are: Python
//! sees only what it decides on (the directory, whether to serve).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::config;

/// Settings from the environment (or flags), validated. Opaque: the core's
/// constructors take it whole.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct Settings(pub(super) config::Settings);

#[pymethods]
impl Settings {
    /// Reads `mapping` (os.environ, or the flags); raises ValueError with one
    /// line naming the variable.
    #[staticmethod]
    #[pyo3(signature = (mapping))]
    fn from_mapping(mapping: &Bound<'_, PyAny>) -> PyResult<Settings> {
        config::Settings::from_lookup(|name| {
            mapping
                .get_item(name)
                .ok()
                .and_then(|v| v.extract::<String>().ok())
        })
        .map(Settings)
        .map_err(PyValueError::new_err)
    }

    /// `PROMETHEUS_MULTIPROC_DIR`; None: the master makes a private one.
    #[getter]
    fn directory(&self) -> Option<PathBuf> {
        self.0.directory.clone()
    }

    /// `PROMETHEUS_METRICS_PORT`; 0: no built-in server.
    #[getter]
    fn port(&self) -> u16 {
        self.0.port
    }
}
