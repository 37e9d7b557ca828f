//! The per-request instrumentation of one worker process: the hot path.
//!
//! Every value lives in the process's mmap files and is updated with atomics;
//! the only lock guards the creation of a new series, which happens once per
//! label set in the life of a process.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::archive::{exit_note_path, worker_file_id};
use crate::clock::{monotonic_ns, monotonic_seconds, unix_seconds};
use crate::exemplar::{ExemplarFile, ExemplarSlot, HistogramExemplars, TraceParent};
use crate::histogram::{HistogramSlots, SIZE_BUCKETS};
use crate::labels::{status_label, status_slot, Method, STATUS_SLOTS};
use crate::native_histogram::{self, NativeFile, NativeSeries};
use crate::process_stats;
use crate::storage::{key, MmapWriter, ValueSlot};

/// What a worker needs to open its files.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub directory: PathBuf,
    pub pid: u32,
    pub worker_id: u32,
    pub prefix: String,
    pub duration_buckets: Vec<f64>,
}

struct Files {
    counters: MmapWriter,
    histograms: MmapWriter,
}

/// The series of one (method, status) pair.
struct RequestSeries {
    total: ValueSlot,
    duration: HistogramSlots,
    /// The duration as a native histogram too (none if its file is unusable).
    native: Option<NativeSeries>,
    /// Exemplars of traced requests, per bucket.
    exemplars: Option<HistogramExemplars>,
}

/// Per-process series that exist from the start.
struct WorkerSeries {
    in_flight: ValueSlot,
    busy: ValueSlot,
    request_size: HistogramSlots,
    response_size: HistogramSlots,
    memory: ValueSlot,
    cpu_percent: ValueSlot,
    cpu_seconds: ValueSlot,
    uptime: ValueSlot,
}

pub struct WorkerMeter {
    directory: PathBuf,
    pid: u32,
    prefix: String,
    worker_id: String,
    duration_bounds: Box<[f64]>,
    files: Mutex<Files>,
    // Kept open for the life of the process: the slots point into it.
    _gauges: MmapWriter,
    fixed: WorkerSeries,
    requests: Box<[AtomicPtr<RequestSeries>]>,
    failures: Mutex<HashMap<(Method, String), ValueSlot>>,
    in_flight: AtomicU64,
    started_monotonic: f64,
    last_cpu: Mutex<(f64, f64)>,
    native: Option<Arc<NativeFile>>,
    exemplars: Option<Arc<ExemplarFile>>,
    failure_exemplars: Mutex<HashMap<(Method, String), Arc<ExemplarSlot>>>,
}

const MAX_ERROR_TYPE_CHARS: usize = 100;

