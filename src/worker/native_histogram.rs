//! Prometheus native histograms (sparse exponential buckets) of the request
//! duration: per-worker recording, per-scrape merging.
//!
//! A bucket of schema `s` and index `i` holds the values in
//! `(2^((i-1)/2^s), 2^(i/2^s)]`; values at or below `ZERO_THRESHOLD` go to the
//! zero bucket. Counts live in the worker's `native_worker<pid>.ndb`, in the
//! multiprocess file format, one entry per bucket that was ever hit, keyed by
//! the series' labels plus `__schema` and `__bucket` (`zero` or the index).
//! prometheus_client globs `*.db` only, so it never sees these files.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustc_hash::FxHashMap;

use parking_lot::Mutex;

use crate::master::label_cap::LabelCap;
use crate::model::Labels;
use crate::storage::incremental::{FileCache, Visitor};
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};
use crate::storage::ReadError;
use crate::storage::{key, MmapWriter, ValueSlot};

/// The environment variable that chooses the schema.
pub const SCHEMA_VARIABLE: &str = "PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA";
/// The schema when none is set: 8 buckets per power of two.
pub const DEFAULT_SCHEMA: i8 = 3;
/// The schemas Prometheus accepts for exponential buckets.
pub const SCHEMAS: std::ops::RangeInclusive<i8> = -4..=8;
/// Width of the zero bucket, as the Go client's default (2^-128).
pub const ZERO_THRESHOLD: f64 = 2.938735877055719e-39;

const SCHEMA_LABEL: &str = "__schema";
const BUCKET_LABEL: &str = "__bucket";
/// Buckets of values in `(2^LOWEST_EXP, 2^HIGHEST_EXP]` seconds (1 µs to
/// 17 min) have a lock-free slot; others take a mutex the first time and
/// every time (rare: a request slower than 17 minutes).
const LOWEST_EXP: i32 = -20;
const HIGHEST_EXP: i32 = 10;

/// A schema from its text; the error says what is wrong.
pub fn parse_schema(v: &str) -> Result<i8, String> {
    match v.trim().parse::<i8>() {
        Ok(s) if SCHEMAS.contains(&s) => Ok(s),
        _ => Err(format!(
            "is not a native histogram schema (an integer from {} to {})",
            SCHEMAS.start(),
            SCHEMAS.end()
        )),
    }
}

/// `frexp`: `v = frac * 2^exp` with `frac` in `[0.5, 1)`, for a positive normal `v`.
#[inline]
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (frac, e) = frexp(v * 2f64.powi(64));
        return (frac, e - 64);
    }
    let frac = f64::from_bits((bits & ((1 << 52) - 1)) | (1022 << 52));
    (frac, exp - 1022)
}

/// The bucket layout of one schema.
#[derive(Debug, Clone)]
pub struct Schema {
    schema: i8,
    /// For a positive schema: the upper bounds of the buckets of `[0.5, 1)`.
    bounds: Box<[f64]>,
}

impl Schema {
    /// The layout of `schema` (one of `SCHEMAS`).
    pub fn new(schema: i8) -> Schema {
        let bounds = if schema > 0 {
            let n = 1u32 << schema;
            (0..n)
                .map(|i| 2f64.powf(i as f64 / n as f64 - 1.0))
                .collect()
        } else {
            Box::default()
        };
        Schema { schema, bounds }
    }

    /// The index of the bucket holding `v` (> 0), as client_golang computes it.
    #[inline]
    pub fn index(&self, v: f64) -> i32 {
        let (frac, exp) = frexp(v);
        if self.schema > 0 {
            let n = self.bounds.len() as i32;
            self.bounds.partition_point(|&b| b < frac) as i32 + (exp - 1) * n
        } else {
            let key = if frac == 0.5 { exp - 1 } else { exp };
            let shift = -self.schema as i32;
            (key + (1 << shift) - 1) >> shift
        }
    }
}

