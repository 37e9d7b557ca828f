//! The per-request instrumentation of one worker process: the hot path.
//!
//! Every value lives in the process's mmap files and is updated with atomics;
//! the only lock guards the creation of a new series, which happens once per
//! label set in the life of a process.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::catalogue::{self, Series};
use crate::clock::{monotonic_ns, monotonic_seconds, unix_seconds};
use crate::failures;
use crate::kernel::process_stats;
use crate::master::archive::write_exit_note;
use crate::model::Kind;
use crate::storage::names;
use crate::storage::{mappings, running_clock, SeriesFile, ValueSlot};
use crate::worker::exemplar::{ExemplarFile, ExemplarSlot, HistogramExemplars, TraceParent};
use crate::worker::histogram::{HistogramSlots, SIZE_BUCKETS};
use crate::worker::labels::{status_label, status_slot, Method};
use crate::worker::native_histogram::{NativeFile, NativeSeries};
use crate::worker::queue_time::{self, QUEUE_BUCKETS};
use crate::worker::route::{LabelValues, OVERFLOW_VALUE};
use crate::worker::slot_history;
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

/// What a worker needs to open its files.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// The multiprocess directory.
    pub directory: PathBuf,
    /// This worker's pid: names its files.
    pub pid: u32,
    /// This worker's slot: the `worker_id` label.
    pub worker_id: u32,
    /// Prefix of every metric name.
    pub prefix: String,
    /// Upper bounds of the request duration histogram, in seconds.
    pub duration_buckets: Vec<f64>,
    /// Cap on distinct routes, and on distinct error types, of this worker.
    pub max_label_values: usize,
    /// Resolution of the native duration histogram.
    pub native_histogram_schema: i8,
    /// Whether request-level series carry `worker_id` (else they are summed
    /// across workers in the files' keys).
    pub worker_id_label: bool,
    /// The duration and in-flight series under OpenTelemetry's names and
    /// labels (`catalogue::OTEL_*`).
    pub otel_names: bool,
}

struct Files {
    counters: SeriesFile,
    histograms: SeriesFile,
}

/// A counter series made on first use: its family and its labels
/// (worker_id is added).
struct CounterSeries {
    series: &'static Series,
    labels: Vec<(&'static str, String)>,
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

/// One worker's series, recorded from its hot path.
pub struct WorkerMeter {
    directory: PathBuf,
    pid: u32,
    prefix: String,
    worker_id: String,
    /// Whether request-level series carry `worker_id`.
    worker_id_label: bool,
    /// The duration series under OpenTelemetry's names and labels.
    otel_names: bool,
    duration_bounds: Box<[f64]>,
    files: Mutex<Files>,
    // Kept open for the life of the process: the slots point into it.
    gauges: Mutex<SeriesFile>,
    fixed: WorkerSeries,
    requests: Mutex<RequestTable>,
    failures: Mutex<HashMap<(Method, u16, u16), ValueSlot>>,
    signals: Signals,
    in_flight: AtomicU64,
    started_monotonic: f64,
    last_cpu: Mutex<(f64, f64)>,
    native: Option<Arc<NativeFile>>,
    exemplars: Option<Arc<ExemplarFile>>,
    failure_exemplars: Mutex<HashMap<(Method, u16, u16), Arc<ExemplarSlot>>>,
}

/// Lowest bit of a start time from `begin`: the worker had been idle for
/// `queue_time::IDLE_NS` when the request began, so it did not queue (1 ns of
/// error on its duration).
const FRESH_FROM_IDLE: u64 = 1;

/// Most request series a worker makes: (route, method, status) triples.
const REQUEST_SERIES_CAPACITY: usize = 4096;

/// Which request series a request is counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    route: u16,
    method: Method,
    /// `labels::status_slot` of the status.
    status: u16,
}

/// The request series made so far, owned here for the life of the worker.
/// Only requests add to them, with the GIL held: the lock never contends
/// (it makes the rule explicit, at the cost of an uncontended lock).
#[derive(Default)]
struct RequestTable {
    series: FxHashMap<RequestKey, RequestSeries>,
    /// Where requests go once `series` holds `REQUEST_SERIES_CAPACITY`.
    overflow: Option<RequestSeries>,
}

/// What operators act on: queue time, routes, timeouts, saturation.
struct Signals {
    queue: HistogramSlots,
    concurrency: ValueSlot,
    routes: LabelValues,
    error_types: LabelValues,
    /// Off when the worker has no TCP listener: Unix sockets tell nothing.
    kernel_wait: AtomicBool,
    /// When the worker last had nothing in flight (monotonic ns).
    idle_since_ns: AtomicU64,
    /// When the kernel was last asked (monotonic ns): at most once per `PROBE_INTERVAL_NS`.
    probed_ns: AtomicU64,
    timeouts: Mutex<HashMap<(Method, u16), ValueSlot>>,
    overflows: Mutex<HashMap<&'static str, ValueSlot>>,
}

/// Opens the worker's counters and histograms (`<kind>_worker<pid>.db`) and
/// its live gauges (`gauge_livesum_worker<pid>.db`).
fn open_files(dir: &Path, pid: u32) -> (Files, SeriesFile) {
    let owner = names::worker_owner(pid);
    let files = Files {
        counters: SeriesFile::open(&dir.join(names::db_file(Kind::Counter, &owner))),
        histograms: SeriesFile::open(&dir.join(names::db_file(Kind::Histogram, &owner))),
    };
    let gauges = SeriesFile::open(&dir.join(names::live_gauge_file(&owner)));
    (files, gauges)
}

/// Native histograms are an extra: a file that cannot be opened only disables them.
fn open_native(dir: &Path, pid: u32, schema: i8) -> Option<Arc<NativeFile>> {
    NativeFile::open(dir, pid, schema).ok()
}

/// Makes the series a worker has from the start: named `<prefix>_<name>`,
/// labelled with its worker_id (request-level ones only if `worker_id_label`).
struct FixedSeries<'a> {
    prefix: &'a str,
    labels: &'a [(&'a str, &'a str)],
    worker_id_label: bool,
    otel_names: bool,
}

