//! Exemplars: the trace of a recent request, attached to the bucket it fell
//! in (and to the failed-requests counter), from a W3C `traceparent`.
//!
//! Each worker keeps the latest exemplar per sample in `exemplar_worker<pid>.ndb`
//! (the multiprocess file format; prometheus_client globs only `*.db`); a
//! scrape takes the latest of every file, and a dead worker's are kept in
//! `exemplar_archive.ndb`, latest wins. Exemplars are best-effort: a write
//! that meets another one in flight on the same slot is skipped.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::master::label_cap::LabelCap;
use crate::model::{Exemplar, Labels};
use crate::storage::float::go_float;
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};
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

/// Which part of an exemplar an entry is, from its key's help field (0, 1, 2).
pub(crate) fn part_of(help: &str) -> Option<u8> {
    match help {
        PART_VALUE => Some(0),
        PART_TRACE => Some(1),
        PART_SPAN => Some(2),
        _ => None,
    }
}
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

/// The sample an exemplar belongs to, and which part the entry is.
fn parse_part(raw: &str) -> Option<((String, Labels), u8)> {
    let parsed = key::parse(raw)?;
    let part = part_of(&parsed.help)?;
    let mut labels = parsed.labels;
    // Samples write `le` last.
    if let Some(i) = labels.iter().position(|(k, _)| k == "le") {
        let le = labels.remove(i);
        labels.push(le);
    }
    Some(((parsed.metric_name, labels), part))
}

/// The three parts of one stored exemplar, as read (the three entries of
/// one are written one after the other).
#[derive(Default, Clone, Copy)]
pub(crate) struct Parts {
    value: Option<(f64, f64)>,
    trace: Option<(u64, u64)>,
    span: Option<(u64, u64)>,
}

impl Parts {
    /// Takes the entry of part `part` (`part_of`).
    pub(crate) fn set(&mut self, part: u8, value: f64, timestamp: f64) {
        let bits = (value.to_bits(), timestamp.to_bits());
        match part {
            0 => self.value = Some((value, timestamp)),
            1 => self.trace = Some(bits),
            _ => self.span = Some(bits),
        }
    }

    /// The exemplar, if its three parts were read and none is mid-write.
    pub(crate) fn exemplar(&self) -> Option<Exemplar> {
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
    // The parts of each exemplar, in file order.
    let mut latest: Vec<((String, Labels), Exemplar)> = Vec::new();
    let mut current: Option<((String, Labels), Parts)> = None;
    let mut finish = |current: Option<((String, Labels), Parts)>| {
        if let Some((sample, parts)) = current {
            latest.extend(parts.exemplar().map(|e| (sample, e)));
        }
    };
    for entry in read_entries(&buf).0 {
        let Some((sample, part)) = parse_part(entry.key) else {
            continue;
        };
        if current.as_ref().is_some_and(|(s, _)| *s != sample) {
            finish(current.take());
        }
        let parts = &mut current.get_or_insert((sample, Parts::default())).1;
        parts.set(part, entry.value, entry.timestamp);
    }
    finish(current);
    for ((family, mut labels), e) in latest {
        cap.admit_labels(dir, &mut labels);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sample_name = if labels.iter().any(|(k, _)| *k == "le") {
            format!("{family}_bucket")
        } else {
            format!("{family}_total")
        };
        let slot = ExemplarSlot::open(archive, &family, &sample_name, &labels)?;
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
}