impl WorkerMeter {
    pub fn open(config: &MeterConfig) -> io::Result<WorkerMeter> {
        let dir = &config.directory;
        let pid = config.pid;
        let id = worker_file_id(pid);
        let mut counters = MmapWriter::open(&dir.join(format!("counter_{id}.db")))?;
        let mut histograms = MmapWriter::open(&dir.join(format!("histogram_{id}.db")))?;
        let mut gauges = MmapWriter::open(&dir.join(format!("gauge_livesum_{id}.db")))?;
        let p = &config.prefix;
        let worker_id = config.worker_id.to_string();
        let wl: &[(&str, &str)] = &[("worker_id", &worker_id)];
        let mut counter = |name: &str, help: &str| {
            counters.slot(&key::encode(
                &format!("{p}_{name}"),
                &format!("{p}_{name}_total"),
                wl,
                help,
            ))
        };
        let busy = counter(
            "worker_busy_seconds",
            "Wall time this worker spent handling requests.",
        )?;
        let cpu_seconds = counter(
            "worker_cpu_seconds",
            "CPU time used by this worker process.",
        )?;
        let mut gauge = |name: &str, help: &str| {
            let name = format!("{p}_{name}");
            gauges.slot(&key::encode(&name, &name, wl, help))
        };
        let in_flight = gauge(
            "worker_requests_in_flight",
            "Requests this worker is handling now.",
        )?;
        let memory = gauge(
            "worker_memory_bytes",
            "Resident set size of this worker process.",
        )?;
        let cpu_percent = gauge(
            "worker_cpu_percent",
            "CPU use of this worker over the last sampling interval.",
        )?;
        let uptime = gauge(
            "worker_uptime_seconds",
            "Seconds since this worker process started.",
        )?;
        let start_time = gauge(
            "worker_start_time_seconds",
            "Start time of this worker process since the Unix epoch.",
        )?;
        start_time.set(unix_seconds());
        let request_size = HistogramSlots::open(
            &mut histograms,
            &format!("{p}_worker_request_size_bytes"),
            "Size of request bodies (Content-Length).",
            wl,
            &SIZE_BUCKETS,
        )?;
        let response_size = HistogramSlots::open(
            &mut histograms,
            &format!("{p}_worker_response_size_bytes"),
            "Size of response bodies sent.",
            wl,
            &SIZE_BUCKETS,
        )?;
        let fixed = WorkerSeries {
            in_flight,
            busy,
            request_size,
            response_size,
            memory,
            cpu_percent,
            cpu_seconds,
            uptime,
        };
        let requests = (0..Method::COUNT * STATUS_SLOTS)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        let meter = WorkerMeter {
            directory: dir.clone(),
            pid,
            prefix: config.prefix.clone(),
            worker_id,
            duration_bounds: config.duration_buckets.clone().into_boxed_slice(),
            files: Mutex::new(Files {
                counters,
                histograms,
            }),
            _gauges: gauges,
            fixed,
            requests,
            failures: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
            started_monotonic: monotonic_seconds(),
            last_cpu: Mutex::new((monotonic_seconds(), 0.0)),
            // Native histograms are an extra: a file that cannot be opened only disables them.
            native: native_histogram::schema_from_env()
                .and_then(|schema| NativeFile::open(dir, pid, schema).ok()),
            exemplars: ExemplarFile::open(dir, pid).ok(),
            failure_exemplars: Mutex::new(HashMap::new()),
        };
        meter.sample_resources();
        Ok(meter)
    }

