//! The reader of `*.db` files (prometheus_client's, and this core's): every
//! entry's value added into its line, merged as prometheus_client's
//! `MultiProcessCollector` merges samples, and the lines of a scrape written
//! out as families.

use std::path::Path;
use std::sync::Arc;

use super::registry::{Registry, NONE};
use crate::model::{Family, Kind, Sample, SampleId};
use crate::storage::incremental::{EntryValue, FileCache, Keys, Visitor};
use crate::storage::names::{DbName, GaugeMode};
use crate::storage::running_clock;
use crate::storage::ReadError;

/// A line's value at a scrape, and what its entries are merged by.
#[derive(Clone, Copy, Default)]
struct Acc {
    value: f64,
    timestamp: f64,
    /// The scrape that set it: the line is present in that scrape only.
    pass: u32,
    /// The line's family, and whether it is a bucket (copies of the
    /// registry's: the one cache line an entry's value touches).
    family: u32,
    bucket: bool,
}

/// How the entries of a line are merged across processes, as
/// `MultiProcessCollector` merges samples of a family of a kind and mode.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Merge {
    #[default]
    Sum,
    /// A counter's: a sum of values, running clocks resolved.
    Clock,
    Min,
    Max,
    MostRecent,
    /// A gauge of mode `all`: the value (one process per line).
    Last,
}

impl Merge {
    fn of(kind: Kind, mode: Option<GaugeMode>) -> Merge {
        match (kind, mode.unwrap_or(GaugeMode::All)) {
            (Kind::Counter, _) => Merge::Clock,
            (Kind::Gauge, GaugeMode::Min) => Merge::Min,
            (Kind::Gauge, GaugeMode::Max) => Merge::Max,
            (Kind::Gauge, GaugeMode::Sum) => Merge::Sum,
            (Kind::Gauge, GaugeMode::MostRecent) => Merge::MostRecent,
            (Kind::Gauge, GaugeMode::All) => Merge::Last,
            (Kind::Histogram | Kind::Summary, _) => Merge::Sum,
        }
    }
}

/// What the first file (in name order) that holds a family says of it at
/// a scrape, as `MultiProcessCollector` takes it.
#[derive(Clone)]
struct FamilyPass {
    /// The scrape that last saw it.
    pass: u32,
    kind: Kind,
    help: Arc<str>,
    /// How its lines merge: the others, and buckets.
    merge: [Merge; 2],
}

impl Default for FamilyPass {
    fn default() -> Self {
        FamilyPass {
            pass: 0,
            kind: Kind::Counter,
            help: Arc::from(""),
            merge: [Merge::Sum; 2],
        }
    }
}

/// Not computed yet (in `ClassicReader::lines`).
const UNKNOWN: u32 = u32::MAX - 1;

/// Reads the `*.db` files of a directory again and again: each file's
/// entries are remembered (`FileCache`) with the line each one adds into.
#[derive(Default)]
pub struct ClassicReader {
    files: FileCache,
    /// The line of each key in a file of no pid, by key id: for a
    /// histogram's file and for the others (an `le` makes a bucket only in
    /// the first).
    lines: [Vec<u32>; 2],
    /// By line id.
    accs: Vec<Acc>,
    /// By family id.
    families: Vec<FamilyPass>,
    pass: u32,
}

impl ClassicReader {
    /// Forgets every entry remembered: the registry they name is gone.
    pub fn forget(&mut self) {
        let (files, pass) = (std::mem::take(&mut self.files), self.pass);
        *self = ClassicReader {
            files,
            pass,
            ..ClassicReader::default()
        };
        self.files.forget();
    }

