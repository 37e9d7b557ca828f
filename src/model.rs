//! Metric families as the aggregator produces them and the encoders consume
//! them, with what only some formats carry: native histogram buckets and
//! exemplars.

/// The type of a family, as named in multiprocess file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A counter (`_total`).
    Counter,
    /// A gauge, merged across processes by its mode.
    Gauge,
    /// A histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// A summary (`_sum`, `_count`).
    Summary,
}

impl Kind {
    /// The kind a file name starts with (`counter_…`).
    pub fn from_file_prefix(s: &str) -> Option<Kind> {
        match s {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "histogram" => Some(Kind::Histogram),
            "summary" => Some(Kind::Summary),
            _ => None,
        }
    }

    /// The kind as file names and `# TYPE` lines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

use std::sync::Arc;

/// Label pairs in exposition order.
pub type Labels = Vec<(String, String)>;

/// Where a sample of the directory stands in the exposition order of the
/// registry that read it (`scrape::registry`): the ranks of its line and of
/// its series. Ranks are dense and hold for one generation of the order,
/// which the families travel with: encoders keep what they render by rank,
/// in `Vec`s, and drop it all when the generation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleId {
    /// The rank of the sample's line.
    pub line: u32,
    /// The rank of its series.
    pub series: u32,
}

/// A sample. Samples of one series share its label set; a histogram bucket
/// adds `le`, a gauge of mode `all` adds `pid` (written last, as
/// prometheus_client writes them).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Full sample name, suffix included (`x_total`, `x_bucket`, ...).
    pub name: Arc<str>,
    /// The series' labels.
    pub labels: Arc<Labels>,
    /// `le` of a bucket or `pid` of a gauge of mode `all`.
    pub extra: Option<(&'static str, Arc<str>)>,
    /// The value.
    pub value: f64,
    /// Its ranks, for a sample read from the directory (the exporter's own
    /// samples have none).
    pub id: Option<SampleId>,
}

impl Sample {
    /// Every label, the extra one last.
    pub fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let extra = self.extra.as_ref().map(|(k, v)| (*k, v.as_ref()));
        self.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra)
    }

    /// The labels of the sample's series: all but a bucket's `le`.
    pub fn series_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.label_pairs().filter(|(k, _)| *k != "le")
    }

    /// Whether `other` belongs to the same series: the same series rank,
    /// or, for samples without one, the same labels but `le`.
    pub fn same_series(&self, other: &Sample) -> bool {
        match (self.id, other.id) {
            (Some(a), Some(b)) => a.series == b.series,
            _ => self.series_labels().eq(other.series_labels()),
        }
    }
}

/// A family: for counters `name` has no `_total`, as in prometheus_client.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family's name.
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Its type.
    pub kind: Kind,
    /// Its samples, in exposition order.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A family without samples.
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: Kind) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample named `name + suffix`.
    pub fn push(&mut self, suffix: &str, labels: Labels, value: f64) {
        let name = Arc::from(format!("{}{}", self.name, suffix));
        self.samples.push(Sample {
            name,
            labels: Arc::new(labels),
            extra: None,
            value,
            id: None,
        });
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

/// The native histograms of a scrape, by series rank (`SampleId::series`).
#[derive(Debug, Default)]
pub struct NativeHistograms {
    by_series: Vec<Option<NativeBuckets>>,
}

impl NativeHistograms {
    /// The buckets of the series of rank `series`.
    pub fn set(&mut self, series: u32, buckets: NativeBuckets) {
        let at = series as usize;
        if self.by_series.len() <= at {
            self.by_series.resize(at + 1, None);
        }
        self.by_series[at] = Some(buckets);
    }

    /// The buckets of `sample`'s series, if it has any.
    pub fn get(&self, sample: &Sample) -> Option<&NativeBuckets> {
        self.by_series.get(sample.id?.series as usize)?.as_ref()
    }
}

/// An exemplar as served: W3C trace context ids, the observed value, when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The trace's 16-byte id (`trace_id`, 32 lower-case hex digits).
    pub trace_id: u128,
    /// The span's 8-byte id (`span_id`, 16 lower-case hex digits).
    pub span_id: u64,
    /// The observed value.
    pub value: f64,
    /// Unix seconds.
    pub timestamp: f64,
}

impl Exemplar {
    /// The trace id as served: 32 lower-case hex digits.
    pub fn trace_hex(&self) -> HexId<32> {
        HexId::new(self.trace_id)
    }

    /// The span id as served: 16 lower-case hex digits.
    pub fn span_hex(&self) -> HexId<16> {
        HexId::new(self.span_id as u128)
    }
}

/// The last `N` hex digits of an id, lower case, zero-padded (as `{:032x}`,
/// without the formatting machinery or a `String`: a scrape writes thousands).
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    fn new(v: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; N];
        let mut rest = v;
        for d in digits.iter_mut().rev() {
            *d = HEX[(rest & 0xf) as usize];
            rest >>= 4;
        }
        HexId(digits)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // ASCII digits: the check cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The latest exemplar of each sample that has one, by line rank
/// (`SampleId::line`).
#[derive(Debug, Default)]
pub struct Exemplars {
    by_line: Vec<Option<Exemplar>>,
}

impl Exemplars {
    /// Keeps `e` for the line of rank `line` unless the one kept is as recent.
    pub fn offer(&mut self, line: u32, e: Exemplar) {
        let at = line as usize;
        if self.by_line.len() <= at {
            self.by_line.resize(at + 1, None);
        }
        match &mut self.by_line[at] {
            Some(kept) if kept.timestamp >= e.timestamp => {}
            slot => *slot = Some(e),
        }
    }

    /// The exemplar of `sample`, if it has one.
    #[inline]
    pub fn get(&self, sample: &Sample) -> Option<Exemplar> {
        *self.by_line.get(sample.id?.line as usize)?
    }

    /// How many samples have an exemplar.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_line.iter().flatten().count()
    }
}

/// Ranks for families built by hand, as a registry would give them (tests).
#[cfg(test)]
pub mod ranked {
    use super::*;

    /// Gives every sample the next line rank, and each run of samples of
    /// one series (by labels but `le`) the next series rank.
    pub fn rank(families: &mut [Family]) {
        let (mut line, mut series) = (0, 0);
        for family in families {
            let mut previous: Option<Sample> = None;
            for s in &mut family.samples {
                s.id = None;
                if previous.as_ref().is_some_and(|p| !p.same_series(s)) {
                    series += 1;
                }
                previous = Some(s.clone());
                s.id = Some(SampleId { line, series });
                line += 1;
            }
            series += 1;
        }
    }

    /// The sample of `family` named `name` with exactly `labels` (extra last).
    pub fn sample<'a>(families: &'a [Family], name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| &*s.name == name && s.label_pairs().eq(labels.iter().copied()))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}
