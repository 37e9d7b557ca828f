//! The directory's naming rules, in one place: whose file a name is and what
//! it holds.
//!
//! - prometheus_client writes `<kind>_<pid>.db`, gauges `gauge_<mode>_<pid>.db`
//!   (`mode` one of `all min max sum mostrecent`, each also with a `live` prefix);
//! - this core writes `<kind>_worker<pid>.db` in a worker (the live gauges in
//!   `gauge_livesum_worker<pid>.db`) and `<kind>_master<pid>.db` in the master,
//!   so its files never collide with prometheus_client's in the same process;
//! - dead processes are folded into `<kind>_archive.db` and `gauge_<mode>_archive.db`;
//! - native histogram buckets and exemplars live in `native_worker<pid>.ndb` and
//!   `exemplar_worker<pid>.ndb` (prometheus_client's `*.db` glob never reads
//!   them), folded into `native_archive.ndb` and `exemplar_archive.ndb`;
//! - a worker leaves the reason it exited in `exit_<pid>.note`;
//! - `.lock` is the directory lock, `.owner` the owning master's, `.private`
//!   marks a directory a master made for itself.

use crate::model::Kind;

/// Suffix of the files in prometheus_client's format that it reads too.
pub const DB_SUFFIX: &str = ".db";
/// Suffix of native histogram and exemplar files (same format, unseen by prometheus_client).
pub const NDB_SUFFIX: &str = ".ndb";
/// Suffix of exit notes.
pub const NOTE_SUFFIX: &str = ".note";
/// The directory lock's file (`storage/lock.rs`).
pub const LOCK_FILE: &str = ".lock";
/// The owning master's lock and pid (`directory.rs`).
pub const OWNER_FILE: &str = ".owner";
/// Marks a directory a master made for itself (no `PROMETHEUS_MULTIPROC_DIR`),
/// which a later master may remove once its owner is gone.
pub const PRIVATE_MARKER: &str = ".private";
/// How the names of private directories begin (Python's `tempfile.mkdtemp`
/// prefix in `master.py`).
pub const PRIVATE_PREFIX: &str = "gunicorn-prometheus-";

/// Prefix of every worker's live gauge file: one per live worker of this core.
pub const LIVE_WORKER_GAUGES_PREFIX: &str = "gauge_livesum_worker";
/// Prefix of the native histogram files.
pub const NATIVE_PREFIX: &str = "native_";
/// Prefix of the exemplar files.
pub const EXEMPLAR_PREFIX: &str = "exemplar_";
/// The archive that dead workers' native buckets are summed into.
pub const NATIVE_ARCHIVE: &str = "native_archive.ndb";
/// The archive that keeps the latest exemplar of dead workers.
pub const EXEMPLAR_ARCHIVE: &str = "exemplar_archive.ndb";

/// How a gauge merges across processes, from `gauge_<mode>_<pid>.db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaugeMode {
    /// One series per process (a `pid` label).
    All,
    /// The lowest value of any process.
    Min,
    /// The highest value of any process.
    Max,
    /// The sum over processes.
    Sum,
    /// The value with the latest timestamp.
    MostRecent,
}

impl GaugeMode {
    /// The mode of a file name's mode part; a `live` prefix (gone with its
    /// process) merges as the mode it prefixes.
    pub fn parse(s: &str) -> Option<GaugeMode> {
        Some(match s.strip_prefix("live").unwrap_or(s) {
            "all" => GaugeMode::All,
            "min" => GaugeMode::Min,
            "max" => GaugeMode::Max,
            "sum" => GaugeMode::Sum,
            "mostrecent" => GaugeMode::MostRecent,
            _ => return None,
        })
    }

    /// The mode as file names spell it (without `live`).
    pub fn as_str(self) -> &'static str {
        match self {
            GaugeMode::All => "all",
            GaugeMode::Min => "min",
            GaugeMode::Max => "max",
            GaugeMode::Sum => "sum",
            GaugeMode::MostRecent => "mostrecent",
        }
    }
}

/// A `*.db` file name split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbName<'a> {
    /// The metric type, from the first part.
    pub kind: Kind,
    /// A gauge's merge mode (`None` for other kinds).
    pub mode: Option<GaugeMode>,
    /// A `live` gauge mode: its values are gone with its process.
    pub live: bool,
    /// Whose file: a pid (prometheus_client's), `worker<pid>`, `master<pid>`
    /// or `archive`; empty if the name has no such part.
    pub owner: &'a str,
}

