//! What a worker slot recorded before this process: the `route` and
//! `error_type` values its series have in the counter archive (where the
//! master folded the slot's earlier workers). A new worker of the slot starts
//! with them, so that the cap on distinct values holds per slot across
//! restarts, not per process.

use std::path::Path;

use crate::model::Kind;
use crate::storage::key;
use crate::storage::names;
use crate::storage::reader::{read_entries, read_used};

/// The distinct values of `route` and of `error_type`, in the order the
/// archive holds them, of the series of `worker_id` (`None`: series without
/// a `worker_id`, all slots alike) in `dir`. Nothing if there is no archive
/// (a fresh directory) or it cannot be read.
pub fn archived_label_values(dir: &Path, worker_id: Option<&str>) -> (Vec<String>, Vec<String>) {
    let (mut routes, mut error_types) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    let path = dir.join(names::archive_file(Kind::Counter, None));
    if read_used(&path, &mut buf).is_err() {
        return (routes, error_types);
    }
    let (entries, _) = read_entries(&buf);
    for entry in entries {
        if !entry.key.contains("\"route\"") {
            continue; // a series with neither label: no parse
        }
        let Some(parsed) = key::parse(entry.key) else {
            continue;
        };
        let slot = parsed
            .labels
            .iter()
            .find(|(name, _)| name == "worker_id")
            .map(|(_, v)| v.as_str());
        if slot != worker_id {
            continue;
        }
        for (name, value) in parsed.labels {
            let values = match name.as_str() {
                "route" => &mut routes,
                "error_type" => &mut error_types,
                _ => continue,
            };
            if !values.contains(&value) {
                values.push(value);
            }
        }
    }
    (routes, error_types)
}
