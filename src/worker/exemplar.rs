//! Exemplars: the trace of a recent request, attached to the bucket it fell
//! in (and to the failed-requests counter), from a W3C `traceparent`.
//!
//! Each worker keeps the latest exemplar per sample in `exemplar_worker<pid>.ndb`
//! (the multiprocess file format; prometheus_client globs only `*.db`); a
//! scrape takes the latest of every file, and a dead worker's are kept in
//! `exemplar_archive.ndb`, latest wins. Exemplars are best-effort: a write
//! that meets another one in flight on the same slot is skipped.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::master::label_cap::LabelCap;
pub use crate::scrape::exemplar_index::{Exemplar, ExemplarKey, Exemplars};
use crate::scrape::exemplar_index::{KeyIndex, SampleIds};
use crate::storage::float::go_float;
use crate::storage::incremental::{FileCache, Visitor};
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};
use crate::storage::ReadError;
use crate::storage::{key, MmapWriter, ValueSlot};

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's 16-byte id.
    pub trace_id: u128,
    /// The parent span's 8-byte id.
    pub span_id: u64,
}

/// Value of each lower-case hex digit; `NOT_HEX` for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

/// Up to 16 lower-case hex digits (a u64 per step: a request header is
/// parsed on the hot path).
fn hex64(digits: &[u8]) -> Option<u64> {
    let mut acc = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        let v = HEX_VALUES[d as usize];
        bad |= v & 0xf0;
        acc = acc << 4 | (v & 0x0f) as u64;
    }
    (bad == 0).then_some(acc)
}

/// Up to 32 lower-case hex digits.
fn hex(digits: &[u8]) -> Option<u128> {
    let split = digits.len().saturating_sub(16);
    let (high, low) = digits.split_at(split);
    Some((hex64(high)? as u128) << (4 * low.len()) | hex64(low)? as u128)
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not all zero; anything
    /// else is `None`.
    pub fn parse(header: &[u8]) -> Option<TraceParent> {
        let h = header.trim_ascii();
        if h.len() != 55 || &h[..3] != b"00-" || h[35] != b'-' || h[52] != b'-' {
            return None;
        }
        let trace_id = hex(&h[3..35])?;
        let span_id = hex(&h[36..52])? as u64;
        hex(&h[53..55])?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id })
    }
}

/// One exemplar's place in a worker's file: three entries (`value`: value
/// and Unix time; `trace`: the id's two halves; `span`: the span id and a
/// sequence, odd while a write is under way).
pub struct ExemplarSlot {
    value: ValueSlot,
    trace: ValueSlot,
    span: ValueSlot,
    /// The sequence as this process last wrote it: the writers' lock.
    seq: AtomicU64,
}

impl ExemplarSlot {
    /// Opens (creates) the entries of the sample `sample_name{labels}` of `family`.
    pub fn open(
        file: &mut MmapWriter,
        family: &str,
        sample_name: &str,
        labels: &[(&str, &str)],
    ) -> io::Result<ExemplarSlot> {
        let mut part = |part: &str| file.slot(&key::encode(family, sample_name, labels, part));
        let (value, trace, span) = (part(PART_VALUE)?, part(PART_TRACE)?, part(PART_SPAN)?);
        // An odd sequence left by a writer that died mid-write is made even.
        let seq = (span.get_timestamp().to_bits() + 1) & !1;
        Ok(ExemplarSlot {
            value,
            trace,
            span,
            seq: AtomicU64::new(seq),
        })
    }

    /// Replaces the exemplar; skipped if another thread is writing it now.
    pub fn store(&self, trace: &TraceParent, value: f64, unix_seconds: f64) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq % 2 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.span.set_timestamp(f64::from_bits(seq + 1));
        self.value.set(value);
        self.value.set_timestamp(unix_seconds);
        self.trace
            .set(f64::from_bits((trace.trace_id >> 64) as u64));
        self.trace
            .set_timestamp(f64::from_bits(trace.trace_id as u64));
        self.span.set(f64::from_bits(trace.span_id));
        self.span.set_timestamp(f64::from_bits(seq + 2));
        self.seq.store(seq + 2, Ordering::Release);
    }
}

