//! Listen backlog of the master's listeners, read from the kernel at scrape
//! time with TCP_INFO: for a listening socket `tcpi_unacked` is the accept
//! queue's length and `tcpi_sacked` its configured maximum. Unix socket
//! listeners: sock_diag (`ss -xl`), see `unix_diag`.
//!
//! With `--reuse-port` (Gunicorn >= 24) the master has no listener: each
//! worker binds its own socket, with its own queue. Those are read by address
//! from the kernel's socket table (`/proc/net/tcp`, whose `rx_queue` of a
//! listening socket is its accept queue's length).

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// One listener's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Connections waiting to be accepted.
    pub waiting: u32,
    /// The queue's configured maximum.
    pub max: u32,
}

/// `TCP_LISTEN` of the kernel's tcp_states.h.
#[cfg(target_os = "linux")]
const TCP_LISTEN: u8 = 10;

/// `None` for a socket that is not a listener (or a closed fd).
pub fn of_listener(fd: RawFd) -> Option<Backlog> {
    of_tcp_listener(fd).or_else(|| unix_diag::of_listener(fd))
}

/// Not measured outside Linux (no TCP_INFO queue lengths there).
#[cfg(not(target_os = "linux"))]
fn of_tcp_listener(_fd: RawFd) -> Option<Backlog> {
    None
}

#[cfg(target_os = "linux")]
fn of_tcp_listener(fd: RawFd) -> Option<Backlog> {
    let info = crate::kernel::tcp_info::read(fd, std::mem::size_of::<libc::tcp_info>()).ok()?;
    if info.tcpi_state != TCP_LISTEN {
        return None;
    }
    Some(Backlog {
        waiting: info.tcpi_unacked,
        max: info.tcpi_sacked,
    })
}