impl FixedSeries<'_> {
    fn labels_of(&self, series: &Series) -> &[(&str, &str)] {
        if (series.per_request && !self.worker_id_label) || series.labels.is_empty() {
            &[]
        } else {
            series.labelled(self.labels)
        }
    }

    /// The slot of a counter or gauge of the catalogue.
    fn value(&self, file: &mut SeriesFile, series: &Series) -> ValueSlot {
        file.slot(&series.key(self.prefix, self.labels_of(series)))
    }

    fn histogram(
        &self,
        histograms: &mut SeriesFile,
        series: &Series,
        bounds: &[f64],
    ) -> HistogramSlots {
        let name = series.family(self.prefix);
        let labels = self.labels_of(series);
        HistogramSlots::open(histograms, &name, series.help, labels, bounds)
    }
}

impl WorkerSeries {
    /// The per-process series; sets the worker's start time.
    fn open(series: &FixedSeries, files: &mut Files, gauges: &mut SeriesFile) -> WorkerSeries {
        let counters = &mut files.counters;
        let histograms = &mut files.histograms;
        let busy = series.value(counters, &catalogue::BUSY);
        let cpu_seconds = series.value(counters, &catalogue::CPU_SECONDS);
        let in_flight = match series.otel_names {
            true => series.value(gauges, &catalogue::OTEL_ACTIVE_REQUESTS),
            false => series.value(gauges, &catalogue::IN_FLIGHT),
        };
        let memory = series.value(gauges, &catalogue::MEMORY);
        let cpu_percent = series.value(gauges, &catalogue::CPU_PERCENT);
        let uptime = series.value(gauges, &catalogue::UPTIME);
        let start_time = series.value(gauges, &catalogue::START_TIME);
        start_time.set(unix_seconds());
        let request_size = series.histogram(histograms, &catalogue::REQUEST_SIZE, &SIZE_BUCKETS);
        let response_size = series.histogram(histograms, &catalogue::RESPONSE_SIZE, &SIZE_BUCKETS);
        WorkerSeries {
            in_flight,
            busy,
            request_size,
            response_size,
            memory,
            cpu_percent,
            cpu_seconds,
            uptime,
        }
    }
}

