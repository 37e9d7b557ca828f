//! Rust core of gunicorn-prometheus-exporter. This file only assembles the
//! modules; `python` is the compiled module's face, and `bench` what the
//! benches drive. Every other module is private to the crate.
//!
//! The folders follow a request's data path: `worker` records it in the
//! worker's files (`storage`), `master` keeps the directory and folds the
//! files of processes that died, `scrape` reads the directory into families
//! (`model`), `exposition` writes families as bytes and `server` serves them.
//! `kernel` is what the operating system tells (process resources, TCP_INFO,
//! listen backlogs); `catalogue` names every series in one place.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod catalogue;
mod clock;
mod config;
mod exposition;
mod failures;
mod kernel;
mod master;
mod model;
mod scrape;
mod server;
mod shared_cells;
mod storage;
mod worker;

mod python;

#[cfg(test)]
mod test_python;

pub mod bench;
