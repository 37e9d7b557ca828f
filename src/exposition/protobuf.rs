//! The Prometheus protobuf format: length-delimited `io.prometheus.client.MetricFamily`
//! messages, the format that carries native histograms.
//!
//! The message types are those prometheus-client (feature `prometheus_protobuf`)
//! generates from client_model's metrics.proto; its encoder walks its own
//! registry types, so the families aggregated from the files are mapped onto
//! the messages here and framed with prost.

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
use prost::Message;

use super::names::{push_label_name, push_metric_name};
use crate::exemplar::Exemplars;
use crate::model::{Family, Kind, Labels, Sample};
use crate::native_histogram::{NativeHistograms, ZERO_THRESHOLD};

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

/// The labels of a sample's series (all but `le`), in order.
fn series_labels(sample: &Sample) -> impl Iterator<Item = (&str, &str)> {
    sample.label_pairs().filter(|(k, _)| *k != "le")
}

fn start(extras: &Extras, family: &Family) -> Option<prost_types::Timestamp> {
    extras
        .created
        .filter(|_| !family.name.starts_with("process_"))
        .map(timestamp)
}

/// Appends the families, each as a length-delimited message.
pub fn encode(families: &[Family], extras: &Extras, out: &mut Vec<u8>) {
    for family in families {
        let message = match family.kind {
            Kind::Counter => counter(family, extras),
            Kind::Gauge => gauge(family),
            Kind::Histogram => histogram(family, extras),
            Kind::Summary => summary(family, extras),
        };
        if message.metric.is_empty() {
            continue;
        }
        // Writing into a Vec cannot fail.
        let _ = message.encode_length_delimited(out);
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

fn counter(family: &Family, extras: &Extras) -> pb::MetricFamily {
    let mut m = message(
        metric_name(&format!("{}_total", family.name)),
        family,
        pb::MetricType::Counter,
    );
    let total = format!("{}_total", family.name);
    for s in family.samples.iter().filter(|s| *s.name == *total) {
        m.metric.push(pb::Metric {
            label: label_pairs(s.label_pairs()),
            counter: Some(pb::Counter {
                value: s.value,
                exemplar: exemplar(extras, &family.name, s),
                start_timestamp: start(extras, family),
            }),
            ..Default::default()
        });
    }
    m
}

fn gauge(family: &Family) -> pb::MetricFamily {
    let mut m = message(metric_name(&family.name), family, pb::MetricType::Gauge);
    for s in &family.samples {
        m.metric.push(pb::Metric {
            label: label_pairs(s.label_pairs()),
            gauge: Some(pb::Gauge { value: s.value }),
            ..Default::default()
        });
    }
    m
}

/// Splits a family's samples into series (their samples are contiguous).
fn series(family: &Family) -> impl Iterator<Item = &[Sample]> {
    family
        .samples
        .chunk_by(|a, b| series_labels(a).eq(series_labels(b)))
}

fn summary(family: &Family, extras: &Extras) -> pb::MetricFamily {
    let mut m = message(metric_name(&family.name), family, pb::MetricType::Summary);
    let (count, sum) = (
        format!("{}_count", family.name),
        format!("{}_sum", family.name),
    );
    for samples in series(family) {
        let value = |name: &str| samples.iter().find(|s| *s.name == *name).map(|s| s.value);
        m.metric.push(pb::Metric {
            label: label_pairs(series_labels(&samples[0])),
            summary: Some(pb::Summary {
                sample_count: value(&count).unwrap_or(0.0) as u64,
                sample_sum: value(&sum).unwrap_or(0.0),
                quantile: Vec::new(),
                start_timestamp: start(extras, family),
            }),
            ..Default::default()
        });
    }
    m
}

fn histogram(family: &Family, extras: &Extras) -> pb::MetricFamily {
    let mut m = message(metric_name(&family.name), family, pb::MetricType::Histogram);
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
                let Some(bound) = s
                    .extra
                    .as_ref()
                    .filter(|(k, _)| *k == "le")
                    .and_then(|(_, le)| le.parse::<f64>().ok())
                else {
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
        let labels: Labels = series_labels(&samples[0])
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let native = extras
            .native
            .and_then(|n| n.get(&(name.clone(), labels)))
            .filter(|n| n.count() > 0.0);
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
        m.metric.push(pb::Metric {
            label: label_pairs(series_labels(&samples[0])),
            histogram: Some(h),
            ..Default::default()
        });
    }
    m
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
        let mut native = NativeHistograms::new();
        native.insert(
            ("dur".into(), m.clone()),
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
    }
}
