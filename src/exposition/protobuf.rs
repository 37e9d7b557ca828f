//! The Prometheus protobuf format: length-delimited `io.prometheus.client.MetricFamily`
//! messages, the format that carries native histograms.
//!
//! The message types are those prometheus-client (feature `prometheus_protobuf`)
//! generates from client_model's metrics.proto; its encoder walks its own
//! registry types, so the families aggregated from the files are encoded
//! here: each family's header as the crate's message (prost), the rest field
//! by field (`wire.rs`), in the bytes prost writes for the crate's messages
//! (`reference` below builds those messages; tests compare byte for byte).
//! Building the messages cost several allocations per metric at every scrape
//! (a `String` per label pair and per exemplar label, a `Vec` per histogram),
//! and prost computed each nested message's length once per enclosing
//! message. What stays the same between scrapes is kept by rank (`Kept`):
//! the encoded label pairs of each line and series, each bucket's bound.

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
use prost::Message;

use super::names::{push_label_name, push_metric_name};
use super::wire;
use crate::model::{Exemplar, Exemplars, Family, Kind, NativeHistograms, Sample};
use crate::worker::native_histogram::ZERO_THRESHOLD;

/// Content-Type of a protobuf body.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// What the text families do not carry.
#[derive(Default)]
pub struct Extras<'a> {
    /// When the directory's counters started (Unix seconds): every counter's,
    /// histogram's and summary's start timestamp.
    pub created: Option<f64>,
    /// Native histogram buckets by series rank (only this format carries them).
    pub native: Option<&'a NativeHistograms>,
    /// The latest exemplar of each sample, by line rank.
    pub exemplars: Option<&'a Exemplars>,
}

impl<'a> Extras<'a> {
    /// Sets the exemplars.
    pub fn with_exemplars(mut self, exemplars: &'a Exemplars) -> Self {
        self.exemplars = Some(exemplars);
        self
    }

    /// The exemplar of `sample`.
    fn exemplar(&self, sample: &Sample) -> Option<Exemplar> {
        self.exemplars?.get(sample)
    }

    /// The start timestamp of `family`'s metrics.
    fn start(&self, family: &Family) -> Option<f64> {
        self.created
            .filter(|_| !family.name.starts_with("process_"))
    }
}

fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_metric_name(&mut out, name);
    out
}

/// Appends `LabelPair`s (field `field`).
fn label_pairs<'a>(out: &mut Vec<u8>, field: u32, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut name = String::new();
    for (k, v) in pairs {
        name.clear();
        push_label_name(&mut name, k);
        let at = wire::begin(out, field);
        wire::bytes(out, 1, name.as_bytes());
        wire::bytes(out, 2, v.as_bytes());
        wire::end(out, at);
    }
}

/// Appends an `Exemplar` (field `field`): its trace and span ids as labels.
fn exemplar(out: &mut Vec<u8>, field: u32, e: &Exemplar) {
    let at = wire::begin(out, field);
    for (name, id) in [
        (&b"trace_id"[..], e.trace_hex().as_str().as_bytes()),
        (b"span_id", e.span_hex().as_str().as_bytes()),
    ] {
        let pair = wire::begin(out, 1);
        wire::bytes(out, 1, name);
        wire::bytes(out, 2, id);
        wire::end(out, pair);
    }
    wire::double(out, 2, e.value);
    wire::timestamp(out, 3, e.timestamp);
    wire::end(out, at);
}

/// What stays the same from one scrape to the next, kept by rank for one
/// generation of the registry's order (`model::SampleId`): the encoded label
/// pairs (`Metric.label`, field 1) of each line and of each series, one
/// after the other in one buffer, and each bucket's bound. Values are never
/// kept.
#[derive(Default)]
pub struct Kept {
    generation: u64,
    bytes: Vec<u8>,
    /// Where each line's label pairs are in `bytes`, by line rank.
    lines: Vec<Span>,
    /// Where each series' label pairs (`le` left out) are, by series rank.
    series: Vec<Span>,
    /// Each bucket's bound (`None` inside: not a number), by line rank.
    bounds: Vec<Option<Option<f64>>>,
}

