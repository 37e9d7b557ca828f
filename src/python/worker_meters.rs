//! Where a metered worker class keeps each worker's meter: in the core, by
//! the worker's identity, so that the core's request handler finds it with no
//! attribute look-up.
//!
//! `meter_handler` makes `cls.meter` a data descriptor (`MeterAttribute`):
//! `worker.meter = m` files `m` here, `worker.meter` reads it back and `del
//! worker.meter` removes it. Every write goes through it, so what the handler
//! reads is never stale. A Gunicorn worker process has one worker.

use parking_lot::Mutex;
use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::worker::WorkerMeter;

/// (worker, its meter). The worker is held so that its address, the key,
/// cannot be reused by another object. Locked only with the GIL held and
/// never across a call into Python: it cannot contend.
static METERS: Mutex<Vec<(Py<PyAny>, Py<WorkerMeter>)>> = Mutex::new(Vec::new());

/// The meter of `worker`, if it has one (the hot path: a scan of one entry).
pub(super) fn meter_of<'py>(worker: &Bound<'py, PyAny>) -> Option<Bound<'py, WorkerMeter>> {
    let meters = METERS.lock();
    let (_, meter) = meters.iter().find(|(w, _)| w.is(worker))?;
    Some(meter.bind(worker.py()).clone())
}

/// Files `meter` as the meter of `worker` (`None`: removes it); whether
/// the worker had one.
fn file(worker: &Bound<'_, PyAny>, meter: Option<Py<WorkerMeter>>) -> bool {
    let mut meters = METERS.lock();
    let at = meters.iter().position(|(w, _)| w.is(worker));
    let old = match (at, meter) {
        (Some(at), Some(meter)) => Some(std::mem::replace(&mut meters[at].1, meter)),
        (Some(at), None) => Some(meters.swap_remove(at).1),
        (None, Some(meter)) => {
            meters.push((worker.clone().unbind(), meter));
            None
        }
        (None, None) => None,
    };
    drop(meters);
    // Released after the lock: freeing a meter may run Python code.
    let had = old.is_some();
    drop(old.map(|m| m.into_bound(worker.py())));
    had
}

/// `cls.meter` of a metered worker class: each worker's `WorkerMeter`, kept
/// in the core.
#[pyclass(frozen, module = "gunicorn_prometheus_exporter._core")]
pub(super) struct MeterAttribute;

#[pymethods]
impl MeterAttribute {
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        worker: Option<&Bound<'py, PyAny>>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(worker) = worker.filter(|w| !w.is_none()) else {
            return Ok(slf.clone().into_any()); // looked up on the class
        };
        match meter_of(worker) {
            Some(meter) => Ok(meter.into_any()),
            None => Err(PyAttributeError::new_err(format!(
                "'{}' object has no attribute 'meter'",
                worker.get_type().name()?
            ))),
        }
    }

    fn __set__(&self, worker: &Bound<'_, PyAny>, meter: &Bound<'_, PyAny>) -> PyResult<()> {
        let meter = meter
            .cast::<WorkerMeter>()
            .map_err(|_| PyTypeError::new_err("a metered worker's meter is a WorkerMeter"))?;
        file(worker, Some(meter.clone().unbind()));
        Ok(())
    }

    fn __delete__(&self, worker: &Bound<'_, PyAny>) -> PyResult<()> {
        if file(worker, None) {
            Ok(())
        } else {
            Err(PyAttributeError::new_err("meter"))
        }
    }
}

/// Makes `cls.meter` a `MeterAttribute` (once per class).
pub(super) fn install(cls: &Bound<'_, PyType>) -> PyResult<()> {
    let py = cls.py();
    let name = pyo3::intern!(py, "meter");
    let own = cls
        .getattr(pyo3::intern!(py, "__dict__"))?
        .get_item(name)
        .ok();
    if own.is_some_and(|a| a.is_instance_of::<MeterAttribute>()) {
        return Ok(());
    }
    cls.setattr(name, Bound::new(py, MeterAttribute)?)
}
