//! The meter of this process's worker: a Gunicorn worker process runs one
//! worker, so its metered handlers find the meter here, with no look-up.
//! Set in the worker's `init_process` (`meter_requests_with`); a process
//! forked from it inherits it, detached from the files
//! (`storage::mappings::detach_inherited`).

use pyo3::prelude::*;

use super::gil::{ensure_gil, GilCell};
use super::worker::WorkerMeter;

static METER: GilCell<Option<Py<WorkerMeter>>> = GilCell::new(None);

/// This process's meter, if it has one (the hot path).
pub(super) fn current(py: Python<'_>) -> Option<Bound<'_, WorkerMeter>> {
    METER.with(py, |meter| meter.as_ref().map(|m| m.bind(py).clone()))
}

/// `_core.meter_requests_with(meter)`: the metered handlers of this process
/// count on `meter` from now on (`None`: on nothing).
#[pyfunction]
pub(super) fn meter_requests_with(py: Python<'_>, meter: Option<Py<WorkerMeter>>) -> PyResult<()> {
    ensure_gil(py)?;
    let old = METER.with(py, |cell| std::mem::replace(cell, meter));
    // Released outside the cell: freeing a meter may run Python code.
    drop(old.map(|m| m.into_bound(py)));
    Ok(())
}
