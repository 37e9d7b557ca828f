//! Resource usage of this process, from the sysinfo crate (Linux, macOS, ...),
//! off the request path. Only this process is refreshed, and only its memory
//! and CPU time; open file descriptors are read from /proc on Linux only.

use std::cell::RefCell;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Memory, CPU time and start of a process, at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident memory.
    pub resident_bytes: f64,
    /// Virtual memory.
    pub virtual_bytes: f64,
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Seconds after boot.
    pub start_after_boot_seconds: f64,
}

thread_local! {
    /// Kept between samples, so sysinfo reuses what it learnt of this process.
    /// Per thread, not behind a lock: a worker forked while another thread of
    /// the master held a lock would inherit it held. Keyed by pid, since a
    /// forked worker inherits its master's thread's copy.
    static SYSTEM: RefCell<Option<(u32, System)>> = const { RefCell::new(None) };
}

/// Memory, CPU time and start of this process.
pub fn own_process() -> Option<ProcessStats> {
    SYSTEM.with(|cell| {
        let mut cell = cell.borrow_mut();
        let id = std::process::id();
        let system = match &mut *cell {
            Some((owner, system)) if *owner == id => system,
            slot => &mut slot.insert((id, System::new())).1,
        };
        sample(system, Pid::from_u32(id))
    })
}

fn sample(system: &mut System, pid: Pid) -> Option<ProcessStats> {
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    let process = system.process(pid)?;
    Some(ProcessStats {
        resident_bytes: process.memory() as f64,
        virtual_bytes: process.virtual_memory() as f64,
        cpu_seconds: process.accumulated_cpu_time() as f64 / 1e3,
        start_after_boot_seconds: start_after_boot_seconds()
            .unwrap_or_else(|| process.start_time().saturating_sub(System::boot_time()) as f64),
    })
}

/// When this process started, in seconds after boot, to the clock tick as
/// prometheus_client reads it (sysinfo rounds to whole seconds, which cannot
/// tell a USR2 successor from its parent).
#[cfg(target_os = "linux")]
fn start_after_boot_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: f64 = after_name.split(' ').nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant; any name is allowed.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

#[cfg(not(target_os = "linux"))]
fn start_after_boot_seconds() -> Option<f64> {
    None
}

/// Boot time of the machine, seconds since the Unix epoch.
pub fn boot_time_seconds() -> Option<f64> {
    Some(System::boot_time() as f64).filter(|&t| t > 0.0)
}

/// Open file descriptors of this process and their limit.
#[cfg(target_os = "linux")]
pub fn fds() -> Option<(f64, f64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`, a valid rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((open, limit.rlim_cur as f64))
}

/// Not measured outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn fds() -> Option<(f64, f64)> {
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn reads_own_process() {
        let s = super::own_process().unwrap();
        assert!(s.resident_bytes > 1e6 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.cpu_seconds >= 0.0 && s.start_after_boot_seconds > 0.0);
        assert!(super::boot_time_seconds().unwrap() > 1e9);
        #[cfg(target_os = "linux")]
        {
            let (open, max) = super::fds().unwrap();
            assert!(open >= 3.0 && max >= open);
        }
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::own_process().unwrap().cpu_seconds;
        // Work until this thread has used 0.3 s of CPU (by the kernel's own
        // count, not the wall clock: the machine may be busy).
        let start = thread_cpu_seconds();
        let mut x = 0u64;
        while thread_cpu_seconds() - start < 0.3 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let after = super::own_process().unwrap().cpu_seconds;
        assert!(after - before >= 0.2, "{before} -> {after}");
    }

    fn thread_cpu_seconds() -> f64 {
        // SAFETY: all-zero is a valid timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: clock_gettime writes the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }
}
