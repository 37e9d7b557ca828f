//! Exemplars: the trace of a recent request, attached to the bucket it fell in.

use std::collections::HashMap;

use crate::model::{Labels, Sample};

/// An exemplar as served: W3C trace context ids, the observed value, when.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    pub value: f64,
    /// Unix seconds.
    pub timestamp: f64,
}

impl Exemplar {
    /// Its labels in exposition order.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        [
            ("trace_id", self.trace_id.as_str()),
            ("span_id", self.span_id.as_str()),
        ]
        .into_iter()
    }
}

/// The sample an exemplar belongs to: metric family name and every label of
/// the sample (`le` last for a bucket), in the sample's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExemplarKey {
    pub family: String,
    pub labels: Labels,
}

impl ExemplarKey {
    pub fn of(family: &str, sample: &Sample) -> ExemplarKey {
        ExemplarKey {
            family: family.to_owned(),
            labels: sample
                .label_pairs()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// The latest exemplar of each sample that has one.
pub type Exemplars = HashMap<ExemplarKey, Exemplar>;