impl DbName<'_> {
    /// Splits `name`; `None` if it is not a `*.db` file of a known kind and mode.
    pub fn parse(name: &str) -> Option<DbName<'_>> {
        let stem = name.strip_suffix(DB_SUFFIX)?;
        let mut parts = stem.split('_');
        let kind = Kind::from_file_prefix(parts.next()?)?;
        if kind == Kind::Gauge {
            let mode_part = parts.next()?;
            Some(DbName {
                kind,
                mode: Some(GaugeMode::parse(mode_part)?),
                live: mode_part.starts_with("live"),
                owner: parts.next()?,
            })
        } else {
            Some(DbName {
                kind,
                mode: None,
                live: false,
                owner: parts.next().unwrap_or(""),
            })
        }
    }
}

/// The owner part of a worker's own file names: `worker<pid>`, apart from the
/// `<pid>` of the files prometheus_client writes in the same process.
pub fn worker_owner(pid: u32) -> String {
    format!("worker{pid}")
}

/// The owner part of a master's own file names: `master<pid>`.
pub fn master_owner(pid: u32) -> String {
    format!("master{pid}")
}

/// Every owner part that names a file of process `pid`: prometheus_client's,
/// a worker's of this core, a master's.
pub fn owners_of(pid: u32) -> [String; 3] {
    [pid.to_string(), worker_owner(pid), master_owner(pid)]
}

/// The owner part of a `*.db` name (after its last `_`), whatever its kind.
pub fn owner_of(name: &str) -> Option<&str> {
    name.strip_suffix(DB_SUFFIX)?.rsplit('_').next()
}

/// The pid of the worker or master of this core that a `*.db` file belongs
/// to (`None`: an archive, or a file of prometheus_client's alone).
pub fn core_process_of(name: &str) -> Option<u32> {
    let owner = owner_of(name)?;
    let pid = owner
        .strip_prefix("worker")
        .or_else(|| owner.strip_prefix("master"))?;
    pid.parse().ok()
}

/// `<kind>_<owner>.db`: the counters, histograms or summaries of `owner`.
pub fn db_file(kind: Kind, owner: &str) -> String {
    format!("{}_{owner}{DB_SUFFIX}", kind.as_str())
}

/// `gauge_livesum_<owner>.db`: the live gauges of `owner`, summed over processes.
pub fn live_gauge_file(owner: &str) -> String {
    format!("gauge_livesum_{owner}{DB_SUFFIX}")
}

/// The archive that dead processes' files of `kind` are folded into:
/// `<kind>_archive.db`, gauges `gauge_<mode>_archive.db`.
pub fn archive_file(kind: Kind, mode: Option<GaugeMode>) -> String {
    match mode {
        Some(mode) => format!("{}_{}_archive{DB_SUFFIX}", kind.as_str(), mode.as_str()),
        None => format!("{}_archive{DB_SUFFIX}", kind.as_str()),
    }
}

/// Where worker `pid` leaves the reason it exited: `exit_<pid>.note`.
pub fn exit_note_file(pid: u32) -> String {
    format!("exit_{pid}{NOTE_SUFFIX}")
}

/// The file of worker `pid`'s native histogram buckets: `native_worker<pid>.ndb`.
pub fn native_file(pid: u32) -> String {
    format!("{NATIVE_PREFIX}{}{NDB_SUFFIX}", worker_owner(pid))
}

/// The file of worker `pid`'s exemplars: `exemplar_worker<pid>.ndb`.
pub fn exemplar_file(pid: u32) -> String {
    format!("{EXEMPLAR_PREFIX}{}{NDB_SUFFIX}", worker_owner(pid))
}

/// A native histogram file, a worker's or the archive.
pub fn is_native_file(name: &str) -> bool {
    name.starts_with(NATIVE_PREFIX) && name.ends_with(NDB_SUFFIX)
}

/// An exemplar file, a worker's or the archive.
pub fn is_exemplar_file(name: &str) -> bool {
    name.starts_with(EXEMPLAR_PREFIX) && name.ends_with(NDB_SUFFIX)
}

