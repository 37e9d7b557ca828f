//! The multiprocess directory: preparing it at master start and the
//! bookkeeping for a process that died.

use std::fs;
use std::io;
use std::path::Path;

use crate::clock::monotonic_seconds;
use crate::storage::reader::{read_entries, read_used};
use crate::storage::MmapWriter;

/// Makes `dir` if needed and removes `*.db` files left by an earlier run.
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".db") && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    let probe = dir.join(".write-test");
    fs::write(&probe, b"")?;
    fs::remove_file(probe)
}

/// What prometheus_client's `mark_process_dead` does (drop the `live*` gauge
/// files of `pid`), and stop the running clocks the process left behind so
/// its counters stop growing.
pub fn mark_process_dead(dir: &Path, pid: u32) -> io::Result<()> {
    let suffix = format!("_{pid}.db");
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.ends_with(&suffix) {
            continue;
        }
        if name.starts_with("gauge_live") {
            match fs::remove_file(dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else if name.starts_with("counter_") {
            settle_running_clocks(&dir.join(&name))?;
        }
    }
    Ok(())
}

fn settle_running_clocks(path: &Path) -> io::Result<()> {
    let mut buf = Vec::new();
    if read_used(path, &mut buf).is_err() {
        return Ok(());
    }
    let (entries, _) = read_entries(&buf);
    let running: Vec<(String, f64, f64)> = entries
        .iter()
        .filter(|e| e.timestamp < 0.0)
        .map(|e| (e.key.to_owned(), e.value, e.timestamp))
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let now = monotonic_seconds();
    let mut writer = MmapWriter::open(path)?;
    for (key, value, anchor) in running {
        let slot = writer.slot(&key)?;
        slot.set(value.max(now + anchor));
        slot.set_timestamp(0.0);
    }
    Ok(())
}
