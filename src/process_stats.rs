//! Resource usage of this process, read from /proc off the request path.

use std::fs::File;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub cpu_seconds: f64,
    /// Seconds after boot.
    pub start_after_boot_seconds: f64,
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    File::open(path).ok()?.read(buf).ok()
}

fn sysconf(name: libc::c_int) -> f64 {
    // SAFETY: sysconf only reads a system constant; any name is allowed.
    unsafe { libc::sysconf(name) as f64 }
}

/// Reads /proc/self/stat and /proc/self/statm.
pub fn own_process() -> Option<ProcessStats> {
    let mut buf = [0u8; 1024];
    let n = read_small("/proc/self/stat", &mut buf)?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // Fields after the command name, which may itself hold spaces and ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..]
        .split_ascii_whitespace()
        .collect();
    let field = |i: usize| -> Option<f64> { fields.get(i - 3)?.parse().ok() };
    let ticks = sysconf(libc::_SC_CLK_TCK);
    let cpu_seconds = (field(14)? + field(15)?) / ticks;
    let start_after_boot_seconds = field(22)? / ticks;
    let n = read_small("/proc/self/statm", &mut buf)?;
    let statm = std::str::from_utf8(&buf[..n]).ok()?;
    let mut pages = statm
        .split_ascii_whitespace()
        .map(|v| v.parse::<f64>().ok());
    let page = sysconf(libc::_SC_PAGESIZE);
    let virtual_bytes = pages.next()?? * page;
    let resident_bytes = pages.next()?? * page;
    Some(ProcessStats {
        resident_bytes,
        virtual_bytes,
        cpu_seconds,
        start_after_boot_seconds,
    })
}

/// Boot time of the machine, seconds since the Unix epoch (`btime` of /proc/stat).
pub fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of this process and their limit.
pub fn fds() -> Option<(f64, f64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((open, limit.rlim_cur as f64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::own_process().unwrap();
        assert!(s.resident_bytes > 1e6 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.cpu_seconds >= 0.0 && s.start_after_boot_seconds > 0.0);
        assert!(super::boot_time_seconds().unwrap() > 1e9);
        let (open, max) = super::fds().unwrap();
        assert!(open >= 3.0 && max >= open);
    }
}
