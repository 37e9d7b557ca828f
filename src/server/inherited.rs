//! A forked Gunicorn worker inherits the master's metrics sockets (fork
//! copies descriptors; only exec closes close-on-exec ones). Left open, a
//! worker orphaned by a killed master keeps the port: scrapes hang in its
//! accept queue and a new master cannot bind. The worker closes them.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
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

/// Adopts a listening TCP socket an old master handed over across exec
/// (Gunicorn's USR2): it must be listening (`SO_ACCEPTCONN`) on exactly
/// `addr`. It is made close-on-exec again. `Err` says why it is not used
/// (the descriptor is then left alone).
pub fn adopt_listener(fd: RawFd, addr: SocketAddr) -> Result<TcpListener, String> {
    if fd < 0 {
        return Err(format!("{fd} is not a descriptor"));
    }
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening` and `len` are valid for writes of the sizes passed;
    // a descriptor that is closed or not a socket only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(format!("descriptor {fd} is not a listening socket"));
    }
    let local = local_addr(fd).ok_or_else(|| format!("descriptor {fd} is not a TCP socket"))?;
    if local != addr {
        return Err(format!("descriptor {fd} listens on {local}, not on {addr}"));
    }
    // SAFETY: F_SETFD on a descriptor checked above to be an open socket.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(format!(
            "descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptor is an open listening TCP socket that this
    // process inherited across exec for this purpose; nothing else in the
    // process owns it (the old master passes its number only to us).
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Clears close-on-exec on `fd` (in the child about to exec a new master).
pub fn make_inheritable(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and change the descriptor's flags; a
    // bad descriptor makes the call fail.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The local port of a TCP socket; None for anything else.
fn tcp_port(fd: RawFd) -> Option<u16> {
    local_addr(fd).map(|a| a.port())
}

/// The local address of a TCP socket; None for anything else.
fn local_addr(fd: RawFd) -> Option<SocketAddr> {
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
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(v6.sin6_port)))
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
    fn a_listener_is_adopted_only_on_its_own_address() {
        use std::os::fd::IntoRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let other: SocketAddr = format!("127.0.0.2:{}", addr.port()).parse().unwrap();
        let fd = listener.into_raw_fd();
        make_inheritable(fd).unwrap();
        assert!(adopt_listener(fd, other).unwrap_err().contains("not on"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(adopt_listener(udp.as_raw_fd(), addr).is_err());
        let adopted = adopt_listener(fd, addr).unwrap();
        // SAFETY: F_GETFD on a descriptor we own only reads its flags.
        let flags = unsafe { libc::fcntl(adopted.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        let client = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(
            adopted.accept().unwrap().0.peer_addr().unwrap(),
            client.local_addr().unwrap()
        );
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