/// The bucket index at a lower schema (`to <= from`) that covers `index`.
pub fn reduce_index(index: i32, from: i8, to: i8) -> i32 {
    ((index - 1) >> (from - to) as i32) + 1
}

/// A worker's file of native buckets, shared by its series.
pub struct NativeFile {
    schema: Schema,
    writer: Mutex<MmapWriter>,
    /// Index of the first lock-free slot, and how many there are.
    lowest: i32,
    slots: usize,
}

impl NativeFile {
    /// Opens (creates) the file of worker `pid` in `dir`.
    pub fn open(dir: &Path, pid: u32, schema: i8) -> io::Result<Arc<NativeFile>> {
        let writer = MmapWriter::open(&dir.join(names::native_file(pid)))?;
        let schema = Schema::new(schema);
        let lowest = schema.index(2f64.powi(LOWEST_EXP) * 1.0000001);
        let highest = schema.index(2f64.powi(HIGHEST_EXP));
        Ok(Arc::new(NativeFile {
            schema,
            writer: Mutex::new(writer),
            lowest,
            slots: (highest - lowest + 1) as usize,
        }))
    }

    /// The native histogram of one series (`name` with `labels`).
    pub fn series(self: &Arc<Self>, name: &str, labels: &[(&str, &str)]) -> NativeSeries {
        let schema = self.schema.schema.to_string();
        let mut key_labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key_labels.push((SCHEMA_LABEL.into(), schema));
        NativeSeries {
            file: Arc::clone(self),
            name: name.into(),
            labels: key_labels,
            zero: OnceLock::new(),
            table: (0..self.slots).map(|_| OnceLock::new()).collect(),
            others: Mutex::new(HashMap::new()),
        }
    }
}

/// The buckets of one series. Lock-free once a bucket has its entry.
pub struct NativeSeries {
    file: Arc<NativeFile>,
    name: Box<str>,
    labels: Vec<(String, String)>,
    zero: OnceLock<ValueSlot>,
    table: Box<[OnceLock<ValueSlot>]>,
    /// Buckets outside the table's range.
    others: Mutex<HashMap<i32, ValueSlot>>,
}

impl NativeSeries {
    /// Counts one observation of `v` seconds; callers are serialized (a
    /// worker's `record`, with the GIL held: `ValueSlot::add_serialized`).
    #[inline]
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        if v <= ZERO_THRESHOLD {
            if let Some(slot) = self.zero.get().copied().or_else(|| self.create_zero()) {
                slot.add_serialized(1.0);
            }
            return;
        }
        let index = self.file.schema.index(v);
        let slot = match self
            .table
            .get(index.wrapping_sub(self.file.lowest) as usize)
        {
            Some(cell) => cell.get().copied().or_else(|| self.create(index)),
            None => self.other(index),
        };
        if let Some(slot) = slot {
            slot.add_serialized(1.0);
        }
    }

    #[cold]
    fn entry(&self, bucket: &str) -> Option<ValueSlot> {
        let mut labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        labels.push((BUCKET_LABEL, bucket));
        let key = key::encode(&self.name, &self.name, &labels, "");
        self.file.writer.lock().slot(&key).ok()
    }

    #[cold]
    fn create_zero(&self) -> Option<ValueSlot> {
        let slot = self.entry("zero")?;
        Some(*self.zero.get_or_init(|| slot))
    }

    #[cold]
    fn create(&self, index: i32) -> Option<ValueSlot> {
        let slot = self.entry(&index.to_string())?;
        let cell = &self.table[(index - self.file.lowest) as usize];
        Some(*cell.get_or_init(|| slot))
    }

    #[cold]
    fn other(&self, index: i32) -> Option<ValueSlot> {
        let mut others = self.others.lock();
        if let Some(slot) = others.get(&index) {
            return Some(*slot);
        }
        let slot = self.entry(&index.to_string())?;
        others.insert(index, slot);
        Some(slot)
    }
}

