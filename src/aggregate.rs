//! Merging every process's file of a directory into families, with the
//! semantics of prometheus_client's `MultiProcessCollector`: files in, families out.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::exposition::float::go_float;
use crate::model::{Family, Kind, Labels};
use crate::storage::key::{self, ParsedKey};
use crate::storage::reader::{read_entries, read_used};

/// How a gauge merges across processes (from `gauge_<mode>_<pid>.db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GaugeMode {
    All,
    Min,
    Max,
    Sum,
    MostRecent,
}

impl GaugeMode {
    fn parse(s: &str) -> Option<GaugeMode> {
        Some(match s.strip_prefix("live").unwrap_or(s) {
            "all" => GaugeMode::All,
            "min" => GaugeMode::Min,
            "max" => GaugeMode::Max,
            "sum" => GaugeMode::Sum,
            "mostrecent" => GaugeMode::MostRecent,
            _ => return None,
        })
    }
}

/// A file name split into its parts.
struct FileName<'a> {
    kind: Kind,
    mode: Option<GaugeMode>,
    pid: &'a str,
}

fn parse_file_name(name: &str) -> Option<FileName<'_>> {
    let stem = name.strip_suffix(".db")?;
    let mut parts = stem.split('_');
    let kind = Kind::from_file_prefix(parts.next()?)?;
    if kind == Kind::Gauge {
        let mode = GaugeMode::parse(parts.next()?)?;
        Some(FileName {
            kind,
            mode: Some(mode),
            pid: parts.next()?,
        })
    } else {
        Some(FileName {
            kind,
            mode: None,
            pid: parts.next().unwrap_or(""),
        })
    }
}

#[derive(Default)]
struct Series {
    /// Sample name -> (value, timestamp).
    values: BTreeMap<String, (f64, f64)>,
    /// Histogram buckets: upper bound -> count in that bucket (not cumulative).
    buckets: Vec<(f64, f64)>,
}

struct FamilyAcc {
    help: String,
    kind: Kind,
    mode: Option<GaugeMode>,
    series: BTreeMap<Labels, Series>,
}

/// Result of one pass over a directory.
pub struct Collected {
    pub families: Vec<Family>,
    /// Files (or parts of files) that could not be read.
    pub read_errors: u64,
    /// Names of the `*.db` files read.
    pub files: Vec<String>,
}

/// Reads every `*.db` file of `dir`. `now_monotonic` (seconds, CLOCK_MONOTONIC)
/// resolves running clocks: a counter entry with a negative timestamp `t` is
/// a clock that has been running since `-t`, worth `max(value, now + t)`.
pub fn collect(dir: &Path, now_monotonic: f64) -> Collected {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".db"))
            .collect(),
        Err(_) => {
            return Collected {
                families: Vec::new(),
                read_errors: 1,
                files: Vec::new(),
            }
        }
    };
    names.sort();
    let mut read_errors = 0;
    let mut acc: BTreeMap<String, FamilyAcc> = BTreeMap::new();
    let mut keys: HashMap<String, Option<ParsedKey>> = HashMap::new();
    let mut buf = Vec::new();
    for name in &names {
        let Some(file) = parse_file_name(name) else {
            read_errors += 1;
            continue;
        };
        let unreadable = match read_used(&dir.join(name), &mut buf) {
            Ok(()) => false,
            // A live gauge file may be removed between listing and reading.
            Err(crate::storage::ReadError::Io(_)) if name.starts_with("gauge_live") => continue,
            Err(_) => true,
        };
        let (entries, error) = read_entries(&buf);
        if unreadable || error.is_some() {
            read_errors += 1;
        }
        for entry in entries {
            let parsed = keys
                .entry(entry.key.to_owned())
                .or_insert_with(|| key::parse(entry.key));
            let Some(parsed) = parsed else {
                read_errors += 1;
                continue;
            };
            let family = acc
                .entry(parsed.metric_name.clone())
                .or_insert_with(|| FamilyAcc {
                    help: parsed.help.clone(),
                    kind: file.kind,
                    mode: file.mode,
                    series: BTreeMap::new(),
                });
            if !add_sample(
                family,
                &file,
                parsed,
                entry.value,
                entry.timestamp,
                now_monotonic,
            ) {
                read_errors += 1;
            }
        }
    }
    let families = acc.into_iter().map(|(name, f)| finish(name, f)).collect();
    Collected {
        families,
        read_errors,
        files: names,
    }
}