impl Signals {
    /// The operators' signals: concurrency and queue time series, and caps
    /// of `max_label_values` routes and error types.
    fn open(
        series: &FixedSeries,
        files: &mut Files,
        gauges: &mut SeriesFile,
        max_label_values: usize,
    ) -> Signals {
        let concurrency = series.value(gauges, &catalogue::CONCURRENCY);
        let queue = series.histogram(
            &mut files.histograms,
            &catalogue::REQUEST_QUEUE,
            &QUEUE_BUCKETS,
        );
        Signals {
            queue,
            concurrency,
            routes: LabelValues::new(max_label_values),
            error_types: LabelValues::new(max_label_values),
            kernel_wait: AtomicBool::new(true),
            idle_since_ns: AtomicU64::new(0),
            probed_ns: AtomicU64::new(0),
            timeouts: Mutex::new(HashMap::new()),
            overflows: Mutex::new(HashMap::new()),
        }
    }
}

impl WorkerMeter {
    /// Opens the worker's files. Never fails: what cannot be recorded (no
    /// space, no inodes, no permission) is counted as write errors and the
    /// worker serves as usual.
    pub fn open(config: &MeterConfig) -> WorkerMeter {
        let dir = &config.directory;
        let pid = config.pid;
        let (mut files, mut gauges) = open_files(dir, pid);
        let worker_id = config.worker_id.to_string();
        let series = FixedSeries {
            prefix: &config.prefix,
            labels: &[("worker_id", &worker_id)],
            worker_id_label: config.worker_id_label,
            otel_names: config.otel_names,
        };
        let fixed = WorkerSeries::open(&series, &mut files, &mut gauges);
        let signals = Signals::open(&series, &mut files, &mut gauges, config.max_label_values);
        // The slot's earlier values count against its cap: it holds across restarts.
        let slot = config.worker_id_label.then_some(worker_id.as_str());
        let (routes, error_types) = slot_history::archived_label_values(dir, slot);
        signals.routes.seed(routes.iter().map(String::as_str));
        signals
            .error_types
            .seed(error_types.iter().map(String::as_str));
        let meter = WorkerMeter {
            directory: dir.clone(),
            pid,
            prefix: config.prefix.clone(),
            worker_id,
            worker_id_label: config.worker_id_label,
            otel_names: config.otel_names,
            duration_bounds: config.duration_buckets.clone().into_boxed_slice(),
            files: Mutex::new(files),
            gauges: Mutex::new(gauges),
            fixed,
            requests: Mutex::new(RequestTable::default()),
            failures: Mutex::new(HashMap::new()),
            signals,
            in_flight: AtomicU64::new(0),
            started_monotonic: monotonic_seconds(),
            last_cpu: Mutex::new((monotonic_seconds(), 0.0)),
            native: open_native(dir, pid, config.native_histogram_schema),
            exemplars: ExemplarFile::open(dir, pid).ok(),
            failure_exemplars: Mutex::new(HashMap::new()),
        };
        meter.sample_resources();
        meter
    }

    /// A request starts: returns its start time (monotonic ns).
    ///
    /// `begin`, `end` and `record` are called one at a time: only from Python,
    /// with the GIL held (the compiled methods never release it). So they
    /// update the in-flight count and their slots with plain loads and stores
    /// (`ValueSlot::add_serialized`), without a locked instruction, and two
    /// threads of a worker never interleave between the in-flight transition
    /// (0 to 1, 1 to 0) and the busy update. The busy counter's value and
    /// timestamp are two cells: a reader in another process may see the value
    /// stored and the timestamp not yet: it computes `max(value, now +
    /// anchor)`, never less than the truth, so the counter never goes down.
    #[inline]
    pub fn begin(&self) -> u64 {
        let mut now = monotonic_ns() & !FRESH_FROM_IDLE;
        let busy = &self.fixed.busy;
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        self.in_flight.store(in_flight + 1, Ordering::Relaxed);
        if in_flight == 0 {
            busy.set_timestamp(running_clock::encode(busy.get(), now as f64 / 1e9));
            let idle_since = self.signals.idle_since_ns.load(Ordering::Relaxed);
            if now.saturating_sub(idle_since) >= queue_time::IDLE_NS {
                now |= FRESH_FROM_IDLE;
            }
        }
        self.fixed.in_flight.add_serialized(1.0);
        now
    }

