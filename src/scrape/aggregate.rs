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
use crate::storage::incremental::{FileCache, Visitor};
use crate::storage::key;
use crate::storage::names::{DbName, GaugeMode, DB_SUFFIX};
use crate::storage::running_clock;
use crate::storage::ReadError;

/// An interned value (one `Arc` per distinct value), compared and hashed
/// by address.
struct Interned<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Clone for Interned<T> {
    fn clone(&self) -> Self {
        Interned(Arc::clone(&self.0))
    }
}
impl<T: ?Sized> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T: ?Sized> Eq for Interned<T> {}
impl<T: ?Sized> Hash for Interned<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const () as usize).hash(state)
    }
}

/// A label set shared by every key that has it.
type LabelSet = Interned<Labels>;
/// A sample or family name.
type Name = Interned<str>;

/// A key of a file, parsed once.
struct KeyInfo {
    family: Arc<str>,
    help: Arc<str>,
    sample: Name,
    /// Sorted labels, `le` included.
    all_labels: LabelSet,
    /// Sorted labels without `le` (the same set if there is no `le`).
    labels: LabelSet,
    /// The `le` label: its bound and its value as prometheus_client writes
    /// it (`floatToGoString`); `Err` if it is not a number.
    le: Option<Result<(f64, Arc<str>), ()>>,
}

/// Where a value goes: a sample of a series, or a histogram bucket. Slots
/// outlive scrapes; a scrape only adds values into the slots its files name.
struct Slot {
    family: u32,
    labels: LabelSet,
    /// The pid of a gauge file of mode `all`.
    pid: Option<Arc<str>>,
    sample: Name,
    /// For an entry of a histogram file with `le`: the bound and its `le`.
    bucket: Option<(f64, Arc<str>)>,
}

/// The identity of a slot.
#[derive(PartialEq, Eq, Hash)]
struct SlotKey {
    family: u32,
    labels: LabelSet,
    pid: Option<Name>,
    sample: Name,
    bound: Option<u64>,
}

/// A family name, and what the first file (in name order) that holds it
/// says of it at this scrape, as `MultiProcessCollector` takes it.
struct FamilyInfo {
    name: Arc<str>,
    bucket_name: Arc<str>,
    count_name: Arc<str>,
    /// The scrape that last saw it.
    pass: u32,
    kind: Kind,
    mode: Option<GaugeMode>,
    help: Arc<str>,
}

/// A slot's value at a scrape.
#[derive(Clone, Copy, Default)]
struct Acc {
    value: f64,
    timestamp: f64,
    /// The scrape that set it: the slot is present in that scrape only.
    pass: u32,
}

/// What an entry of a file is to the aggregator (`None`: not a valid key).
#[derive(Clone)]
struct Target {
    slot: u32,
    help: Arc<str>,
}

/// Result of one pass over a directory.
pub struct Collected {
    pub families: Vec<Family>,
    /// Files (or parts of files) that could not be read.
    pub read_errors: u64,
    /// Names of the `*.db` files read.
    pub files: Vec<String>,
}

/// Keys seen before this many distinct ones are forgotten, so that a
/// directory whose keys churn cannot grow the cache without bound.
const MAX_CACHED_KEYS: usize = 1 << 20;

/// Every slot, family and name the aggregator has seen, interned.
#[derive(Default)]
struct Registry {
    keys: HashMap<Box<str>, Option<Arc<KeyInfo>>>,
    label_sets: HashSet<Arc<Labels>>,
    names: HashSet<Arc<str>>,
    pids: HashSet<Arc<str>>,
    families: Vec<FamilyInfo>,
    family_ids: HashMap<Arc<str>, u32>,
    slots: Vec<Slot>,
    slot_ids: HashMap<SlotKey, u32>,
    /// Every slot, in the order of the exposition; rebuilt when slots are added.
    order: Vec<u32>,
}

/// Reads directories again and again, remembering what it parsed: each
/// file's entries (`FileCache`) and where each one's value goes (`Slot`), so
/// that a scrape only reads values and adds them into their slots.
#[derive(Default)]
pub struct Aggregator {
    files: FileCache<Option<Target>>,
    registry: Registry,
    accs: Vec<Acc>,
    pass: u32,
}

fn intern_str(set: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(found) = set.get(s) {
        return Arc::clone(found);
    }
    let new: Arc<str> = Arc::from(s);
    set.insert(Arc::clone(&new));
    new
}

impl Registry {
    fn intern_labels(&mut self, labels: Labels) -> LabelSet {
        Interned(match self.label_sets.get(&labels) {
            Some(found) => Arc::clone(found),
            None => {
                let new = Arc::new(labels);
                self.label_sets.insert(Arc::clone(&new));
                new
            }
        })
    }

