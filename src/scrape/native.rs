//! The reader of native histogram files (`native_*.ndb`): each entry is one
//! bucket of a series at a schema, counted by one process; a scrape sums the
//! buckets of every file and merges each series' schemas at the lowest.

use std::path::Path;

use rustc_hash::FxHashMap;

use super::registry::{Registry, NONE};
use crate::model::{NativeBuckets, NativeHistograms};
use crate::storage::incremental::{EntryValue, FileCache, Keys, Visitor};
use crate::storage::ReadError;
use crate::worker::native_histogram::{reduce_index, BUCKET_LABEL, SCHEMAS, SCHEMA_LABEL};

/// A bucket of a series at a schema: where the entries that name it add up.
struct Cell {
    schema: i8,
    /// `None` for the zero bucket.
    bucket: Option<i32>,
}

/// Not computed yet (in `Cells::cell_of_key`).
const UNKNOWN: u32 = u32::MAX - 1;

/// Reads the native files of a directory again and again, remembering each
/// file's entries (`FileCache`) with the cell each one adds into.
#[derive(Default)]
pub struct NativeReader {
    files: FileCache,
    cells: Cells,
}

/// Every cell, and its sum at the last scrape.
#[derive(Default)]
struct Cells {
    /// By key id.
    cell_of_key: Vec<u32>,
    cells: Vec<Cell>,
    cell_ids: FxHashMap<(u32, i8, Option<i32>), u32>,
    /// The cells of each series that has any, by schema then bucket (the
    /// zero bucket first): the order the merge wants them in.
    series_cells: FxHashMap<u32, Vec<u32>>,
    /// Per cell: the sum at the last scrape, and that scrape.
    sums: Vec<(f64, u32)>,
    pass: u32,
}

impl NativeReader {
    /// Forgets every entry remembered: the registry they name is gone.
    pub fn forget(&mut self) {
        self.cells = Cells {
            pass: self.cells.pass,
            ..Cells::default()
        };
        self.files.forget();
    }

    /// Adds the buckets of the files `names` of `dir` into their cells;
    /// returns how many files or entries could not be read.
    pub fn read(&mut self, registry: &mut Registry, dir: &Path, names: &[String]) -> u64 {
        self.cells.pass = self.cells.pass.wrapping_add(1).max(1);
        let mut errors = 0;
        self.files.begin_pass();
        for name in names {
            let mut adder = CellAdder {
                registry: &mut *registry,
                cells: &mut self.cells,
                errors: 0,
            };
            let error = self.files.read(dir, name, &mut adder);
            errors += adder.errors;
            match error {
                // A worker's file may be retired between listing and reading.
                None | Some(ReadError::Io(_)) => {}
                Some(_) => errors += 1,
            }
        }
        self.files.end_pass();
        errors
    }

    /// The cells of the last scrape merged per series (one accumulator per
    /// schema seen, reduced to the coarsest), by series rank
    /// (`Registry::sort` first).
    pub fn merged(&self, registry: &Registry) -> NativeHistograms {
        let c = &self.cells;
        let mut out = NativeHistograms::default();
        for (&series, cells) in &c.series_cells {
            // The series' cells by schema, then bucket: the buckets of each
            // schema come in order, and the lowest schema first.
            let mut merged: Option<NativeBuckets> = None;
            let mut current: Option<NativeBuckets> = None;
            for &id in cells {
                let Some(&(sum, _)) = c.sums.get(id as usize).filter(|s| s.1 == c.pass) else {
                    continue;
                };
                let cell = &c.cells[id as usize];
                let buckets = match &mut current {
                    Some(b) if b.schema == cell.schema => b,
                    _ => {
                        fold(&mut merged, current.take());
                        current.insert(NativeBuckets {
                            schema: cell.schema,
                            zero_count: 0.0,
                            positive: Vec::with_capacity(cells.len()),
                        })
                    }
                };
                match cell.bucket {
                    None => buckets.zero_count += sum,
                    Some(i) => buckets.positive.push((i, 0.0 + sum)),
                }
            }
            fold(&mut merged, current);
            if let Some(m) = merged {
                out.set(registry.series_rank(series), m);
            }
        }
        out
    }
}