/// A native histogram merged across processes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NativeBuckets {
    /// The schema the buckets are counted in.
    pub schema: i8,
    /// Observations in the zero bucket.
    pub zero_count: f64,
    /// Count per bucket index, not cumulative, by increasing index (each
    /// index once).
    pub positive: Vec<(i32, f64)>,
}

impl NativeBuckets {
    /// Every observation counted: the zero bucket's and the others'.
    pub fn count(&self) -> f64 {
        self.zero_count + self.positive.iter().map(|(_, c)| c).sum::<f64>()
    }

    /// Lowers the resolution to `schema` (no higher than the current one).
    pub fn reduce_to(&mut self, schema: i8) {
        if schema >= self.schema {
            return;
        }
        // Reducing keeps the order: the buckets that merge are neighbours.
        let mut reduced: Vec<(i32, f64)> = Vec::with_capacity(self.positive.len());
        for &(i, c) in &self.positive {
            let i = reduce_index(i, self.schema, schema);
            match reduced.last_mut() {
                Some((last, sum)) if *last == i => *sum += c,
                _ => reduced.push((i, 0.0 + c)),
            }
        }
        self.positive = reduced;
        self.schema = schema;
    }

    /// Adds `other` in, at the lower of the two resolutions.
    pub fn merge(&mut self, mut other: NativeBuckets) {
        let schema = self.schema.min(other.schema);
        self.reduce_to(schema);
        other.reduce_to(schema);
        self.zero_count += other.zero_count;
        let mine = std::mem::take(&mut self.positive);
        let mut merged = Vec::with_capacity(mine.len().max(other.positive.len()));
        let (mut a, mut b) = (
            mine.into_iter().peekable(),
            other.positive.into_iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    let (x, y) = (a.next(), b.next());
                    x.zip(y).map(|((i, c), (_, d))| (i, c + d))
                }
                (Some(x), Some(y)) if x.0 < y.0 => a.next(),
                (Some(_), None) => a.next(),
                (_, Some(_)) => b.next().map(|(i, d)| (i, 0.0 + d)),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.positive = merged;
    }

    /// Spans `(offset, length)` and delta-encoded counts, as the protobuf
    /// format wants them (empty buckets inside a span are written as 0).
    #[cfg(test)]
    pub fn spans_and_deltas(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let (mut spans, mut deltas) = (Vec::new(), Vec::new());
        self.spans_and_deltas_into(&mut spans, &mut deltas);
        (spans, deltas)
    }

    /// `spans_and_deltas` into buffers cleared first.
    pub fn spans_and_deltas_into(&self, spans: &mut Vec<(i32, u32)>, deltas: &mut Vec<i64>) {
        spans.clear();
        deltas.clear();
        let (mut previous_index, mut previous_count) = (None::<i32>, 0i64);
        for &(i, c) in self.positive.iter().filter(|(_, c)| *c > 0.0) {
            let count = c as i64;
            match previous_index {
                // A gap of up to two empty buckets costs less as zeros than as a new span.
                Some(p) if i - p <= 3 => {
                    for _ in p + 1..i {
                        deltas.push(-previous_count);
                        previous_count = 0;
                    }
                    spans.last_mut().expect("a span is open").1 += (i - p) as u32;
                }
                Some(p) => spans.push((i - p - 1, 1)),
                None => spans.push((i, 1)),
            }
            deltas.push(count - previous_count);
            previous_count = count;
            previous_index = Some(i);
        }
    }
}

/// Native histograms by (metric name, sorted labels), both shared with the
/// aggregator's registry (nothing is copied per scrape).
pub type NativeHistograms = FxHashMap<(Arc<str>, Arc<Labels>), NativeBuckets>;

/// What an entry's key says, parsed once.
#[derive(Clone)]
struct NativeKey {
    name: Arc<str>,
    labels: Arc<Labels>,
    schema: i8,
    /// `None` for the zero bucket.
    bucket: Option<i32>,
}

