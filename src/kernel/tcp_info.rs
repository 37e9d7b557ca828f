//! `TCP_INFO` of a socket (Linux): read by the worker for a request's queue
//! time and by the server for a listener's backlog.

use std::io;
use std::os::fd::RawFd;

/// The `tcp_info` of `fd`, of which the kernel fills the fields before
/// byte `up_to` (it copies no more than asked). An error if `fd` is not a TCP
/// socket (`EOPNOTSUPP`/`ENOPROTOOPT`), or not a socket, or the kernel filled
/// fewer bytes (`UnexpectedEof`).
#[cfg(target_os = "linux")]
pub fn read(fd: RawFd, up_to: usize) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let up_to = up_to.min(std::mem::size_of::<libc::tcp_info>());
    let mut len = up_to as libc::socklen_t;
    // SAFETY: `info` is a tcp_info on our stack and `len` no more than its
    // size; the kernel writes at most `len` bytes into it. On an fd that is
    // not a socket (or closed) the call fails and nothing is written.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < up_to {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(info)
}
