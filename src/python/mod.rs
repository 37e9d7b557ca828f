//! The Python face of the core: `gunicorn_prometheus_exporter._core`.
//!
//! `request` reads what Gunicorn and ASGI servers hand a worker; `worker` and
//! `master` hold the classes and functions each side of Gunicorn uses;
//! `settings` the validated environment both read.

mod access_log;
mod fast_methods;
mod ffi;
mod gil;
mod in_flight;
mod master;
mod metered_handler;
mod process_meter;
mod request;
mod settings;
mod worker;

use pyo3::prelude::*;

use access_log::{CountedAccess, MeteredLog};
use master::{
    directory_owner, prepare_directory, start_exporter, ArchiveCompactor, Exporter, MasterMeter,
};
use metered_handler::{meter_handler, UnmeteredHandler};
use process_meter::meter_requests_with;
use settings::Settings;
use worker::{
    close_inherited_metrics_sockets, exclude_request, forget_inherited_files, WorkerMeter,
};

// The hot path relies on the GIL (`gil`): a worker's request series are
// added to with plain loads and stores, one request at a time
// (`ValueSlot::add_serialized`), and its requests in flight are kept in
// `GilCell`s.
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<WorkerMeter>()?;
    m.add_class::<MeteredLog>()?;
    m.add_class::<CountedAccess>()?;
    m.add_class::<UnmeteredHandler>()?;
    m.add_function(wrap_pyfunction!(meter_requests_with, m)?)?;
    m.add_function(wrap_pyfunction!(meter_handler, m)?)?;
    m.add_function(wrap_pyfunction!(exclude_request, m)?)?;
    fast_methods::install(m.py())?;
    m.add_class::<Settings>()?;
    m.add_class::<Exporter>()?;
    m.add_function(wrap_pyfunction!(start_exporter, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_directory, m)?)?;
    m.add_function(wrap_pyfunction!(directory_owner, m)?)?;
    m.add_function(wrap_pyfunction!(close_inherited_metrics_sockets, m)?)?;
    m.add_function(wrap_pyfunction!(forget_inherited_files, m)?)?;
    m.add_class::<MasterMeter>()?;
    m.add_class::<ArchiveCompactor>()?;
    Ok(())
}
