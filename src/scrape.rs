//! One scrape: the directory's families plus the exporter's own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::aggregate::collect;
use crate::clock::monotonic_seconds;
use crate::exposition::text;
use crate::model::{Family, Kind, Labels};

pub struct ScrapeSource {
    pub directory: PathBuf,
    pub prefix: String,
    /// Labels of `<prefix>_exporter_build_info`.
    pub build_info: Labels,
    read_errors: AtomicU64,
}

impl ScrapeSource {
    pub fn new(directory: PathBuf, prefix: String, build_info: Labels) -> Self {
        ScrapeSource {
            directory,
            prefix,
            build_info,
            read_errors: AtomicU64::new(0),
        }
    }

    /// Every family this scrape serves.
    pub fn families(&self) -> Vec<Family> {
        let collected = collect(&self.directory, monotonic_seconds());
        let errors = self
            .read_errors
            .fetch_add(collected.read_errors, Ordering::Relaxed)
            + collected.read_errors;
        let mut families = collected.families;
        let p = &self.prefix;
        let mut read_errors = Family::new(
            format!("{p}_exporter_read_errors"),
            "Files or entries of the multiprocess directory that could not be read.",
            Kind::Counter,
        );
        read_errors.push("_total", Vec::new(), errors as f64);
        let mut build_info = Family::new(
            format!("{p}_exporter_build_info"),
            "Versions of the exporter and what it runs in.",
            Kind::Gauge,
        );
        build_info.push("", self.build_info.clone(), 1.0);
        families.push(read_errors);
        families.push(build_info);
        families
    }

    pub fn render_text(&self) -> String {
        let mut out = String::with_capacity(64 << 10);
        text::encode(&self.families(), &mut out);
        out
    }
}
