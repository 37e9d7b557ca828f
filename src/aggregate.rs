//! Merging every process's file of a directory into families, with the
//! semantics of prometheus_client's `MultiProcessCollector`: files in, families out.
//!
//! An `Aggregator` lives as long as the server: it parses each distinct key
//! once and interns label sets, so a scrape only reads values and adds them up
//! by identity, whatever number of files and processes the directory holds.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use crate::model::{Family, Kind, Labels, Sample};
use crate::storage::float::go_float;
use crate::storage::key;
use crate::storage::reader::{read_entries, read_used};

/// How a gauge merges across processes (from `gauge_<mode>_<pid>.db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GaugeMode {
    All,
    Min,
    Max,
    Sum,
    MostRecent,
}

impl GaugeMode {
    fn parse(s: &str) -> Option<GaugeMode> {
        Some(match s.strip_prefix("live").unwrap_or(s) {
            "all" => GaugeMode::All,
            "min" => GaugeMode::Min,
            "max" => GaugeMode::Max,
            "sum" => GaugeMode::Sum,
            "mostrecent" => GaugeMode::MostRecent,
            _ => return None,
        })
    }
}

/// A file name split into its parts.
struct FileName<'a> {
    kind: Kind,
    mode: Option<GaugeMode>,
    pid: &'a str,
}

fn parse_file_name(name: &str) -> Option<FileName<'_>> {
    let stem = name.strip_suffix(".db")?;
    let mut parts = stem.split('_');
    let kind = Kind::from_file_prefix(parts.next()?)?;
    if kind == Kind::Gauge {
        let mode = GaugeMode::parse(parts.next()?)?;
        Some(FileName {
            kind,
            mode: Some(mode),
            pid: parts.next()?,
        })
    } else {
        Some(FileName {
            kind,
            mode: None,
            pid: parts.next().unwrap_or(""),
        })
    }
}

/// A label set shared by every key that has it; compared by identity.
#[derive(Clone)]
struct LabelSet(Arc<Labels>);

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for LabelSet {}
impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

/// A key of a file, parsed once.
struct KeyInfo {
    family: Arc<str>,
    help: Arc<str>,
    sample: Arc<str>,
    /// Sorted labels without `le`.
    labels: LabelSet,
    /// For a histogram bucket: its bound, and its `le` as prometheus_client
    /// writes it (`floatToGoString`).
    bucket: Option<(f64, Arc<str>)>,
}

/// One series of a family while a scrape adds up its files.
#[derive(Default)]
struct Series {
    /// (sample name, value, timestamp of the value).
    values: Vec<(Arc<str>, f64, f64)>,
    /// Histogram buckets: (upper bound, its `le`, count in that bucket, not cumulative).
    buckets: Vec<(f64, Arc<str>, f64)>,
}

impl Series {
    fn value(&mut self, sample: &Arc<str>) -> Option<&mut (Arc<str>, f64, f64)> {
        self.values.iter_mut().find(|v| Arc::ptr_eq(&v.0, sample))
    }
}

/// A series: its label set and, for gauges of mode `all`, the pid.
type SeriesKey = (LabelSet, Option<Arc<str>>);

struct FamilyAcc {
    help: Arc<str>,
    kind: Kind,
    mode: Option<GaugeMode>,
    series: HashMap<SeriesKey, Series>,
}

/// Result of one pass over a directory.
pub struct Collected {
    pub families: Vec<Family>,
    /// Files (or parts of files) that could not be read.
    pub read_errors: u64,
    /// Names of the `*.db` files read.
    pub files: Vec<String>,
}

/// Largest read buffer kept between scrapes.
const KEPT_BUFFER_BYTES: usize = 1 << 20;

/// Keys seen before this many distinct ones are forgotten, so that a
/// directory whose keys churn cannot grow the cache without bound.
const MAX_CACHED_KEYS: usize = 1 << 20;