impl Cells {
    /// The cell the entry with key `key` adds into (`NONE`: not a valid key).
    fn cell(&mut self, registry: &mut Registry, key: u32) -> u32 {
        let Some(parsed) = registry.parsed(key) else {
            return NONE;
        };
        let family = std::sync::Arc::clone(&parsed.family);
        let mut labels = parsed.labels.clone();
        let mut take = |name: &str| {
            let i = labels.iter().position(|(k, _)| k == name)?;
            Some(labels.remove(i).1)
        };
        let Some(schema) = take(SCHEMA_LABEL)
            .and_then(|s| s.parse::<i8>().ok())
            .filter(|s| SCHEMAS.contains(s))
        else {
            return NONE;
        };
        let bucket = match take(BUCKET_LABEL).as_deref() {
            Some("zero") => None,
            Some(i) => match i.parse() {
                Ok(i) => Some(i),
                Err(_) => return NONE,
            },
            None => return NONE,
        };
        let family = registry.family(&family);
        let series = registry.series(family, labels, None);
        if let Some(&cell) = self.cell_ids.get(&(series, schema, bucket)) {
            return cell;
        }
        let id = self.cells.len() as u32;
        let order = |c: &Cell| (c.schema, c.bucket);
        let cell = Cell { schema, bucket };
        let cells = self.series_cells.entry(series).or_default();
        let at = cells.partition_point(|&c| order(&self.cells[c as usize]) < order(&cell));
        cells.insert(at, id);
        self.cells.push(cell);
        self.cell_ids.insert((series, schema, bucket), id);
        id
    }
}

/// Adds the entries of one file into their cells.
struct CellAdder<'a> {
    registry: &'a mut Registry,
    cells: &'a mut Cells,
    errors: u64,
}

impl Visitor for CellAdder<'_> {
    fn keys(&self) -> &Keys {
        self.registry.keys()
    }

    fn tag(&mut self, raw: &str) -> (u32, u32) {
        let key = self.registry.key(raw);
        let cells = &mut *self.cells;
        if cells.cell_of_key.len() < self.registry.key_count() {
            cells.cell_of_key.resize(self.registry.key_count(), UNKNOWN);
        }
        let cell = match cells.cell_of_key[key as usize] {
            UNKNOWN => {
                let cell = cells.cell(self.registry, key);
                cells.cell_of_key[key as usize] = cell;
                cell
            }
            cell => cell,
        };
        if cells.sums.len() < cells.cells.len() {
            cells.sums.resize(cells.cells.len(), (0.0, 0));
        }
        (key, cell)
    }

    fn visit(&mut self, values: &[EntryValue]) {
        let pass = self.cells.pass;
        for v in values {
            // `NONE` is no cell: a key that is not valid.
            let Some(sum) = self.cells.sums.get_mut(v.tag as usize) else {
                self.errors += 1;
                continue;
            };
            if sum.1 == pass {
                sum.0 += v.value;
            } else {
                *sum = (v.value, pass);
            }
        }
    }
}

/// Merges `next` into `merged`.
fn fold(merged: &mut Option<NativeBuckets>, next: Option<NativeBuckets>) {
    match (merged.as_mut(), next) {
        (Some(m), Some(n)) => merge(m, n),
        (None, n) => *merged = n,
        (_, None) => {}
    }
}

/// Lowers the resolution of `b` to `schema` (no higher than its own).
fn reduce_to(b: &mut NativeBuckets, schema: i8) {
    if schema >= b.schema {
        return;
    }
    // Reducing keeps the order: the buckets that merge are neighbours.
    let mut reduced: Vec<(i32, f64)> = Vec::with_capacity(b.positive.len());
    for &(i, c) in &b.positive {
        let i = reduce_index(i, b.schema, schema);
        match reduced.last_mut() {
            Some((last, sum)) if *last == i => *sum += c,
            _ => reduced.push((i, 0.0 + c)),
        }
    }
    b.positive = reduced;
    b.schema = schema;
}

