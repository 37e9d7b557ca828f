//! Every series a scrape has read, in one place: the keys of every kind of
//! file (each parsed once and interned, under one cap), and the families,
//! label sets, series and lines they name, in the exposition order.
//!
//! A *line* is one sample of the exposition: a value of a series, a
//! histogram bucket, or a histogram's count. Series and lines get an id when
//! they are made (what the readers remember of each entry of a file), and a
//! *rank*: their place in the exposition order, which families carry to the
//! encoders (`model::SampleId`) and which the encoders keep what they render
//! by, in `Vec`s. The order is computed again only when series or lines were
//! added; `generation` then changes, and whatever was kept by rank is dropped.

use std::hash::Hasher;
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet, FxHasher};

use crate::model::Labels;
use crate::storage::float::go_float;
use crate::storage::incremental::Keys;
use crate::storage::key;

/// Keys interned before everything is forgotten (`over_cap`): a directory
/// whose keys churn cannot grow the registry without bound.
const MAX_KEYS: usize = 1 << 20;
/// Bytes of the keys interned before everything is forgotten.
const MAX_KEY_BYTES: usize = 64 << 20;

/// An id that names nothing: the tag of an entry whose key is not valid.
pub const NONE: u32 = u32::MAX;

/// What a key says, with its strings interned.
pub struct ParsedKey {
    /// The family's name.
    pub family: Arc<str>,
    /// The sample's name, suffix included.
    pub sample: Arc<str>,
    /// The help text (for a native bucket or an exemplar, the entry's part).
    pub help: Arc<str>,
    /// Every label, sorted by name.
    pub labels: Labels,
}

/// Every key interned: its bytes (what a scrape compares each entry of
/// every file with), what it says, and its id by hash.
#[derive(Default)]
struct KeyTable {
    bytes: Keys,
    /// What each key says, by id.
    parsed: Vec<Option<ParsedKey>>,
    /// The first key with each hash, and the next key with the same hash
    /// (`NONE` ends), by id.
    first: HashMap<u64, u32>,
    next: Vec<u32>,
}

impl KeyTable {
    /// The id of the key `raw`, whose hash is `hash`, if it is interned.
    fn find(&self, hash: u64, raw: &[u8]) -> Option<u32> {
        let mut id = *self.first.get(&hash)?;
        while id != NONE {
            if self.bytes.key(id) == raw {
                return Some(id);
            }
            id = self.next[id as usize];
        }
        None
    }

    /// Interns `raw` (not interned yet), whose hash is `hash`.
    fn add(&mut self, hash: u64, raw: &[u8], parsed: Option<ParsedKey>) -> u32 {
        let id = self.bytes.add(raw);
        self.parsed.push(parsed);
        let previous = self.first.insert(hash, id);
        self.next.push(previous.unwrap_or(NONE));
        id
    }
}

/// A family's names.
pub struct FamilyNames {
    /// The family's name.
    pub name: Arc<str>,
    /// Its buckets' and count's sample names (`<name>_bucket`, `<name>_count`).
    pub bucket: Arc<str>,
    pub count: Arc<str>,
}

/// A series: a family's samples with one label set (and, in a gauge file of
/// mode `all`, one pid).
pub struct Series {
    pub family: u32,
    /// Its labels, `le` not among them for a histogram's series.
    pub labels: Arc<Labels>,
    labels_id: u32,
    /// The pid of a gauge file of mode `all`.
    pub pid: Option<Arc<str>>,
}

/// A line: one sample of a series.
pub struct Line {
    pub series: u32,
    /// The series' family (a copy: the readers' hot path wants it).
    pub family: u32,
    /// The sample's name.
    pub sample: Arc<str>,
    /// A histogram bucket's bound and its `le` as served (`floatToGoString`).
    pub bucket: Option<(f64, Arc<str>)>,
}