    fn key(&mut self, key: &str) -> Option<Arc<KeyInfo>> {
        if let Some(found) = self.keys.get(key) {
            return found.clone();
        }
        let info = key::parse(key).map(|parsed| {
            let all = parsed.labels;
            let (labels, le) = match all.iter().position(|(k, _)| k == "le") {
                Some(i) => {
                    let mut without = all.clone();
                    let bound = without.remove(i).1.parse::<f64>();
                    // -0.0 and 0.0 are one bucket.
                    let le = bound
                        .map(|b| (b + 0.0, Arc::from(go_float(b))))
                        .map_err(|_| ());
                    (Some(without), Some(le))
                }
                None => (None, None),
            };
            let all_labels = self.intern_labels(all);
            let labels = match labels {
                Some(labels) => self.intern_labels(labels),
                None => all_labels.clone(),
            };
            Arc::new(KeyInfo {
                family: intern_str(&mut self.names, &parsed.metric_name),
                help: Arc::from(parsed.help),
                sample: Interned(intern_str(&mut self.names, &parsed.sample_name)),
                all_labels,
                labels,
                le,
            })
        });
        self.keys.insert(key.into(), info.clone());
        info
    }

    fn family(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&id) = self.family_ids.get(name) {
            return id;
        }
        let id = self.families.len() as u32;
        self.families.push(FamilyInfo {
            name: Arc::clone(name),
            bucket_name: Arc::from(format!("{name}_bucket")),
            count_name: Arc::from(format!("{name}_count")),
            pass: 0,
            kind: Kind::Counter,
            mode: None,
            help: Arc::from(""),
        });
        self.family_ids.insert(Arc::clone(name), id);
        id
    }

    /// Where the entry `key` of `file` goes.
    fn target(&mut self, file: &DbName<'_>, pid: &Option<Arc<str>>, key: &str) -> Option<Target> {
        let info = self.key(key)?;
        let (labels, bucket) = match (&info.le, file.kind) {
            (Some(Err(())), Kind::Histogram) => return None,
            (Some(Ok(le)), Kind::Histogram) => (info.labels.clone(), Some(le.clone())),
            _ => (info.all_labels.clone(), None),
        };
        let family = self.family(&info.family);
        let slot_key = SlotKey {
            family,
            labels,
            pid: pid.clone().map(Interned),
            sample: info.sample.clone(),
            bound: bucket.as_ref().map(|b| b.0.to_bits()),
        };
        let slot = match self.slot_ids.get(&slot_key) {
            Some(&slot) => slot,
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    family,
                    labels: slot_key.labels.clone(),
                    pid: pid.clone(),
                    sample: info.sample.clone(),
                    bucket,
                });
                self.slot_ids.insert(slot_key, slot);
                slot
            }
        };
        Some(Target {
            slot,
            help: Arc::clone(&info.help),
        })
    }

    /// Puts every slot in exposition order: by family name, label set, pid,
    /// then buckets by bound before the other samples by name.
    fn sort(&mut self) {
        let mut sets: Vec<&Arc<Labels>> = self.label_sets.iter().collect();
        sets.sort_unstable();
        let ranks: HashMap<usize, u32> = sets
            .iter()
            .enumerate()
            .map(|(i, set)| (Arc::as_ptr(set) as usize, i as u32))
            .collect();
        let rank = |s: &Slot| {
            ranks
                .get(&(Arc::as_ptr(&s.labels.0) as usize))
                .copied()
                .unwrap_or(u32::MAX)
        };
        let (slots, families) = (&self.slots, &self.families);
        self.order = (0..slots.len() as u32).collect();
        self.order.sort_unstable_by(|&a, &b| {
            let (a, b) = (&slots[a as usize], &slots[b as usize]);
            families[a.family as usize]
                .name
                .cmp(&families[b.family as usize].name)
                .then_with(|| rank(a).cmp(&rank(b)))
                .then_with(|| a.pid.cmp(&b.pid))
                .then_with(|| match (&a.bucket, &b.bucket) {
                    (Some(x), Some(y)) => x.0.total_cmp(&y.0),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => a.sample.0.cmp(&b.sample.0),
                })
        });
    }
}

