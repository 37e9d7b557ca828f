//! The reader of exemplar files (`exemplar_*.ndb`): each exemplar is three
//! entries of one sample (value and time, trace id, span id with a
//! sequence), written one after the other; a scrape keeps the latest of
//! each sample's line over every file.

use std::path::Path;

use super::registry::{Registry, NONE};
use crate::storage::incremental::{EntryValue, FileCache, Keys, Visitor};
use crate::storage::ReadError;
use crate::worker::exemplar::{part_of, Parts};

/// Not computed yet (in `ExemplarReader::part_of_key`).
const UNKNOWN: u32 = u32::MAX - 1;
/// Lines of an exemplar's tag: below it (the tag is the line times 4 plus
/// the part; the registry's caps keep lines far fewer).
const MAX_LINES: u32 = 1 << 30;

/// Reads the exemplar files of a directory again and again, remembering each
/// file's entries (`FileCache`) with the line and part each one is.
#[derive(Default)]
pub struct ExemplarReader {
    files: FileCache,
    /// The tag of each key (`line << 2 | part`), by key id.
    part_of_key: Vec<u32>,
}

impl ExemplarReader {
    /// Forgets every entry remembered: the registry they name is gone.
    pub fn forget(&mut self) {
        self.part_of_key = Vec::new();
        self.files.forget();
    }

    /// The latest exemplar of each line, by line id, over the files `names`
    /// of `dir`; and how many files or entries could not be read.
    pub fn read(
        &mut self,
        registry: &mut Registry,
        dir: &Path,
        names: &[String],
    ) -> (Vec<Option<crate::model::Exemplar>>, u64) {
        let mut latest = Vec::new();
        let mut errors = 0;
        self.files.begin_pass();
        for name in names {
            let mut reader = PartReader {
                registry: &mut *registry,
                part_of_key: &mut self.part_of_key,
                current: None,
                latest: &mut latest,
                errors: 0,
            };
            let error = self.files.read(dir, name, &mut reader);
            reader.finish();
            errors += reader.errors;
            match error {
                // A worker's file may be retired between listing and reading.
                None | Some(ReadError::Io(_)) => {}
                Some(_) => errors += 1,
            }
        }
        self.files.end_pass();
        (latest, errors)
    }
}

/// Puts together the parts of each exemplar of a file, in file order, and
/// keeps the latest of each line.
struct PartReader<'a> {
    registry: &'a mut Registry,
    part_of_key: &'a mut Vec<u32>,
    current: Option<(u32, Parts)>,
    /// By line id.
    latest: &'a mut Vec<Option<crate::model::Exemplar>>,
    errors: u64,
}

impl PartReader<'_> {
    /// Keeps the exemplar being put together, if it is whole and the latest.
    fn finish(&mut self) {
        let Some((line, parts)) = self.current.take() else {
            return;
        };
        let Some(e) = parts.exemplar() else {
            return;
        };
        let at = line as usize;
        if self.latest.len() <= at {
            self.latest.resize(at + 1, None);
        }
        match &mut self.latest[at] {
            Some(kept) if kept.timestamp >= e.timestamp => {}
            slot => *slot = Some(e),
        }
    }

    /// The tag of the entry with key `key`: its line and part (`NONE`: not
    /// a valid key).
    fn tag_of(&mut self, key: u32) -> u32 {
        let registry = &mut *self.registry;
        let Some(parsed) = registry.parsed(key) else {
            return NONE;
        };
        let Some(part) = part_of(&parsed.help) else {
            return NONE;
        };
        let line = registry.line_of_key(key, true, None);
        if line >= MAX_LINES {
            return NONE;
        }
        line << 2 | part as u32
    }
}

