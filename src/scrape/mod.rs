//! Reading the directory into families at each scrape: the files of every
//! process merged as prometheus_client's `MultiProcessCollector` merges them
//! (`aggregate`), the exemplars a scrape serves (`exemplar_index`), and one
//! scrape with the exporter's own families (`source`).

pub mod aggregate;
pub mod exemplar_index;
pub mod source;