const PART_VALUE: &str = "value";
const PART_TRACE: &str = "trace";
const PART_SPAN: &str = "span";
/// A worker's exemplar file, shared by its series.
pub struct ExemplarFile {
    pub(crate) writer: Mutex<MmapWriter>,
}

impl ExemplarFile {
    /// Opens (creates) the exemplar file of worker `pid` in `dir`.
    pub fn open(dir: &Path, pid: u32) -> io::Result<Arc<ExemplarFile>> {
        Ok(Arc::new(ExemplarFile {
            writer: Mutex::new(MmapWriter::open(&dir.join(names::exemplar_file(pid)))?),
        }))
    }
}

/// The exemplar slots of one histogram series: one per bucket, made when a
/// traced request first falls in it.
pub struct HistogramExemplars {
    file: Arc<ExemplarFile>,
    family: Box<str>,
    labels: Vec<(String, String)>,
    /// `le` of each bucket, `+Inf` last.
    les: Box<[String]>,
    slots: Box<[OnceLock<ExemplarSlot>]>,
}

impl HistogramExemplars {
    /// The exemplar slots of the histogram `family` with `labels` and bucket
    /// `bounds` (`+Inf` added), in `file`; each slot is made on first use.
    pub fn new(
        file: &Arc<ExemplarFile>,
        family: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> HistogramExemplars {
        let les: Box<[String]> = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(go_float)
            .collect();
        HistogramExemplars {
            file: Arc::clone(file),
            family: family.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            slots: les.iter().map(|_| OnceLock::new()).collect(),
            les,
        }
    }

    /// Attaches `trace` to the bucket of `value` (`bounds` as in `new`).
    pub fn observe(&self, bounds: &[f64], value: f64, trace: &TraceParent, unix_seconds: f64) {
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        let slot = match self.slots[i].get() {
            Some(slot) => slot,
            None => {
                let mut labels: Vec<(&str, &str)> = self
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                labels.push(("le", &self.les[i]));
                let bucket = format!("{}_bucket", self.family);
                let Ok(slot) = ExemplarSlot::open(
                    &mut self.file.writer.lock(),
                    &self.family,
                    &bucket,
                    &labels,
                ) else {
                    return;
                };
                self.slots[i].get_or_init(|| slot)
            }
        };
        slot.store(trace, value, unix_seconds);
    }
}

/// A key read back: which sample (its id in `PartKeys`), which part.
#[derive(Clone, Copy)]
struct PartKey {
    sample: u32,
    part: u8,
}

fn parse_part(raw: &str) -> Option<(ExemplarKey, u8)> {
    let parsed = key::parse(raw)?;
    let part = match parsed.help.as_str() {
        PART_VALUE => 0,
        PART_TRACE => 1,
        PART_SPAN => 2,
        _ => return None,
    };
    let mut labels = parsed.labels;
    // Samples write `le` last.
    if let Some(i) = labels.iter().position(|(k, _)| k == "le") {
        let le = labels.remove(i);
        labels.push(le);
    }
    let sample = ExemplarKey {
        family: parsed.metric_name,
        labels,
    };
    Some((sample, part))
}

/// The three parts of one stored exemplar, as read.
#[derive(Default, Clone, Copy)]
struct Parts {
    value: Option<(f64, f64)>,
    trace: Option<(u64, u64)>,
    span: Option<(u64, u64)>,
}

impl Parts {
    fn exemplar(&self) -> Option<Exemplar> {
        let ((value, timestamp), (hi, lo), (span, seq)) = (self.value?, self.trace?, self.span?);
        let trace_id = (hi as u128) << 64 | lo as u128;
        // Never written, or caught mid-write.
        if seq == 0 || seq % 2 == 1 || trace_id == 0 || span == 0 {
            return None;
        }
        Some(Exemplar {
            trace_id,
            span_id: span,
            value,
            timestamp,
        })
    }
}

/// Reads the exemplar files of a directory again and again, remembering
/// each file's entries (`FileCache`, whose tags hold the samples' ids: the
/// two are dropped together) and the index of the samples' keys.
#[derive(Default)]
pub struct ExemplarAggregator {
    files: FileCache<Option<PartKey>>,
    keys: PartKeys,
    index: Arc<KeyIndex>,
    kept: Arc<Mutex<SampleIds>>,
}

/// Keys parsed before; the parts of one sample share its id.
#[derive(Default)]
struct PartKeys {
    parsed: HashMap<Box<str>, Option<PartKey>>,
    ids: FxHashMap<Arc<ExemplarKey>, u32>,
    /// By id.
    samples: Vec<Arc<ExemplarKey>>,
}

impl PartKeys {
    fn get(&mut self, raw: &str) -> Option<PartKey> {
        if let Some(k) = self.parsed.get(raw) {
            return *k;
        }
        let k = parse_part(raw).map(|(sample, part)| {
            let sample = match self.ids.get(&sample) {
                Some(&id) => id,
                None => {
                    let id = self.samples.len() as u32;
                    let sample = Arc::new(sample);
                    self.samples.push(Arc::clone(&sample));
                    self.ids.insert(sample, id);
                    id
                }
            };
            PartKey { sample, part }
        });
        self.parsed.insert(raw.into(), k);
        k
    }
}

const MAX_CACHED_KEYS: usize = 1 << 18;

/// Puts together the parts of each exemplar of a file, in file order (the
/// three parts of one are written one after the other), and hands each
/// exemplar on with its sample's id.
struct PartReader<'a, F: FnMut(u32, Parts)> {
    keys: &'a mut PartKeys,
    current: Option<(u32, Parts)>,
    each: F,
    errors: u64,
}