impl Visitor for PartReader<'_> {
    fn keys(&self) -> &Keys {
        self.registry.keys()
    }

    fn tag(&mut self, raw: &str) -> (u32, u32) {
        let key = self.registry.key(raw);
        if self.part_of_key.len() < self.registry.key_count() {
            self.part_of_key.resize(self.registry.key_count(), UNKNOWN);
        }
        let tag = match self.part_of_key[key as usize] {
            UNKNOWN => {
                let tag = self.tag_of(key);
                self.part_of_key[key as usize] = tag;
                tag
            }
            tag => tag,
        };
        (key, tag)
    }

    fn visit(&mut self, values: &[EntryValue]) {
        for v in values {
            if v.tag == NONE {
                self.errors += 1;
                continue;
            }
            let (line, part) = (v.tag >> 2, (v.tag & 3) as u8);
            if self.current.as_ref().is_some_and(|(l, _)| *l != line) {
                self.finish();
            }
            let parts = &mut self.current.get_or_insert((line, Parts::default())).1;
            parts.set(part, v.value, v.timestamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::ranked::sample;
    use crate::model::Exemplar;
    use crate::scrape::aggregate::{Aggregator, Collected, Extra};
    use crate::storage::key::encode;
    use crate::storage::names;
    use crate::storage::MmapWriter;
    use crate::worker::exemplar::{fold_into, ExemplarFile, HistogramExemplars, TraceParent};
    use std::path::Path;

    const TRACE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn collect(d: &Path) -> Collected {
        let extra = Extra {
            native: false,
            exemplars: true,
        };
        Aggregator::default().collect(d, 0.0, extra)
    }

    #[test]
    fn the_latest_exemplar_wins_across_workers_and_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let labels = [("method", "GET"), ("worker_id", "1")];
        let bounds = [0.1, 1.0];
        // The classic histogram the exemplars go with.
        let mut classic = MmapWriter::open(&d.join("histogram_1.db")).unwrap();
        for le in ["0.1", "1.0", "+Inf"] {
            let with_le = [labels[0], labels[1], ("le", le)];
            classic
                .slot(&encode("dur", "dur_bucket", &with_le, "D"))
                .unwrap()
                .add(1.0);
        }
        let t1 = TraceParent::parse(TRACE).unwrap();
        let t2 = TraceParent {
            trace_id: 7,
            span_id: 9,
        };
        let a =
            HistogramExemplars::new(&ExemplarFile::open(d, 1).unwrap(), "dur", &labels, &bounds);
        let b =
            HistogramExemplars::new(&ExemplarFile::open(d, 2).unwrap(), "dur", &labels, &bounds);
        a.observe(&bounds, 0.05, &t1, 100.0);
        b.observe(&bounds, 0.07, &t2, 200.0);
        a.observe(&bounds, 0.5, &t1, 150.0);
        let got = collect(d);
        assert_eq!(got.read_errors, 0);
        let of = |c: &Collected, le: &str| -> Option<Exemplar> {
            let s = sample(
                &c.families,
                "dur_bucket",
                &[labels[0], labels[1], ("le", le)],
            );
            c.exemplars.get(s)
        };
        let low = of(&got, "0.1").unwrap();
        assert_eq!((low.value, low.timestamp), (0.07, 200.0));
        assert_eq!(low.trace_hex().as_str(), format!("{:032x}", 7));
        let high = of(&got, "1.0").unwrap();
        assert_eq!(
            high.trace_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(high.span_hex().as_str(), "00f067aa0ba902b7");
        assert_eq!((got.exemplars.len(), of(&got, "+Inf")), (2, None));
        let mut archive = MmapWriter::open(&d.join(names::EXEMPLAR_ARCHIVE)).unwrap();
        let mut cap = crate::master::label_cap::LabelCap::default();
        fold_into(&mut archive, &d.join(names::exemplar_file(2)), d, &mut cap).unwrap();
        fold_into(&mut archive, &d.join(names::exemplar_file(1)), d, &mut cap).unwrap();
        std::fs::remove_file(d.join(names::exemplar_file(1))).unwrap();
        std::fs::remove_file(d.join(names::exemplar_file(2))).unwrap();
        let after = collect(d);
        for le in ["0.1", "1.0", "+Inf"] {
            assert_eq!(of(&after, le), of(&got, le), "{le}");
        }
    }
}
