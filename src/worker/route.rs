//! Route templates as small ids, and the lock-free table of request series
//! indexed by (route, method, status).
//!
//! Distinct values of a label are capped per worker: past the cap a value is
//! `other`, so a misbehaving application cannot create series at will.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

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

/// A fixed-size open-addressing map from a `u32` key to a pointer that is
/// published once and never freed. Lookups take no lock; inserts are made by
/// one writer at a time (the caller holds its lock).
pub struct SeriesIndex<T> {
    keys: Box<[AtomicU32]>,
    values: Box<[AtomicPtr<T>]>,
    len: AtomicUsize,
}

const EMPTY_KEY: u32 = u32::MAX;

impl<T> SeriesIndex<T> {
    /// `capacity` is rounded up to a power of two; at most 3/4 of it is used.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.next_power_of_two();
        SeriesIndex {
            keys: (0..capacity).map(|_| AtomicU32::new(EMPTY_KEY)).collect(),
            values: (0..capacity)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn start(&self, key: u32) -> usize {
        (key.wrapping_mul(0x9E37_79B9) as usize) & (self.keys.len() - 1)
    }

    /// The published value of `key`, or null.
    #[inline]
    pub fn get(&self, key: u32) -> *mut T {
        let mask = self.keys.len() - 1;
        let mut i = self.start(key);
        for _ in 0..self.keys.len() {
            let k = self.keys[i].load(Ordering::Acquire);
            if k == key {
                return self.values[i].load(Ordering::Acquire);
            }
            if k == EMPTY_KEY {
                break;
            }
            i = (i + 1) & mask;
        }
        std::ptr::null_mut()
    }

    /// Publishes `value` for `key` (absent); `false` when the table is full.
    /// Callers serialise inserts.
    pub fn insert(&self, key: u32, value: *mut T) -> bool {
        debug_assert_ne!(key, EMPTY_KEY);
        let len = self.len.load(Ordering::Relaxed);
        if (len + 1) * 4 > self.keys.len() * 3 {
            return false;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.start(key);
        while self.keys[i].load(Ordering::Relaxed) != EMPTY_KEY {
            i = (i + 1) & mask;
        }
        self.len.store(len + 1, Ordering::Relaxed);
        // The value first: a reader that sees the key sees the value.
        self.values[i].store(value, Ordering::Release);
        self.keys[i].store(key, Ordering::Release);
        true
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

    #[test]
    fn index_finds_what_was_inserted_and_refuses_when_full() {
        let index = SeriesIndex::<u32>::with_capacity(8);
        let mut boxes: Vec<Box<u32>> = (0..8).map(Box::new).collect();
        for (k, b) in boxes.iter_mut().take(5).enumerate() {
            assert!(index.insert(k as u32 * 1000, &mut **b));
        }
        for k in 0..5u32 {
            // SAFETY: the pointers are into `boxes`, alive to the end of the test.
            assert_eq!(unsafe { *index.get(k * 1000) }, k);
        }
        assert!(index.get(7).is_null());
        assert!(index.insert(6000, &mut *boxes[6]));
        assert!(!index.insert(7000, &mut *boxes[7]));
    }
}