fn parse_key(raw: &str) -> Option<NativeKey> {
    let parsed = key::parse(raw)?;
    let mut labels = parsed.labels;
    let take = |labels: &mut Labels, name: &str| {
        let i = labels.iter().position(|(k, _)| k == name)?;
        Some(labels.remove(i).1)
    };
    let schema: i8 = take(&mut labels, SCHEMA_LABEL)?.parse().ok()?;
    if !SCHEMAS.contains(&schema) {
        return None;
    }
    let bucket = match take(&mut labels, BUCKET_LABEL)?.as_str() {
        "zero" => None,
        i => Some(i.parse().ok()?),
    };
    Some(NativeKey {
        name: Arc::from(parsed.metric_name),
        labels: Arc::new(labels),
        schema,
        bucket,
    })
}

/// A bucket of a series at a schema: where the entries that name it add up.
struct Cell {
    schema: i8,
    /// `None` for the zero bucket.
    bucket: Option<i32>,
}

/// Reads the native files of a directory again and again, remembering each
/// file's entries (`FileCache`) and the cell each key adds into.
#[derive(Default)]
pub struct NativeAggregator {
    files: FileCache<Option<u32>>,
    registry: NativeRegistry,
    /// Per cell: the sum at the last scrape, and that scrape.
    sums: Vec<(f64, u32)>,
    pass: u32,
}

#[derive(Default)]
struct NativeRegistry {
    keys: HashMap<Box<str>, Option<u32>>,
    cells: Vec<Cell>,
    cell_ids: HashMap<(u32, i8, Option<i32>), u32>,
    series: Vec<(Arc<str>, Arc<Labels>)>,
    series_ids: HashMap<(Arc<str>, Arc<Labels>), u32>,
    /// The cells of each series, by schema then bucket (the zero bucket
    /// first): the order the merge wants them in.
    series_cells: Vec<Vec<u32>>,
}

/// Keys remembered before the cache is cleared (a churning directory cannot grow it).
const MAX_CACHED_KEYS: usize = 1 << 18;

impl NativeRegistry {
    /// The cell the entry `raw` adds into; `None` if the key is not valid.
    fn cell(&mut self, raw: &str) -> Option<u32> {
        if let Some(&cell) = self.keys.get(raw) {
            return cell;
        }
        let cell = parse_key(raw).map(|k| {
            let series_key = (k.name, k.labels);
            let series = match self.series_ids.get(&series_key) {
                Some(&id) => id,
                None => {
                    let id = self.series.len() as u32;
                    self.series.push(series_key.clone());
                    self.series_cells.push(Vec::new());
                    self.series_ids.insert(series_key, id);
                    id
                }
            };
            *self
                .cell_ids
                .entry((series, k.schema, k.bucket))
                .or_insert_with(|| {
                    let id = self.cells.len() as u32;
                    let order = |c: &Cell| (c.schema, c.bucket);
                    let cell = Cell {
                        schema: k.schema,
                        bucket: k.bucket,
                    };
                    let cells = &mut self.series_cells[series as usize];
                    let at =
                        cells.partition_point(|&c| order(&self.cells[c as usize]) < order(&cell));
                    cells.insert(at, id);
                    self.cells.push(cell);
                    id
                })
        });
        self.keys.insert(raw.into(), cell);
        cell
    }
}

/// Adds the entries of one file into their cells.
struct CellAdder<'a> {
    registry: &'a mut NativeRegistry,
    sums: &'a mut Vec<(f64, u32)>,
    pass: u32,
    errors: u64,
}

impl Visitor<Option<u32>> for CellAdder<'_> {
    fn tag(&mut self, key: &str) -> Option<u32> {
        self.registry.cell(key)
    }

    fn visit(&mut self, cell: &Option<u32>, value: f64, _: f64) {
        let Some(cell) = *cell else {
            self.errors += 1;
            return;
        };
        let cell = cell as usize;
        if self.sums.len() <= cell {
            self.sums
                .resize(self.registry.cells.len().max(cell + 1), (0.0, 0));
        }
        let sum = &mut self.sums[cell];
        if sum.1 == self.pass {
            sum.0 += value;
        } else {
            *sum = (value, self.pass);
        }
    }
}