impl<F: FnMut(u32, Parts)> PartReader<'_, F> {
    fn new(keys: &mut PartKeys, each: F) -> PartReader<'_, F> {
        PartReader {
            keys,
            current: None,
            each,
            errors: 0,
        }
    }

    /// Hands on the last exemplar of the file.
    fn finish(&mut self) {
        if let Some((s, parts)) = self.current.take() {
            (self.each)(s, parts);
        }
    }
}

impl<F: FnMut(u32, Parts)> Visitor<Option<PartKey>> for PartReader<'_, F> {
    fn tag(&mut self, raw: &str) -> Option<PartKey> {
        self.keys.get(raw)
    }

    fn visit(&mut self, k: &Option<PartKey>, value: f64, timestamp: f64) {
        let Some(k) = k else {
            self.errors += 1;
            return;
        };
        if self.current.as_ref().is_some_and(|(s, _)| *s != k.sample) {
            self.finish();
        }
        let parts = &mut self.current.get_or_insert((k.sample, Parts::default())).1;
        let bits = (value.to_bits(), timestamp.to_bits());
        match k.part {
            0 => parts.value = Some((value, timestamp)),
            1 => parts.trace = Some(bits),
            _ => parts.span = Some(bits),
        }
    }
}

impl ExemplarAggregator {
    /// The latest exemplar of every sample, over every file of `dir`.
    pub fn collect(&mut self, dir: &Path) -> (Exemplars, u64) {
        let Ok(listing) = std::fs::read_dir(dir) else {
            return (Exemplars::default(), 1);
        };
        // The files' tags hold ids of `keys`: both are forgotten together.
        if self.keys.parsed.len() > MAX_CACHED_KEYS {
            *self = ExemplarAggregator::default();
        }
        // Trimmed when no scrape is encoding with it (they only try it too).
        if let Some(mut kept) = self.kept.try_lock() {
            kept.end_scrape();
        }
        let mut latest = Exemplars {
            index: Arc::clone(&self.index),
            latest: Vec::new(),
            kept: Arc::clone(&self.kept),
        };
        latest.latest.resize(self.keys.samples.len(), None);
        let mut errors = 0;
        self.files.begin_pass();
        for entry in listing.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !names::is_exemplar_file(&name) {
                continue;
            }
            let mut reader = PartReader::new(&mut self.keys, |sample, parts| {
                if let Some(e) = parts.exemplar() {
                    latest.offer(sample, e);
                }
            });
            let error = self.files.read(dir, &name, &mut reader);
            reader.finish();
            errors += reader.errors;
            match error {
                None | Some(ReadError::Io(_)) => {}
                Some(_) => errors += 1,
            }
        }
        self.files.end_pass();
        if self.index.keys.len() != self.keys.samples.len() {
            self.index = Arc::new(KeyIndex::of(&self.keys.samples));
            latest.index = Arc::clone(&self.index);
        }
        (latest, errors)
    }
}

