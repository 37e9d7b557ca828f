//! Every family this exporter writes or serves, in one place: its name, type,
//! help and labels. The writers (`worker::meter`, `master::meter`) and the
//! scrape's own families (`scrape::source`) take their names and help from
//! here, and a test holds README's metric table to this list.

use crate::model::{Family, Kind};
use crate::storage::key;

/// One family.
#[derive(Debug)]
pub struct Series {
    /// The name after `<prefix>_` (`worker_requests` is
    /// `gunicorn_worker_requests_total`); the whole name for a `process_*`
    /// family, which has no prefix.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its help text.
    pub help: &'static str,
    /// Its labels, in the order the keys sort them (`le` aside).
    pub labels: &'static [&'static str],
    /// A request-level family: without `worker_id` when
    /// `PROMETHEUS_WORKER_ID_LABEL=false` (summed across workers).
    pub per_request: bool,
    /// Named under the prefix (not the `process_*` and OpenTelemetry ones).
    pub prefixed: bool,
}

impl Series {
    /// The family's name under `prefix` (`process_*` families have none).
    pub fn family(&self, prefix: &str) -> String {
        if self.prefixed {
            format!("{prefix}_{}", self.name)
        } else {
            self.name.to_owned()
        }
    }

    /// The key of its sample with `labels`, whose names are its own (as the
    /// keys sort them), under `prefix`.
    pub fn key(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        key::encode(
            &self.family(prefix),
            &self.sample(prefix),
            self.labelled(labels),
            self.help,
        )
    }

    /// `labels`, checked (in debug builds) to be this family's (a
    /// request-level one may lack `worker_id`).
    pub fn labelled<'a>(&self, labels: &'a [(&'a str, &'a str)]) -> &'a [(&'a str, &'a str)] {
        let missing = self.labels.len() - labels.len().min(self.labels.len());
        debug_assert!(
            (missing == 0 || (self.per_request && missing == 1))
                && labels.iter().all(|(name, _)| self.labels.contains(name)),
            "{}: labels {labels:?} are not {:?}",
            self.name,
            self.labels
        );
        labels
    }

    /// A family of it with no sample yet, named under `prefix`.
    pub fn empty(&self, prefix: &str) -> Family {
        Family::new(self.family(prefix), self.help, self.kind)
    }

    /// The name of its one sample: the family's, `_total` for a counter.
    pub fn sample(&self, prefix: &str) -> String {
        let family = self.family(prefix);
        match self.kind {
            Kind::Counter => family + "_total",
            _ => family,
        }
    }
}

