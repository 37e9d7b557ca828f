//! Metric families as the aggregator produces them and the encoders consume them.

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

    /// Whether `other` belongs to the same series. Samples of one series
    /// share their label set (the aggregator interns it), so the same set
    /// with the same extra label, or with `le` on either side, is enough;
    /// otherwise the labels are compared.
    pub fn same_series(&self, other: &Sample) -> bool {
        fn extra(s: &Sample) -> Option<&(&'static str, Arc<str>)> {
            s.extra.as_ref().filter(|(k, _)| *k != "le")
        }
        (Arc::ptr_eq(&self.labels, &other.labels) && extra(self) == extra(other))
            || self.series_labels().eq(other.series_labels())
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
        });
    }
}
