//! One scrape: the directory's families plus the exporter's own and those the
//! serving process reads from the kernel at scrape time.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::catalogue::{self, Series};
use crate::clock::monotonic_seconds;
use crate::exposition::negotiate::Format;
use crate::exposition::text::LineStarts;
use crate::exposition::{openmetrics, protobuf, text};
use crate::failures;
use crate::kernel::backlog;
use crate::kernel::process_stats;
use crate::model::{Exemplars, Family, Kind, Labels, NativeHistograms};
use crate::scrape::aggregate::{Aggregator, Extra};
use crate::storage::lock::DirectoryLock;
use crate::storage::names::LIVE_WORKER_GAUGES_PREFIX;

/// The longest a scrape waits for the directory lock (a compaction, or a
/// foreign process holding it) before it serves the last families it read.
const SCRAPE_LOCK_WAIT: Duration = Duration::from_secs(2);

static LOCK_TIMEOUT_LOGGED: AtomicU32 = AtomicU32::new(0);

pub struct ScrapeSource {
    pub directory: PathBuf,
    pub prefix: String,
    /// Labels of `<prefix>_exporter_build_info`.
    pub build_info: Labels,
    /// When the directory's counters started from zero (Unix seconds), for
    /// OpenMetrics `_created`; unknown to a sidecar.
    pub created: Option<f64>,
    /// The master's listeners: (name, fd), for the listen backlog.
    listeners: Mutex<Vec<(String, RawFd)>>,
    /// Listeners the master does not hold (--reuse-port): (name, address,
    /// configured backlog), read from the kernel's socket table.
    bound_listeners: Mutex<Vec<(String, SocketAddr, u32)>>,
    /// What scrapes keep, one scrape at a time.
    kept: Mutex<Kept>,
    read_errors: AtomicU64,
    /// The size of the last body rendered, to size the next one.
    last_body: AtomicUsize,
}

/// What a source keeps from one scrape to the next: the directory's
/// registry and readers, and what the encoders rendered by rank.
#[derive(Default)]
struct Kept {
    aggregator: Aggregator,
    /// The directory's families at the last scrape that read them (ranked
    /// in the registry's current generation: only a read changes it), and
    /// the number of live workers, served again (counters never go down) if
    /// the lock cannot be had. Refilled by `render` after encoding (moved,
    /// never copied).
    last_read: (Vec<Family>, usize, u64),
    /// Text and OpenMetrics line starts.
    lines: LineStarts,
    /// Protobuf label pairs and bucket bounds.
    protobuf: protobuf::Kept,
}

impl ScrapeSource {
    pub fn new(
        directory: PathBuf,
        prefix: String,
        build_info: Labels,
        created: Option<f64>,
    ) -> Self {
        ScrapeSource {
            directory,
            prefix,
            build_info,
            created,
            listeners: Mutex::new(Vec::new()),
            bound_listeners: Mutex::new(Vec::new()),
            kept: Mutex::new(Kept::default()),
            read_errors: AtomicU64::new(0),
            last_body: AtomicUsize::new(0),
        }
    }

    pub fn set_listeners(&self, listeners: Vec<(String, RawFd)>) {
        *self.listeners.lock() = listeners;
    }

    pub fn set_bound_listeners(&self, listeners: Vec<(String, SocketAddr, u32)>) {
        *self.bound_listeners.lock() = listeners;
    }

