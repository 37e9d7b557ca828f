//! Request queue time: how long a request waited before a worker picked it up.
//!
//! Read from the `X-Request-Start` / `X-Queue-Start` header a proxy sets, or,
//! without one, from the kernel: the age of the request's bytes on its TCP
//! socket (TCP_INFO `tcpi_last_data_recv`).

/// Buckets of `request_queue_seconds`: queueing is short when all is well.
pub const QUEUE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A header up to this far in the future is clock skew between the proxy and
/// this host: the request did not wait (0). Further ahead, the header is wrong
/// and ignored.
pub const CLOCK_SKEW_TOLERANCE_SECONDS: f64 = 1.0;

/// A header older than this is not a queue time but a broken proxy: ignored.
pub const MAX_QUEUE_SECONDS: f64 = 3600.0;

/// A worker idle this long when a request began took it as it came: it did
/// not queue, and the kernel is not asked. Longer than the worker's own loop
/// between two queued requests (accept, parse: well under a millisecond).
pub const IDLE_NS: u64 = 2_000_000;

/// The kernel is asked at most this often per worker (one syscall each): a
/// saturated worker's queue time is a sample of its requests, not all.
pub const PROBE_INTERVAL_NS: u64 = 10_000_000;

/// 2000-01-01 (New Relic's earliest acceptable time): a value is read as
/// nanoseconds, microseconds, milliseconds or seconds, whichever first puts it
/// after this date.
const EARLIEST_UNIX_SECONDS: f64 = 946_684_800.0;

/// The Unix time (seconds) a proxy stamped on a request: `t=1732000000.123`
/// (nginx `t=${msec}`), `1732000000123` (Heroku, ms), seconds, microseconds or
/// nanoseconds. `None` for anything else.
pub fn parse_request_start(value: &[u8]) -> Option<f64> {
    let mut v = value.trim_ascii();
    if let Some(rest) = v.strip_prefix(b"t=") {
        v = rest;
    }
    let end = v
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(v.len());
    let number: f64 = std::str::from_utf8(&v[..end]).ok()?.parse().ok()?;
    [1e9, 1e6, 1e3, 1.0]
        .into_iter()
        .map(|divisor| number / divisor)
        .find(|&t| t > EARLIEST_UNIX_SECONDS)
}

/// Queue time of a request that a worker picked up at `began` (Unix seconds),
/// stamped `stamped` by the proxy; `None` when the stamp cannot be right.
pub fn from_stamp(stamped: f64, began: f64) -> Option<f64> {
    let waited = began - stamped;
    if waited >= 0.0 {
        (waited <= MAX_QUEUE_SECONDS).then_some(waited)
    } else {
        (-waited <= CLOCK_SKEW_TOLERANCE_SECONDS).then_some(0.0)
    }
}

/// Seconds since the last bytes arrived on the TCP socket `fd`. `Err(true)`
/// when the socket can never tell (not TCP: a Unix socket), `Err(false)` when
/// this one could not. One getsockopt: the only syscall of the instrumentation,
/// with the kernel's resolution (a jiffy, 1 to 10 ms).
#[cfg(target_os = "linux")]
pub fn last_data_age(fd: std::os::fd::RawFd) -> Result<f64, bool> {
    // Only the fields up to tcpi_last_data_recv: the kernel copies no more.
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_last_data_recv) + 4;
    let info = crate::kernel::tcp_info::read(fd, end).map_err(|e| {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
        )
    })?;
    Ok(info.tcpi_last_data_recv as f64 / 1e3)
}

/// Elsewhere the kernel does not tell.
#[cfg(not(target_os = "linux"))]
pub fn last_data_age(_fd: std::os::fd::RawFd) -> Result<f64, bool> {
    Err(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_format_gives_the_same_time() {
        for v in [
            &b"t=1732000000.123"[..],
            b"1732000000.123",
            b"1732000000123",
            b"t=1732000000123000",
            b" t=1732000000123000000 ",
        ] {
            let t = parse_request_start(v).unwrap();
            assert!((t - 1_732_000_000.123).abs() < 1e-6, "{v:?} {t}");
        }
        assert_eq!(parse_request_start(b"1732000000"), Some(1_732_000_000.0));
        assert_eq!(
            parse_request_start(b"t=1732000000 D=12"),
            Some(1_732_000_000.0)
        );
    }

    #[test]
    fn garbage_and_old_values_are_ignored() {
        for v in [
            &b""[..],
            b"t=",
            b"abc",
            b"t=abc",
            b"12345",
            b"1.2.3",
            b"-1732000000",
        ] {
            assert_eq!(parse_request_start(v), None, "{v:?}");
        }
    }

    #[test]
    fn future_stamps_are_skew_then_wrong() {
        assert_eq!(from_stamp(100.0, 100.25), Some(0.25));
        assert_eq!(from_stamp(100.5, 100.0), Some(0.0));
        assert_eq!(from_stamp(102.0, 100.0), None);
        assert_eq!(from_stamp(0.0, 10_000.0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_tells_the_age_of_bytes_on_tcp_not_on_unix_sockets() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let (server, _) = listener.accept().unwrap();
        let age = last_data_age(server.as_raw_fd()).unwrap();
        assert!(age >= 0.1, "{age}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(last_data_age(a.as_raw_fd()), Err(true));
    }
}