/// A range of `Kept::bytes`; `NOT_YET` if not encoded.
type Span = [u32; 2];
const NOT_YET: Span = [u32::MAX; 2];

impl Kept {
    /// Starts an encoding of samples ranked in `generation`: what was kept
    /// for another generation is dropped.
    fn begin(&mut self, generation: u64) {
        if generation != self.generation {
            *self = Kept {
                generation,
                ..Kept::default()
            };
        }
    }

    /// Appends the label pairs of `sample`, its extra label last; without
    /// `le` if `series_only` (a histogram's or summary's series).
    fn push_labels(&mut self, out: &mut Vec<u8>, sample: &Sample, series_only: bool) {
        let encode = |bytes: &mut Vec<u8>| match series_only {
            true => label_pairs(bytes, 1, sample.series_labels()),
            false => label_pairs(bytes, 1, sample.label_pairs()),
        };
        let Some(id) = sample.id else {
            return encode(out);
        };
        let (spans, rank) = match series_only {
            true => (&mut self.series, id.series),
            false => (&mut self.lines, id.line),
        };
        let at = rank as usize;
        if spans.len() <= at {
            spans.resize(at + 1, NOT_YET);
        }
        if spans[at] == NOT_YET {
            let start = self.bytes.len();
            encode(&mut self.bytes);
            spans[at] = [start as u32, self.bytes.len() as u32];
        }
        let [start, end] = spans[at];
        out.extend_from_slice(&self.bytes[start as usize..end as usize]);
    }

    /// The bound of a bucket sample (its `le`).
    fn bound(&mut self, sample: &Sample) -> Option<f64> {
        let parse = || {
            let (_, le) = sample.extra.as_ref().filter(|(k, _)| *k == "le")?;
            le.parse::<f64>().ok()
        };
        let Some(id) = sample.id else {
            return parse();
        };
        let at = id.line as usize;
        if self.bounds.len() <= at {
            self.bounds.resize(at + 1, None);
        }
        *self.bounds[at].get_or_insert_with(parse)
    }
}

/// Fields of `Metric` (client_model's metrics.proto).
mod field {
    pub const METRIC: u32 = 4;
    pub const GAUGE: u32 = 2;
    pub const COUNTER: u32 = 3;
    pub const SUMMARY: u32 = 4;
    pub const HISTOGRAM: u32 = 7;
}

/// A family's metrics, written as they come (`MetricFamily.metric`).
struct Metrics<'c> {
    kept: &'c mut Kept,
    count: usize,
}

/// Where a `Metric` and its value began (see `wire::begin`).
struct Open([usize; 2]);

impl Metrics<'_> {
    /// Starts a `Metric` with `sample`'s labels and its value, field `field`
    /// (a `Metric` has one value: a counter, a gauge, ...), whose fields
    /// the caller writes before `end`.
    fn begin(&mut self, out: &mut Vec<u8>, sample: &Sample, series_only: bool, field: u32) -> Open {
        let metric = wire::begin(out, field::METRIC);
        self.kept.push_labels(out, sample, series_only);
        self.count += 1;
        Open([metric, wire::begin(out, field)])
    }

    fn end(out: &mut Vec<u8>, open: Open) {
        wire::end(out, open.0[1]);
        wire::end(out, open.0[0]);
    }
}

/// Appends the families, each as a length-delimited message.
#[cfg(test)]
pub fn encode(families: &[Family], extras: &Extras, out: &mut Vec<u8>) {
    encode_with(families, 0, extras, &mut Kept::default(), out)
}

