//! Scrape time of a directory with 1, 8, 32, 64 live workers × 200 series,
//! after 0 and 10,000 worker deaths folded into archives, against prometheus_client's
//! MultiProcessCollector over the same files (same run). Also the number of
//! files left; each format's time with native buckets and exemplars; and
//! prometheus_client's own files of 64 processes × 200 labelled histograms
//! (`prometheus_client_files.py`), whose samples must be MultiProcessCollector's.
//! Run: `cargo bench --bench scrape` (PYTHON= a Python with prometheus_client;
//! default python3; ONLY=prometheus_client or ONLY=formats: that part alone).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use _core::bench::{
    encode, worker_owner, ArchiveCompactor, ExemplarFile, Format, HistogramExemplars, MmapWriter,
    NativeFile, Scrapes, TraceParent,
};

const COUNTER_SERIES: usize = 120;
const HISTOGRAMS: usize = 5;
const BOUNDS: [&str; 15] = [
    "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0",
    "7.5", "10.0", "+Inf",
];

/// Writes the files of one worker: 120 counter series and 5 histograms of
/// 16 samples each, 200 series in all, in the slot `worker_id`.
fn write_worker(dir: &Path, pid: u32, worker_id: u32) {
    let id = worker_owner(pid);
    let wid = worker_id.to_string();
    let mut counters = MmapWriter::open(&dir.join(format!("counter_{id}.db"))).unwrap();
    for i in 0..COUNTER_SERIES {
        let status = (200 + i).to_string();
        let k = encode(
            "gunicorn_worker_requests",
            "gunicorn_worker_requests_total",
            &[("method", "GET"), ("status", &status), ("worker_id", &wid)],
            "Requests.",
        );
        counters.slot(&k).unwrap().add(1.0 + (pid % 7) as f64);
    }
    let mut histograms = MmapWriter::open(&dir.join(format!("histogram_{id}.db"))).unwrap();
    let name = "gunicorn_worker_request_duration_seconds";
    for h in 0..HISTOGRAMS {
        let status = (200 + h).to_string();
        for le in BOUNDS {
            let labels = [
                ("le", le),
                ("method", "GET"),
                ("status", status.as_str()),
                ("worker_id", wid.as_str()),
            ];
            histograms
                .slot(&encode(
                    name,
                    &format!("{name}_bucket"),
                    &labels,
                    "Duration.",
                ))
                .unwrap()
                .add(1.0);
        }
        let labels = [
            ("method", "GET"),
            ("status", status.as_str()),
            ("worker_id", wid.as_str()),
        ];
        histograms
            .slot(&encode(name, &format!("{name}_sum"), &labels, "Duration."))
            .unwrap()
            .add(0.5);
    }
    let mut gauges = MmapWriter::open(&dir.join(format!("gauge_livesum_{id}.db"))).unwrap();
    let k = encode(
        "gunicorn_worker_memory_bytes",
        "gunicorn_worker_memory_bytes",
        &[("worker_id", &wid)],
        "RSS.",
    );
    gauges.slot(&k).unwrap().set(3e7);
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn ours_ms(dir: &Path, scrapes: usize) -> (f64, usize) {
    let source = Scrapes::new(dir.to_owned(), "gunicorn");
    let mut bytes = 0;
    let times = (0..scrapes)
        .map(|_| {
            let t = Instant::now();
            bytes = source.render(Format::Text).len();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (median_ms(times), bytes)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn collector_ms(dir: &Path) -> f64 {
    let python = python();
    let script = r#"
import sys, time
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
r = CollectorRegistry()
MultiProcessCollector(r, path=sys.argv[1])
ts = []
for _ in range(7):
    t = time.perf_counter()
    generate_latest(r)
    ts.append((time.perf_counter() - t) * 1e3)
print(sorted(ts)[len(ts) // 2])
"#;
    let out = Command::new(python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The native buckets and exemplars of one worker's 5 duration histograms:
/// durations from 1 ms to 1 s (about 80 buckets at schema 3), an exemplar per
/// classic bucket.
fn write_worker_native(dir: &Path, pid: u32, worker_id: u32) {
    let wid = worker_id.to_string();
    let native = NativeFile::open(dir, pid, 3).unwrap();
    let exemplars = ExemplarFile::open(dir, pid).unwrap();
    let bounds = [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
    let trace = TraceParent {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        span_id: 0x00f067aa0ba902b7,
    };
    let name = "gunicorn_worker_request_duration_seconds";
    for h in 0..HISTOGRAMS {
        let status = (200 + h).to_string();
        let labels = [
            ("method", "GET"),
            ("status", status.as_str()),
            ("worker_id", wid.as_str()),
        ];
        let series = native.series(name, &labels);
        let traced = HistogramExemplars::new(&exemplars, name, &labels, &bounds);
        let mut v = 0.001;
        while v < 1.0 {
            series.observe(v);
            traced.observe(&bounds, v, &trace, 1.7e9);
            v *= 1.09;
        }
    }
}

/// Scrape time of 32 workers x 200 series (with native buckets and
/// exemplars) in each format (`FORMAT=`: one of them).
fn formats(scrapes: usize) {
    let workers = 32;
    let dir = tempfile::tempdir().unwrap();
    for slot in 1..=workers {
        write_worker(dir.path(), slot, slot);
        write_worker_native(dir.path(), slot, slot);
    }
    let source = Scrapes::new(dir.path().to_owned(), "gunicorn");
    println!();
    println!("scrape of {workers} live workers x 200 series, native buckets and exemplars on the 5 histograms (median of {scrapes})");
    println!("{:<14}{:>11}{:>10}", "format", "ms", "bytes");
    for (name, format) in [
        ("text 0.0.4", Format::Text),
        ("openmetrics", Format::OpenMetrics),
        ("protobuf", Format::Protobuf),
    ] {
        // FORMAT=protobuf (or text, openmetrics): that format alone.
        if std::env::var("FORMAT").is_ok_and(|f| !name.starts_with(f.as_str())) {
            continue;
        }
        let mut bytes = 0;
        let times = (0..scrapes)
            .map(|_| {
                let t = Instant::now();
                bytes = source.render(format).len();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let ms = median_ms(times);
        // DUMP=<dir>: the last body of each format, to compare builds.
        if let Ok(dump) = std::env::var("DUMP") {
            let file = Path::new(&dump).join(name.replace(' ', "_"));
            std::fs::write(file, source.render(format)).unwrap();
        }
        println!("{name:<14}{ms:>11.2}{bytes:>10}");
        println!("RESULT {{\"format\": \"{name}\", \"workers\": {workers}, \"ms\": {ms:.3}}}");
    }
}

/// `benches/prometheus_client_files.py` with these arguments: its output.
fn prometheus_client_files_py(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prometheus_client_files.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The workload the scrape target was set on: prometheus_client's own files
/// of 64 processes × (200 histograms of 15 buckets + 200 counters), labels
/// route, method and status summed across pids, served as text; against
/// MultiProcessCollector + generate_latest on the same files, same run.
fn prometheus_client_files(scrapes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    prometheus_client_files_py(&["write", d]);
    let source = Scrapes::new(dir.path().to_owned(), "gunicorn");
    let mut times = Vec::new();
    let scrape = |times: &mut Vec<f64>| {
        let mut body = Vec::new();
        for _ in 0..scrapes {
            let t = Instant::now();
            body = source.render(Format::Text);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        body
    };
    // Ours before and after MultiProcessCollector's (seconds long): a
    // machine whose load changes meanwhile weighs on both.
    let body = scrape(&mut times);
    // The samples are checked with prometheus_client's parser, in Python.
    let ours_file = dir.path().join("ours.txt");
    std::fs::write(&ours_file, &body).unwrap();
    let (theirs, samples) = if std::env::var("NO_MPC").is_ok() {
        (f64::NAN, 0)
    } else {
        let out = prometheus_client_files_py(&["collect", d, "7", ours_file.to_str().unwrap()]);
        let mut words = out.split_whitespace().map(|w| w.parse::<f64>().unwrap());
        (words.next().unwrap(), words.next().unwrap() as usize)
    };
    scrape(&mut times);
    let ours = median_ms(times);
    println!();
    println!("prometheus_client's files, 64 processes x (200 histograms of 15 buckets + 200 counters), route/method/status summed across pids (median of {} scrapes, half before and half after MultiProcessCollector's median of 7; samples identical)", 2 * scrapes);
    println!(
        "{:<11}{:>11}{:>11}{:>13}{:>10}{:>9}",
        "processes", "this (ms)", "MPC (ms)", "MPC / this", "samples", "bytes"
    );
    println!(
        "{:<11}{ours:>11.2}{theirs:>11.2}{:>13.1}{:>10}{:>9}",
        64,
        theirs / ours,
        samples,
        body.len()
    );
    println!(
        "RESULT {{\"prometheus_client_files\": 64, \"this_ms\": {ours:.3}, \"mpc_ms\": {}, \"samples\": {}}}",
        if theirs.is_nan() { "null".to_string() } else { format!("{theirs:.3}") },
        samples
    );
}

fn list(var: &str, default: &[u32]) -> Vec<u32> {
    match std::env::var(var) {
        Ok(v) => v
            .split(',')
            .map(|x| x.trim().parse().expect("a list of numbers"))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn main() {
    let scrapes: usize = std::env::var("SCRAPES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    match std::env::var("ONLY").as_deref() {
        Ok("formats") => return formats(scrapes),
        Ok("prometheus_client") => return prometheus_client_files(scrapes),
        _ => {}
    }
    println!("scrape of N live workers x 200 series (median of {scrapes} scrapes; MultiProcessCollector median of 7)");
    println!(
        "{:<9}{:<9}{:>11}{:>11}{:>13}{:>10}{:>8}",
        "workers", "deaths", "this (ms)", "MPC (ms)", "MPC / this", "bytes", "files"
    );

    for workers in list("WORKERS", &[1, 8, 32, 64]) {
        for deaths in list("DEATHS", &[0, 10_000]) {
            let dir = tempfile::tempdir().unwrap();
            let compactor = ArchiveCompactor::default();
            for pid in 0..deaths {
                let dead = 1_000_000 + pid;
                write_worker(dir.path(), dead, pid % workers + 1);
                compactor.retire(dir.path(), dead).unwrap();
            }
            for slot in 1..=workers {
                write_worker(dir.path(), slot, slot);
            }
            let files = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".db")
                })
                .count();
            let (ours, bytes) = ours_ms(dir.path(), scrapes);
            let theirs = if std::env::var("NO_MPC").is_ok() {
                f64::NAN
            } else {
                collector_ms(dir.path())
            };
            println!(
                "{workers:<9}{deaths:<9}{ours:>11.2}{theirs:>11.2}{:>13.1}{bytes:>10}{files:>8}",
                theirs / ours
            );
            println!(
                "RESULT {{\"workers\": {workers}, \"deaths\": {deaths}, \"this_ms\": {ours:.3}, \"mpc_ms\": {}, \"files\": {files}}}",
                if theirs.is_nan() { "null".to_string() } else { format!("{theirs:.3}") }
            );
        }
    }
    if std::env::var("NO_FORMATS").is_err() {
        formats(scrapes);
    }
    prometheus_client_files(scrapes);
}
