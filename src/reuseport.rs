//! Listening sockets a second agent can share, for rollouts without a gap.
//!
//! Every TCP listener (credential addresses, probe port, metrics port) is
//! bound with `SO_REUSEPORT`, so during a surge rollout the new agent binds
//! the same addresses and ports while the old one still serves, and the
//! kernel spreads new connections over both. The kernel only groups sockets
//! of the same effective UID (both agents run as root): an unprivileged
//! process cannot join the group and take credential requests.
//!
//! When a listener of the group closes (the old agent drains, or is killed),
//! connections queued on it and not yet accepted are reset, unless
//! `net.ipv4.tcp_migrate_req` is 1 (Linux ≥ 5.14): then the kernel moves
//! them, and half-open ones, to the remaining listeners. `initialize` sets it
//! for the node's network namespace; [`migrate_req`] reads it back so the
//! agent can say at start whether a hand-over will be clean.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Accept queue length: what `tokio::net::TcpListener::bind` uses.
const BACKLOG: u32 = 1024;

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Binds and listens on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
///
/// Errors are the kernel's, unchanged, so callers can match the errno
/// (`EADDRNOTAVAIL` while an IPv6 address is tentative, `EAFNOSUPPORT` with
/// IPv6 off). `IPV6_V6ONLY` is left at the system default, as before this
/// module: the agent's IPv6 addresses are specific, and a wildcard
/// `--metrics-address ::` keeps answering IPv4 too.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Whether some socket is already listening on `addr` (another agent, during
/// a rollout or by mistake).
///
/// A bind with `SO_REUSEADDR` but without `SO_REUSEPORT` fails with
/// `EADDRINUSE` exactly when a listener holds the address; it does not
/// conflict with sockets that are only bound or in TIME_WAIT, and, being
/// bound but not listening, it cannot make another agent's concurrent
/// `SO_REUSEADDR` bind fail. The probe socket is closed before returning.
pub fn already_listening(addr: SocketAddr) -> bool {
    let probe = || -> io::Result<()> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)
    };
    matches!(probe(), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

/// `net.ipv4.tcp_migrate_req` of this network namespace: `None` when the
/// kernel has no such setting (before 5.14) or it cannot be read.
pub fn migrate_req() -> Option<bool> {
    std::fs::read_to_string(MIGRATE_REQ)
        .ok()
        .map(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_listeners_share_a_port_and_are_detected() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr).expect("a second SO_REUSEPORT listener binds the same port");
        assert_eq!(second.local_addr().unwrap(), addr);
        assert!(already_listening(addr));
        drop((first, second));
        assert!(!already_listening(addr));
    }

    #[tokio::test]
    async fn a_plain_listener_is_not_joined() {
        // A listener without SO_REUSEPORT (the upstream agent, say) keeps the
        // port: our bind fails loudly instead of sharing it.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(already_listening(addr));
    }
}