    /// Adds the values of the files `names` (sorted) of `dir` into their
    /// lines; returns the number of read errors. `now` (seconds,
    /// CLOCK_MONOTONIC) resolves running clocks: a counter entry with a
    /// negative timestamp `t` is a clock running since `-t`, worth
    /// `max(value, now + t)`.
    pub fn read(&mut self, registry: &mut Registry, dir: &Path, names: &[String], now: f64) -> u64 {
        self.pass = self.pass.wrapping_add(1).max(1);
        let mut read_errors = 0;
        self.files.begin_pass();
        for name in names {
            let Some(file) = DbName::parse(name) else {
                read_errors += 1;
                continue;
            };
            let pid = (file.mode == Some(GaugeMode::All)).then(|| registry.name(file.owner));
            let mut adder = Adder {
                registry: &mut *registry,
                lines: &mut self.lines,
                accs: &mut self.accs,
                families: &mut self.families,
                file: &file,
                pid,
                pass: self.pass,
                now,
                bad_keys: 0,
            };
            let error = self.files.read(dir, name, &mut adder);
            read_errors += adder.bad_keys;
            match error {
                None => {}
                // A live gauge file may be removed between listing and reading.
                Some(ReadError::Io(_)) if file.live => {}
                Some(_) => read_errors += 1,
            }
        }
        self.files.end_pass();
        read_errors
    }

    /// The families of the last scrape, from the registry's lines in
    /// exposition order (`Registry::sort` first), each sample with its
    /// ranks; and the number of lines present in them.
    pub fn families(&self, registry: &Registry) -> (Vec<Family>, usize) {
        let order = registry.order();
        let mut out: Vec<Family> = Vec::new();
        let mut present = 0;
        let mut start = 0;
        while start < order.len() {
            let family = registry.line_of(order[start]).family;
            let end = order[start..]
                .iter()
                .position(|&l| registry.line_of(l).family != family)
                .map_or(order.len(), |n| start + n);
            let ranks = start..end;
            start = end;
            let Some(info) = self
                .families
                .get(family as usize)
                .filter(|f| f.pass == self.pass)
            else {
                continue;
            };
            let names = registry.family_names(family);
            let mut out_family = Family::new(names.name.as_ref(), info.help.as_ref(), info.kind);
            out_family.samples.reserve(ranks.len());
            // The series being written: its id, and its buckets' total so far.
            let (mut series, mut cumulative, mut buckets) = (NONE, 0.0, false);
            for rank in ranks {
                let id = order[rank];
                let line = registry.line_of(id);
                if line.series != series {
                    (series, cumulative, buckets) = (line.series, 0.0, false);
                }
                let acc = self.accs.get(id as usize).filter(|a| a.pass == self.pass);
                present += acc.is_some() as usize;
                let s = registry.series_of(series);
                let sample = |name: &Arc<str>, extra, value| Sample {
                    name: Arc::clone(name),
                    labels: Arc::clone(&s.labels),
                    extra,
                    value,
                    id: Some(SampleId {
                        line: rank as u32,
                        series: registry.series_rank(series),
                    }),
                };
                match (&line.bucket, acc) {
                    // A bucket in a family that the first file holding it
                    // does not call a histogram.
                    (Some(_), _) if info.kind != Kind::Histogram => {}
                    (Some((_, le)), Some(acc)) => {
                        cumulative += acc.value;
                        buckets = true;
                        let extra = Some(("le", Arc::clone(le)));
                        out_family
                            .samples
                            .push(sample(&names.bucket, extra, cumulative));
                    }
                    (Some(_), None) => {}
                    // The count is the buckets' total, as MultiProcessCollector
                    // derives it (a count in the files is not served then).
                    (None, _) if buckets && line.sample == names.count => {
                        out_family
                            .samples
                            .push(sample(&names.count, None, cumulative));
                    }
                    (None, Some(acc)) => {
                        let extra = s.pid.as_ref().map(|pid| ("pid", Arc::clone(pid)));
                        out_family
                            .samples
                            .push(sample(&line.sample, extra, acc.value));
                    }
                    (None, None) => {}
                }
            }
            out.push(out_family);
        }
        (out, present)
    }
}

/// Adds the entries of one file into their lines.
struct Adder<'a> {
    registry: &'a mut Registry,
    lines: &'a mut [Vec<u32>; 2],
    accs: &'a mut Vec<Acc>,
    families: &'a mut Vec<FamilyPass>,
    file: &'a DbName<'a>,
    /// For a gauge file of mode `all`: its pid.
    pid: Option<Arc<str>>,
    pass: u32,
    now: f64,
    /// Entries whose key is not valid.
    bad_keys: u64,
}

