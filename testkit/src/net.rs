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

/// An HTTP `CONNECT` proxy on 127.0.0.1 that tunnels to hosts only it can
/// resolve (`host:port` → address), as a corporate proxy in front of
/// endpoints the node cannot reach directly. Counts the tunnels it opened
/// per host; refuses (closes) any other target.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    tunnels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start(routes: &[(&str, SocketAddr)]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let routes: std::collections::HashMap<String, SocketAddr> = routes
            .iter()
            .map(|(host, addr)| ((*host).to_owned(), *addr))
            .collect();
        let tunnels = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let seen = tunnels.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let (routes, seen) = (routes.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head);
                    let Some(target) = head
                        .strip_prefix("CONNECT ")
                        .and_then(|rest| rest.split(' ').next())
                    else {
                        return;
                    };
                    let Some(upstream) = routes.get(target) else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    *seen
                        .lock()
                        .expect("tunnel count lock")
                        .entry(target.to_owned())
                        .or_insert(0) += 1;
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            addr,
            tunnels,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tunnels opened to `target` (`host:port`).
    pub fn tunnels(&self, target: &str) -> usize {
        self.tunnels
            .lock()
            .expect("tunnel count lock")
            .get(target)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