impl Aggregator {
    /// Reads every `*.db` file of `dir`. `now_monotonic` (seconds,
    /// CLOCK_MONOTONIC) resolves running clocks: a counter entry with a
    /// negative timestamp `t` is a clock running since `-t`, worth
    /// `max(value, now + t)`.
    pub fn collect(&mut self, dir: &Path, now_monotonic: f64) -> Collected {
        let Some(names) = db_files(dir) else {
            return Collected {
                families: Vec::new(),
                read_errors: 1,
                files: Vec::new(),
            };
        };
        if self.registry.keys.len() >= MAX_CACHED_KEYS {
            *self = Aggregator::default();
        }
        self.pass = self.pass.wrapping_add(1).max(1);
        let read_errors = self.read_files(dir, &names, now_monotonic);
        if self.registry.order.len() != self.registry.slots.len() {
            self.registry.sort();
        }
        let (families, present) = self.families();
        // Slots of series gone for good: start afresh once they are most.
        if self.registry.slots.len() > 2 * present + 4096 {
            let (files, pass) = (std::mem::take(&mut self.files), self.pass);
            *self = Aggregator {
                files,
                pass,
                ..Default::default()
            };
            self.files.forget();
        }
        Collected {
            families,
            read_errors,
            files: names,
        }
    }

    /// Adds the values of every file into their slots; returns the number of
    /// read errors.
    fn read_files(&mut self, dir: &Path, names: &[String], now: f64) -> u64 {
        let mut read_errors = 0;
        let pass = self.pass;
        let Aggregator {
            files,
            registry,
            accs,
            ..
        } = self;
        files.begin_pass();
        for name in names {
            let Some(file) = DbName::parse(name) else {
                read_errors += 1;
                continue;
            };
            let pid = (file.mode == Some(GaugeMode::All))
                .then(|| intern_str(&mut registry.pids, file.owner));
            let mut adder = Adder {
                registry: &mut *registry,
                accs: &mut *accs,
                file: &file,
                pid,
                pass,
                now,
                bad_keys: 0,
            };
            let error = files.read(dir, name, &mut adder);
            let bad_keys = adder.bad_keys;
            read_errors += bad_keys;
            match error {
                None => {}
                // A live gauge file may be removed between listing and reading.
                Some(ReadError::Io(_)) if file.live => {}
                Some(_) => read_errors += 1,
            }
        }
        files.end_pass();
        read_errors
    }

    /// The families of this scrape, and the number of slots in them.
    fn families(&self) -> (Vec<Family>, usize) {
        let reg = &self.registry;
        let mut out: Vec<Family> = Vec::new();
        let mut present = 0;
        for group in reg
            .order
            .chunk_by(|&a, &b| reg.slots[a as usize].family == reg.slots[b as usize].family)
        {
            let info = &reg.families[reg.slots[group[0] as usize].family as usize];
            if info.pass != self.pass {
                continue;
            }
            let mut family = Family::new(info.name.as_ref(), info.help.as_ref(), info.kind);
            // At most a sample per slot, and a histogram's count per series.
            family.samples.reserve(group.len() + group.len() / 8);
            let mut series = SeriesOut::default();
            for &slot_id in group {
                let Some(acc) = self
                    .accs
                    .get(slot_id as usize)
                    .filter(|a| a.pass == self.pass)
                else {
                    continue;
                };
                present += 1;
                let slot = &reg.slots[slot_id as usize];
                if !series.holds(slot) {
                    series.finish(&mut family, info);
                    series.start(slot);
                }
                series.push(&mut family, info, slot, acc.value);
            }
            series.finish(&mut family, info);
            out.push(family);
        }
        (out, present)
    }
}

/// Adds the entries of one file into their slots.
struct Adder<'a> {
    registry: &'a mut Registry,
    accs: &'a mut Vec<Acc>,
    file: &'a DbName<'a>,
    /// For a gauge file of mode `all`: its pid.
    pid: Option<Arc<str>>,
    pass: u32,
    now: f64,
    /// Entries whose key is not valid.
    bad_keys: u64,
}

impl Visitor<Option<Target>> for Adder<'_> {
    fn tag(&mut self, key: &str) -> Option<Target> {
        self.registry.target(self.file, &self.pid, key)
    }

    fn visit(&mut self, target: &Option<Target>, value: f64, ts: f64) {
        let Some(target) = target else {
            self.bad_keys += 1;
            return;
        };
        let slot = target.slot as usize;
        let (family, is_bucket) = {
            let s = &self.registry.slots[slot];
            (s.family as usize, s.bucket.is_some())
        };
        let family = &mut self.registry.families[family];
        if family.pass != self.pass {
            family.pass = self.pass;
            family.kind = self.file.kind;
            family.mode = self.file.mode;
            family.help = Arc::clone(&target.help);
        }
        if self.accs.len() <= slot {
            self.accs
                .resize(self.registry.slots.len().max(slot + 1), Acc::default());
        }
        merge(
            family,
            is_bucket,
            &mut self.accs[slot],
            self.pass,
            value,
            ts,
            self.now,
        );
    }
}

