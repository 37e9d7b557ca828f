//! Listen backlog of the master's listeners, read from the kernel at scrape
//! time with TCP_INFO: for a listening socket `tcpi_unacked` is the accept
//! queue's length and `tcpi_sacked` its configured maximum.
//!
//! With `--reuse-port` (Gunicorn >= 24) the master has no listener: each
//! worker binds its own socket, with its own queue. Those are read by address
//! from the kernel's socket table (`/proc/net/tcp`, whose `rx_queue` of a
//! listening socket is its accept queue's length).

use std::net::SocketAddr;
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub waiting: u32,
    pub max: u32,
}

/// `TCP_LISTEN` of the kernel's tcp_states.h.
const TCP_LISTEN: u8 = 10;

/// `None` for a socket that is not a TCP listener (a Unix socket, a closed fd).
pub fn of_listener(fd: RawFd) -> Option<Backlog> {
    // SAFETY: tcp_info is a plain C struct for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own;
    // on an fd that is not a socket (or closed) it fails and we return None.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 || info.tcpi_state != TCP_LISTEN {
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

#[cfg(test)]
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
}
