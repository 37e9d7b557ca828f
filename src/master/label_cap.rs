//! The cap on distinct `route` and `error_type` values of a worker slot
//! (`PROMETHEUS_MAX_LABEL_VALUES`), held in the archives too. A worker
//! starts with the values its slot already has (`worker::slot_history`), so
//! its own cap counts them; processes of one slot that ran at once (a USR2
//! upgrade) can still bring more. When the files of a dead process are
//! folded, a value its slot does not hold yet, past the cap, becomes `other`:
//! the archives hold at most cap values (and `other`) per label per slot,
//! whatever the restart count.

use std::borrow::Cow;
use std::path::Path;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::Kind;
use crate::storage::key;
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};
use crate::worker::route::{DEFAULT_MAX_LABEL_VALUES, OVERFLOW_VALUE};

/// The capped labels, and how each appears in a key.
const CAPPED: [&str; 2] = ["route", "error_type"];
const CAPPED_IN_KEYS: [&str; 2] = ["\"route\"", "\"error_type\""];

/// The values each slot holds in the archives of one directory.
pub struct LabelCap {
    max: usize,
    /// (worker_id, or "" for series without one; label) -> values held.
    held: FxHashMap<(String, &'static str), FxHashSet<String>>,
    loaded: bool,
}

impl Default for LabelCap {
    fn default() -> Self {
        LabelCap::new(DEFAULT_MAX_LABEL_VALUES)
    }
}

impl LabelCap {
    /// At most `max` values per label per slot.
    pub fn new(max: usize) -> LabelCap {
        LabelCap {
            max,
            held: FxHashMap::default(),
            loaded: false,
        }
    }

    /// The key to fold the entry `key` of `dir` under: itself, or with the
    /// capped labels past the cap replaced by `other`.
    pub fn admit<'k>(&mut self, dir: &Path, key: &'k str) -> Cow<'k, str> {
        if !CAPPED_IN_KEYS.iter().any(|label| key.contains(label)) {
            return Cow::Borrowed(key);
        }
        let Some(mut parsed) = key::parse(key) else {
            return Cow::Borrowed(key);
        };
        if !self.admit_labels(dir, &mut parsed.labels) {
            return Cow::Borrowed(key);
        }
        let labels: Vec<(&str, &str)> = parsed
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Cow::Owned(key::encode(
            &parsed.metric_name,
            &parsed.sample_name,
            &labels,
            &parsed.help,
        ))
    }

    /// Replaces, in `labels` of a series of `dir`, each capped value past
    /// its slot's cap by `other`; whether any was.
    pub fn admit_labels(&mut self, dir: &Path, labels: &mut [(String, String)]) -> bool {
        self.load(dir);
        let slot = labels
            .iter()
            .find(|(name, _)| name == "worker_id")
            .map_or(String::new(), |(_, v)| v.clone());
        let mut changed = false;
        for (name, value) in labels.iter_mut() {
            let Some(label) = CAPPED.iter().find(|l| **l == name.as_str()) else {
                continue;
            };
            if value == OVERFLOW_VALUE {
                continue;
            }
            let held = self.held.entry((slot.clone(), label)).or_default();
            if held.contains(value.as_str()) {
                continue;
            }
            if held.len() < self.max {
                held.insert(value.clone());
            } else {
                *value = OVERFLOW_VALUE.to_owned();
                changed = true;
            }
        }
        changed
    }

    /// Reads the values the counter archive of `dir` holds, once.
    fn load(&mut self, dir: &Path) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let mut buf = Vec::new();
        let path = dir.join(names::archive_file(Kind::Counter, None));
        if read_used(&path, &mut buf).is_err() {
            return;
        }
        for entry in read_entries(&buf).0 {
            if let Some(mut parsed) = key::parse(entry.key) {
                self.admit_labels(dir, &mut parsed.labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MmapWriter;

    #[test]
    fn values_past_a_slots_cap_become_other_and_others_slots_have_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let archived = key::encode("r", "r_total", &[("route", "/a"), ("worker_id", "1")], "h");
        let mut archive = MmapWriter::open(&d.join("counter_archive.db")).unwrap();
        archive.slot(&archived).unwrap();
        let mut cap = LabelCap::new(2);
        let key = |route: &str, slot: &str| {
            key::encode(
                "r",
                "r_total",
                &[("route", route), ("worker_id", slot)],
                "h",
            )
        };
        assert_eq!(cap.admit(d, &key("/a", "1")), key("/a", "1"));
        assert_eq!(cap.admit(d, &key("/b", "1")), key("/b", "1"));
        assert_eq!(cap.admit(d, &key("/c", "1")), key("other", "1"));
        assert_eq!(cap.admit(d, &key("/b", "1")), key("/b", "1"));
        assert_eq!(cap.admit(d, &key("/c", "2")), key("/c", "2"));
        let plain = key::encode("w", "w_total", &[("worker_id", "1")], "h");
        assert!(matches!(cap.admit(d, &plain), Cow::Borrowed(_)));
    }
}
