//! A directory's files merged into families, with the semantics of
//! prometheus_client's `MultiProcessCollector`: files in, families out.
//!
//! An `Aggregator` lives as long as the server. It holds one `Registry` of
//! every key and series read, and one reader per kind of file: `*.db`
//! (`classic`), native histogram buckets and exemplars (`*.ndb`: `native`,
//! `exemplars`). Each reader remembers each file's entries and the line or
//! cell each one adds into, so a scrape only reads values and adds them up,
//! whatever number of files and processes the directory holds.

use std::path::Path;

use super::classic::ClassicReader;
use super::exemplars::ExemplarReader;
use super::native::NativeReader;
use super::registry::Registry;
use crate::model::{Exemplars, Family, NativeHistograms};
use crate::storage::names::{self, DB_SUFFIX};

/// What a scrape reads besides the families.
#[derive(Default, Clone, Copy)]
pub struct Extra {
    /// Native histogram buckets (the protobuf format carries them).
    pub native: bool,
    /// Exemplars (OpenMetrics and protobuf carry them).
    pub exemplars: bool,
}

/// Result of one pass over a directory.
pub struct Collected {
    /// The families, each sample with its ranks (`model::SampleId`).
    pub families: Vec<Family>,
    /// The generation of the ranks.
    pub generation: u64,
    /// Native histograms by series rank, if asked for.
    pub native: NativeHistograms,
    /// Exemplars by line rank, if asked for.
    pub exemplars: Exemplars,
    /// Files (or parts of files) that could not be read.
    pub read_errors: u64,
    /// Names of the `*.db` files read.
    pub files: Vec<String>,
}

/// Reads directories again and again, remembering what it parsed.
#[derive(Default)]
pub struct Aggregator {
    registry: Registry,
    classic: ClassicReader,
    native: NativeReader,
    exemplars: ExemplarReader,
}

impl Aggregator {
    /// Reads every `*.db` file of `dir`, and the `*.ndb` files `extra` asks
    /// for. `now_monotonic` (seconds, CLOCK_MONOTONIC) resolves running
    /// clocks (`ClassicReader::read`).
    pub fn collect(&mut self, dir: &Path, now_monotonic: f64, extra: Extra) -> Collected {
        let Some(listing) = Listing::of(dir) else {
            return Collected {
                families: Vec::new(),
                generation: self.registry.generation(),
                native: NativeHistograms::default(),
                exemplars: Exemplars::default(),
                read_errors: 1 + extra.native as u64 + extra.exemplars as u64,
                files: Vec::new(),
            };
        };
        if self.registry.over_cap() {
            self.start_afresh();
        }
        let registry = &mut self.registry;
        let mut read_errors = self.classic.read(registry, dir, &listing.db, now_monotonic);
        if extra.native {
            read_errors += self.native.read(registry, dir, &listing.native);
        }
        let latest = if extra.exemplars {
            let (latest, errors) = self.exemplars.read(registry, dir, &listing.exemplars);
            read_errors += errors;
            latest
        } else {
            Vec::new()
        };
        registry.sort();
        let (families, present) = self.classic.families(registry);
        let native = match extra.native {
            true => self.native.merged(registry),
            false => NativeHistograms::default(),
        };
        let mut exemplars = Exemplars::default();
        for (line, e) in latest.into_iter().enumerate() {
            if let Some(e) = e {
                exemplars.offer(registry.line_rank(line as u32), e);
            }
        }
        let generation = registry.generation();
        // Lines of series gone for good: start afresh once they are most.
        if registry.line_count() > 2 * present + 4096 {
            self.start_afresh();
        }
        Collected {
            families,
            generation,
            native,
            exemplars,
            read_errors,
            files: listing.db,
        }
    }

    /// Forgets every key, series and entry (files stay held): each file is
    /// parsed again at its next read, and the order has a new generation.
    fn start_afresh(&mut self) {
        self.registry = Registry::after(&self.registry);
        self.classic.forget();
        self.native.forget();
        self.exemplars.forget();
    }
}

/// The files of a directory, by kind, sorted by name.
struct Listing {
    db: Vec<String>,
    native: Vec<String>,
    exemplars: Vec<String>,
}

