//! The Prometheus protobuf format: length-delimited `io.prometheus.client.MetricFamily`
//! messages, the format that carries native histograms.
//!
//! The message types are those prometheus-client (feature `prometheus_protobuf`)
//! generates from client_model's metrics.proto; its encoder walks its own
//! registry types, so the families aggregated from the files are mapped onto
//! the messages here and encoded with prost.
//!
//! One message is framed here rather than built: `Metric`, a metric's label
//! pairs and its one value (a `Counter`, `Histogram`, ...). The label pairs
//! are the same at every scrape, so their encoded bytes are kept per label
//! set (`LabelBytes`) and written as they are; prost encodes the value.
//! Building the pairs as messages cost two `String`s per label per metric at
//! every scrape.

use std::sync::Arc;

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use rustc_hash::FxHashMap;

use super::names::{push_label_name, push_metric_name};
use crate::exemplar::Exemplars;
use crate::model::{Family, Kind, Labels, Sample};
use crate::native_histogram::{NativeBuckets, NativeHistograms, ZERO_THRESHOLD};

/// Content-Type of a protobuf body.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// What the text families do not carry.
#[derive(Default)]
pub struct Extras<'a> {
    /// When the directory's counters started (Unix seconds): every counter's,
    /// histogram's and summary's start timestamp.
    pub created: Option<f64>,
    /// Native histogram buckets per series (only this format carries them).
    pub native: Option<&'a NativeHistograms>,
    /// The latest exemplar of each sample.
    pub exemplars: Option<&'a Exemplars>,
}

impl<'a> Extras<'a> {
    /// Sets the exemplars.
    pub fn with_exemplars(mut self, exemplars: &'a Exemplars) -> Self {
        self.exemplars = Some(exemplars);
        self
    }
}

fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_metric_name(&mut out, name);
    out
}

fn label_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<pb::LabelPair> {
    pairs
        .map(|(k, v)| {
            let mut name = String::with_capacity(k.len());
            push_label_name(&mut name, k);
            pb::LabelPair {
                name,
                value: v.to_owned(),
            }
        })
        .collect()
}

fn timestamp(seconds: f64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: seconds.floor() as i64,
        nanos: ((seconds - seconds.floor()) * 1e9) as i32,
    }
}

fn exemplar(extras: &Extras, name: &str, sample: &Sample) -> Option<pb::Exemplar> {
    let e = extras.exemplars?.get(name, sample)?;
    Some(pb::Exemplar {
        label: label_pairs(e.labels()),
        value: e.value,
        timestamp: Some(timestamp(e.timestamp)),
    })
}

fn start(extras: &Extras, family: &Family) -> Option<prost_types::Timestamp> {
    extras
        .created
        .filter(|_| !family.name.starts_with("process_"))
        .map(timestamp)
}

/// The encoded label pairs (`Metric.label`, field 1) of each label set,
/// kept across scrapes by the addresses of the set and of its extra label,
/// whose `Arc`s are held so that no other set can take those addresses.
#[derive(Default)]
pub struct LabelBytes {
    sets: FxHashMap<[usize; 3], KeptLabels>,
    asked: usize,
}

struct KeptLabels {
    _labels: Arc<Labels>,
    _extra: Option<Arc<str>>,
    bytes: Box<[u8]>,
}

impl LabelBytes {
    /// The label pairs of `sample`, its extra label last; without `le` if
    /// `series_only` (a histogram's or summary's series).
    fn of(&mut self, sample: &Sample, series_only: bool) -> &[u8] {
        // A series' labels are all but `le` (a bucket's bound).
        let extra = sample
            .extra
            .as_ref()
            .filter(|(k, _)| !(series_only && *k == "le"));
        let key = [
            Arc::as_ptr(&sample.labels) as usize,
            extra.map_or(0, |(k, _)| k.as_ptr() as usize),
            extra.map_or(0, |(_, v)| Arc::as_ptr(v) as *const u8 as usize),
        ];
        self.asked += 1;
        &self
            .sets
            .entry(key)
            .or_insert_with(|| {
                let pairs: Vec<_> = if series_only {
                    label_pairs(sample.series_labels())
                } else {
                    label_pairs(sample.label_pairs())
                };
                let mut bytes = Vec::new();
                for pair in &pairs {
                    prost::encoding::message::encode(1, pair, &mut bytes);
                }
                KeptLabels {
                    _labels: Arc::clone(&sample.labels),
                    _extra: extra.map(|(_, v)| Arc::clone(v)),
                    bytes: bytes.into(),
                }
            })
            .bytes
    }

    /// Ends a scrape: the sets of series gone are forgotten once they are most.
    pub fn end_scrape(&mut self) {
        if self.sets.len() > 2 * self.asked + 1024 {
            self.sets.clear();
        }
        self.asked = 0;
    }
}

/// A family's metrics, encoded as they are added (`MetricFamily.metric`).
struct Metrics<'c> {
    labels: &'c mut LabelBytes,
    bytes: Vec<u8>,
    count: usize,
}

