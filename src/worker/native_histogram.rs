//! Prometheus native histograms (sparse exponential buckets) of the request
//! duration, as a worker records them (a scrape reads them in
//! `scrape::native`).
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

use parking_lot::Mutex;

use crate::master::label_cap::LabelCap;
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};
use crate::storage::{key, MmapWriter, ValueSlot};

/// The environment variable that chooses the schema.
pub const SCHEMA_VARIABLE: &str = "PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA";
/// The schema when none is set: 8 buckets per power of two.
pub const DEFAULT_SCHEMA: i8 = 3;
/// The schemas Prometheus accepts for exponential buckets.
pub const SCHEMAS: std::ops::RangeInclusive<i8> = -4..=8;
/// Width of the zero bucket, as the Go client's default (2^-128).
pub const ZERO_THRESHOLD: f64 = 2.938735877055719e-39;

/// The labels of an entry's key that name its bucket: the schema, and the
/// index (or `zero`).
pub(crate) const SCHEMA_LABEL: &str = "__schema";
pub(crate) const BUCKET_LABEL: &str = "__bucket";
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
    pub(crate) writer: Mutex<MmapWriter>,
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
}