/// The process a file of the directory belongs to: `*.db` of
/// prometheus_client (`<pid>`), a worker or a master of this core, `*.ndb`
/// of a worker, an exit note. `None` for archives and other names.
pub fn process_of(name: &str) -> Option<u32> {
    let owner = if let Some(stem) = name.strip_suffix(NDB_SUFFIX) {
        stem.rsplit('_').next()?
    } else if let Some(stem) = name.strip_suffix(NOTE_SUFFIX) {
        stem.strip_prefix("exit_")?
    } else {
        owner_of(name)?
    };
    let pid = owner
        .strip_prefix("worker")
        .or_else(|| owner.strip_prefix("master"))
        .unwrap_or(owner);
    pid.parse().ok()
}

/// A name a run of this core or of prometheus_client leaves in the directory
/// (`*.db`, `*.ndb`, exit notes): what a fresh start clears.
pub fn is_left_by_a_run(name: &str) -> bool {
    name.ends_with(DB_SUFFIX) || name.ends_with(NDB_SUFFIX) || name.ends_with(NOTE_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_of_a_core_file_is_read_from_its_name() {
        assert_eq!(core_process_of("counter_worker12.db"), Some(12));
        assert_eq!(core_process_of("gauge_livesum_worker7.db"), Some(7));
        assert_eq!(core_process_of("counter_master3.db"), Some(3));
        assert_eq!(core_process_of("counter_12.db"), None); // prometheus_client's
        assert_eq!(core_process_of("counter_archive.db"), None);
        assert_eq!(core_process_of("histogram_workerx.db"), None);
    }

    #[test]
    fn the_process_of_any_file_of_a_process_is_read_from_its_name() {
        assert_eq!(process_of("counter_worker12.db"), Some(12));
        assert_eq!(process_of("gauge_livesum_master3.db"), Some(3));
        assert_eq!(process_of("counter_12.db"), Some(12)); // prometheus_client's
        assert_eq!(process_of("gauge_all_12.db"), Some(12));
        assert_eq!(process_of("native_worker5.ndb"), Some(5));
        assert_eq!(process_of("exemplar_worker5.ndb"), Some(5));
        assert_eq!(process_of("exit_9.note"), Some(9));
        assert_eq!(process_of("counter_archive.db"), None);
        assert_eq!(process_of("native_archive.ndb"), None);
        assert_eq!(process_of(".owner"), None);
    }

    #[test]
    fn names_are_built_as_prometheus_client_and_this_core_spell_them() {
        assert_eq!(
            db_file(Kind::Counter, &worker_owner(7)),
            "counter_worker7.db"
        );
        assert_eq!(
            db_file(Kind::Histogram, &master_owner(9)),
            "histogram_master9.db"
        );
        assert_eq!(
            live_gauge_file(&worker_owner(7)),
            "gauge_livesum_worker7.db"
        );
        assert_eq!(archive_file(Kind::Summary, None), "summary_archive.db");
        assert_eq!(
            archive_file(Kind::Gauge, Some(GaugeMode::MostRecent)),
            "gauge_mostrecent_archive.db"
        );
        assert_eq!(exit_note_file(12), "exit_12.note");
        assert_eq!(native_file(3), "native_worker3.ndb");
        assert_eq!(exemplar_file(3), "exemplar_worker3.ndb");
        assert!(is_native_file(NATIVE_ARCHIVE) && is_exemplar_file(EXEMPLAR_ARCHIVE));
        assert!(!is_native_file("native_worker3.db"));
    }

    #[test]
    fn db_names_split_into_kind_mode_and_owner() {
        let parsed = DbName::parse("gauge_livemax_worker3.db").unwrap();
        assert_eq!(
            (parsed.kind, parsed.mode, parsed.live, parsed.owner),
            (Kind::Gauge, Some(GaugeMode::Max), true, "worker3")
        );
        let parsed = DbName::parse("counter_123.db").unwrap();
        assert_eq!(
            (parsed.kind, parsed.mode, parsed.owner),
            (Kind::Counter, None, "123")
        );
        assert_eq!(DbName::parse("counter.db").unwrap().owner, "");
        assert!(DbName::parse("gauge_median_1.db").is_none());
        assert!(DbName::parse("gauge_max.db").is_none());
        assert!(DbName::parse("info_1.db").is_none());
        assert!(DbName::parse("counter_1.ndb").is_none());
        assert_eq!(owner_of("gauge_all_master4.db"), Some("master4"));
        assert_eq!(owners_of(5), ["5", "worker5", "master5"]);
        assert!(is_left_by_a_run("exit_5.note") && !is_left_by_a_run(LOCK_FILE));
    }
}
