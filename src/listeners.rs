//! The agent's listening sockets: the credential addresses (IPv6 retried
//! while it is not assigned yet), the probe and metrics ports, the probe
//! socket. Every TCP listener is shared with `SO_REUSEPORT`
//! ([`crate::reuseport`]), so the next agent can start on the node before
//! this one stops.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::cli::ServerArgs;
use crate::probe_socket::ProbeSocketError;
use crate::reuseport;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("invalid bind host {0:?}")]
    BadHost(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("resolving bind host {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ProbeSocket(#[from] ProbeSocketError),
}

/// Bound sockets. IPv6 hosts that could not be bound yet are in `pending_v6`.
pub struct Listeners {
    pub credentials: Vec<TcpListener>,
    pub pending_v6: Vec<SocketAddr>,
    pub probe: Vec<TcpListener>,
    pub metrics: TcpListener,
    /// `--probe-socket`: this process's own probe channel.
    pub probe_socket: Option<(PathBuf, UnixListener)>,
}

impl Listeners {
    pub fn credential_addrs(&self) -> Vec<SocketAddr> {
        self.credentials
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
    pub fn probe_addr(&self) -> SocketAddr {
        self.probe[0]
            .local_addr()
            .expect("bound listener has an address")
    }
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .expect("bound listener has an address")
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, BindError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err(BindError::BadHost(host.to_owned()));
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    tokio::net::lookup_host((bare, port))
        .await
        .map(|a| a.collect())
        .map_err(|source| BindError::Resolve {
            host: host.to_owned(),
            source,
        })
}

/// IPv4 failures are fatal. IPv6 `EADDRNOTAVAIL` (address not yet assigned,
/// or still in duplicate address detection) is retried for `v6_wait`, then
/// left pending; `EAFNOSUPPORT` (IPv6 off) is skipped. Upstream crash-looped
/// here (its issue #16).
pub async fn bind(args: &ServerArgs) -> Result<Listeners, BindError> {
    let mut credentials = Vec::new();
    let mut pending_v6 = Vec::new();
    for host in &args.bind_hosts {
        for addr in resolve(host, args.port).await? {
            let deadline = Instant::now() + args.ipv6_bind_wait;
            loop {
                let shared = reuseport::already_listening(addr);
                match reuseport::bind(addr) {
                    Ok(l) => {
                        let addr = l.local_addr().unwrap_or(addr);
                        if shared {
                            warn!(%addr, "another process already listens here; sharing the port (SO_REUSEPORT): expected while a rolling update hands over to this agent, otherwise two agents run on this node");
                        }
                        info!(%addr, reuseport = true, "listening for credential requests");
                        credentials.push(l);
                        break;
                    }
                    Err(e)
                        if addr.is_ipv6() && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
                    {
                        warn!(%addr, error = %e, "IPv6 is not available on this host; serving IPv4 only");
                        break;
                    }
                    Err(e)
                        if addr.is_ipv6() && e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) =>
                    {
                        if Instant::now() >= deadline {
                            warn!(%addr, error = %e, "IPv6 bind address not assigned; serving without it and retrying in the background");
                            pending_v6.push(addr);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(source) => return Err(BindError::Bind { addr, source }),
                }
            }
        }
    }
    let mut probe = Vec::new();
    let probe_v4 = SocketAddr::from(([127, 0, 0, 1], args.probe_port));
    probe.push(reuseport::bind(probe_v4).map_err(|source| BindError::Bind {
        addr: probe_v4,
        source,
    })?);
    let metrics_addr = SocketAddr::new(args.metrics_address, args.metrics_port);
    let metrics = reuseport::bind(metrics_addr).map_err(|source| BindError::Bind {
        addr: metrics_addr,
        source,
    })?;
    let probe_socket = match &args.probe_socket {
        Some(path) => Some((path.clone(), crate::probe_socket::bind(path)?)),
        None => None,
    };
    Ok(Listeners {
        credentials,
        pending_v6,
        probe,
        metrics,
        probe_socket,
    })
}
