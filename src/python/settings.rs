//! The settings of the environment (or the standalone exporter's flags).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::config;

/// Settings from the environment (or flags), validated.
#[pyclass(frozen, get_all, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct Settings {
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
