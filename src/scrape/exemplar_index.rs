//! Exemplars as a scrape serves them: the latest of each sample by the
//! sample's dense id (`exemplar.rs` reads them), and how an encoder's sample
//! finds its own, kept across scrapes.

use std::hash::Hasher;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use crate::model::{Labels, Sample};

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

/// The sample an exemplar belongs to: metric family name and every label of
/// the sample (`le` last for a bucket), in the sample's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExemplarKey {
    /// The metric family's name.
    pub family: String,
    /// Every label of the sample, in its order.
    pub labels: Labels,
}

impl ExemplarKey {
    /// Its labels as string pairs, in the sample's order.
    pub fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The samples that ever had an exemplar in the files read, by dense id,
/// and how a sample finds its id: by hashing its name and labels as they
/// are (an encoder asks for every sample of a family that has exemplars,
/// and building a key per sample would cost more than the rest of its
/// encoding). Built again only when a key is added.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    pub(crate) keys: Vec<Arc<ExemplarKey>>,
    by_hash: FxHashMap<u64, Vec<u32>>,
    families: FxHashSet<String>,
}

impl KeyIndex {
    pub(crate) fn of(keys: &[Arc<ExemplarKey>]) -> KeyIndex {
        let mut index = KeyIndex {
            keys: keys.to_vec(),
            ..KeyIndex::default()
        };
        for (id, k) in keys.iter().enumerate() {
            index
                .by_hash
                .entry(sample_hash(&k.family, k.label_pairs()))
                .or_default()
                .push(id as u32);
            if !index.families.contains(&k.family) {
                index.families.insert(k.family.clone());
            }
        }
        index
    }

    pub(crate) fn find<'a, I: Iterator<Item = (&'a str, &'a str)>>(
        &self,
        family: &str,
        labels: impl Fn() -> I,
    ) -> Option<u32> {
        if !self.families.contains(family) {
            return None;
        }
        let candidates = self.by_hash.get(&sample_hash(family, labels()))?;
        candidates.iter().copied().find(|&id| {
            let k = &self.keys[id as usize];
            k.family == family && same_pairs(k.label_pairs(), labels())
        })
    }
}

/// The latest exemplar of each sample that has one, by the sample's id.
#[derive(Default)]
pub struct Exemplars {
    pub(crate) index: Arc<KeyIndex>,
    pub(crate) latest: Vec<Option<Exemplar>>,
    /// The ids of the encoders' samples, shared by the scrapes of a source.
    pub(crate) kept: Arc<Mutex<SampleIds>>,
}

/// The hash of a sample of `family` with these labels (in sample order).
fn sample_hash<'a>(family: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = FxHasher::default();
    h.write(family.as_bytes());
    for (k, v) in labels {
        h.write_u8(0xff);
        h.write(k.as_bytes());
        h.write_u8(0xfe);
        h.write(v.as_bytes());
    }
    h.finish()
}