fn add_sample(
    f: &mut FamilyAcc,
    file: &FileName,
    key: &ParsedKey,
    value: f64,
    ts: f64,
    now: f64,
) -> bool {
    match f.kind {
        Kind::Gauge => {
            let mode = f.mode.unwrap_or(GaugeMode::All);
            let mut labels = key.labels.clone();
            if mode == GaugeMode::All {
                labels.push(("pid".to_owned(), file.pid.to_owned()));
            }
            let series = f.series.entry(labels).or_default();
            let slot = series.values.get_mut(&key.sample_name);
            match (mode, slot) {
                (GaugeMode::MostRecent, Some(cur)) if ts > cur.1 => *cur = (value, ts),
                (GaugeMode::MostRecent, None) if ts > 0.0 => {
                    series.values.insert(key.sample_name.clone(), (value, ts));
                }
                (GaugeMode::MostRecent, _) => {}
                (GaugeMode::Min, Some(cur)) => cur.0 = cur.0.min(value),
                (GaugeMode::Max, Some(cur)) => cur.0 = cur.0.max(value),
                (GaugeMode::Sum, Some(cur)) => cur.0 += value,
                (GaugeMode::All, Some(cur)) => cur.0 = value,
                (_, None) => {
                    series.values.insert(key.sample_name.clone(), (value, 0.0));
                }
            }
        }
        Kind::Histogram => {
            if let Some(i) = key.labels.iter().position(|(k, _)| k == "le") {
                let Ok(bound) = key.labels[i].1.parse::<f64>() else {
                    return false;
                };
                let mut labels = key.labels.clone();
                labels.remove(i);
                f.series
                    .entry(labels)
                    .or_default()
                    .buckets
                    .push((bound, value));
            } else {
                add_value(f, key, value);
            }
        }
        Kind::Counter if ts < 0.0 => add_value(f, key, value.max(now + ts)),
        Kind::Counter | Kind::Summary => add_value(f, key, value),
    }
    true
}

fn add_value(f: &mut FamilyAcc, key: &ParsedKey, value: f64) {
    let series = f.series.entry(key.labels.clone()).or_default();
    series
        .values
        .entry(key.sample_name.clone())
        .or_insert((0.0, 0.0))
        .0 += value;
}

fn finish(name: String, acc: FamilyAcc) -> Family {
    let mut family = Family::new(name, acc.help, acc.kind);
    for (labels, mut series) in acc.series {
        if !series.buckets.is_empty() {
            series.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut cumulative = 0.0;
            let mut i = 0;
            while i < series.buckets.len() {
                let bound = series.buckets[i].0;
                while i < series.buckets.len() && series.buckets[i].0 == bound {
                    cumulative += series.buckets[i].1;
                    i += 1;
                }
                let mut with_le = labels.clone();
                with_le.push(("le".to_owned(), go_float(bound)));
                family.push("_bucket", with_le, cumulative);
            }
            series
                .values
                .insert(format!("{}_count", family.name), (cumulative, 0.0));
        }
        for (sample_name, (value, _)) in series.values {
            family.samples.push(crate::model::Sample {
                name: sample_name,
                labels: labels.clone(),
                value,
            });
        }
    }
    family
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

    fn sample(c: &Collected, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == labels)
            .map(|s| s.value)
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
        assert_eq!(sample(&c, "c_total", &[("a", "x")]), Some(5.0));
        assert_eq!(sample(&c, "b_total", &[]), Some(5.0));
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
        assert_eq!(sample(&c, "livesum", &[]), Some(11.0));
        assert_eq!(sample(&c, "max", &[]), Some(7.0));
        assert_eq!(sample(&c, "min", &[]), Some(4.0));
        assert_eq!(sample(&c, "all", &[("pid", "2")]), Some(7.0));
        assert_eq!(sample(&c, "mostrecent", &[]), Some(4.0));
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
        assert_eq!(sample(&c, "h_bucket", &[("le", "0.5")]), Some(2.0));
        assert_eq!(sample(&c, "h_bucket", &[("le", "+Inf")]), Some(6.0));
        assert_eq!(sample(&c, "h_count", &[]), Some(6.0));
        assert_eq!(sample(&c, "h_sum", &[]), Some(18.0));
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
        assert_eq!(sample(&c, "c_total", &[]), Some(1.0));
        assert_eq!(c.read_errors, 2);
    }
}