/// Appends the families, whose samples are ranked in `generation`, with
/// what earlier scrapes kept in `kept`.
pub fn encode_with(
    families: &[Family],
    generation: u64,
    extras: &Extras,
    kept: &mut Kept,
    out: &mut Vec<u8>,
) {
    kept.begin(generation);
    let mut scratch = Scratch::default();
    let mut metrics = Metrics { kept, count: 0 };
    for family in families {
        let at = wire::begin_delimited(out);
        let (name, kind) = match family.kind {
            Kind::Counter => (format!("{}_total", family.name), pb::MetricType::Counter),
            Kind::Gauge => (family.name.clone(), pb::MetricType::Gauge),
            Kind::Histogram => (family.name.clone(), pb::MetricType::Histogram),
            Kind::Summary => (family.name.clone(), pb::MetricType::Summary),
        };
        let header = pb::MetricFamily {
            name: metric_name(&name),
            help: family.help.clone(),
            r#type: kind as i32,
            metric: Vec::new(),
            unit: String::new(),
        };
        // Writing into a Vec cannot fail. The header's fields (1 to 3)
        // come before the metrics (4), and `unit` (5) is empty.
        let _ = header.encode(out);
        metrics.count = 0;
        match family.kind {
            Kind::Counter => counter(family, &name, extras, &mut metrics, out),
            Kind::Gauge => gauge(family, &mut metrics, out),
            Kind::Histogram => histogram(family, extras, &mut scratch, &mut metrics, out),
            Kind::Summary => summary(family, extras, &mut metrics, out),
        }
        if metrics.count == 0 {
            out.truncate(at - 1);
            continue;
        }
        wire::end(out, at);
    }
}

fn counter(
    family: &Family,
    total: &str,
    extras: &Extras,
    metrics: &mut Metrics,
    out: &mut Vec<u8>,
) {
    let start = extras.start(family);
    for s in family.samples.iter().filter(|s| *s.name == *total) {
        let m = metrics.begin(out, s, false, field::COUNTER);
        wire::double(out, 1, s.value);
        if let Some(e) = extras.exemplar(s) {
            exemplar(out, 2, &e);
        }
        if let Some(t) = start {
            wire::timestamp(out, 3, t);
        }
        Metrics::end(out, m);
    }
}

fn gauge(family: &Family, metrics: &mut Metrics, out: &mut Vec<u8>) {
    for s in &family.samples {
        let m = metrics.begin(out, s, false, field::GAUGE);
        wire::double(out, 1, s.value);
        Metrics::end(out, m);
    }
}

/// Splits a family's samples into series (their samples are contiguous and,
/// from the aggregator, share one label set).
fn series(family: &Family) -> impl Iterator<Item = &[Sample]> {
    family.samples.chunk_by(|a, b| a.same_series(b))
}

fn summary(family: &Family, extras: &Extras, metrics: &mut Metrics, out: &mut Vec<u8>) {
    let (count, sum) = (
        format!("{}_count", family.name),
        format!("{}_sum", family.name),
    );
    let start = extras.start(family);
    for samples in series(family) {
        let value = |name: &str| samples.iter().find(|s| *s.name == *name).map(|s| s.value);
        let m = metrics.begin(out, &samples[0], true, field::SUMMARY);
        wire::uint64(out, 1, value(&count).unwrap_or(0.0) as u64);
        wire::double(out, 2, value(&sum).unwrap_or(0.0));
        if let Some(t) = start {
            wire::timestamp(out, 4, t);
        }
        Metrics::end(out, m);
    }
}

/// What the histograms of one scrape reuse.
#[derive(Default)]
struct Scratch {
    spans: Vec<(i32, u32)>,
    deltas: Vec<i64>,
}

