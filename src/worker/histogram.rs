//! A histogram stored as prometheus_client stores one: a non-cumulative
//! count per bucket (`le` label) and a `_sum`.

use crate::storage::float::go_float;
use crate::storage::{key, SeriesFile, ValueSlot};

/// Prometheus's default duration buckets.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Buckets of the request and response size histograms.
pub const SIZE_BUCKETS: [f64; 7] = [
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

/// The value slots of one labelled histogram: its buckets and its sum.
pub struct HistogramSlots {
    /// One per bound, then `+Inf`.
    buckets: Box<[ValueSlot]>,
    sum: ValueSlot,
}

impl HistogramSlots {
    /// Creates (or finds) the entries of one labelled histogram in `file`
    /// (entries that cannot be recorded are counted write errors).
    pub fn open(
        file: &mut SeriesFile,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Self {
        let bucket_name = format!("{name}_bucket");
        let mut buckets = Vec::with_capacity(bounds.len() + 1);
        for bound in bounds.iter().copied().chain([f64::INFINITY]) {
            let le = go_float(bound);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            buckets.push(file.slot(&key::encode(name, &bucket_name, &with_le, help)));
        }
        let sum = file.slot(&key::encode(name, &format!("{name}_sum"), labels, help));
        HistogramSlots {
            buckets: buckets.into_boxed_slice(),
            sum,
        }
    }

    /// `bounds` must be the ones the slots were opened with. Callers are
    /// serialized (a worker's meter, with the GIL held): the slots are added
    /// to without a locked instruction (`ValueSlot::add_serialized`).
    #[inline]
    pub fn observe(&self, bounds: &[f64], value: f64) {
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        self.buckets[i].add_serialized(1.0);
        self.sum.add_serialized(value);
    }
}
