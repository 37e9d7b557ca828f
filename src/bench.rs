//! What `benches/` drive, and nothing else: write a directory as workers
//! would, fold dead workers' files, scrape it, sample a process.

use std::path::PathBuf;

pub use crate::exposition::negotiate::Format;
pub use crate::kernel::process_stats::own_process;
pub use crate::master::archive::ArchiveCompactor;
pub use crate::storage::key::encode;
pub use crate::storage::names::worker_owner;
pub use crate::storage::MmapWriter;
pub use crate::worker::exemplar::{ExemplarFile, HistogramExemplars, TraceParent};
pub use crate::worker::native_histogram::NativeFile;

/// Scrapes of one directory, as the master's metrics server makes them.
pub struct Scrapes(crate::scrape::source::ScrapeSource);

impl Scrapes {
    /// Scrapes of `directory` whose own families are named `<prefix>_…`
    /// (no build info labels, no start time).
    pub fn new(directory: PathBuf, prefix: &str) -> Scrapes {
        Scrapes(crate::scrape::source::ScrapeSource::new(
            directory,
            prefix.to_owned(),
            Vec::new(),
            None,
        ))
    }

    /// The body of one scrape in `format`.
    pub fn render(&self, format: Format) -> Vec<u8> {
        self.0.render(format)
    }
}