fn histogram(
    family: &Family,
    extras: &Extras,
    scratch: &mut Scratch,
    metrics: &mut Metrics,
    out: &mut Vec<u8>,
) {
    let name = &family.name;
    let (bucket, count, sum) = (
        format!("{name}_bucket"),
        format!("{name}_count"),
        format!("{name}_sum"),
    );
    let start = extras.start(family);
    for samples in series(family) {
        let (mut sample_count, mut sample_sum) = (0, 0.0);
        for s in samples {
            if *s.name == *count {
                sample_count = s.value as u64;
            } else if *s.name == *sum {
                sample_sum = s.value;
            }
        }
        let native = extras
            .native
            .and_then(|n| n.get(&samples[0]))
            .filter(|n| n.count() > 0.0);
        if let Some(n) = native {
            // The native buckets' total: the count must not be below it.
            sample_count = n.count() as u64;
        }
        let m = metrics.begin(out, &samples[0], true, field::HISTOGRAM);
        wire::uint64(out, 1, sample_count);
        wire::double(out, 2, sample_sum);
        for s in samples.iter().filter(|s| *s.name == *bucket) {
            let Some(bound) = metrics.kept.bound(s) else {
                continue;
            };
            // +Inf is implied by the count, as client_golang writes it.
            if bound.is_infinite() {
                continue;
            }
            let b = wire::begin(out, 3);
            wire::uint64(out, 1, s.value as u64);
            wire::double(out, 2, bound);
            if let Some(e) = extras.exemplar(s) {
                exemplar(out, 3, &e);
            }
            wire::end(out, b);
        }
        if let Some(n) = native {
            n.spans_and_deltas_into(&mut scratch.spans, &mut scratch.deltas);
            wire::sint64(out, 5, n.schema.into());
            wire::double(out, 6, ZERO_THRESHOLD);
            wire::uint64(out, 7, n.zero_count as u64);
            for &(offset, length) in &scratch.spans {
                let span = wire::begin(out, 12);
                wire::sint64(out, 1, offset.into());
                wire::uint64(out, 2, length.into());
                wire::end(out, span);
            }
            wire::packed_sint64(out, 13, &scratch.deltas);
        }
        if let Some(t) = start {
            wire::timestamp(out, 15, t);
        }
        Metrics::end(out, m);
    }
}

/// Decoding support for tests: the families of a body.
#[cfg(test)]
pub(crate) fn decode(mut body: &[u8]) -> Vec<pb::MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(pb::MetricFamily::decode_length_delimited(&mut body).unwrap());
    }
    out
}

