//! Listen backlog of the master's listeners, read from the kernel at scrape
//! time with TCP_INFO: for a listening socket `tcpi_unacked` is the accept
//! queue's length and `tcpi_sacked` its configured maximum.

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
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
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
}