    /// Every family, and what else `extra` asks for, read from the
    /// directory under one acquisition of its lock.
    fn collect(&self, kept: &mut Kept, extra: Extra) -> Read {
        let lock = DirectoryLock::shared(&self.directory, SCRAPE_LOCK_WAIT);
        let (mut native, mut exemplars) = (NativeHistograms::default(), Exemplars::default());
        let collected = match &lock {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                failures::log_once(
                    &LOCK_TIMEOUT_LOGGED,
                    format_args!(
                        "a scrape could not take the lock of {} within {:?}: it served the \
                         last values read (counted in exporter_read_errors_total)",
                        self.directory.display(),
                        SCRAPE_LOCK_WAIT
                    ),
                );
                let (families, live_workers, generation) = std::mem::take(&mut kept.last_read);
                let errors = 1 + extra.native as u64 + extra.exemplars as u64;
                (families, errors, live_workers, generation)
            }
            // Any other error (a read-only directory of a sidecar): read unlocked, as before.
            _ => {
                let c = kept
                    .aggregator
                    .collect(&self.directory, monotonic_seconds(), extra);
                let live_workers = c
                    .files
                    .iter()
                    .filter(|n| n.starts_with(LIVE_WORKER_GAUGES_PREFIX))
                    .count();
                (native, exemplars) = (c.native, c.exemplars);
                (c.families, c.read_errors, live_workers, c.generation)
            }
        };
        drop(lock);
        let (mut families, new_errors, live_workers, generation) = collected;
        let from_directory = families.len();
        let errors = self.read_errors.fetch_add(new_errors, Ordering::Relaxed) + new_errors;
        let p = &self.prefix;
        families.push(one(&catalogue::WORKERS, p, live_workers as f64));
        families.push(one(&catalogue::READ_ERRORS, p, errors as f64));
        let written = failures::write_errors() as f64;
        families.push(one(&catalogue::WRITE_ERRORS, p, written));
        let mut build_info = catalogue::BUILD_INFO.empty(p);
        build_info.push("", self.build_info.clone(), 1.0);
        families.push(build_info);
        families.extend(self.backlog_families());
        families.extend(process_families());
        Read {
            families,
            generation,
            from_directory,
            live_workers,
            native,
            exemplars,
        }
    }

    fn backlog_families(&self) -> Vec<Family> {
        let p = &self.prefix;
        let mut waiting = catalogue::LISTEN_BACKLOG.empty(p);
        let mut max = catalogue::LISTEN_BACKLOG_MAX.empty(p);
        for (name, fd) in self.listeners.lock().iter() {
            if let Some(b) = backlog::of_listener(*fd) {
                waiting.push(
                    "",
                    vec![("listener".into(), name.clone())],
                    b.waiting as f64,
                );
                max.push("", vec![("listener".into(), name.clone())], b.max as f64);
            }
        }
        for (name, addr, configured) in self.bound_listeners.lock().iter() {
            if let Some(queued) = backlog::waiting_at(*addr) {
                let labels = vec![("listener".into(), name.clone())];
                waiting.push("", labels.clone(), queued as f64);
                max.push("", labels, *configured as f64);
            }
        }
        if waiting.samples.is_empty() {
            return Vec::new();
        }
        vec![waiting, max]
    }

    /// Room for a body: a little more than the last one (a body grown by
    /// doubling costs a copy of it per doubling).
    fn body_capacity(&self) -> usize {
        let last = self.last_body.load(Ordering::Relaxed);
        (last + last / 8).max(64 << 10)
    }

    /// The body of a scrape in `format`.
    pub fn render(&self, format: Format) -> Vec<u8> {
        let extra = Extra {
            native: format == Format::Protobuf,
            exemplars: format != Format::Text,
        };
        let mut kept = self.kept.lock();
        let kept = &mut *kept;
        let read = self.collect(kept, extra);
        let bytes = match format {
            Format::Text => {
                let mut out = String::with_capacity(self.body_capacity());
                text::encode_with(&read.families, read.generation, &mut kept.lines, &mut out);
                out.into_bytes()
            }
            Format::OpenMetrics => {
                let mut out = String::with_capacity(self.body_capacity());
                openmetrics::encode_with_exemplars(
                    &read.families,
                    read.generation,
                    self.created,
                    Some(&read.exemplars),
                    &mut kept.lines,
                    &mut out,
                );
                out.into_bytes()
            }
            Format::Protobuf => {
                let extras = protobuf::Extras {
                    created: self.created,
                    native: Some(&read.native),
                    ..Default::default()
                }
                .with_exemplars(&read.exemplars);
                let mut bytes = Vec::with_capacity(self.body_capacity());
                protobuf::encode_with(
                    &read.families,
                    read.generation,
                    &extras,
                    &mut kept.protobuf,
                    &mut bytes,
                );
                bytes
            }
        };
        self.last_body.store(bytes.len(), Ordering::Relaxed);
        // Kept for a scrape that cannot take the lock: served again, not copied.
        let mut families = read.families;
        families.truncate(read.from_directory);
        kept.last_read = (families, read.live_workers, read.generation);
        bytes
    }
}