    /// A request is no longer being handled.
    #[inline]
    pub fn end(&self) {
        let Some(left) = self.in_flight.load(Ordering::Relaxed).checked_sub(1) else {
            return; // unmatched: ignored
        };
        self.in_flight.store(left, Ordering::Relaxed);
        if left == 0 {
            let now = monotonic_ns(); // one clock reading: idle from, busy until
            self.signals.idle_since_ns.store(now, Ordering::Relaxed);
            let busy = &self.fixed.busy;
            let anchor = busy.get_timestamp();
            if running_clock::is_running(anchor) {
                busy.set(running_clock::resolve(busy.get(), anchor, now as f64 / 1e9));
                busy.set_timestamp(running_clock::STOPPED);
            }
        }
        // At the end of any request, so that a worker whose threads are
        // never all idle at once is written out too.
        if mappings::repair_wanted() {
            self.repair_files();
        }
        self.fixed.in_flight.add_serialized(-1.0);
    }

    /// A response was sent for a request that took `seconds`; a traced one
    /// (`trace`) becomes the exemplar of the duration bucket it fell in.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        seconds: f64,
        method: Method,
        status: u16,
        request_bytes: u64,
        response_bytes: u64,
        route: u16,
        trace: Option<&TraceParent>,
    ) {
        let key = RequestKey {
            route,
            method,
            status: status_slot(status) as u16,
        };
        let mut table = self.requests.lock();
        let RequestTable { series, overflow } = &mut *table;
        let full = series.len() >= REQUEST_SERIES_CAPACITY;
        let series = match series.entry(key) {
            Entry::Occupied(made) => made.into_mut(),
            Entry::Vacant(new) if !full => new.insert(self.open_request_series(key)),
            Entry::Vacant(_) => self.overflow_series(overflow),
        };
        series.total.add_serialized(1.0);
        series.duration.observe(&self.duration_bounds, seconds);
        if let Some(native) = &series.native {
            native.observe(seconds);
        }
        if let (Some(exemplars), Some(trace)) = (&series.exemplars, trace) {
            exemplars.observe(&self.duration_bounds, seconds, trace, unix_seconds());
        }
        drop(table);
        self.fixed
            .request_size
            .observe(&SIZE_BUCKETS, request_bytes as f64);
        self.fixed
            .response_size
            .observe(&SIZE_BUCKETS, response_bytes as f64);
    }

    /// The series requests go to once `REQUEST_SERIES_CAPACITY` are made:
    /// made once, all labels `other`, so that a request allocates nothing.
    #[cold]
    fn overflow_series<'t>(&self, overflow: &'t mut Option<RequestSeries>) -> &'t RequestSeries {
        self.count_overflow("series");
        overflow.get_or_insert_with(|| {
            self.open_series_labelled(Method::Other.as_str(), OVERFLOW_VALUE, OVERFLOW_VALUE)
        })
    }

    /// Opens the request series of `key`.
    #[cold]
    fn open_request_series(&self, key: RequestKey) -> RequestSeries {
        let route = self.signals.routes.name(key.route);
        let status = status_label(key.status as usize);
        self.open_series_labelled(key.method.as_str(), &route, &status)
    }

    /// Opens the request series of these labels in the worker's files. One
    /// that cannot be recorded gets sink slots: counted once, never retried
    /// per request.
    fn open_series_labelled(&self, method: &str, route: &str, status: &str) -> RequestSeries {
        let mut files = self.files.lock();
        let p = &self.prefix;
        let mut labels = vec![("method", method), ("route", route), ("status", status)];
        self.label_worker(&catalogue::REQUESTS, &mut labels);
        let total = files.counters.slot(&catalogue::REQUESTS.key(p, &labels));
        // OpenTelemetry's names: the status as `error_type` of a 5xx, as its
        // HTTP instrumentation sets it; no worker_id.
        let error_type = match status.as_bytes().first() {
            Some(b'5') if status.len() == 3 => status,
            _ => "",
        };
        let otel_method = if method == OVERFLOW_VALUE {
            "_OTHER"
        } else {
            method
        };
        let otel_labels = [
            ("error_type", error_type),
            ("http_request_method", otel_method),
            ("http_response_status_code", status),
            ("http_route", route),
        ];
        let (duration_family, labels) = match self.otel_names {
            true => (&catalogue::OTEL_REQUEST_DURATION, &otel_labels[..]),
            false => (&catalogue::REQUEST_DURATION, &labels[..]),
        };
        let duration_name = duration_family.family(p);
        let duration = HistogramSlots::open(
            &mut files.histograms,
            &duration_name,
            duration_family.help,
            duration_family.labelled(labels),
            &self.duration_bounds,
        );
        let native = self
            .native
            .as_ref()
            .map(|file| file.series(&duration_name, labels));
        let exemplars = self.exemplars.as_ref().map(|file| {
            HistogramExemplars::new(file, &duration_name, labels, &self.duration_bounds)
        });
        RequestSeries {
            total,
            duration,
            native,
            exemplars,
        }
    }

    /// A traced request failed (after `fail`): the exemplar of its
    /// failed-requests counter, with the same labels as that counter.
    pub fn fail_exemplar(&self, method: Method, error_type: &str, route: u16, trace: &TraceParent) {
        let Some(file) = &self.exemplars else {
            return;
        };
        // Already interned (and any overflow counted) by `fail`.
        let (error_id, _) = self.signals.error_types.intern(error_type);
        let mut slots = self.failure_exemplars.lock();
        let slot = match slots.get(&(method, route, error_id)) {
            Some(slot) => Arc::clone(slot),
            None => {
                let p = &self.prefix;
                let error_type = self.signals.error_types.name(error_id);
                let route_name = self.signals.routes.name(route);
                let mut labels = vec![
                    ("error_type", error_type.as_str()),
                    ("method", method.as_str()),
                    ("route", &route_name),
                ];
                self.label_worker(&catalogue::FAILED_REQUESTS, &mut labels);
                let Ok(slot) = ExemplarSlot::open(
                    &mut file.writer.lock(),
                    &catalogue::FAILED_REQUESTS.family(p),
                    &catalogue::FAILED_REQUESTS.sample(p),
                    &labels,
                ) else {
                    return;
                };
                let slot = Arc::new(slot);
                slots.insert((method, route, error_id), Arc::clone(&slot));
                slot
            }
        };
        slot.store(trace, 1.0, unix_seconds());
    }

    /// The application raised instead of answering.
    pub fn fail(&self, method: Method, error_type: &str, route: u16) {
        let (error_id, folded) = self.signals.error_types.intern(error_type);
        if folded {
            self.count_overflow("error_type");
        }
        self.counter(&self.failures, (method, route, error_id), || {
            CounterSeries {
                series: &catalogue::FAILED_REQUESTS,
                labels: vec![
                    ("error_type", self.signals.error_types.name(error_id)),
                    ("method", method.as_str().to_owned()),
                    ("route", self.signals.routes.name(route)),
                ],
            }
        })
        .add(1.0);
    }

    /// The id of a route template (`""`: nothing matched); past the cap, the
    /// id of `other`, counted in `label_overflow_total{label="route"}`.
    pub fn route_id(&self, route: &str) -> (u16, bool) {
        let (id, folded) = self.signals.routes.intern(route);
        if folded {
            self.count_overflow("route");
        }
        (id, folded)
    }

    /// A request waited `seconds` before the worker picked it up.
    #[inline]
    pub fn observe_queue(&self, seconds: f64) {
        self.signals.queue.observe(&QUEUE_BUCKETS, seconds.max(0.0));
    }

    /// Whether to ask the kernel how long the request of `started` (from
    /// `begin`) waited, now: not for a request that began on an idle worker
    /// (it waited 0, observed here), and at most once per probe interval.
    #[inline]
    pub fn should_probe_kernel(&self, started: u64, now: u64) -> bool {
        let signals = &self.signals;
        if !signals.kernel_wait.load(Ordering::Relaxed) {
            return false;
        }
        if started & FRESH_FROM_IDLE != 0 {
            self.observe_queue(0.0);
            return false;
        }
        let probed = signals.probed_ns.load(Ordering::Relaxed);
        if now.saturating_sub(probed) < queue_time::PROBE_INTERVAL_NS {
            return false;
        }
        signals.probed_ns.store(now, Ordering::Relaxed);
        true
    }

    /// Queue time from the kernel: the age of the bytes on TCP socket `fd`,
    /// less the `handled` seconds since the worker picked the request up.
    pub fn observe_kernel_wait(&self, fd: i32, handled: f64) {
        if let Ok(age) = queue_time::last_data_age(fd) {
            self.observe_queue(age - handled);
        }
    }

    /// Whether to ask the kernel (off for a worker with only Unix listeners).
    pub fn set_kernel_wait(&self, on: bool) {
        self.signals.kernel_wait.store(on, Ordering::Relaxed);
    }

    /// Requests this worker can serve at once (1 sync, threads, connections).
    pub fn set_concurrency(&self, requests: u32) {
        self.signals.concurrency.set(requests as f64);
    }

    /// The arbiter aborted this worker while it handled a `method` request on `route`.
    pub fn timeout(&self, method: Method, route: u16) {
        self.counter(&self.signals.timeouts, (method, route), || CounterSeries {
            series: &catalogue::REQUEST_TIMEOUTS,
            labels: vec![
                ("method", method.as_str().to_owned()),
                ("route", self.signals.routes.name(route)),
            ],
        })
        .add(1.0);
    }

    #[cold]
    fn count_overflow(&self, label: &'static str) {
        self.counter(&self.signals.overflows, label, || CounterSeries {
            series: &catalogue::LABEL_OVERFLOW,
            labels: vec![("label", label.to_owned())],
        })
        .add(1.0);
    }

    /// Adds `worker_id` to the labels of a series of `family`, unless it is
    /// request-level and `PROMETHEUS_WORKER_ID_LABEL` is off.
    fn label_worker<'a>(&'a self, family: &Series, labels: &mut Vec<(&'a str, &'a str)>) {
        if self.worker_id_label || !family.per_request {
            labels.push(("worker_id", &self.worker_id));
        }
    }

    /// The slot of the counter series `key` stands for in `series`, made
    /// (with `describe`'s name, help and labels, plus worker_id) the first time.
    #[cold]
    fn counter<K: Eq + std::hash::Hash>(
        &self,
        series: &Mutex<HashMap<K, ValueSlot>>,
        key: K,
        describe: impl FnOnce() -> CounterSeries,
    ) -> ValueSlot {
        let mut series = series.lock();
        if let Some(slot) = series.get(&key) {
            return *slot;
        }
        let CounterSeries {
            series: family,
            labels,
        } = describe();
        let mut labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.label_worker(family, &mut labels);
        let p = &self.prefix;
        let entry = family.key(p, &labels);
        let slot = self.files.lock().counters.slot(&entry);
        series.insert(key, slot);
        slot
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

    /// Writes the worker's files out again where another process removed,
    /// truncated, grew or replaced them, or where they could not be made
    /// (`MmapWriter::repair`). Only with the GIL held, so that no request
    /// writes into them meanwhile: at the end of a request after the sampler
    /// asked (`mappings::check_mapped`), and as it exits. The sampler's own
    /// values (uptime, memory, CPU) are set without the GIL: one set during
    /// the copy may be lost, and is set afresh within a second.
    #[cold]
    pub fn repair_files(&self) {
        mappings::take_repair_wanted();
        let mut files = self.files.lock();
        files.counters.repair();
        files.histograms.repair();
        self.gauges.lock().repair();
        if let Some(native) = &self.native {
            native.writer.lock().repair();
        }
        if let Some(exemplars) = &self.exemplars {
            exemplars.writer.lock().repair();
        }
    }

    /// Leaves the reason this process is exiting for the master to read;
    /// whether it could (a failure is a counted write error). Its files are
    /// written out first if they need it.
    pub fn note_exit(&self, reason: &str) -> bool {
        if std::process::id() != self.pid {
            return false; // a process forked from the worker: the note is not its own
        }
        self.repair_files();
        let written = write_exit_note(&self.directory, self.pid, reason);
        if let Err(e) = &written {
            failures::write_error(1, format_args!("cannot leave the exit note: {e}"));
        }
        written.is_ok()
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
                mappings::check_mapped();
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::aggregate::collect;
    use crate::worker::route::NO_ROUTE;

    fn value(dir: &std::path::Path, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::scrape::aggregate::find(&collect(dir, monotonic_seconds()), name, labels)
    }

    fn meter(dir: &std::path::Path) -> WorkerMeter {
        WorkerMeter::open(&MeterConfig {
            directory: dir.to_owned(),
            pid: 7,
            worker_id: 3,
            prefix: "gunicorn".into(),
            duration_buckets: crate::worker::histogram::DEFAULT_DURATION_BUCKETS.to_vec(),
            max_label_values: 2,
            native_histogram_schema: crate::worker::native_histogram::DEFAULT_SCHEMA,
            worker_id_label: true,
            otel_names: false,
        })
    }

    #[test]
    fn requests_are_counted_per_method_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        for (method, status) in [(Method::Get, 200), (Method::Get, 200), (Method::Other, 404)] {
            m.begin();
            m.record(0.01, method, status, 10, 2000, NO_ROUTE, None);
            m.end();
        }
        m.fail(Method::Post, "ValueError", NO_ROUTE);
        let w = ("worker_id", "3");
        let d = dir.path();
        assert_eq!(
            value(
                d,
                "gunicorn_worker_requests_total",
                &[("method", "GET"), ("route", ""), ("status", "200"), w]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_requests_total",
                &[("method", "other"), ("route", ""), ("status", "404"), w]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_request_duration_seconds_count",
                &[("method", "GET"), ("route", ""), ("status", "200"), w]
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
                &[
                    ("error_type", "ValueError"),
                    ("method", "POST"),
                    ("route", ""),
                    w
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(d, "gunicorn_worker_requests_in_flight", &[w]),
            Some(0.0)
        );
    }

    #[test]
    fn requests_past_the_series_table_are_counted_on_one_overflow_series() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        let methods = [
            Method::Get,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Patch,
        ];
        let extra = 7;
        let mut sent = 0;
        'fill: for status in 100..1000u16 {
            for method in methods {
                if sent == REQUEST_SERIES_CAPACITY + extra {
                    break 'fill;
                }
                m.begin();
                m.record(0.01, method, status, 0, 0, NO_ROUTE, None);
                m.end();
                sent += 1;
            }
        }
        let d = dir.path();
        let all = collect(d, monotonic_seconds());
        let requests: Vec<f64> = all
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| &*s.name == "gunicorn_worker_requests_total")
            .map(|s| s.value)
            .collect();
        assert_eq!(requests.iter().sum::<f64>(), sent as f64);
        assert_eq!(requests.len(), REQUEST_SERIES_CAPACITY + 1);
        let other = ("route", "other");
        let overflowed = [
            ("method", "other"),
            other,
            ("status", "other"),
            ("worker_id", "3"),
        ];
        assert_eq!(
            value(d, "gunicorn_worker_requests_total", &overflowed),
            Some(extra as f64)
        );
        assert_eq!(
            value(
                d,
                "gunicorn_worker_label_overflow_total",
                &[("label", "series"), ("worker_id", "3")]
            ),
            Some(extra as f64)
        );
    }

    #[test]
    fn routes_and_error_types_past_the_cap_are_other_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        let w = ("worker_id", "3");
        for route in ["/a", "/b", "/c", "/d", "/a"] {
            let (id, _) = m.route_id(route);
            m.begin();
            m.record(0.01, Method::Get, 200, 0, 0, id, None);
            m.end();
        }
        for error_type in ["A", "B", "C"] {
            m.fail(Method::Get, error_type, NO_ROUTE);
        }
        let d = dir.path();
        let requests = |route| {
            value(
                d,
                "gunicorn_worker_requests_total",
                &[("method", "GET"), ("route", route), ("status", "200"), w],
            )
        };
        assert_eq!(requests("/a"), Some(2.0));
        assert_eq!(requests("/b"), Some(1.0));
        assert_eq!(requests("other"), Some(2.0));
        assert_eq!(requests("/c"), None);
        let overflow = |label| {
            value(
                d,
                "gunicorn_worker_label_overflow_total",
                &[("label", label), w],
            )
        };
        assert_eq!(overflow("route"), Some(2.0));
        assert_eq!(overflow("error_type"), Some(1.0));
        let failed = |e| {
            value(
                d,
                "gunicorn_worker_failed_requests_total",
                &[("error_type", e), ("method", "GET"), ("route", ""), w],
            )
        };
        assert_eq!(
            (failed("A"), failed("B"), failed("other")),
            (Some(1.0), Some(1.0), Some(1.0))
        );
    }

    #[test]
    fn queue_time_timeouts_and_concurrency_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path());
        let w = ("worker_id", "3");
        m.observe_queue(0.3);
        m.observe_queue(-1.0);
        m.set_concurrency(4);
        let (route, _) = m.route_id("/slow");
        m.timeout(Method::Post, route);
        let d = dir.path();
        let bucket = |le| {
            value(
                d,
                "gunicorn_worker_request_queue_seconds_bucket",
                &[w, ("le", le)],
            )
        };
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.25"), Some(1.0));
        assert_eq!(bucket("0.5"), Some(2.0));
        assert_eq!(value(d, "gunicorn_worker_concurrency", &[w]), Some(4.0));
        assert_eq!(
            value(
                d,
                "gunicorn_worker_request_timeouts_total",
                &[("method", "POST"), ("route", "/slow"), w]
            ),
            Some(1.0)
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