    /// A request starts: returns its start time (monotonic ns).
    #[inline]
    pub fn begin(&self) -> u64 {
        let now = monotonic_ns();
        let busy = &self.fixed.busy;
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // The busy clock runs from now on: its timestamp is `settled - now`.
            busy.set_timestamp(busy.get() - now as f64 / 1e9);
        }
        self.fixed.in_flight.add(1.0);
        now
    }

    /// A request is no longer being handled.
    #[inline]
    pub fn end(&self) {
        let previous = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if previous == Ok(1) {
            let busy = &self.fixed.busy;
            let anchor = busy.get_timestamp();
            if anchor < 0.0 {
                busy.set(busy.get().max(monotonic_seconds() + anchor));
                busy.set_timestamp(0.0);
            }
        }
        if previous.is_ok() {
            self.fixed.in_flight.add(-1.0);
        }
    }

    /// A response was sent for a request that began at `started_ns`.
    #[inline]
    pub fn record(
        &self,
        started_ns: u64,
        method: Method,
        status: u16,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let seconds = monotonic_ns().saturating_sub(started_ns) as f64 / 1e9;
        let index = method.index() * STATUS_SLOTS + status_slot(status);
        let mut series = self.requests[index].load(Ordering::Acquire);
        if series.is_null() {
            series = self.create_request_series(method, index);
            if series.is_null() {
                return;
            }
        }
        // Published series are never freed: the table owns them for the life of the process.
        let series = unsafe { &*series };
        series.total.add(1.0);
        series.duration.observe(&self.duration_bounds, seconds);
        if let Some(native) = &series.native {
            native.observe(seconds);
        }
        self.fixed
            .request_size
            .observe(&SIZE_BUCKETS, request_bytes as f64);
        self.fixed
            .response_size
            .observe(&SIZE_BUCKETS, response_bytes as f64);
    }

    #[cold]
    fn create_request_series(&self, method: Method, index: usize) -> *mut RequestSeries {
        let mut files = self.files.lock();
        let existing = self.requests[index].load(Ordering::Acquire);
        if !existing.is_null() {
            return existing;
        }
        let p = &self.prefix;
        let status = status_label(index % STATUS_SLOTS);
        let labels: &[(&str, &str)] = &[
            ("method", method.as_str()),
            ("status", &status),
            ("worker_id", &self.worker_id),
        ];
        let total = files.counters.slot(&key::encode(
            &format!("{p}_worker_requests"),
            &format!("{p}_worker_requests_total"),
            labels,
            "Requests answered by this worker.",
        ));
        let duration = HistogramSlots::open(
            &mut files.histograms,
            &format!("{p}_worker_request_duration_seconds"),
            "Time from the start of a request to its logged response.",
            labels,
            &self.duration_bounds,
        );
        let (Ok(total), Ok(duration)) = (total, duration) else {
            return std::ptr::null_mut();
        };
        let native = self
            .native
            .as_ref()
            .map(|file| file.series(&format!("{p}_worker_request_duration_seconds"), labels));
        let exemplars = self.exemplars.as_ref().map(|file| {
            HistogramExemplars::new(
                file,
                &format!("{p}_worker_request_duration_seconds"),
                labels,
                &self.duration_bounds,
            )
        });
        let series = Box::into_raw(Box::new(RequestSeries {
            total,
            duration,
            native,
            exemplars,
        }));
        self.requests[index].store(series, Ordering::Release);
        series
    }

    /// A traced request that began at `started_ns`, already `record`ed:
    /// its trace becomes the exemplar of the duration bucket it fell in.
    pub fn exemplar(&self, started_ns: u64, method: Method, status: u16, trace: &TraceParent) {
        let index = method.index() * STATUS_SLOTS + status_slot(status);
        let series = self.requests[index].load(Ordering::Acquire);
        if series.is_null() {
            return;
        }
        // SAFETY: published series are never freed (see `record`).
        let series = unsafe { &*series };
        if let Some(exemplars) = &series.exemplars {
            let seconds = monotonic_ns().saturating_sub(started_ns) as f64 / 1e9;
            exemplars.observe(&self.duration_bounds, seconds, trace, unix_seconds());
        }
    }

    /// A traced request failed (after `fail`): the exemplar of its failed-requests counter.
    pub fn fail_exemplar(&self, method: Method, error_type: &str, trace: &TraceParent) {
        let Some(file) = &self.exemplars else {
            return;
        };
        let error_type: String = error_type.chars().take(MAX_ERROR_TYPE_CHARS).collect();
        let mut slots = self.failure_exemplars.lock();
        let slot = match slots.get(&(method, error_type.clone())) {
            Some(slot) => Arc::clone(slot),
            None => {
                let p = &self.prefix;
                let labels: &[(&str, &str)] = &[
                    ("method", method.as_str()),
                    ("error_type", &error_type),
                    ("worker_id", &self.worker_id),
                ];
                let Ok(slot) = ExemplarSlot::open(
                    &mut file.writer.lock(),
                    &format!("{p}_worker_failed_requests"),
                    &format!("{p}_worker_failed_requests_total"),
                    labels,
                ) else {
                    return;
                };
                let slot = Arc::new(slot);
                slots.insert((method, error_type), Arc::clone(&slot));
                slot
            }
        };
        slot.store(trace, 1.0, unix_seconds());
    }

    /// The application raised instead of answering.
    pub fn fail(&self, method: Method, error_type: &str) {
        let error_type: String = error_type.chars().take(MAX_ERROR_TYPE_CHARS).collect();
        let mut failures = self.failures.lock();
        let slot = match failures.get(&(method, error_type.clone())) {
            Some(slot) => *slot,
            None => {
                let p = &self.prefix;
                let labels: &[(&str, &str)] = &[
                    ("method", method.as_str()),
                    ("error_type", &error_type),
                    ("worker_id", &self.worker_id),
                ];
                let key = key::encode(
                    &format!("{p}_worker_failed_requests"),
                    &format!("{p}_worker_failed_requests_total"),
                    labels,
                    "Requests where the application raised instead of answering.",
                );
                let Ok(slot) = self.files.lock().counters.slot(&key) else {
                    return;
                };
                failures.insert((method, error_type), slot);
                slot
            }
        };
        slot.add(1.0);
    }

    /// Samples memory, CPU and uptime of this process.
    pub fn sample_resources(&self) {
        let now = monotonic_seconds();
        self.fixed.uptime.set(now - self.started_monotonic);
        let Some(stats) = process_stats::own_process() else {
            return;
        };
        self.fixed.memory.set(stats.resident_bytes);
        self.fixed
            .cpu_seconds
            .set(stats.cpu_seconds.max(self.fixed.cpu_seconds.get()));
        let mut last = self.last_cpu.lock();
        let elapsed = now - last.0;
        if elapsed > 0.0 {
            self.fixed
                .cpu_percent
                .set(100.0 * (stats.cpu_seconds - last.1).max(0.0) / elapsed);
        }
        *last = (now, stats.cpu_seconds);
    }

    /// Leaves the reason this process is exiting for the master to read.
    pub fn note_exit(&self, reason: &str) -> io::Result<()> {
        std::fs::write(exit_note_path(&self.directory, self.pid), reason)
    }

    /// Samples resources every `interval` on a thread of its own.
    pub fn start_sampler(self: &Arc<Self>, interval: Duration) -> io::Result<()> {
        let meter = Arc::clone(self);
        std::thread::Builder::new()
            .name("gpe-sampler".into())
            .stack_size(64 << 10)
            .spawn(move || loop {
                std::thread::sleep(interval);
                meter.sample_resources();
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::collect;

    fn value(dir: &std::path::Path, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::aggregate::find(&collect(dir, monotonic_seconds()), name, labels)
    }

    fn meter(dir: &std::path::Path) -> WorkerMeter {
        WorkerMeter::open(&MeterConfig {
            directory: dir.to_owned(),
            pid: 7,
            worker_id: 3,
            prefix: "gunicorn".into(),
            duration_buckets: crate::histogram::DEFAULT_DURATION_BUCKETS.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn requests_are_counted_per_method_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        for (method, status) in [(Method::Get, 200), (Method::Get, 200), (Method::Other, 404)] {
            let t = m.begin();
            m.record(t, method, status, 10, 2000);
            m.end();
        }
        m.fail(Method::Post, "ValueError");
        let w = ("worker_id", "3");
        let d = dir.path();
        assert_eq!(
            value(
                d,
                "gunicorn_worker_requests_total",
                &[("method", "GET"), ("status", "200"), w]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_requests_total",
                &[("method", "other"), ("status", "404"), w]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_request_duration_seconds_count",
                &[("method", "GET"), ("status", "200"), w]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_response_size_bytes_bucket",
                &[w, ("le", "1000.0")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_response_size_bytes_bucket",
                &[w, ("le", "10000.0")]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_failed_requests_total",
                &[("error_type", "ValueError"), ("method", "POST"), w]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(d, "gunicorn_worker_requests_in_flight", &[w]),
            Some(0.0)
        );
    }

    #[test]
    fn busy_clock_runs_only_while_a_request_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        let busy = |d| {
            value(
                d,
                "gunicorn_worker_busy_seconds_total",
                &[("worker_id", "3")],
            )
            .unwrap()
        };
        m.begin();
        std::thread::sleep(Duration::from_millis(30));
        let running = busy(dir.path());
        assert!(running >= 0.03, "{running}");
        m.begin();
        m.end();
        m.end();
        let settled = busy(dir.path());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(busy(dir.path()), settled);
        assert!(settled >= running);
        m.end(); // unmatched: ignored
        assert_eq!(
            value(
                dir.path(),
                "gunicorn_worker_requests_in_flight",
                &[("worker_id", "3")]
            ),
            Some(0.0)
        );
    }
}