impl NativeAggregator {
    /// Every native histogram of `dir`, merged; and how many files or
    /// entries could not be read.
    pub fn collect(&mut self, dir: &Path) -> (NativeHistograms, u64) {
        let mut errors = 0;
        let Ok(listing) = std::fs::read_dir(dir) else {
            return (NativeHistograms::default(), 1);
        };
        let mut names: Vec<String> = listing
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| names::is_native_file(n))
            .collect();
        names.sort();
        if self.registry.keys.len() > MAX_CACHED_KEYS {
            *self = NativeAggregator::default();
        }
        self.pass = self.pass.wrapping_add(1).max(1);
        self.files.begin_pass();
        for name in &names {
            let mut adder = CellAdder {
                registry: &mut self.registry,
                sums: &mut self.sums,
                pass: self.pass,
                errors: 0,
            };
            let error = self.files.read(dir, name, &mut adder);
            errors += adder.errors;
            match error {
                // A worker's file may be retired between listing and reading.
                None | Some(ReadError::Io(_)) => {}
                Some(_) => errors += 1,
            }
        }
        self.files.end_pass();
        (self.merged(), errors)
    }

    /// The cells of this scrape, merged per series: one accumulator per
    /// schema seen, reduced to the coarsest.
    fn merged(&self) -> NativeHistograms {
        let mut out = NativeHistograms::default();
        for (series, cells) in self.registry.series_cells.iter().enumerate() {
            // The series' cells by schema, then bucket: the buckets of each
            // schema come in order, and the lowest schema first.
            let mut merged: Option<NativeBuckets> = None;
            let mut current: Option<NativeBuckets> = None;
            for &c in cells {
                match self.sums.get(c as usize) {
                    Some(&(sum, pass)) if pass == self.pass => {
                        let cell = &self.registry.cells[c as usize];
                        let buckets = match &mut current {
                            Some(b) if b.schema == cell.schema => b,
                            _ => {
                                fold(&mut merged, current.take());
                                current.insert(NativeBuckets {
                                    schema: cell.schema,
                                    zero_count: 0.0,
                                    positive: Vec::with_capacity(cells.len()),
                                })
                            }
                        };
                        match cell.bucket {
                            None => buckets.zero_count += sum,
                            Some(i) => buckets.positive.push((i, 0.0 + sum)),
                        }
                    }
                    _ => {}
                }
            }
            fold(&mut merged, current);
            if let Some(m) = merged {
                let (name, labels) = &self.registry.series[series];
                out.insert((Arc::clone(name), Arc::clone(labels)), m);
            }
        }
        out
    }
}

/// Merges `next` into `merged`.
fn fold(merged: &mut Option<NativeBuckets>, next: Option<NativeBuckets>) {
    match (merged.as_mut(), next) {
        (Some(m), Some(n)) => m.merge(n),
        (None, n) => *merged = n,
        (_, None) => {}
    }
}