/// Adds `other` into `b`, at the lower of the two resolutions.
fn merge(b: &mut NativeBuckets, mut other: NativeBuckets) {
    let schema = b.schema.min(other.schema);
    reduce_to(b, schema);
    reduce_to(&mut other, schema);
    b.zero_count += other.zero_count;
    let mine = std::mem::take(&mut b.positive);
    let mut merged = Vec::with_capacity(mine.len().max(other.positive.len()));
    let (mut x, mut y) = (
        mine.into_iter().peekable(),
        other.positive.into_iter().peekable(),
    );
    loop {
        let next = match (x.peek(), y.peek()) {
            (Some(p), Some(q)) if p.0 == q.0 => {
                let (p, q) = (x.next(), y.next());
                p.zip(q).map(|((i, c), (_, d))| (i, c + d))
            }
            (Some(p), Some(q)) if p.0 < q.0 => x.next(),
            (Some(_), None) => x.next(),
            (_, Some(_)) => y.next().map(|(i, d)| (i, 0.0 + d)),
            (None, None) => break,
        };
        merged.extend(next);
    }
    b.positive = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ranked::sample;
    use crate::scrape::aggregate::{Aggregator, Extra};
    use crate::storage::key::encode;
    use crate::storage::names;
    use crate::storage::MmapWriter;
    use crate::worker::native_histogram::{fold_into, NativeFile};

    #[test]
    fn spans_and_deltas_are_what_prometheus_expects() {
        let b = NativeBuckets {
            schema: 3,
            zero_count: 0.0,
            positive: [(-34, 5.0), (-33, 2.0), (-31, 1.0), (10, 4.0)].into(),
        };
        let (spans, deltas) = b.spans_and_deltas();
        assert_eq!(spans, vec![(-34, 4), (40, 1)]);
        assert_eq!(deltas, vec![5, -3, -2, 1, 3]);
        assert_eq!(b.count(), 12.0);
    }

    #[test]
    fn workers_merge_and_dead_ones_fold_into_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let labels = [("method", "GET"), ("worker_id", "1")];
        // The classic histogram the native one goes with.
        let mut classic = MmapWriter::open(&d.join("histogram_10.db")).unwrap();
        classic
            .slot(&encode("dur", "dur_sum", &labels, "D"))
            .unwrap()
            .add(1.0);
        let a = NativeFile::open(d, 10, 3).unwrap().series("dur", &labels);
        let b = NativeFile::open(d, 11, 1).unwrap().series("dur", &labels);
        for v in [0.05, 0.05, 0.0, 2.0, 5000.0] {
            a.observe(v);
        }
        b.observe(0.05);
        let mut agg = Aggregator::default();
        let native = Extra {
            native: true,
            exemplars: false,
        };
        let c = agg.collect(d, 0.0, native);
        assert_eq!(c.read_errors, 0);
        let sum = sample(&c.families, "dur_sum", &labels);
        let h = c.native.get(sum).unwrap().clone();
        assert_eq!(h.schema, 1);
        assert_eq!(h.zero_count, 1.0);
        // 0.05 at schema 1: (2^(-9/2), 2^(-8/2)] = (0.044, 0.0625], index -8.
        let at = |i: i32| h.positive.iter().find(|b| b.0 == i).map(|b| b.1);
        assert_eq!((at(-8), at(2)), (Some(3.0), Some(1.0)));
        assert_eq!(h.count(), 6.0);
        drop((a, b));
        let mut archive = MmapWriter::open(&d.join(names::NATIVE_ARCHIVE)).unwrap();
        let mut cap = crate::master::label_cap::LabelCap::default();
        fold_into(&mut archive, &d.join(names::native_file(10)), d, &mut cap).unwrap();
        std::fs::remove_file(d.join(names::native_file(10))).unwrap();
        let c = agg.collect(d, 0.0, native);
        let sum = sample(&c.families, "dur_sum", &labels);
        assert_eq!(c.native.get(sum), Some(&h));
        // A key that is no native bucket's is a read error.
        let mut bad = MmapWriter::open(&d.join(names::native_file(12))).unwrap();
        bad.slot(&encode("dur", "dur", &labels, ""))
            .unwrap()
            .add(1.0);
        assert_eq!(agg.collect(d, 0.0, native).read_errors, 1);
    }
}