/// The encoding as prost writes the crate's messages, built the plain way.
#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ranked::{rank, sample};
    use crate::model::{Labels, NativeBuckets, SampleId};
    use std::sync::Arc;

    #[test]
    fn every_kind_round_trips_with_native_buckets_beside_the_classic_ones() {
        let mut c = Family::new("req", "Requests", Kind::Counter);
        c.push("_total", vec![("a".into(), "1".into())], 2.0);
        let mut g = Family::new("g.x", "G", Kind::Gauge);
        g.push("", vec![], 7.5);
        let mut h = Family::new("dur", "D", Kind::Histogram);
        let m = vec![("m".to_string(), "GET".to_string())];
        for (le, v) in [("0.1", 3.0), ("1.0", 4.0), ("+Inf", 4.0)] {
            h.samples.push(Sample {
                name: "dur_bucket".into(),
                labels: Arc::new(m.clone()),
                extra: Some(("le", le.into())),
                value: v,
                id: None,
            });
        }
        h.push("_count", m.clone(), 4.0);
        h.push("_sum", m.clone(), 0.9);
        let mut families = [c, g, h];
        rank(&mut families);
        let mut native = NativeHistograms::default();
        native.set(
            sample(&families, "dur_count", &[("m", "GET")])
                .id
                .unwrap()
                .series,
            NativeBuckets {
                schema: 3,
                zero_count: 1.0,
                positive: [(-34, 2.0), (1, 1.0)].into(),
            },
        );
        let extras = Extras {
            created: Some(1000.5),
            native: Some(&native),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode(&families, &extras, &mut out);
        assert_eq!(out, reference::encode(&families, &extras));
        let families = decode(&out);
        assert_eq!(families.len(), 3);
        assert_eq!(families[0].name, "req_total");
        let counter = families[0].metric[0].counter.as_ref().unwrap();
        assert_eq!(counter.value, 2.0);
        assert_eq!(counter.start_timestamp.unwrap().seconds, 1000);
        assert_eq!(families[1].name, "g_x");
        let h = families[2].metric[0].histogram.as_ref().unwrap();
        assert_eq!(h.bucket.len(), 2);
        assert_eq!(h.bucket[1].cumulative_count, 4);
        assert_eq!((h.sample_count, h.sample_sum), (4, 0.9));
        assert_eq!((h.schema, h.zero_count), (3, 1));
        assert_eq!(h.positive_span.len(), 2);
        assert_eq!(h.positive_delta, vec![2, -1]);
        let pairs = |m: &pb::Metric| -> Vec<(String, String)> {
            m.label
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        };
        assert_eq!(pairs(&families[0].metric[0]), [("a".into(), "1".into())]);
        assert_eq!(pairs(&families[2].metric[0]), m); // no `le`
    }

    /// A histogram series `m` of `dur`: buckets 0.1, 1, +Inf, count, sum.
    fn histogram_samples(h: &mut Family, m: &Labels, counts: [f64; 3], sum: f64) {
        let set = Arc::new(m.clone());
        for (le, v) in [("0.1", counts[0]), ("1.0", counts[1]), ("+Inf", counts[2])] {
            h.samples.push(Sample {
                name: format!("{}_bucket", h.name).into(),
                labels: Arc::clone(&set),
                extra: Some(("le", le.into())),
                value: v,
                id: None,
            });
        }
        h.push("_count", m.clone(), counts[2]);
        h.push("_sum", m.clone(), sum);
    }

    #[test]
    fn every_message_is_the_crates_message_as_prost_writes_it() {
        let get = vec![("m".to_string(), "GET".to_string())];
        let post = vec![("m".to_string(), "POST".to_string())];
        let mut c = Family::new("req", "Requests", Kind::Counter);
        c.push("_total", get.clone(), 2.0);
        c.push("_total", post.clone(), 0.0);
        c.push("_total", Vec::new(), f64::NAN);
        let mut g = Family::new("g.x", "", Kind::Gauge);
        g.push("", vec![], -0.0);
        g.push("", vec![("a b".into(), "é\n".into())], 7.5);
        let mut s = Family::new("lat", "L", Kind::Summary);
        s.push("_count", get.clone(), 3.0);
        s.push("_sum", get.clone(), 1.5);
        let empty = Family::new("none", "N", Kind::Counter);
        let mut h = Family::new("dur", "D", Kind::Histogram);
        histogram_samples(&mut h, &get, [3.0, 4.0, 4.0], 0.9);
        histogram_samples(&mut h, &post, [0.0, 1.0, 1.0], 0.5);
        let mut p = Family::new("process_cpu_seconds", "C", Kind::Counter);
        p.push("_total", Vec::new(), 1.25);
        let mut families = [c, g, s, empty, h, p];
        rank(&mut families);
        // Native buckets: spans with gaps, a zero bucket, more than 127
        // bytes of deltas (a nested length of two bytes).
        let mut native = NativeHistograms::default();
        native.set(
            sample(&families, "dur_sum", &[("m", "GET")])
                .id
                .unwrap()
                .series,
            NativeBuckets {
                schema: -2,
                zero_count: 1.0,
                positive: (-70..70)
                    .filter(|i| i % 9 != 0)
                    .map(|i| (i, (i * i % 300) as f64))
                    .collect(),
            },
        );
        let e = |trace_id, value, timestamp| Exemplar {
            trace_id,
            span_id: 0x00f067aa0ba902b7,
            value,
            timestamp,
        };
        let mut exemplars = Exemplars::default();
        for (name, labels, e) in [
            ("req_total", &[("m", "GET")][..], e(7, 0.25, 1.7e9 + 0.5)),
            (
                "dur_bucket",
                &[("m", "GET"), ("le", "0.1")],
                e(u128::MAX, 0.05, 1.7e9),
            ),
            (
                "dur_bucket",
                &[("m", "POST"), ("le", "1.0")],
                e(1 << 100, 0.0, 0.0),
            ),
            (
                "dur_bucket",
                &[("m", "POST"), ("le", "+Inf")],
                e(3, 9.0, 1.0),
            ),
        ] {
            exemplars.offer(sample(&families, name, labels).id.unwrap().line, e);
        }
        for created in [None, Some(1000.5)] {
            for native in [None, Some(&native)] {
                let extras = Extras {
                    created,
                    native,
                    exemplars: Some(&exemplars),
                };
                let mut out = Vec::new();
                encode(&families, &extras, &mut out);
                assert_eq!(out, reference::encode(&families, &extras));
                let decoded = decode(&out);
                assert_eq!(decoded.len(), 5, "the empty family is left out");
                let h = decoded[3].metric[0].histogram.as_ref().unwrap();
                assert_eq!(
                    h.bucket[0].exemplar.as_ref().unwrap().label[0].value,
                    "f".repeat(32)
                );
                assert_eq!(h.positive_delta.len() > 64, native.is_some());
            }
        }
    }

    #[test]
    fn kept_label_bytes_give_the_same_body_as_a_fresh_encoding() {
        // Series told apart by their extra label (a gauge of mode `all`:
        // `pid`), and a histogram's buckets sharing theirs (`le`, not part
        // of the series). Ranks of one generation are not another's.
        let set = Arc::new(vec![("w".to_string(), "1".to_string())]);
        let families = |pids_now: &[usize], generation: u64, value: f64| {
            let mut g = Family::new("g", "G", Kind::Gauge);
            for &p in pids_now {
                let rank = if generation % 2 == 1 { p } else { 5 - p } as u32;
                g.samples.push(Sample {
                    name: "g".into(),
                    labels: Arc::clone(&set),
                    extra: Some(("pid", Arc::from(format!("1{p}")))),
                    value,
                    id: Some(SampleId {
                        line: rank,
                        series: rank,
                    }),
                });
            }
            let mut h = Family::new("d", "D", Kind::Histogram);
            for (k, le) in ["0.5", "+Inf"].into_iter().enumerate() {
                h.samples.push(Sample {
                    name: "d_bucket".into(),
                    labels: Arc::clone(&set),
                    extra: Some(("le", Arc::from(le))),
                    value,
                    id: Some(SampleId {
                        line: 10 + k as u32,
                        series: 10,
                    }),
                });
            }
            vec![g, h]
        };
        let mut kept = Kept::default();
        let scrapes: [(u64, &[usize]); 4] =
            [(1, &[0, 1]), (1, &[0, 1]), (2, &[1, 2]), (3, &[0, 1, 2])];
        for (i, (generation, pids_now)) in scrapes.into_iter().enumerate() {
            let families = families(pids_now, generation, i as f64);
            let (mut with_kept, mut fresh) = (Vec::new(), Vec::new());
            let extras = Extras::default();
            encode_with(&families, generation, &extras, &mut kept, &mut with_kept);
            encode(&families, &extras, &mut fresh);
            assert_eq!(with_kept, fresh, "scrape {i}");
            let decoded = decode(&with_kept);
            let pid_of = |m: &pb::Metric| {
                m.label
                    .iter()
                    .find(|p| p.name == "pid")
                    .unwrap()
                    .value
                    .clone()
            };
            let got: Vec<String> = decoded[0].metric.iter().map(pid_of).collect();
            let want: Vec<String> = pids_now.iter().map(|p| format!("1{p}")).collect();
            assert_eq!(got, want, "scrape {i}");
            assert_eq!(decoded[1].metric.len(), 1, "one histogram series");
        }
    }
}