/// Connections waiting on every listening TCP socket bound to `addr`, summed;
/// `None` when no socket listens there (or the table cannot be read).
pub fn waiting_at(addr: SocketAddr) -> Option<u32> {
    let table = match addr {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    sum_listen_queues(&std::fs::read_to_string(table).ok()?, &table_address(addr))
}

/// `addr` as the socket table prints it: each 32-bit word of the address in
/// host byte order, then the port, in hex.
fn table_address(addr: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match addr {
        SocketAddr::V4(a) => vec![a.ip().octets()],
        SocketAddr::V6(a) => a
            .ip()
            .octets()
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let mut out: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    out.push_str(&format!(":{:04X}", addr.port()));
    out
}

fn sum_listen_queues(table: &str, local: &str) -> Option<u32> {
    let mut total = None;
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let fields: Vec<&str> = line.split_whitespace().take(5).collect();
        if fields.len() < 5 || fields[1] != local || fields[3] != "0A" {
            continue;
        }
        let Some(Ok(queued)) = fields[4]
            .split(':')
            .nth(1)
            .map(|rx| u32::from_str_radix(rx, 16))
        else {
            continue;
        };
        total = Some(total.unwrap_or(0) + queued);
    }
    total
}

/// The accept queue of a listening Unix socket, asked of the kernel by its
/// inode over NETLINK_SOCK_DIAG with UDIAG_SHOW_RQLEN: for a listener,
/// `rqueue` is the connections waiting and `wqueue` the configured backlog.
#[cfg(target_os = "linux")]
mod unix_diag {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use super::Backlog;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    const UNIX_DIAG_RQLEN: u16 = 4;
    const NLMSG_HDR: usize = 16;
    /// `struct unix_diag_msg`: family, type, state, pad, inode, cookie[2].
    const UNIX_DIAG_MSG: usize = 16;
    const TCP_LISTEN: u8 = 10;

    /// The accept queue of the Unix socket listener `fd`, from sock_diag.
    pub fn of_listener(fd: RawFd) -> Option<Backlog> {
        // SAFETY: `stat` is plain integers, for which all-zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into ours; a bad fd is an error, not
        // undefined behaviour.
        let rc = unsafe { libc::fstat(fd, &mut st) };
        if rc != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return None;
        }
        query(st.st_ino as u32)
    }

    fn query(inode: u32) -> Option<Backlog> {
        // SAFETY: socket() has no memory preconditions; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut request = [0u8; NLMSG_HDR + 24];
        let len = request.len() as u32;
        request[0..4].copy_from_slice(&len.to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        request[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let body = &mut request[NLMSG_HDR..];
        body[0] = libc::AF_UNIX as u8;
        body[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        body[8..12].copy_from_slice(&inode.to_ne_bytes());
        body[12..16].copy_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
        // No cookie.
        body[16..24].copy_from_slice(&[0xff; 8]);
        // SAFETY: the buffer is ours and `len` bytes long; a netlink socket
        // with no address sends to the kernel.
        let sent = unsafe {
            libc::send(
                sock.as_raw_fd(),
                request.as_ptr() as *const libc::c_void,
                request.len(),
                0,
            )
        };
        if sent != request.len() as isize {
            return None;
        }
        let mut reply = [0u8; 512];
        // SAFETY: the kernel writes at most `reply.len()` bytes into our buffer;
        // it answers a diag request before send returns, so never wait.
        let got = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                reply.as_mut_ptr() as *mut libc::c_void,
                reply.len(),
                libc::MSG_DONTWAIT,
            )
        };
        parse(reply.get(..usize::try_from(got).ok()?)?, inode)
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn parse(reply: &[u8], inode: u32) -> Option<Backlog> {
        let len = (u32_at(reply, 0)? as usize).min(reply.len());
        if u16_at(reply, 4)? != SOCK_DIAG_BY_FAMILY {
            return None; // NLMSG_ERROR: not a Unix socket, or gone
        }
        let msg = reply.get(NLMSG_HDR..len)?;
        if msg.get(2) != Some(&TCP_LISTEN) || u32_at(msg, 4)? != inode {
            return None;
        }
        let mut at = UNIX_DIAG_MSG;
        while at + 4 <= msg.len() {
            let attr_len = u16_at(msg, at)? as usize;
            if attr_len < 4 {
                return None;
            }
            if u16_at(msg, at + 2)? == UNIX_DIAG_RQLEN {
                return Some(Backlog {
                    waiting: u32_at(msg, at + 4)?,
                    max: u32_at(msg, at + 8)?,
                });
            }
            at += (attr_len + 3) & !3;
        }
        None
    }
}

#[cfg(not(target_os = "linux"))]
mod unix_diag {
    /// No sock_diag outside Linux: unknown.
    pub fn of_listener(_fd: std::os::fd::RawFd) -> Option<super::Backlog> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn counts_connections_not_yet_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let backlog = super::of_listener(listener.as_raw_fd()).unwrap();
        assert_eq!(backlog.waiting, 3);
        assert!(backlog.max >= 3);
        assert_eq!(super::of_listener(-1), None);
    }

    #[test]
    fn reads_the_queue_of_a_listener_by_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(super::waiting_at(addr), Some(0));
        let _clients: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        assert_eq!(super::waiting_at(addr), Some(2));
        drop(listener);
        assert_eq!(super::waiting_at(addr), None);
    }

    #[test]
    fn sums_every_listener_of_one_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:0\n\
            1: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:0\n\
            2: 0100007F:1F90 0100007F:C350 01 00000000:00000009 00:0\n\
            3: 00000000:1F91 00000000:0000 0A 00000000:00000007 00:0\n";
        assert_eq!(super::sum_listen_queues(table, "0100007F:1F90"), Some(5));
        assert_eq!(super::sum_listen_queues(table, "0100007F:1F92"), None);
        let v4 = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            super::table_address(v4),
            format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]))
        );
        let v6 = "[::1]:8080".parse().unwrap();
        assert_eq!(super::table_address(v6).len(), 32 + 5);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn counts_unix_connections_not_yet_accepted() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let empty = super::of_listener(listener.as_raw_fd()).unwrap();
        assert_eq!(empty.waiting, 0);
        assert!(empty.max >= 2);
        let _clients: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(super::of_listener(listener.as_raw_fd()).unwrap().waiting, 2);
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(super::of_listener(a.as_raw_fd()), None);
    }
}