/// Reads directories again and again, remembering what it parsed.
#[derive(Default)]
pub struct Aggregator {
    keys: HashMap<Box<str>, Option<Arc<KeyInfo>>>,
    label_sets: HashSet<Arc<Labels>>,
    names: HashSet<Arc<str>>,
    pids: HashSet<Arc<str>>,
    buf: Vec<u8>,
    /// Sorted order of the label sets, rebuilt only when a new one appears.
    ranks: HashMap<usize, u32>,
    /// Families and series of the last scrape: the next one sizes its maps so.
    last_families: usize,
    last_series: HashMap<Arc<str>, usize>,
}

impl Aggregator {
    fn intern_str(set: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
        if let Some(found) = set.get(s) {
            return Arc::clone(found);
        }
        let new: Arc<str> = Arc::from(s);
        set.insert(Arc::clone(&new));
        new
    }

    fn key(&mut self, key: &str) -> Option<Arc<KeyInfo>> {
        if let Some(found) = self.keys.get(key) {
            return found.clone();
        }
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
            self.label_sets.clear();
            self.ranks.clear();
        }
        let info = key::parse(key).and_then(|parsed| {
            let mut labels = parsed.labels;
            let bucket = match labels.iter().position(|(k, _)| k == "le") {
                Some(i) => {
                    let bound = labels.remove(i).1.parse::<f64>().ok()?;
                    Some((bound, Arc::from(go_float(bound))))
                }
                None => None,
            };
            let labels = match self.label_sets.get(&labels) {
                Some(found) => Arc::clone(found),
                None => {
                    let new = Arc::new(labels);
                    self.label_sets.insert(Arc::clone(&new));
                    new
                }
            };
            Some(Arc::new(KeyInfo {
                family: Self::intern_str(&mut self.names, &parsed.metric_name),
                help: Arc::from(parsed.help),
                sample: Self::intern_str(&mut self.names, &parsed.sample_name),
                labels: LabelSet(labels),
                bucket,
            }))
        });
        self.keys.insert(key.into(), info.clone());
        info
    }

    /// Reads every `*.db` file of `dir`. `now_monotonic` (seconds,
    /// CLOCK_MONOTONIC) resolves running clocks: a counter entry with a
    /// negative timestamp `t` is a clock running since `-t`, worth
    /// `max(value, now + t)`.
    pub fn collect(&mut self, dir: &Path, now_monotonic: f64) -> Collected {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".db"))
                .collect(),
            Err(_) => {
                return Collected {
                    families: Vec::new(),
                    read_errors: 1,
                    files: Vec::new(),
                }
            }
        };
        names.sort();
        let mut read_errors = 0;
        let mut acc: HashMap<Arc<str>, FamilyAcc> = HashMap::default();
        acc.reserve(self.last_families);
        let mut buf = std::mem::take(&mut self.buf);
        for name in &names {
            let Some(file) = parse_file_name(name) else {
                read_errors += 1;
                continue;
            };
            let unreadable = match read_used(&dir.join(name), &mut buf) {
                Ok(()) => false,
                // A live gauge file may be removed between listing and reading.
                Err(crate::storage::ReadError::Io(_)) if name.starts_with("gauge_live") => continue,
                Err(_) => true,
            };
            let (entries, error) = read_entries(&buf);
            if unreadable || error.is_some() {
                read_errors += 1;
            }
            let pid = (file.mode == Some(GaugeMode::All))
                .then(|| Self::intern_str(&mut self.pids, file.pid));
            for entry in entries {
                let Some(key) = self.key(entry.key) else {
                    read_errors += 1;
                    continue;
                };
                let last_series = &self.last_series;
                let family = acc.entry(Arc::clone(&key.family)).or_insert_with(|| {
                    let mut series = HashMap::default();
                    series.reserve(last_series.get(&key.family).copied().unwrap_or(0));
                    FamilyAcc {
                        help: Arc::clone(&key.help),
                        kind: file.kind,
                        mode: file.mode,
                        series,
                    }
                });
                add_sample(
                    family,
                    &key,
                    pid.clone(),
                    entry.value,
                    entry.timestamp,
                    now_monotonic,
                );
            }
        }
        // A big file read once must not keep its memory for the life of the server.
        if buf.capacity() <= KEPT_BUFFER_BYTES {
            self.buf = buf;
        }
        self.last_families = acc.len();
        self.last_series = acc
            .iter()
            .map(|(name, f)| (Arc::clone(name), f.series.len()))
            .collect();
        if self.ranks.len() != self.label_sets.len() {
            let mut sets: Vec<&Arc<Labels>> = self.label_sets.iter().collect();
            sets.sort();
            self.ranks = sets
                .iter()
                .enumerate()
                .map(|(i, set)| (Arc::as_ptr(set) as usize, i as u32))
                .collect();
        }
        let ranks = &self.ranks;
        let mut families: Vec<Family> = acc
            .into_iter()
            .map(|(name, f)| finish(&name, f, ranks))
            .collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        Collected {
            families,
            read_errors,
            files: names,
        }
    }
}

