//! What the operating system tells: this process's resources
//! (`process_stats`), a socket's `TCP_INFO` (`tcp_info`), and the backlog of
//! the listeners (`backlog`).

pub mod backlog;
pub mod process_stats;
#[cfg(target_os = "linux")]
pub mod tcp_info;
