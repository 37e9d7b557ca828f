//! Resource usage of this process, read from /proc off the request path.

use std::fs::File;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: f64,
    pub cpu_seconds: f64,
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    File::open(path).ok()?.read(buf).ok()
}

/// Reads /proc/self/stat and /proc/self/statm.
pub fn own_process() -> Option<ProcessStats> {
    let mut buf = [0u8; 1024];
    let n = read_small("/proc/self/stat", &mut buf)?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // Fields after the command name, which may itself hold spaces and ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_ascii_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let n = read_small("/proc/self/statm", &mut buf)?;
    let statm = std::str::from_utf8(&buf[..n]).ok()?;
    let resident_pages: f64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    Some(ProcessStats {
        resident_bytes: resident_pages * page,
        cpu_seconds: (utime + stime) / ticks,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::own_process().unwrap();
        assert!(s.resident_bytes > 1e6);
        assert!(s.cpu_seconds >= 0.0);
    }
}