/// Adds every bucket of the native file at `path` into `archive`.
pub fn fold_into(
    archive: &mut MmapWriter,
    path: &Path,
    dir: &Path,
    cap: &mut LabelCap,
) -> io::Result<()> {
    let mut buf = Vec::new();
    if read_used(path, &mut buf).is_err() {
        return Ok(());
    }
    let (entries, _) = read_entries(&buf);
    for e in entries {
        archive.slot(&cap.admit(dir, e.key))?.add(e.value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_client_golang() {
        // Upper bounds are inclusive: 1.0 is in bucket 0 of every schema.
        for s in -4..=8 {
            assert_eq!(Schema::new(s).index(1.0), 0, "schema {s}");
            assert_eq!(Schema::new(s).index(1.0000001), 1, "schema {s}");
        }
        let s3 = Schema::new(3);
        assert_eq!(s3.index(2.0), 8);
        assert_eq!(s3.index(0.5), -8);
        // 0.05 s: 2^(-35/8) = 0.0483 < 0.05 <= 2^(-34/8) = 0.0526
        assert_eq!(s3.index(0.05), -34);
        let s0 = Schema::new(0);
        assert_eq!((s0.index(3.0), s0.index(4.0), s0.index(4.1)), (2, 2, 3));
        let s_2 = Schema::new(-2);
        // Buckets of width 2^4: (1, 16] is index 1.
        assert_eq!(
            (s_2.index(16.0), s_2.index(16.5), s_2.index(2.0)),
            (1, 2, 1)
        );
        assert_eq!(frexp(5e-324), (0.5, -1073));
    }

    #[test]
    fn every_value_falls_within_its_buckets_bounds() {
        for s in -4..=8i8 {
            let schema = Schema::new(s);
            let mut v = 1e-7;
            while v < 1e4 {
                let i = schema.index(v);
                let width = 2f64.powi(-(s as i32));
                let upper = 2f64.powf(i as f64 * width);
                let lower = 2f64.powf((i - 1) as f64 * width);
                assert!(
                    v <= upper * (1.0 + 1e-12) && v > lower * (1.0 - 1e-12),
                    "{s} {v} {i}"
                );
                v *= 1.37;
            }
        }
    }

    #[test]
    fn reducing_resolution_keeps_every_value_in_a_covering_bucket() {
        for (from, to) in [(3, 0), (8, 3), (1, -4), (3, 3)] {
            let (a, b) = (Schema::new(from), Schema::new(to));
            let mut v = 1e-6;
            while v < 1e3 {
                assert_eq!(
                    reduce_index(a.index(v), from, to),
                    b.index(v),
                    "{from}->{to} {v}"
                );
                v *= 1.11;
            }
        }
    }

    #[test]
    fn spans_and_deltas_are_what_prometheus_expects() {
        let b = NativeBuckets {
            schema: 3,
            zero_count: 0.0,
            positive: [(-34, 5.0), (-33, 2.0), (-31, 1.0), (10, 4.0)].into(),
        };
        let (spans, deltas) = b.spans_and_deltas();
        assert_eq!(spans, vec![(-34, 4), (40, 1)]);
        assert_eq!(deltas, vec![5, -3, -2, 1, 3]);
        assert_eq!(b.count(), 12.0);
    }

    #[test]
    fn workers_merge_and_dead_ones_fold_into_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let labels = [("method", "GET"), ("worker_id", "1")];
        let a = NativeFile::open(d, 10, 3).unwrap().series("dur", &labels);
        let b = NativeFile::open(d, 11, 1).unwrap().series("dur", &labels);
        for v in [0.05, 0.05, 0.0, 2.0, 5000.0] {
            a.observe(v);
        }
        b.observe(0.05);
        let mut agg = NativeAggregator::default();
        let (merged, errors) = agg.collect(d);
        assert_eq!(errors, 0);
        let key = (
            Arc::from("dur"),
            Arc::new(vec![
                ("method".to_string(), "GET".to_string()),
                ("worker_id".into(), "1".into()),
            ]),
        );
        let h = &merged[&key];
        assert_eq!(h.schema, 1);
        assert_eq!(h.zero_count, 1.0);
        // 0.05 at schema 1: (2^(-9/2), 2^(-8/2)] = (0.044, 0.0625], index -8.
        let at = |i: i32| h.positive.iter().find(|b| b.0 == i).map(|b| b.1);
        assert_eq!((at(-8), at(2)), (Some(3.0), Some(1.0)));
        assert_eq!(h.count(), 6.0);
        drop((a, b));
        let mut archive = MmapWriter::open(&d.join(names::NATIVE_ARCHIVE)).unwrap();
        let mut cap = crate::master::label_cap::LabelCap::default();
        fold_into(&mut archive, &d.join(names::native_file(10)), d, &mut cap).unwrap();
        std::fs::remove_file(d.join(names::native_file(10))).unwrap();
        let (after, _) = agg.collect(d);
        assert_eq!(after[&key], *h);
    }
}