/// Fields of `Metric` (client_model's metrics.proto).
mod field {
    pub const GAUGE: u32 = 2;
    pub const COUNTER: u32 = 3;
    pub const SUMMARY: u32 = 4;
    pub const HISTOGRAM: u32 = 7;
}

impl Metrics<'_> {
    /// Adds a `Metric` with `sample`'s labels and `value` as its field
    /// `field` (a `Metric` has one value: a counter, a gauge, ...).
    fn push(&mut self, sample: &Sample, series_only: bool, field: u32, value: &impl Message) {
        let labels = self.labels.of(sample, series_only);
        let len = labels.len() + prost::encoding::message::encoded_len(field, value);
        encode_key(4, WireType::LengthDelimited, &mut self.bytes);
        encode_varint(len as u64, &mut self.bytes);
        self.bytes.extend_from_slice(labels);
        prost::encoding::message::encode(field, value, &mut self.bytes);
        self.count += 1;
    }
}

/// Appends the families, each as a length-delimited message.
#[cfg(test)]
pub fn encode(families: &[Family], extras: &Extras, out: &mut Vec<u8>) {
    encode_with(families, extras, &mut LabelBytes::default(), out)
}

/// Appends the families, with label pairs encoded before in `labels`.
pub fn encode_with(
    families: &[Family],
    extras: &Extras,
    labels: &mut LabelBytes,
    out: &mut Vec<u8>,
) {
    let natives = NativeIndex::of(extras.native);
    let mut bounds = FxHashMap::default();
    let mut metrics = Metrics {
        labels,
        bytes: Vec::new(),
        count: 0,
    };
    for family in families {
        metrics.bytes.clear();
        metrics.count = 0;
        let header = match family.kind {
            Kind::Counter => counter(family, extras, &mut metrics),
            Kind::Gauge => gauge(family, &mut metrics),
            Kind::Histogram => histogram(family, extras, &natives, &mut bounds, &mut metrics),
            Kind::Summary => summary(family, extras, &mut metrics),
        };
        if metrics.count == 0 {
            continue;
        }
        let len = header.encoded_len() + metrics.bytes.len();
        out.reserve(encoded_len_varint(len as u64) + len);
        encode_varint(len as u64, out);
        // Writing into a Vec cannot fail.
        let _ = header.encode(out);
        out.extend_from_slice(&metrics.bytes);
    }
}

/// A series named by borrowed name and labels.
type SeriesRef<'a> = (&'a str, &'a [(String, String)]);

/// The native buckets of each histogram series, found by borrowed name and labels.
struct NativeIndex<'a>(FxHashMap<SeriesRef<'a>, &'a NativeBuckets>);

impl<'a> NativeIndex<'a> {
    fn of(native: Option<&'a NativeHistograms>) -> Self {
        NativeIndex(
            native
                .into_iter()
                .flatten()
                .map(|((name, labels), buckets)| ((name.as_ref(), labels.as_slice()), buckets))
                .collect(),
        )
    }

    /// The buckets of the series of `sample` (whose extra label, if any, is `le`).
    fn get(&self, name: &str, sample: &Sample) -> Option<&'a NativeBuckets> {
        if self.0.is_empty() || sample.extra.as_ref().is_some_and(|(k, _)| *k != "le") {
            return None;
        }
        self.0.get(&(name, sample.labels.as_slice())).copied()
    }
}

fn message(name: String, family: &Family, kind: pb::MetricType) -> pb::MetricFamily {
    pb::MetricFamily {
        name,
        help: family.help.clone(),
        r#type: kind as i32,
        metric: Vec::new(),
        unit: String::new(),
    }
}

fn counter(family: &Family, extras: &Extras, metrics: &mut Metrics) -> pb::MetricFamily {
    let total = format!("{}_total", family.name);
    for s in family.samples.iter().filter(|s| *s.name == *total) {
        let counter = pb::Counter {
            value: s.value,
            exemplar: exemplar(extras, &family.name, s),
            start_timestamp: start(extras, family),
        };
        metrics.push(s, false, field::COUNTER, &counter);
    }
    message(metric_name(&total), family, pb::MetricType::Counter)
}

fn gauge(family: &Family, metrics: &mut Metrics) -> pb::MetricFamily {
    for s in &family.samples {
        metrics.push(s, false, field::GAUGE, &pb::Gauge { value: s.value });
    }
    message(metric_name(&family.name), family, pb::MetricType::Gauge)
}

/// Splits a family's samples into series (their samples are contiguous and,
/// from the aggregator, share one label set).
fn series(family: &Family) -> impl Iterator<Item = &[Sample]> {
    family.samples.chunk_by(|a, b| a.same_series(b))
}