/// Whether two label sequences are equal.
fn same_pairs<'x, 'y>(
    mut a: impl Iterator<Item = (&'x str, &'x str)>,
    mut b: impl Iterator<Item = (&'y str, &'y str)>,
) -> bool {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

impl Exemplars {
    /// The exemplar of `sample` of `family`, if it has one (found by its
    /// labels alone: encoders use `family`).
    #[cfg(test)]
    pub fn get(&self, family: &str, sample: &Sample) -> Option<&Exemplar> {
        let id = self.index.find(family, || sample.label_pairs())?;
        self.latest.get(id as usize)?.as_ref()
    }

    /// The exemplar stored under `key`.
    #[cfg(test)]
    pub fn get_key(&self, key: &ExemplarKey) -> Option<&Exemplar> {
        let id = self.index.find(&key.family, || key.label_pairs())?;
        self.latest.get(id as usize)?.as_ref()
    }

    /// Keeps `e` for the sample `id` unless the exemplar kept is as recent.
    pub(crate) fn offer(&mut self, id: u32, e: Exemplar) {
        let id = id as usize;
        if self.latest.len() <= id {
            self.latest.resize(id + 1, None);
        }
        match &mut self.latest[id] {
            Some(cur) if cur.timestamp >= e.timestamp => {}
            slot => *slot = Some(e),
        }
    }

    /// These exemplars of these samples.
    #[cfg(test)]
    pub fn of(entries: Vec<(ExemplarKey, Exemplar)>) -> Exemplars {
        let keys: Vec<_> = entries.iter().map(|(k, _)| Arc::new(k.clone())).collect();
        Exemplars {
            index: Arc::new(KeyIndex::of(&keys)),
            latest: entries.into_iter().map(|(_, e)| Some(e)).collect(),
            kept: Arc::default(),
        }
    }

    /// Every exemplar with its sample, in key order.
    #[cfg(test)]
    pub fn sorted(&self) -> Vec<(ExemplarKey, Exemplar)> {
        let mut all: Vec<_> = self
            .latest
            .iter()
            .enumerate()
            .filter_map(|(id, e)| Some(((*self.index.keys[id]).clone(), (*e)?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// How many samples have an exemplar.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.latest.iter().flatten().count()
    }

    /// The exemplars of the samples of `family`; `None` if it has none.
    pub fn family<'a>(&'a self, family: &'a str) -> Option<FamilyExemplars<'a>> {
        if !self.index.families.contains(family) {
            return None;
        }
        // Another scrape encoding now: this one finds its samples by their labels.
        let kept = self.kept.try_lock().map(|mut kept| {
            if !Arc::ptr_eq(&kept.index, &self.index) {
                *kept = SampleIds {
                    index: Arc::clone(&self.index),
                    ..SampleIds::default()
                };
            }
            let slot = match kept.slots.get(family) {
                Some(&slot) => slot,
                None => {
                    kept.families.push(FxHashMap::default());
                    let slot = kept.families.len() - 1;
                    kept.slots.insert(family.into(), slot);
                    slot
                }
            };
            (kept, slot)
        });
        Some(FamilyExemplars {
            exemplars: self,
            family,
            kept,
        })
    }
}

/// Which exemplar sample each sample the encoders asked for is, kept across
/// scrapes: per family, by the addresses of the sample's label set and extra
/// label. The aggregator interns both (one `Arc` per distinct set or value,
/// never changed), and the entry holds them, so no other set can take those
/// addresses while the entry lives. An id (or its absence) holds for one key
/// index: the entries are dropped when the index is built again.
#[derive(Default)]
pub(crate) struct SampleIds {
    index: Arc<KeyIndex>,
    slots: FxHashMap<Box<str>, usize>,
    families: Vec<FxHashMap<[usize; 3], KeptId>>,
    /// Entries, and samples asked for since `end_scrape`.
    entries: usize,
    asked: usize,
}

struct KeptId {
    _labels: Arc<Labels>,
    _extra: Option<Arc<str>>,
    id: Option<u32>,
}

impl SampleIds {
    /// Ends a scrape: the samples gone are forgotten once they are most.
    pub(crate) fn end_scrape(&mut self) {
        if self.entries > 2 * self.asked + 1024 {
            *self = SampleIds::default();
        }
        self.asked = 0;
    }
}

/// The exemplars of one family's samples (see `Exemplars::family`).
pub struct FamilyExemplars<'a> {
    exemplars: &'a Exemplars,
    family: &'a str,
    kept: Option<(MutexGuard<'a, SampleIds>, usize)>,
}

impl FamilyExemplars<'_> {
    /// The exemplar of `sample`, if it has one.
    pub fn get(&mut self, sample: &Sample) -> Option<Exemplar> {
        let (exemplars, family) = (self.exemplars, self.family);
        let find = || exemplars.index.find(family, || sample.label_pairs());
        let id = match &mut self.kept {
            None => find(),
            Some((kept, slot)) => {
                let key = [
                    Arc::as_ptr(&sample.labels) as usize,
                    sample
                        .extra
                        .as_ref()
                        .map_or(0, |(k, _)| k.as_ptr() as usize),
                    sample
                        .extra
                        .as_ref()
                        .map_or(0, |(_, v)| Arc::as_ptr(v) as *const u8 as usize),
                ];
                kept.asked += 1;
                match kept.families[*slot].get(&key) {
                    Some(k) => k.id,
                    None => {
                        let id = find();
                        kept.families[*slot].insert(
                            key,
                            KeptId {
                                _labels: Arc::clone(&sample.labels),
                                _extra: sample.extra.as_ref().map(|(_, v)| Arc::clone(v)),
                                id,
                            },
                        );
                        kept.entries += 1;
                        id
                    }
                }
            }
        };
        *exemplars.latest.get(id? as usize)?
    }
}