/// Reads `dir` once, with nothing remembered.
#[cfg(test)]
pub fn collect(dir: &Path, now_monotonic: f64) -> Collected {
    Aggregator::default().collect(dir, now_monotonic)
}

fn add_sample(
    f: &mut FamilyAcc,
    key: &KeyInfo,
    pid: Option<Arc<str>>,
    value: f64,
    ts: f64,
    now: f64,
) {
    let series = f
        .series
        .entry((
            key.labels.clone(),
            if f.kind == Kind::Gauge { pid } else { None },
        ))
        .or_default();
    if let (Kind::Histogram, Some((bound, le))) = (f.kind, &key.bucket) {
        series.buckets.push((*bound, Arc::clone(le), value));
        return;
    }
    let mode = f.mode.unwrap_or(GaugeMode::All);
    match (f.kind, series.value(&key.sample)) {
        (Kind::Gauge, Some(cur)) => match mode {
            GaugeMode::MostRecent if ts > cur.2 => (cur.1, cur.2) = (value, ts),
            GaugeMode::MostRecent => {}
            GaugeMode::Min => cur.1 = cur.1.min(value),
            GaugeMode::Max => cur.1 = cur.1.max(value),
            GaugeMode::Sum => cur.1 += value,
            GaugeMode::All => cur.1 = value,
        },
        // prometheus_client shows a mostrecent gauge only once it has a timestamp.
        (Kind::Gauge, None) if mode == GaugeMode::MostRecent && ts <= 0.0 => {}
        (Kind::Gauge, None) => series.values.push((Arc::clone(&key.sample), value, ts)),
        (_, slot) => {
            // A negative timestamp on a counter marks a running clock.
            let value = if f.kind == Kind::Counter && ts < 0.0 {
                value.max(now + ts)
            } else {
                value
            };
            match slot {
                Some(cur) => cur.1 += value,
                None => series.values.push((Arc::clone(&key.sample), value, 0.0)),
            }
        }
    }
}

/// `ranks`: the sorted position of every label set, so that series sort by
/// their labels without comparing them.
fn finish(name: &str, acc: FamilyAcc, ranks: &HashMap<usize, u32>) -> Family {
    let mut family = Family::new(name, acc.help.as_ref(), acc.kind);
    let mut series: Vec<(SeriesKey, Series)> = acc.series.into_iter().collect();
    let rank = |set: &LabelSet| {
        ranks
            .get(&(Arc::as_ptr(&set.0) as usize))
            .copied()
            .unwrap_or(u32::MAX)
    };
    series.sort_by(|a, b| (rank(&a.0 .0), &a.0 .1).cmp(&(rank(&b.0 .0), &b.0 .1)));
    let bucket_name: Arc<str> = Arc::from(format!("{name}_bucket"));
    let count_name: Arc<str> = Arc::from(format!("{name}_count"));
    for ((LabelSet(labels), pid), mut s) in series {
        if !s.buckets.is_empty() {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut cumulative = 0.0;
            let mut i = 0;
            while i < s.buckets.len() {
                let (bound, le) = (s.buckets[i].0, Arc::clone(&s.buckets[i].1));
                while i < s.buckets.len() && s.buckets[i].0 == bound {
                    cumulative += s.buckets[i].2;
                    i += 1;
                }
                family.samples.push(Sample {
                    name: Arc::clone(&bucket_name),
                    labels: Arc::clone(&labels),
                    extra: Some(("le", le)),
                    value: cumulative,
                });
            }
            // The count is the buckets' total, as MultiProcessCollector derives it.
            s.values.retain(|v| *v.0 != *count_name);
            s.values.push((Arc::clone(&count_name), cumulative, 0.0));
        }
        s.values.sort_by(|a, b| a.0.cmp(&b.0));
        let extra = pid.map(|pid| ("pid", pid));
        for (sample, value, _) in s.values {
            family.samples.push(Sample {
                name: sample,
                labels: Arc::clone(&labels),
                extra: extra.clone(),
                value,
            });
        }
    }
    family
}