impl Listing {
    fn of(dir: &Path) -> Option<Listing> {
        let mut listing = Listing {
            db: Vec::new(),
            native: Vec::new(),
            exemplars: Vec::new(),
        };
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.ends_with(DB_SUFFIX) {
                listing.db.push(name);
            } else if names::is_native_file(&name) {
                listing.native.push(name);
            } else if names::is_exemplar_file(&name) {
                listing.exemplars.push(name);
            }
        }
        listing.db.sort();
        listing.native.sort();
        listing.exemplars.sort();
        Some(listing)
    }
}

/// Reads `dir` once, with nothing remembered.
#[cfg(test)]
pub fn collect(dir: &Path, now_monotonic: f64) -> Collected {
    Aggregator::default().collect(dir, now_monotonic, Extra::default())
}

/// The value of the sample `name` with exactly `labels` (test support).
#[cfg(test)]
pub(crate) fn find(c: &Collected, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    c.families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| &*s.name == name && s.label_pairs().eq(labels.iter().copied()))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{key::encode, MmapWriter};

    /// (metric name, sample name, labels, value, timestamp)
    type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64, f64);

    fn write(dir: &Path, file: &str, entries: &[Row]) {
        let mut w = MmapWriter::open(&dir.join(file)).unwrap();
        for (metric, sample, labels, value, ts) in entries {
            let slot = w.slot(&encode(metric, sample, labels, "help")).unwrap();
            slot.set(*value);
            slot.set_timestamp(*ts);
        }
    }

    #[test]
    fn counters_sum_across_processes_and_running_clocks_resolve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "counter_1.db",
            &[("c", "c_total", &[("a", "x")], 2.0, 0.0)],
        );
        write(
            dir.path(),
            "counter_2.db",
            &[("c", "c_total", &[("a", "x")], 3.0, 0.0)],
        );
        write(
            dir.path(),
            "counter_3.db",
            &[("b", "b_total", &[], 1.0, -95.0)],
        );
        let c = collect(dir.path(), 100.0);
        assert_eq!(find(&c, "c_total", &[("a", "x")]), Some(5.0));
        assert_eq!(find(&c, "b_total", &[]), Some(5.0));
        assert_eq!(c.read_errors, 0);
    }

    #[test]
    fn gauge_modes_merge_like_prometheus_client() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, v, ts) in [("1", 4.0, 10.0), ("2", 7.0, 5.0)] {
            for mode in ["livesum", "max", "min", "all", "mostrecent"] {
                write(
                    dir.path(),
                    &format!("gauge_{mode}_{pid}.db"),
                    &[(mode, mode, &[], v, ts)],
                );
            }
        }
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "livesum", &[]), Some(11.0));
        assert_eq!(find(&c, "max", &[]), Some(7.0));
        assert_eq!(find(&c, "min", &[]), Some(4.0));
        assert_eq!(find(&c, "all", &[("pid", "2")]), Some(7.0));
        assert_eq!(find(&c, "mostrecent", &[]), Some(4.0));
    }

    #[test]
    fn histogram_buckets_accumulate_and_count_is_derived() {
        let dir = tempfile::tempdir().unwrap();
        let h: &[Row] = &[
            ("h", "h_bucket", &[("le", "0.5")], 1.0, 0.0),
            ("h", "h_bucket", &[("le", "+Inf")], 2.0, 0.0),
            ("h", "h_sum", &[], 9.0, 0.0),
        ];
        write(dir.path(), "histogram_1.db", h);
        write(dir.path(), "histogram_2.db", h);
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "h_bucket", &[("le", "0.5")]), Some(2.0));
        assert_eq!(find(&c, "h_bucket", &[("le", "+Inf")]), Some(6.0));
        assert_eq!(find(&c, "h_count", &[]), Some(6.0));
        assert_eq!(find(&c, "h_sum", &[]), Some(18.0));
    }

    #[test]
    fn foreign_and_corrupt_files_are_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "counter_1.db",
            &[("c", "c_total", &[], 1.0, 0.0)],
        );
        std::fs::write(dir.path().join("counter_2.db"), b"\xff\xff\xff\x7fgarbage").unwrap();
        std::fs::write(dir.path().join("weird.db"), b"").unwrap();
        let c = collect(dir.path(), 0.0);
        assert_eq!(find(&c, "c_total", &[]), Some(1.0));
        assert_eq!(c.read_errors, 2);
    }
}
