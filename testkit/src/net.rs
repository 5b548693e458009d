//! Network fixtures.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// An address on loopback whose SYNs are dropped, so a connect hangs until
/// the caller's own timeout (a blackholed EKS Auth or bind address): a
/// listener with a zero backlog whose one queue slot is taken and never
/// accepted. The kernel drops SYNs on a full accept queue, syncookies or
/// not (`tcp_conn_request`).
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: OwnedFd,
    _filler: std::net::TcpStream,
}

impl Blackhole {
    pub fn new() -> std::io::Result<Self> {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen,
            socket,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0))?;
        listen(&fd, Backlog::new(0)?)?;
        let local: SockaddrIn = getsockname(fd.as_raw_fd())?;
        let addr = SocketAddr::from((local.ip(), local.port()));
        let filler = std::net::TcpStream::connect(addr)?;
        Ok(Self {
            addr,
            _listener: fd,
            _filler: filler,
        })
    }
}