/// The value of the sample `name` with exactly `labels` (test support).
#[cfg(test)]
pub(crate) fn find(c: &Collected, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    c.families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| &*s.name == name && s.label_pairs().eq(labels.iter().copied()))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{key::encode, MmapWriter};

    /// (metric name, sample name, labels, value, timestamp)
    type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64, f64);

    fn write(dir: &Path, file: &str, entries: &[Row]) {
        let mut w = MmapWriter::open(&dir.join(file)).unwrap();
        for (metric, sample, labels, value, ts) in entries {
            let slot = w.slot(&encode(metric, sample, labels, "help")).unwrap();
            slot.set(*value);
            slot.set_timestamp(*ts);
        }
    }

    #[test]
    fn counters_sum_across_processes_and_running_clocks_resolve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "counter_1.db",
            &[("c", "c_total", &[("a", "x")], 2.0, 0.0)],
        );
        write(
            dir.path(),
            "counter_2.db",
            &[("c", "c_total", &[("a", "x")], 3.0, 0.0)],
        );
        write(
            dir.path(),
            "counter_3.db",
            &[("b", "b_total", &[], 1.0, -95.0)],
        );
        let c = collect(dir.path(), 100.0);
        assert_eq!(find(&c, "c_total", &[("a", "x")]), Some(5.0));
        assert_eq!(find(&c, "b_total", &[]), Some(5.0));
        assert_eq!(c.read_errors, 0);
    }

    #[test]
    fn gauge_modes_merge_like_prometheus_client() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, v, ts) in [("1", 4.0, 10.0), ("2", 7.0, 5.0)] {
            for mode in ["livesum", "max", "min", "all", "mostrecent"] {
                write(
                    dir.path(),
                    &format!("gauge_{mode}_{pid}.db"),
                    &[(mode, mode, &[], v, ts)],
                );
            }
        }
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "livesum", &[]), Some(11.0));
        assert_eq!(find(&c, "max", &[]), Some(7.0));
        assert_eq!(find(&c, "min", &[]), Some(4.0));
        assert_eq!(find(&c, "all", &[("pid", "2")]), Some(7.0));
        assert_eq!(find(&c, "mostrecent", &[]), Some(4.0));
    }

    #[test]
    fn histogram_buckets_accumulate_and_count_is_derived() {
        let dir = tempfile::tempdir().unwrap();
        let h: &[Row] = &[
            ("h", "h_bucket", &[("le", "0.5")], 1.0, 0.0),
            ("h", "h_bucket", &[("le", "+Inf")], 2.0, 0.0),
            ("h", "h_sum", &[], 9.0, 0.0),
        ];
        write(dir.path(), "histogram_1.db", h);
        write(dir.path(), "histogram_2.db", h);
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "h_bucket", &[("le", "0.5")]), Some(2.0));
        assert_eq!(find(&c, "h_bucket", &[("le", "+Inf")]), Some(6.0));
        assert_eq!(find(&c, "h_count", &[]), Some(6.0));
        assert_eq!(find(&c, "h_sum", &[]), Some(18.0));
    }

    #[test]
    fn foreign_and_corrupt_files_are_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "counter_1.db",
            &[("c", "c_total", &[], 1.0, 0.0)],
        );
        std::fs::write(dir.path().join("counter_2.db"), b"\xff\xff\xff\x7fgarbage").unwrap();
        std::fs::write(dir.path().join("weird.db"), b"").unwrap();
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "c_total", &[]), Some(1.0));
        assert_eq!(c.read_errors, 2);
    }
}