/// The registry of every key, family, series and line read.
#[derive(Default)]
pub struct Registry {
    keys: KeyTable,
    names: HashSet<Arc<str>>,
    label_sets: Vec<Arc<Labels>>,
    label_set_ids: HashMap<Arc<Labels>, u32>,
    families: Vec<FamilyNames>,
    family_ids: HashMap<Arc<str>, u32>,
    series: Vec<Series>,
    series_ids: HashMap<(u32, u32, Option<Arc<str>>), u32>,
    lines: Vec<Line>,
    line_ids: HashMap<(u32, Arc<str>, Option<u64>), u32>,
    /// Line ids in exposition order; the rank of each line and series.
    order: Vec<u32>,
    line_rank: Vec<u32>,
    series_rank: Vec<u32>,
    generation: u64,
}

impl Registry {
    /// A registry with nothing in it, whose order's generation comes after
    /// `previous`'s: what encoders kept for the old one is never taken for
    /// the new one's.
    pub fn after(previous: &Registry) -> Registry {
        Registry {
            generation: previous.generation + 1,
            ..Registry::default()
        }
    }

    /// Whether the keys interned passed the cap: then the caller starts
    /// afresh (`after`), with every reader's remembered entries forgotten.
    pub fn over_cap(&self) -> bool {
        self.keys.bytes.count() >= MAX_KEYS || self.keys.bytes.size() >= MAX_KEY_BYTES
    }

    /// The id of the key `raw`, parsed the first time it is seen.
    pub fn key(&mut self, raw: &str) -> u32 {
        let hash = {
            let mut h = FxHasher::default();
            h.write(raw.as_bytes());
            h.finish()
        };
        if let Some(id) = self.keys.find(hash, raw.as_bytes()) {
            return id;
        }
        let parsed = key::parse(raw).map(|k| ParsedKey {
            family: self.name(&k.metric_name),
            sample: self.name(&k.sample_name),
            help: self.name(&k.help),
            labels: k.labels,
        });
        self.keys.add(hash, raw.as_bytes(), parsed)
    }

    /// Every key interned, by id.
    #[inline]
    pub fn keys(&self) -> &Keys {
        &self.keys.bytes
    }

    /// What key `id` says (`None`: not a valid key).
    pub fn parsed(&self, id: u32) -> Option<&ParsedKey> {
        self.keys.parsed[id as usize].as_ref()
    }

    /// How many keys are interned (ids are below it).
    pub fn key_count(&self) -> usize {
        self.keys.bytes.count()
    }

