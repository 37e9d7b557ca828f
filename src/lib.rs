//! Rust core of gunicorn-prometheus-exporter. This file only assembles the
//! modules; `python` is the compiled module's face, and `bench` what the
//! benches drive. Every other module is private to the crate.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod aggregate;
mod archive;
mod backlog;
mod basic_auth;
mod clock;
mod config;
mod directory;
mod exemplar;
mod exemplar_index;
mod exposition;
mod failures;
mod histogram;
mod labels;
mod master_meter;
mod meter;
mod model;
mod native_histogram;
mod process_stats;
mod queue_time;
mod route;
mod scrape;
mod server;
mod storage;
#[cfg(target_os = "linux")]
mod tcp_info;
mod web_config;

mod python;

pub mod bench;