fn summary(family: &Family, extras: &Extras, metrics: &mut Metrics) -> pb::MetricFamily {
    let (count, sum) = (
        format!("{}_count", family.name),
        format!("{}_sum", family.name),
    );
    for samples in series(family) {
        let value = |name: &str| samples.iter().find(|s| *s.name == *name).map(|s| s.value);
        let summary = pb::Summary {
            sample_count: value(&count).unwrap_or(0.0) as u64,
            sample_sum: value(&sum).unwrap_or(0.0),
            quantile: Vec::new(),
            start_timestamp: start(extras, family),
        };
        metrics.push(&samples[0], true, field::SUMMARY, &summary);
    }
    message(metric_name(&family.name), family, pb::MetricType::Summary)
}

/// The bound of a bucket sample (`le`), parsed once per scrape per interned string.
fn bound_of(sample: &Sample, bounds: &mut FxHashMap<usize, Option<f64>>) -> Option<f64> {
    let (_, le) = sample.extra.as_ref().filter(|(k, _)| *k == "le")?;
    *bounds
        .entry(Arc::as_ptr(le) as *const u8 as usize)
        .or_insert_with(|| le.parse::<f64>().ok())
}

fn histogram(
    family: &Family,
    extras: &Extras,
    natives: &NativeIndex,
    bounds: &mut FxHashMap<usize, Option<f64>>,
    metrics: &mut Metrics,
) -> pb::MetricFamily {
    let name = &family.name;
    let (bucket, count, sum) = (
        format!("{name}_bucket"),
        format!("{name}_count"),
        format!("{name}_sum"),
    );
    for samples in series(family) {
        let mut h = pb::Histogram {
            start_timestamp: start(extras, family),
            ..Default::default()
        };
        for s in samples {
            if *s.name == *bucket {
                let Some(bound) = bound_of(s, bounds) else {
                    continue;
                };
                // +Inf is implied by the count, as client_golang writes it.
                if bound.is_infinite() {
                    continue;
                }
                h.bucket.push(pb::Bucket {
                    cumulative_count: s.value as u64,
                    upper_bound: bound,
                    exemplar: exemplar(extras, name, s),
                    ..Default::default()
                });
            } else if *s.name == *count {
                h.sample_count = s.value as u64;
            } else if *s.name == *sum {
                h.sample_sum = s.value;
            }
        }
        let native = natives.get(name, &samples[0]).filter(|n| n.count() > 0.0);
        if let Some(n) = native {
            let (spans, deltas) = n.spans_and_deltas();
            h.schema = n.schema as i32;
            h.zero_threshold = ZERO_THRESHOLD;
            h.zero_count = n.zero_count as u64;
            h.positive_span = spans
                .into_iter()
                .map(|(offset, length)| pb::BucketSpan { offset, length })
                .collect();
            h.positive_delta = deltas;
            // The native buckets' total: the count must not be below it.
            h.sample_count = n.count() as u64;
        }
        metrics.push(&samples[0], true, field::HISTOGRAM, &h);
    }
    message(metric_name(name), family, pb::MetricType::Histogram)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native_histogram::NativeBuckets;
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
            });
        }
        h.push("_count", m.clone(), 4.0);
        h.push("_sum", m.clone(), 0.9);
        let mut native = NativeHistograms::default();
        native.insert(
            ("dur".into(), Arc::new(m.clone())),
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
        encode(&[c, g, h], &extras, &mut out);
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

    #[test]
    fn kept_label_bytes_give_the_same_body_as_a_fresh_encoding() {
        // One interned label set for several series told apart by their
        // extra label (a gauge of mode `all`: `pid`), and a histogram's
        // buckets sharing theirs (`le`, not part of the series).
        let set = Arc::new(vec![("w".to_string(), "1".to_string())]);
        let pids: Vec<Arc<str>> = ["10", "11", "12"].into_iter().map(Arc::from).collect();
        let les: Vec<Arc<str>> = ["0.5", "+Inf"].into_iter().map(Arc::from).collect();
        let families = |pids_now: &[usize], value: f64| {
            let mut g = Family::new("g", "G", Kind::Gauge);
            for &p in pids_now {
                g.samples.push(Sample {
                    name: "g".into(),
                    labels: Arc::clone(&set),
                    extra: Some(("pid", Arc::clone(&pids[p]))),
                    value,
                });
            }
            let mut h = Family::new("d", "D", Kind::Histogram);
            for le in &les {
                h.samples.push(Sample {
                    name: "d_bucket".into(),
                    labels: Arc::clone(&set),
                    extra: Some(("le", Arc::clone(le))),
                    value,
                });
            }
            vec![g, h]
        };
        let mut kept = LabelBytes::default();
        for (i, pids_now) in [&[0, 1][..], &[0, 1], &[1, 2], &[0, 1, 2]]
            .iter()
            .enumerate()
        {
            let families = families(pids_now, i as f64);
            let (mut with_kept, mut fresh) = (Vec::new(), Vec::new());
            encode_with(&families, &Extras::default(), &mut kept, &mut with_kept);
            kept.end_scrape();
            encode(&families, &Extras::default(), &mut fresh);
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
            let want: Vec<String> = pids_now.iter().map(|&p| pids[p].to_string()).collect();
            assert_eq!(got, want, "scrape {i}");
            assert_eq!(decoded[1].metric.len(), 1, "one histogram series");
        }
    }
}
