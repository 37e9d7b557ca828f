//! A request in a worker becomes values in the worker's own files: the hot
//! path (`meter`), its bounded labels (`labels`, `route`), its histograms
//! (classic, native) and exemplars, and queue time.

pub mod exclude;
pub mod exemplar;
pub mod histogram;
pub mod labels;
pub mod meter;
pub mod native_histogram;
pub mod queue_time;
pub mod route;
pub mod slot_history;
