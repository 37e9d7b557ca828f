//! Encoding families into bytes: knows nothing of where values are stored.

pub mod names;
pub mod negotiate;
pub mod openmetrics;
pub mod protobuf;
pub mod text;
mod wire;
