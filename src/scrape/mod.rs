//! Reading the directory into families at each scrape: one registry of
//! every key and series read (`registry`), one reader per kind of file
//! (`classic` for `*.db`, `native` and `exemplars` for `*.ndb`), the files
//! of every process merged as prometheus_client's `MultiProcessCollector`
//! merges them (`aggregate`), and one scrape with the exporter's own
//! families (`source`).

pub mod aggregate;
pub mod classic;
pub mod exemplars;
pub mod native;
pub mod registry;
pub mod source;
