//! Rust core of gunicorn-prometheus-exporter. This file only assembles the
//! modules; `python` is the compiled module's face.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod aggregate;
pub mod archive;
pub mod backlog;
pub mod basic_auth;
pub mod clock;
pub mod config;
pub mod directory;
pub mod exemplar;
pub mod exposition;
pub mod failures;
pub mod histogram;
pub mod labels;
pub mod master_meter;
pub mod meter;
pub mod model;
pub mod native_histogram;
pub mod process_stats;
pub mod queue_time;
pub mod route;
pub mod scrape;
pub mod server;
pub mod storage;
pub mod web_config;

mod python;
