//! A forked Gunicorn worker inherits the master's metrics sockets (fork
//! copies descriptors; only exec closes close-on-exec ones). Left open, a
//! worker orphaned by a killed master keeps the port: scrapes hang in its
//! accept queue and a new master cannot bind. The worker closes them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

/// Ports this process serves metrics on (0: free slot). Atomics, not a lock:
/// read in a forked child, where a lock held by a thread that did not
/// survive the fork would never be released.
static PORTS: [AtomicU16; 4] = [const { AtomicU16::new(0) }; 4];

pub(super) fn remember_port(port: u16) {
    for slot in &PORTS {
        if slot
            .compare_exchange(0, port, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            || slot.load(Ordering::SeqCst) == port
        {
            return;
        }
    }
}

/// In a forked child: closes every TCP socket bound to a metrics port of the
/// parent (the listener and connections it had accepted). Returns how many.
pub fn close_inherited_sockets() -> usize {
    let ports: Vec<u16> = PORTS
        .iter()
        .map(|p| p.load(Ordering::SeqCst))
        .filter(|&p| p != 0)
        .collect();
    if ports.is_empty() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    // Collected first: the directory's own descriptor is closed before any
    // number is looked at.
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed = 0;
    for fd in fds {
        if tcp_port(fd).is_some_and(|port| ports.contains(&port)) {
            // SAFETY: the descriptor is a TCP socket bound to a metrics port;
            // in a forked child nothing uses it (the serving thread did not
            // survive the fork and Python never owned it), so closing it
            // cannot pull a descriptor from under live code.
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    closed
}

/// The local port of a TCP socket; None for anything else.
fn tcp_port(fd: RawFd) -> Option<u16> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writes of the sizes passed; a
    // descriptor that is not a socket only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data for which all zeroes is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is writable for `len` bytes, the largest address there is.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for every address type.
            let v4 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_the_port_of_tcp_sockets_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(tcp_port(listener.as_raw_fd()), Some(port));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(tcp_port(udp.as_raw_fd()), None);
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(tcp_port(file.as_raw_fd()), None);
    }

    #[test]
    fn std_and_tokio_sockets_are_close_on_exec() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        for fd in [
            listener.as_raw_fd(),
            client.as_raw_fd(),
            accepted.as_raw_fd(),
        ] {
            // SAFETY: F_GETFD on a descriptor we own only reads its flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "fd {fd}");
        }
    }
}