    /// `s`, interned.
    pub fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.names.get(s) {
            return Arc::clone(found);
        }
        let new: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&new));
        new
    }

    /// The id of the family `name`.
    pub fn family(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&id) = self.family_ids.get(name) {
            return id;
        }
        let id = self.families.len() as u32;
        self.families.push(FamilyNames {
            name: Arc::clone(name),
            bucket: Arc::from(format!("{name}_bucket")),
            count: Arc::from(format!("{name}_count")),
        });
        self.family_ids.insert(Arc::clone(name), id);
        id
    }

    /// The names of family `id`.
    #[inline]
    pub fn family_names(&self, id: u32) -> &FamilyNames {
        &self.families[id as usize]
    }

    /// How many families there are (ids are below it).
    pub fn family_count(&self) -> usize {
        self.families.len()
    }

    /// The id of the series of `family` with `labels` (and `pid`).
    pub fn series(&mut self, family: u32, labels: Labels, pid: Option<Arc<str>>) -> u32 {
        let labels_id = match self.label_set_ids.get(&labels) {
            Some(&id) => id,
            None => {
                let id = self.label_sets.len() as u32;
                let set = Arc::new(labels);
                self.label_sets.push(Arc::clone(&set));
                self.label_set_ids.insert(set, id);
                id
            }
        };
        let key = (family, labels_id, pid);
        if let Some(&id) = self.series_ids.get(&key) {
            return id;
        }
        let id = self.series.len() as u32;
        self.series.push(Series {
            family,
            labels: Arc::clone(&self.label_sets[labels_id as usize]),
            labels_id,
            pid: key.2.clone(),
        });
        self.series_ids.insert(key, id);
        id
    }

    /// Series `id`.
    #[inline]
    pub fn series_of(&self, id: u32) -> &Series {
        &self.series[id as usize]
    }

    /// The id of the line `sample` of `series` (not a bucket).
    pub fn line(&mut self, series: u32, sample: &Arc<str>) -> u32 {
        self.make_line(series, sample, None)
    }

    fn make_line(
        &mut self,
        series: u32,
        sample: &Arc<str>,
        bucket: Option<(f64, Arc<str>)>,
    ) -> u32 {
        let key = (
            series,
            Arc::clone(sample),
            bucket.as_ref().map(|b| b.0.to_bits()),
        );
        if let Some(&id) = self.line_ids.get(&key) {
            return id;
        }
        let id = self.lines.len() as u32;
        self.lines.push(Line {
            series,
            family: self.series[series as usize].family,
            sample: Arc::clone(sample),
            bucket,
        });
        self.line_ids.insert(key, id);
        id
    }

    /// The id of the bucket line `sample` of `series` with `bucket` (bound,
    /// `le`). The series' count line is made with its first bucket: a
    /// histogram's count is the total of its buckets, a line of its own in
    /// its place among the series' lines.
    pub fn bucket_line(&mut self, series: u32, sample: &Arc<str>, bucket: (f64, Arc<str>)) -> u32 {
        let count = Arc::clone(&self.families[self.series[series as usize].family as usize].count);
        self.line(series, &count);
        self.make_line(series, sample, Some(bucket))
    }

    /// The line the entry of key `key` adds into (`NONE`: not a valid key):
    /// with `buckets`, a key with `le` is a bucket's line of its series
    /// without `le`; any other key is a line of its series, which carries
    /// `pid` (a gauge file of mode `all`).
    pub fn line_of_key(&mut self, key: u32, buckets: bool, pid: Option<Arc<str>>) -> u32 {
        let Some(parsed) = self.parsed(key) else {
            return NONE;
        };
        let (family, sample) = (Arc::clone(&parsed.family), Arc::clone(&parsed.sample));
        let mut labels = parsed.labels.clone();
        let le_at = labels.iter().position(|(k, _)| k == "le");
        let family = self.family(&family);
        match le_at {
            Some(i) if buckets => {
                let Ok(bound) = labels.remove(i).1.parse::<f64>() else {
                    return NONE;
                };
                // -0.0 and 0.0 are one bucket.
                let bound = bound + 0.0;
                let le = self.name(&go_float(bound));
                let series = self.series(family, labels, None);
                self.bucket_line(series, &sample, (bound, le))
            }
            _ => {
                let series = self.series(family, labels, pid);
                self.line(series, &sample)
            }
        }
    }

    /// Line `id`.
    #[inline]
    pub fn line_of(&self, id: u32) -> &Line {
        &self.lines[id as usize]
    }

    /// How many lines there are (ids are below it).
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// Line ids in exposition order (`sort` first).
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// The rank of line `id` (`sort` first).
    #[inline]
    pub fn line_rank(&self, id: u32) -> u32 {
        self.line_rank[id as usize]
    }

    /// The rank of series `id` (`sort` first).
    #[inline]
    pub fn series_rank(&self, id: u32) -> u32 {
        self.series_rank[id as usize]
    }

    /// The generation of the order: it changes whenever a rank may have.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Puts every series and line in exposition order, if any was added
    /// since: series by family name, label set and pid; a series' buckets
    /// by bound, then its other lines by sample name.
    pub fn sort(&mut self) {
        if self.line_rank.len() == self.lines.len() && self.series_rank.len() == self.series.len() {
            return;
        }
        self.generation += 1;
        let mut sets: Vec<u32> = (0..self.label_sets.len() as u32).collect();
        sets.sort_unstable_by(|&a, &b| {
            self.label_sets[a as usize].cmp(&self.label_sets[b as usize])
        });
        let mut set_rank = vec![0u32; sets.len()];
        for (rank, &set) in sets.iter().enumerate() {
            set_rank[set as usize] = rank as u32;
        }
        let (series, families) = (&self.series, &self.families);
        let mut by_series: Vec<u32> = (0..series.len() as u32).collect();
        by_series.sort_unstable_by(|&a, &b| {
            let (a, b) = (&series[a as usize], &series[b as usize]);
            families[a.family as usize]
                .name
                .cmp(&families[b.family as usize].name)
                .then_with(|| set_rank[a.labels_id as usize].cmp(&set_rank[b.labels_id as usize]))
                .then_with(|| a.pid.cmp(&b.pid))
        });
        self.series_rank = vec![0; series.len()];
        for (rank, &s) in by_series.iter().enumerate() {
            self.series_rank[s as usize] = rank as u32;
        }
        let (lines, series_rank) = (&self.lines, &self.series_rank);
        self.order = (0..lines.len() as u32).collect();
        self.order.sort_unstable_by(|&a, &b| {
            let (a, b) = (&lines[a as usize], &lines[b as usize]);
            series_rank[a.series as usize]
                .cmp(&series_rank[b.series as usize])
                .then_with(|| match (&a.bucket, &b.bucket) {
                    (Some(x), Some(y)) => x.0.total_cmp(&y.0),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => a.sample.cmp(&b.sample),
                })
        });
        self.line_rank = vec![0; lines.len()];
        for (rank, &line) in self.order.iter().enumerate() {
            self.line_rank[line as usize] = rank as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranks_follow_the_exposition_order_and_a_new_line_makes_a_new_generation() {
        let mut r = Registry::default();
        let (b, a) = (r.name("b"), r.name("a"));
        let (fb, fa) = (r.family(&b), r.family(&a));
        let sb = r.series(fb, labels(&[("x", "1")]), None);
        let sa2 = r.series(fa, labels(&[("x", "2")]), None);
        let sa1 = r.series(fa, labels(&[("x", "1")]), None);
        let (bucket, sum) = (r.name("a_bucket"), r.name("a_sum"));
        let (one, half) = (r.name("1.0"), r.name("0.5"));
        let lines = [
            r.line(sb, &b),
            r.line(sa2, &sum),
            r.bucket_line(sa2, &bucket, (1.0, one)),
            r.bucket_line(sa2, &bucket, (0.5, half.clone())),
            r.line(sa1, &sum),
        ];
        r.sort();
        let first = r.generation();
        let ranks: Vec<u32> = lines.iter().map(|&l| r.line_rank(l)).collect();
        // a{x=1} sum; a{x=2} buckets 0.5 and 1.0, count (made with the
        // first bucket), sum; b{x=1}.
        assert_eq!(ranks, [5, 4, 2, 1, 0]);
        assert_eq!(
            [r.series_rank(sa1), r.series_rank(sa2), r.series_rank(sb)],
            [0, 1, 2]
        );
        assert_eq!(r.line(sa1, &sum), lines[4], "interned");
        r.sort();
        assert_eq!(r.generation(), first, "nothing added: the same order");
        r.bucket_line(sa1, &bucket, (0.5, half));
        r.sort();
        assert_ne!(r.generation(), first);
        assert_eq!(
            r.line_rank(lines[4]),
            2,
            "after the bucket and count of a{{x=1}}"
        );
        assert!(Registry::after(&r).generation() > r.generation());
    }

    #[test]
    fn a_key_is_parsed_once_and_its_bytes_kept_once() {
        let mut r = Registry::default();
        let raw = key::encode("c", "c_total", &[("a", "1")], "help");
        let id = r.key(&raw);
        assert_eq!(r.key(&raw), id);
        assert_eq!(r.keys().key(id), raw.as_bytes());
        let parsed = r.parsed(id).unwrap();
        assert_eq!(
            (&*parsed.family, &*parsed.sample, &*parsed.help),
            ("c", "c_total", "help")
        );
        let bad = r.key("not json");
        assert!(r.parsed(bad).is_none());
        assert_eq!(r.key_count(), 2);
    }
}