/// The series being written out: its identity and its buckets so far.
#[derive(Default)]
struct SeriesOut {
    labels: Option<LabelSet>,
    pid: Option<Arc<str>>,
    cumulative: f64,
    buckets: bool,
    counted: bool,
}

impl SeriesOut {
    fn holds(&self, slot: &Slot) -> bool {
        self.labels.as_ref() == Some(&slot.labels) && self.pid == slot.pid
    }

    fn start(&mut self, slot: &Slot) {
        *self = SeriesOut {
            labels: Some(slot.labels.clone()),
            pid: slot.pid.clone(),
            ..Default::default()
        };
    }

    /// Writes the value of `slot`, a slot of this series.
    fn push(&mut self, family: &mut Family, info: &FamilyInfo, slot: &Slot, value: f64) {
        match &slot.bucket {
            // A bucket in a family that the first file holding it does not call a histogram.
            Some(_) if info.kind != Kind::Histogram => {}
            Some((_, le)) => {
                self.cumulative += value;
                self.buckets = true;
                family.samples.push(Sample {
                    name: Arc::clone(&info.bucket_name),
                    labels: Arc::clone(&slot.labels.0),
                    extra: Some(("le", Arc::clone(le))),
                    value: self.cumulative,
                });
            }
            None => {
                // The count is the buckets' total, as MultiProcessCollector
                // derives it, in its place among the samples sorted by name.
                if self.buckets && !self.counted && *slot.sample.0 >= *info.count_name {
                    self.push_count(family, info);
                }
                if self.buckets && *slot.sample.0 == *info.count_name {
                    return;
                }
                family.samples.push(Sample {
                    name: Arc::clone(&slot.sample.0),
                    labels: Arc::clone(&slot.labels.0),
                    extra: slot.pid.as_ref().map(|pid| ("pid", Arc::clone(pid))),
                    value,
                });
            }
        }
    }

    fn push_count(&mut self, family: &mut Family, info: &FamilyInfo) {
        self.counted = true;
        family.samples.push(Sample {
            name: Arc::clone(&info.count_name),
            labels: Arc::clone(&self.labels.as_ref().unwrap().0),
            extra: None,
            value: self.cumulative,
        });
    }

    /// Ends the series: a histogram's count if no sample after its buckets sorted after it.
    fn finish(&mut self, family: &mut Family, info: &FamilyInfo) {
        if self.buckets && !self.counted {
            self.push_count(family, info);
        }
        self.labels = None;
    }
}

/// Adds `value` (with its timestamp `ts`) of an entry into its slot's `acc`,
/// as `MultiProcessCollector` merges samples of a family of this kind and mode.
fn merge(
    family: &FamilyInfo,
    is_bucket: bool,
    acc: &mut Acc,
    pass: u32,
    value: f64,
    ts: f64,
    now: f64,
) {
    let present = acc.pass == pass;
    let set = |acc: &mut Acc, value: f64, timestamp: f64| {
        *acc = Acc {
            value,
            timestamp,
            pass,
        }
    };
    match family.kind {
        Kind::Histogram if is_bucket => match present {
            true => acc.value += value,
            false => set(acc, value, 0.0),
        },
        Kind::Gauge => {
            let mode = family.mode.unwrap_or(GaugeMode::All);
            if !present {
                // prometheus_client shows a mostrecent gauge only once it has a timestamp.
                if mode != GaugeMode::MostRecent || ts > 0.0 {
                    set(acc, value, ts);
                }
                return;
            }
            match mode {
                GaugeMode::MostRecent if ts > acc.timestamp => {
                    (acc.value, acc.timestamp) = (value, ts)
                }
                GaugeMode::MostRecent => {}
                GaugeMode::Min => acc.value = acc.value.min(value),
                GaugeMode::Max => acc.value = acc.value.max(value),
                GaugeMode::Sum => acc.value += value,
                GaugeMode::All => acc.value = value,
            }
        }
        kind => {
            // A negative timestamp on a counter marks a running clock.
            let value = match kind {
                Kind::Counter => running_clock::resolve(value, ts, now),
                _ => value,
            };
            match present {
                true => acc.value += value,
                false => set(acc, value, 0.0),
            }
        }
    }
}

/// The sorted names of the `*.db` files of `dir`.
fn db_files(dir: &Path) -> Option<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(DB_SUFFIX))
        .collect();
    names.sort();
    Some(names)
}

/// Reads `dir` once, with nothing remembered.
#[cfg(test)]
pub fn collect(dir: &Path, now_monotonic: f64) -> Collected {
    Aggregator::default().collect(dir, now_monotonic)
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
