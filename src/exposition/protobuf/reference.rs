//! The encoding as prost writes the crate's messages, built the plain way
//! (tests only): what `encode` must equal byte for byte.

use super::*;

fn label_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<pb::LabelPair> {
    pairs
        .map(|(k, v)| {
            let mut name = String::new();
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

fn exemplar(extras: &Extras, sample: &Sample) -> Option<pb::Exemplar> {
    let e = extras.exemplar(sample)?;
    let (trace, span) = (e.trace_hex(), e.span_hex());
    Some(pb::Exemplar {
        label: label_pairs([("trace_id", trace.as_str()), ("span_id", span.as_str())].into_iter()),
        value: e.value,
        timestamp: Some(timestamp(e.timestamp)),
    })
}

fn metric(sample: &Sample, series_only: bool) -> pb::Metric {
    pb::Metric {
        label: if series_only {
            label_pairs(sample.series_labels())
        } else {
            label_pairs(sample.label_pairs())
        },
        ..Default::default()
    }
}

/// The families, each a length-delimited `MetricFamily`.
pub fn encode(families: &[Family], extras: &Extras) -> Vec<u8> {
    let mut out = Vec::new();
    for family in families {
        let start = extras.start(family).map(timestamp);
        let name = &family.name;
        let mut metrics = Vec::new();
        let (full_name, kind) = match family.kind {
            Kind::Counter => {
                let total = format!("{name}_total");
                for s in family.samples.iter().filter(|s| *s.name == *total) {
                    metrics.push(pb::Metric {
                        counter: Some(pb::Counter {
                            value: s.value,
                            exemplar: exemplar(extras, s),
                            start_timestamp: start,
                        }),
                        ..metric(s, false)
                    });
                }
                (total, pb::MetricType::Counter)
            }
            Kind::Gauge => {
                for s in &family.samples {
                    metrics.push(pb::Metric {
                        gauge: Some(pb::Gauge { value: s.value }),
                        ..metric(s, false)
                    });
                }
                (name.clone(), pb::MetricType::Gauge)
            }
            Kind::Summary => {
                for samples in series(family) {
                    let value = |suffix: &str| {
                        let n = format!("{name}{suffix}");
                        samples.iter().find(|s| *s.name == *n).map(|s| s.value)
                    };
                    metrics.push(pb::Metric {
                        summary: Some(pb::Summary {
                            sample_count: value("_count").unwrap_or(0.0) as u64,
                            sample_sum: value("_sum").unwrap_or(0.0),
                            quantile: Vec::new(),
                            start_timestamp: start,
                        }),
                        ..metric(&samples[0], true)
                    });
                }
                (name.clone(), pb::MetricType::Summary)
            }
            Kind::Histogram => {
                for samples in series(family) {
                    let mut h = pb::Histogram {
                        start_timestamp: start,
                        ..Default::default()
                    };
                    for s in samples {
                        if *s.name == *format!("{name}_bucket") {
                            let Some(bound) = s
                                .extra
                                .as_ref()
                                .filter(|(k, _)| *k == "le")
                                .and_then(|(_, le)| le.parse::<f64>().ok())
                            else {
                                continue;
                            };
                            if bound.is_infinite() {
                                continue;
                            }
                            h.bucket.push(pb::Bucket {
                                cumulative_count: s.value as u64,
                                upper_bound: bound,
                                exemplar: exemplar(extras, s),
                                ..Default::default()
                            });
                        } else if *s.name == *format!("{name}_count") {
                            h.sample_count = s.value as u64;
                        } else if *s.name == *format!("{name}_sum") {
                            h.sample_sum = s.value;
                        }
                    }
                    let native = extras
                        .native
                        .and_then(|n| n.get(&samples[0]))
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
                        h.sample_count = n.count() as u64;
                    }
                    metrics.push(pb::Metric {
                        histogram: Some(h),
                        ..metric(&samples[0], true)
                    });
                }
                (name.clone(), pb::MetricType::Histogram)
            }
        };
        if metrics.is_empty() {
            continue;
        }
        let family = pb::MetricFamily {
            name: metric_name(&full_name),
            help: family.help.clone(),
            r#type: kind as i32,
            metric: metrics,
            unit: String::new(),
        };
        family.encode_length_delimited(&mut out).unwrap();
    }
    out
}