const fn series(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Series {
    Series {
        name,
        kind,
        help,
        labels,
        per_request: false,
        prefixed: true,
    }
}

/// A family named without the prefix (a standard name).
const fn unprefixed(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Series {
    Series {
        prefixed: false,
        ..series(name, kind, labels, help)
    }
}

/// A request-level family (`Series::per_request`).
const fn per_request(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Series {
    Series {
        per_request: true,
        ..series(name, kind, labels, help)
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Requests a worker answered.
pub const REQUESTS: Series = per_request(
    "worker_requests",
    Counter,
    &["method", "route", "status", "worker_id"],
    "Requests answered by this worker.",
);
/// Their duration.
pub const REQUEST_DURATION: Series = per_request(
    "worker_request_duration_seconds",
    Histogram,
    &["method", "route", "status", "worker_id"],
    "Time from the start of a request to its logged response.",
);
/// Exceptions the application raised.
pub const FAILED_REQUESTS: Series = per_request(
    "worker_failed_requests",
    Counter,
    &["error_type", "method", "route", "worker_id"],
    "Requests where the application raised instead of answering.",
);
/// Time requests waited for a worker.
pub const REQUEST_QUEUE: Series = per_request(
    "worker_request_queue_seconds",
    Histogram,
    &["worker_id"],
    "Time a request waited before this worker picked it up.",
);
/// Requests in flight when the arbiter aborted the worker.
pub const REQUEST_TIMEOUTS: Series = per_request(
    "worker_request_timeouts",
    Counter,
    &["method", "route", "worker_id"],
    "Requests in flight when the arbiter aborted this worker for its timeout.",
);
/// Requests a worker can serve at once.
pub const CONCURRENCY: Series = series(
    "worker_concurrency",
    Gauge,
    &["worker_id"],
    "Requests this worker can serve at once.",
);
/// Label values past the cap.
pub const LABEL_OVERFLOW: Series = series(
    "worker_label_overflow",
    Counter,
    &["label", "worker_id"],
    "Observations whose label value was past the cap (PROMETHEUS_MAX_LABEL_VALUES) and \
     counted as other.",
);
/// Request body sizes.
pub const REQUEST_SIZE: Series = per_request(
    "worker_request_size_bytes",
    Histogram,
    &["worker_id"],
    "Size of request bodies (Content-Length).",
);
/// Response body sizes.
pub const RESPONSE_SIZE: Series = per_request(
    "worker_response_size_bytes",
    Histogram,
    &["worker_id"],
    "Size of response bodies sent.",
);
/// Requests being handled.
pub const IN_FLIGHT: Series = series(
    "worker_requests_in_flight",
    Gauge,
    &["worker_id"],
    "Requests this worker is handling now.",
);
/// Wall time spent handling requests.
pub const BUSY: Series = series(
    "worker_busy_seconds",
    Counter,
    &["worker_id"],
    "Wall time this worker spent handling requests.",
);
/// Resident memory of a worker.
pub const MEMORY: Series = series(
    "worker_memory_bytes",
    Gauge,
    &["worker_id"],
    "Resident set size of this worker process.",
);
/// CPU use of a worker.
pub const CPU_PERCENT: Series = series(
    "worker_cpu_percent",
    Gauge,
    &["worker_id"],
    "CPU use of this worker over the last sampling interval.",
);
/// CPU time of a worker.
pub const CPU_SECONDS: Series = series(
    "worker_cpu_seconds",
    Counter,
    &["worker_id"],
    "CPU time used by this worker process.",
);
/// Age of a worker.
pub const UPTIME: Series = series(
    "worker_uptime_seconds",
    Gauge,
    &["worker_id"],
    "Seconds since this worker process started.",
);
/// Start of a worker.
pub const START_TIME: Series = series(
    "worker_start_time_seconds",
    Gauge,
    &["worker_id"],
    "Start time of this worker process since the Unix epoch.",
);
/// Live workers.
pub const WORKERS: Series = series("workers", Gauge, &[], "Live worker processes.");
/// Workers the master wants.
pub const WORKERS_DESIRED: Series = series(
    "workers_desired",
    Gauge,
    &[],
    "Workers the master is configured to run.",
);
/// Workers replaced.
pub const RESTARTS: Series = series(
    "worker_restarts",
    Counter,
    &["reason"],
    "Workers replaced, by reason.",
);
/// Signals the master received.
pub const SIGNALS: Series = series(
    "master_signals",
    Counter,
    &["signal"],
    "Signals the master received.",
);
/// Connections waiting in a listener's queue.
pub const LISTEN_BACKLOG: Series = series(
    "listen_backlog",
    Gauge,
    &["listener"],
    "Connections waiting to be accepted by a worker.",
);
/// A listener's configured backlog.
pub const LISTEN_BACKLOG_MAX: Series = series(
    "listen_backlog_max",
    Gauge,
    &["listener"],
    "Configured listen backlog.",
);
/// What could not be read.
pub const READ_ERRORS: Series = series(
    "exporter_read_errors",
    Counter,
    &[],
    "Files or entries of the multiprocess directory that could not be read.",
);
/// What could not be recorded.
pub const WRITE_ERRORS: Series = series(
    "exporter_write_errors",
    Counter,
    &[],
    "Files or entries that could not be recorded (by the master or its workers).",
);
/// Versions.
pub const BUILD_INFO: Series = series(
    "exporter_build_info",
    Gauge,
    &[
        "gunicorn_version",
        "python_version",
        "version",
        "worker_class",
    ],
    "Versions of the exporter and what it runs in.",
);
/// The serving process's CPU time.
pub const PROCESS_CPU: Series = unprefixed(
    "process_cpu_seconds",
    Counter,
    &[],
    "Total user and system CPU time spent in seconds.",
);
/// Its resident memory.
pub const PROCESS_RESIDENT: Series = unprefixed(
    "process_resident_memory_bytes",
    Gauge,
    &[],
    "Resident memory size in bytes.",
);
/// Its virtual memory.
pub const PROCESS_VIRTUAL: Series = unprefixed(
    "process_virtual_memory_bytes",
    Gauge,
    &[],
    "Virtual memory size in bytes.",
);
/// Its start.
pub const PROCESS_START: Series = unprefixed(
    "process_start_time_seconds",
    Gauge,
    &[],
    "Start time of the process since unix epoch in seconds.",
);
/// Its open descriptors.
pub const PROCESS_OPEN_FDS: Series = unprefixed(
    "process_open_fds",
    Gauge,
    &[],
    "Number of open file descriptors.",
);
/// Its descriptor limit.
pub const PROCESS_MAX_FDS: Series = unprefixed(
    "process_max_fds",
    Gauge,
    &[],
    "Maximum number of open file descriptors.",
);

/// The request duration under OpenTelemetry's HTTP semantic conventions
/// (`PROMETHEUS_METRIC_NAMES=otel`), as its Prometheus exporter names it.
pub const OTEL_REQUEST_DURATION: Series = unprefixed(
    "http_server_request_duration_seconds",
    Histogram,
    &[
        "error_type",
        "http_request_method",
        "http_response_status_code",
        "http_route",
    ],
    "Duration of HTTP server requests.",
);
/// Requests in flight, under OpenTelemetry's names (summed across workers).
pub const OTEL_ACTIVE_REQUESTS: Series = unprefixed(
    "http_server_active_requests",
    Gauge,
    &[],
    "Number of active HTTP server requests.",
);

/// Every family, in README's order.
#[cfg(test)]
pub const ALL: [&Series; 31] = [
    &REQUESTS,
    &REQUEST_DURATION,
    &FAILED_REQUESTS,
    &REQUEST_QUEUE,
    &REQUEST_TIMEOUTS,
    &CONCURRENCY,
    &LABEL_OVERFLOW,
    &REQUEST_SIZE,
    &RESPONSE_SIZE,
    &IN_FLIGHT,
    &BUSY,
    &MEMORY,
    &CPU_PERCENT,
    &CPU_SECONDS,
    &UPTIME,
    &START_TIME,
    &WORKERS,
    &WORKERS_DESIRED,
    &RESTARTS,
    &SIGNALS,
    &LISTEN_BACKLOG,
    &LISTEN_BACKLOG_MAX,
    &READ_ERRORS,
    &WRITE_ERRORS,
    &BUILD_INFO,
    &PROCESS_CPU,
    &PROCESS_RESIDENT,
    &PROCESS_VIRTUAL,
    &PROCESS_START,
    &PROCESS_OPEN_FDS,
    &PROCESS_MAX_FDS,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// README's metric table: (name, labels) of each row of a `gunicorn_…`
    /// family, and what its `process_*` row says.
    fn readme_table() -> (Vec<(String, Vec<String>)>, String) {
        let readme = include_str!("../README.md");
        let table = readme
            .split("\n## Metrics\n")
            .nth(1)
            .expect("README has a Metrics section")
            .split("\n\n")
            .map(str::trim)
            .find(|block| block.starts_with("| metric"))
            .expect("the Metrics section has a table");
        let mut rows = Vec::new();
        let mut process = String::new();
        for line in table.lines().skip(2) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let names = cells[1];
            if names.starts_with("`process_") {
                process = cells[4].to_owned();
                continue;
            }
            let labels: Vec<String> = match cells[3] {
                "—" => Vec::new(),
                labels => labels.split(", ").map(str::to_owned).collect(),
            };
            rows.push((names.trim_matches('`').to_owned(), labels));
        }
        (rows, process)
    }

    #[test]
    fn readmes_metric_table_lists_every_family_with_its_labels() {
        let (rows, process) = readme_table();
        let mut documented: Vec<(String, Vec<String>)> = rows
            .into_iter()
            .map(|(name, mut labels)| {
                labels.sort();
                (name, labels)
            })
            .collect();
        documented.sort();
        let mut catalogued: Vec<(String, Vec<String>)> = ALL
            .iter()
            .filter(|s| s.prefixed)
            .map(|s| {
                let name = match s.kind {
                    Kind::Counter => s.sample("gunicorn"),
                    _ => s.family("gunicorn"),
                };
                let mut labels: Vec<String> = s.labels.iter().map(|l| l.to_string()).collect();
                labels.sort();
                (name, labels)
            })
            .collect();
        catalogued.sort();
        assert_eq!(documented, catalogued);
        for s in ALL.iter().filter(|s| !s.prefixed) {
            let short = s.name.trim_start_matches("process_");
            let named = match short {
                "resident_memory_bytes" => "resident",
                "virtual_memory_bytes" => "virtual",
                "start_time_seconds" => "start time",
                "open_fds" => "open",
                "max_fds" => "max fds",
                other => other,
            };
            assert!(process.contains(named), "README's process_* row: {short}");
        }
    }

    #[test]
    fn readmes_opentelemetry_table_lists_those_families() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n### OpenTelemetry names\n")
            .nth(1)
            .expect("README has an OpenTelemetry names section");
        for s in [&OTEL_REQUEST_DURATION, &OTEL_ACTIVE_REQUESTS] {
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `{}`", s.name)))
                .unwrap_or_else(|| panic!("README lists {}", s.name));
            for label in s.labels {
                assert!(row.contains(label), "{}: {label}", s.name);
            }
        }
    }

    #[test]
    fn each_family_is_listed_once_with_sorted_labels() {
        for (i, s) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|o| o.name != s.name), "{}", s.name);
            assert!(s.labels.windows(2).all(|w| w[0] < w[1]), "{}", s.name);
        }
    }
}
