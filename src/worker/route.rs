//! Route templates (and error types) as small ids.
//!
//! Distinct values of a label are capped per worker: past the cap a value is
//! `other`, so a misbehaving application cannot create series at will.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Default cap on distinct routes and on distinct error types per worker.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 100;

/// Longest label value kept (characters); longer ones are cut.
pub const MAX_VALUE_CHARS: usize = 200;

/// The value of labels past their cap.
pub const OVERFLOW_VALUE: &str = "other";

/// Id of the empty route (nothing matched).
pub const NO_ROUTE: u16 = 0;

/// Distinct values of one label, each with a small id; `""` is id 0 and
/// `other` the id after the last one the cap allows.
pub struct LabelValues {
    max: usize,
    inner: Mutex<Interned>,
}

#[derive(Default)]
struct Interned {
    ids: HashMap<Box<str>, u16>,
    names: Vec<Box<str>>,
}

impl LabelValues {
    /// Values of one label, at most `max` of them (clamped to what a 16-bit id holds).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, u16::MAX as usize - 2);
        let mut interned = Interned::default();
        interned.names.push("".into());
        interned.ids.insert("".into(), NO_ROUTE);
        LabelValues {
            max,
            inner: Mutex::new(interned),
        }
    }

    /// The id for values past the cap.
    pub fn overflow_id(&self) -> u16 {
        (self.max + 1) as u16
    }

    /// The id of `value`, and whether it was folded into `other` (past the cap).
    pub fn intern(&self, value: &str) -> (u16, bool) {
        let value = truncate(value);
        let mut inner = self.inner.lock();
        if let Some(&id) = inner.ids.get(value) {
            return (id, false);
        }
        if inner.names.len() > self.max {
            return (self.overflow_id(), true);
        }
        let id = inner.names.len() as u16;
        inner.names.push(value.into());
        inner.ids.insert(value.into(), id);
        (id, false)
    }

    /// Takes `values` (a slot's earlier values: `slot_history`) as already
    /// seen, up to the cap; `other` among them takes no room of its own.
    pub fn seed<'a>(&self, values: impl IntoIterator<Item = &'a str>) {
        for value in values {
            if value != OVERFLOW_VALUE {
                self.intern(value);
            }
        }
    }

    /// The label value of `id`.
    pub fn name(&self, id: u16) -> String {
        if id == self.overflow_id() {
            return OVERFLOW_VALUE.to_owned();
        }
        let inner = self.inner.lock();
        inner
            .names
            .get(id as usize)
            .map(|n| n.to_string())
            .unwrap_or_default()
    }
}

fn truncate(value: &str) -> &str {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_are_other() {
        let values = LabelValues::new(2);
        assert_eq!(values.intern(""), (NO_ROUTE, false));
        assert_eq!(values.intern("/a"), (1, false));
        assert_eq!(values.intern("/b"), (2, false));
        assert_eq!(values.intern("/a"), (1, false));
        assert_eq!(values.intern("/c"), (3, true));
        assert_eq!(values.name(3), "other");
        assert_eq!(values.name(1), "/a");
        let long = "x".repeat(500);
        assert_eq!(values.intern(&long), (3, true));
    }
}
