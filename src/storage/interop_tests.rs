//! Files cross between this core and prometheus_client's own `mmap_dict.py`,
//! both ways. Runs a Python with prometheus_client (`test_python`).

use std::process::Command;

use super::key::encode;
use super::reader::{read_entries, read_used};
use super::MmapWriter;

fn python(script: &str, arg: &str) -> String {
    let out = Command::new(crate::test_python::with_prometheus_client())
        .args(["-c", script, arg])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const LABELS: &[(&str, &str)] = &[
    ("worker_id", "1"),
    ("path", "/caf\u{e9} \"q\"\n\\"),
    ("emoji", "\u{1F600}"),
];

#[test]
fn a_file_written_by_the_core_reads_back_identically_in_prometheus_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter_11.db");
    let mut w = MmapWriter::open(&path).unwrap();
    let mut expected = Vec::new();
    for i in 0..300 {
        let key = encode(
            "m",
            "m_total",
            &[LABELS, &[("i", &i.to_string())]].concat(),
            "help \u{e9}",
        );
        let slot = w.slot(&key).unwrap();
        slot.set(i as f64 * 1.5);
        slot.set_timestamp(-(i as f64));
        expected.push(serde_json::json!([key, i as f64 * 1.5, -(i as f64)]));
    }
    let got = python(
        "import json,sys; from prometheus_client.mmap_dict import MmapedDict as M\n\
         print(json.dumps([[k, v, t] for k, v, t, _ in M.read_all_values_from_file(sys.argv[1])]))",
        path.to_str().unwrap(),
    );
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got, serde_json::Value::Array(expected));
}

#[test]
fn keys_are_byte_for_byte_those_of_prometheus_client() {
    let ours = encode(
        "m",
        "m_bucket",
        &[LABELS, &[("le", "+Inf")]].concat(),
        "h\u{e9}lp",
    );
    let theirs = python(
        "import sys; from prometheus_client.mmap_dict import mmap_key\n\
         sys.stdout.write(mmap_key('m', 'm_bucket', ['worker_id', 'path', 'emoji', 'le'],\n\
         ['1', '/caf\\u00e9 \"q\"\\n\\\\', '\\U0001F600', '+Inf'], 'h\\u00e9lp'))",
        "",
    );
    assert_eq!(ours, theirs);
}

#[test]
fn a_file_written_by_prometheus_client_reads_back_identically_in_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gauge_livesum_12.db");
    let listing = python(
        "import json,sys; from prometheus_client.mmap_dict import MmapedDict, mmap_key\n\
         d = MmapedDict(sys.argv[1]); out = []\n\
         for i in range(500):\n\
         \x20   k = mmap_key('g', 'g', ['i', 'x'], [str(i), '\\u00e9' * (i % 13)], 'help')\n\
         \x20   d.write_value(k, i / 7, 1e9 + i); out.append([k, i / 7, 1e9 + i])\n\
         d.close(); print(json.dumps(out))",
        path.to_str().unwrap(),
    );
    let expected: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let mut buf = Vec::new();
    read_used(&path, &mut buf).unwrap();
    let (entries, error) = read_entries(&buf);
    assert!(error.is_none());
    let got: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| serde_json::json!([e.key, e.value, e.timestamp]))
        .collect();
    assert_eq!(serde_json::Value::Array(got), expected);
    // And the core can go on writing to it, as a restarted process would.
    let mut w = MmapWriter::open(&path).unwrap();
    let key = entries[3].key.to_owned();
    w.slot(&key).unwrap().add(1.0);
    read_used(&path, &mut buf).unwrap();
    assert_eq!(read_entries(&buf).0[3].value, 3.0 / 7.0 + 1.0);
}