/// What one scrape read.
struct Read {
    families: Vec<Family>,
    /// The generation the directory's samples are ranked in.
    generation: u64,
    /// How many of the first families come from the directory.
    from_directory: usize,
    live_workers: usize,
    /// Empty unless asked for, or if the directory lock could not be had.
    native: NativeHistograms,
    exemplars: Exemplars,
}

/// The standard `process_*` families of the serving process.
fn process_families() -> Vec<Family> {
    let mut out = Vec::new();
    if let Some(s) = process_stats::own_process() {
        out.push(one(&catalogue::PROCESS_CPU, "", s.cpu_seconds));
        out.push(one(&catalogue::PROCESS_RESIDENT, "", s.resident_bytes));
        out.push(one(&catalogue::PROCESS_VIRTUAL, "", s.virtual_bytes));
        if let Some(boot) = process_stats::boot_time_seconds() {
            let start = boot + s.start_after_boot_seconds;
            out.push(one(&catalogue::PROCESS_START, "", start));
        }
    }
    if let Some((open, max)) = process_stats::fds() {
        out.push(one(&catalogue::PROCESS_OPEN_FDS, "", open));
        out.push(one(&catalogue::PROCESS_MAX_FDS, "", max));
    }
    out
}

/// A family of the catalogue with one unlabelled sample of `value`.
fn one(series: &Series, prefix: &str, value: f64) -> Family {
    let mut family = series.empty(prefix);
    let suffix = if series.kind == Kind::Counter {
        "_total"
    } else {
        ""
    };
    family.push(suffix, Vec::new(), value);
    family
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::key::encode;
    use crate::storage::names::worker_owner;
    use crate::storage::MmapWriter;
    use crate::worker::exemplar::{ExemplarFile, ExemplarSlot, HistogramExemplars, TraceParent};
    use crate::worker::native_histogram::NativeFile;
    use std::path::Path;

    const BOUNDS: [f64; 3] = [0.05, 0.1, 1.0];

    /// Worker `pid`'s classic histogram `dur` of `status` (one observation
    /// of `v`) and its failed-requests counter `fail`.
    fn classic(dir: &Path, pid: u32, status: &str, v: f64) {
        let owner = worker_owner(pid);
        let labels = [("status", status), ("worker", "w")];
        let mut h = MmapWriter::open(&dir.join(format!("histogram_{owner}.db"))).unwrap();
        for le in ["0.05", "0.1", "1.0", "+Inf"] {
            let with_le = [labels[0], labels[1], ("le", le)];
            let add = if le == "+Inf" || v <= le.parse().unwrap() {
                1.0
            } else {
                0.0
            };
            h.slot(&encode("dur", "dur_bucket", &with_le, "D"))
                .unwrap()
                .add(add);
        }
        h.slot(&encode("dur", "dur_sum", &labels, "D"))
            .unwrap()
            .add(v);
        let mut c = MmapWriter::open(&dir.join(format!("counter_{owner}.db"))).unwrap();
        c.slot(&encode("fail", "fail_total", &labels, "F"))
            .unwrap()
            .add(1.0);
    }

    /// The length-delimited families of a protobuf body, but the `process_` ones
    /// (their values change from one scrape to the next).
    fn directory_families(mut body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let len = prost::encoding::decode_varint(&mut body).unwrap() as usize;
            let (family, rest) = body.split_at(len);
            let name = protobuf::decode(&family_framed(family))[0].name.clone();
            if !name.starts_with("process_") {
                out.push(family.to_vec());
            }
            body = rest;
        }
        out
    }

    fn family_framed(family: &[u8]) -> Vec<u8> {
        let mut framed = Vec::new();
        prost::encoding::encode_varint(family.len() as u64, &mut framed);
        framed.extend_from_slice(family);
        framed
    }

    fn openmetrics_lines(body: &[u8]) -> Vec<String> {
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .filter(|l| !l.contains("process_"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_source_kept_across_scrapes_serves_what_a_fresh_source_serves() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let source =
            |d: &Path| ScrapeSource::new(d.to_owned(), "g".into(), Vec::new(), Some(1.7e9));
        let kept = source(d);
        let trace = |n: u128| TraceParent {
            trace_id: n,
            span_id: n as u64 + 1,
        };
        let labels = [("status", "200"), ("worker", "w")];
        let files: Vec<_> = (1..=2)
            .map(|pid| ExemplarFile::open(d, pid).unwrap())
            .collect();
        let natives = [
            NativeFile::open(d, 1, 3).unwrap(),
            NativeFile::open(d, 2, 1).unwrap(),
        ];
        let traced = HistogramExemplars::new(&files[0], "dur", &labels, &BOUNDS);
        let series = natives[0].series("dur", &labels);
        let fail = |pid: usize, n: u128, at: f64| {
            let slot =
                ExemplarSlot::open(&mut files[pid].writer.lock(), "fail", "fail_total", &labels)
                    .unwrap();
            slot.store(&trace(n), 1.0, at);
        };
        // Each step changes the directory, then both sources scrape it.
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                classic(d, 1, "200", 0.07);
                series.observe(0.07);
                traced.observe(&BOUNDS, 0.07, &trace(1), 100.0);
            }),
            // The same exemplar slot, later; a new bucket between the others.
            Box::new(|| {
                traced.observe(&BOUNDS, 0.08, &trace(2), 200.0);
                series.observe(0.3);
                series.observe(0.02);
            }),
            // New exemplar samples (a new bucket, the counter) and a worker
            // whose buckets are at a lower schema.
            Box::new(|| {
                traced.observe(&BOUNDS, 0.5, &trace(3), 300.0);
                fail(0, 4, 300.0);
                classic(d, 2, "200", 0.6);
                natives[1].series("dur", &labels).observe(0.6);
                natives[1].series("dur", &labels).observe(0.07);
            }),
            // An older exemplar elsewhere loses; a newer one wins.
            Box::new(|| {
                fail(1, 5, 250.0);
                let other = HistogramExemplars::new(&files[1], "dur", &labels, &BOUNDS);
                other.observe(&BOUNDS, 0.06, &trace(6), 400.0);
            }),
            // A worker's files gone: its cells and exemplars are not read.
            Box::new(|| {
                for f in std::fs::read_dir(d).unwrap().flatten() {
                    if f.file_name().to_string_lossy().contains("worker2") {
                        std::fs::remove_file(f.path()).unwrap();
                    }
                }
            }),
        ];
        for (i, step) in steps.iter().enumerate() {
            step();
            let fresh = source(d);
            let (ours, theirs) = (
                kept.render(Format::Protobuf),
                fresh.render(Format::Protobuf),
            );
            assert!(
                directory_families(&ours) == directory_families(&theirs),
                "step {i}: kept {:?}\nfresh {:?}",
                protobuf::decode(&ours),
                protobuf::decode(&theirs)
            );
            let (ours, theirs) = (
                kept.render(Format::OpenMetrics),
                fresh.render(Format::OpenMetrics),
            );
            assert_eq!(
                openmetrics_lines(&ours),
                openmetrics_lines(&theirs),
                "step {i}"
            );
        }
        // What the steps left: the exemplars of worker 1 and the newest of
        // the bucket worker 2 wrote before its files went away are gone.
        let om = String::from_utf8(kept.render(Format::OpenMetrics)).unwrap();
        let exemplars: Vec<&str> = om.lines().filter(|l| l.contains(" # {")).collect();
        assert_eq!(exemplars.len(), 3, "{om}");
        assert!(om.contains(&format!("trace_id=\"{:032x}\"", 4)), "{om}");
        let families = protobuf::decode(&kept.render(Format::Protobuf));
        let dur = families.iter().find(|f| f.name == "dur").unwrap();
        let h = dur.metric[0].histogram.as_ref().unwrap();
        assert_eq!(
            (h.schema, h.sample_count),
            (3, 3),
            "three observations of worker 1"
        );
        // The buckets, from spans and deltas: each observation's, in order.
        let (mut buckets, mut index, mut count) = (Vec::new(), 0, 0);
        let mut deltas = h.positive_delta.iter();
        for (i, span) in h.positive_span.iter().enumerate() {
            index += span.offset + if i > 0 { 1 } else { 0 };
            for j in 0..span.length {
                count += deltas.next().unwrap();
                buckets.push((index + j as i32, count));
            }
            index += span.length as i32 - 1;
        }
        let schema = crate::worker::native_histogram::Schema::new(3);
        let want: Vec<(i32, i64)> = [0.02, 0.07, 0.3].map(|v| (schema.index(v), 1)).into();
        assert_eq!(buckets, want);
    }
}