/// Keeps in `archive` the later of its exemplars and those of the file at `path`.
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
    let mut latest: Vec<(u32, Exemplar)> = Vec::new();
    let mut keys = PartKeys::default();
    let mut reader = PartReader::new(&mut keys, |sample, parts| {
        if let Some(e) = parts.exemplar() {
            latest.push((sample, e));
        }
    });
    for entry in read_entries(&buf).0 {
        let k = reader.tag(entry.key);
        reader.visit(&k, entry.value, entry.timestamp);
    }
    reader.finish();
    for (id, e) in latest {
        let sample = &keys.samples[id as usize];
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cap.admit_labels(dir, &mut labels);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sample_name = if labels.iter().any(|(k, _)| *k == "le") {
            format!("{}_bucket", sample.family)
        } else {
            format!("{}_total", sample.family)
        };
        let slot = ExemplarSlot::open(archive, &sample.family, &sample_name, &labels)?;
        if slot.value.get_timestamp() >= e.timestamp {
            continue;
        }
        let trace = TraceParent {
            trace_id: e.trace_id,
            span_id: e.span_id,
        };
        slot.store(&trace, e.value, e.timestamp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_valid_version_00_traceparents_are_taken() {
        let t = TraceParent::parse(TRACE).unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            b"",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_latest_exemplar_wins_across_workers_and_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let labels = [("method", "GET"), ("worker_id", "1")];
        let bounds = [0.1, 1.0];
        let t1 = TraceParent::parse(TRACE).unwrap();
        let t2 = TraceParent {
            trace_id: 7,
            span_id: 9,
        };
        let a =
            HistogramExemplars::new(&ExemplarFile::open(d, 1).unwrap(), "dur", &labels, &bounds);
        let b =
            HistogramExemplars::new(&ExemplarFile::open(d, 2).unwrap(), "dur", &labels, &bounds);
        a.observe(&bounds, 0.05, &t1, 100.0);
        b.observe(&bounds, 0.07, &t2, 200.0);
        a.observe(&bounds, 0.5, &t1, 150.0);
        let (got, errors) = ExemplarAggregator::default().collect(d);
        assert_eq!(errors, 0);
        let key = |le: &str| ExemplarKey {
            family: "dur".into(),
            labels: vec![
                ("method".into(), "GET".into()),
                ("worker_id".into(), "1".into()),
                ("le".into(), le.into()),
            ],
        };
        let low = got.get_key(&key("0.1")).unwrap();
        assert_eq!((low.value, low.timestamp), (0.07, 200.0));
        assert_eq!(low.trace_hex().as_str(), format!("{:032x}", 7));
        assert_eq!(
            got.get_key(&key("1.0")).unwrap().trace_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            got.get_key(&key("1.0")).unwrap().span_hex().as_str(),
            "00f067aa0ba902b7"
        );
        assert_eq!(got.len(), 2);
        let mut archive = MmapWriter::open(&d.join(names::EXEMPLAR_ARCHIVE)).unwrap();
        let mut cap = crate::master::label_cap::LabelCap::default();
        fold_into(&mut archive, &d.join(names::exemplar_file(2)), d, &mut cap).unwrap();
        fold_into(&mut archive, &d.join(names::exemplar_file(1)), d, &mut cap).unwrap();
        std::fs::remove_file(d.join(names::exemplar_file(1))).unwrap();
        std::fs::remove_file(d.join(names::exemplar_file(2))).unwrap();
        let (after, _) = ExemplarAggregator::default().collect(d);
        assert_eq!(after.sorted(), got.sorted());
    }
}