impl Adder<'_> {
    /// The line the entry with key `key` of this file adds into (`NONE`:
    /// not a valid key).
    fn line(&mut self, key: u32) -> u32 {
        let histogram = self.file.kind == Kind::Histogram;
        self.registry.line_of_key(key, histogram, self.pid.clone())
    }
}

impl Visitor for Adder<'_> {
    fn keys(&self) -> &Keys {
        self.registry.keys()
    }

    fn tag(&mut self, raw: &str) -> (u32, u32) {
        let key = self.registry.key(raw);
        let line = match self.pid {
            // A pid is part of the series: not one line per key.
            Some(_) => self.line(key),
            None => {
                let memo = &mut self.lines[(self.file.kind == Kind::Histogram) as usize];
                if memo.len() < self.registry.key_count() {
                    memo.resize(self.registry.key_count(), UNKNOWN);
                }
                match memo[key as usize] {
                    UNKNOWN => {
                        let line = self.line(key);
                        self.lines[(self.file.kind == Kind::Histogram) as usize][key as usize] =
                            line;
                        line
                    }
                    line => line,
                }
            }
        };
        for id in self.accs.len() as u32..self.registry.line_count() as u32 {
            let line = self.registry.line_of(id);
            self.accs.push(Acc {
                family: line.family,
                bucket: line.bucket.is_some(),
                ..Acc::default()
            });
        }
        if self.families.len() < self.registry.family_count() {
            self.families
                .resize(self.registry.family_count(), FamilyPass::default());
        }
        (key, line)
    }

    fn visit(&mut self, values: &[EntryValue]) {
        let (pass, now) = (self.pass, self.now);
        for v in values {
            // `NONE` is no line: a key that is not valid.
            let Some(acc) = self.accs.get_mut(v.tag as usize) else {
                self.bad_keys += 1;
                continue;
            };
            let family = &mut self.families[acc.family as usize];
            if family.pass != pass {
                first_of_family(family, self.file, self.registry, v.key, pass);
            }
            merge(
                family.merge[acc.bucket as usize],
                acc,
                pass,
                v.value,
                v.timestamp,
                now,
            );
        }
    }
}

/// Takes what the first file holding a family this scrape says of it.
#[cold]
fn first_of_family(
    family: &mut FamilyPass,
    file: &DbName,
    registry: &Registry,
    key: u32,
    pass: u32,
) {
    family.pass = pass;
    family.kind = file.kind;
    let others = Merge::of(file.kind, file.mode);
    // Buckets add up, unless the family is not a histogram's.
    family.merge = match file.kind {
        Kind::Histogram => [others, Merge::Sum],
        _ => [others, others],
    };
    if let Some(parsed) = registry.parsed(key) {
        family.help = Arc::clone(&parsed.help);
    }
}

/// Adds `value` (with its timestamp `ts`) of an entry into its line's `acc`.
#[inline(always)]
fn merge(merge: Merge, acc: &mut Acc, pass: u32, value: f64, ts: f64, now: f64) {
    if acc.pass != pass {
        // The line's first entry this scrape; prometheus_client shows a
        // mostrecent gauge only once it has a timestamp.
        let value = match merge {
            Merge::MostRecent if ts <= 0.0 => return,
            Merge::Clock => running_clock::resolve(value, ts, now),
            _ => value,
        };
        let timestamp = if merge == Merge::MostRecent { ts } else { 0.0 };
        (acc.value, acc.timestamp, acc.pass) = (value, timestamp, pass);
        return;
    }
    match merge {
        Merge::Sum => acc.value += value,
        // A negative timestamp on a counter marks a running clock.
        Merge::Clock => acc.value += running_clock::resolve(value, ts, now),
        Merge::Min => acc.value = acc.value.min(value),
        Merge::Max => acc.value = acc.value.max(value),
        Merge::MostRecent if ts > acc.timestamp => (acc.value, acc.timestamp) = (value, ts),
        Merge::MostRecent => {}
        Merge::Last => acc.value = value,
    }
}
