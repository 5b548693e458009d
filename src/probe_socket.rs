//! The per-instance probe channel: `/healthz` and `/readyz` over a unix
//! socket (`server --probe-socket`) and the `probe` subcommand that asks it
//! (the kubelet's exec probes).
//!
//! Why not the TCP probe port: during a surge rollout both agents listen on
//! `localhost:2703` with `SO_REUSEPORT`, so an HTTP probe of the new pod may
//! be answered by the old agent, and the new pod would turn ready before its
//! own agent serves (or the old one stay ready while it drains). A unix
//! socket in the pod's own `emptyDir` reaches only that pod's process. The
//! TCP probe port keeps upstream's behaviour for the upstream Helm chart,
//! whose rollouts never run two agents at once.
//!
//! Wire: plain HTTP/1.1, one request per connection; the answers are
//! [`InstanceProbes::answer`]'s.

use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::probe::InstanceProbes;

/// Probes are answered one connection at a time by the kubelet; a few more
/// allow a human's `probe` beside it, and nothing can pile up.
const MAX_CONNECTIONS: usize = 8;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProbeSocketError {
    #[error(
        "probe socket {}: another running agent answers there; every agent needs its own (its pod's emptyDir)",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("probe socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the socket at `path`. A socket file left by an earlier run of this
/// container (the emptyDir outlives it) is replaced; one a live agent still
/// answers on is not.
pub fn bind(path: &Path) -> Result<UnixListener, ProbeSocketError> {
    use std::os::unix::fs::FileTypeExt;
    let io_err = |source| ProbeSocketError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ProbeSocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        // Anything else in the way (a file, a directory) makes bind fail
        // with EADDRINUSE, reported with the path.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    UnixListener::bind(path).map_err(io_err)
}

/// Serves `probes` on `listener` until the task is aborted. It is not part
/// of the drain: a draining agent keeps answering (ready: no; healthy: yes).
pub fn spawn(listener: UnixListener, probes: Arc<InstanceProbes>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false);
        let builder = Arc::new(builder);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "probe socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!("probe socket busy; closing a connection");
                continue;
            };
            let probes = probes.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let probes = probes.clone();
                    async move { Ok::<_, Infallible>(probes.answer(req.uri().path()).await) }
                });
                if let Err(err) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %err, "probe socket connection ended with an error");
                }
                drop(permit);
            });
        }
    })
}

/// Removes the socket file on the way out, so the next run finds none.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "probe socket removed"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot remove the probe socket"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeClientError {
    #[error("cannot reach the agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no answer from the agent at {}: {source}", path.display())]
    Exchange {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unreadable answer from the agent at {}: {text:?}", path.display())]
    Malformed { path: PathBuf, text: String },
}

/// `GET <check>` over the socket at `path`: the status and the body.
/// Blocking, no runtime: this is the whole `probe` subcommand, run by the
/// kubelet every period.
pub fn query(
    path: &Path,
    check: &str,
    timeout: Duration,
) -> Result<(u16, String), ProbeClientError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        ProbeClientError::Connect {
            path: path.to_owned(),
            source,
        }
    })?;
    let exchange = |source| ProbeClientError::Exchange {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(exchange)?;
    stream.set_write_timeout(Some(timeout)).map_err(exchange)?;
    let request = format!("GET {check} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(exchange)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(exchange)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let malformed = || ProbeClientError::Malformed {
        path: path.to_owned(),
        text: text.chars().take(200).collect(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use crate::probe::Probes;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "pia-probe-{}-{}-{name}.sock",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    #[tokio::test]
    async fn answers_for_this_instance_only_and_replaces_a_stale_socket() {
        let path = temp_path("a");
        // A stale socket file from an earlier run.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).expect("stale socket replaced");
        assert!(matches!(bind(&path), Err(ProbeSocketError::InUse { .. })));

        let instance = Arc::new(Instance::new(None, 0));
        // No credential listeners: the upstream check trivially passes, so
        // the phase decides.
        let probes = Arc::new(InstanceProbes::new(
            instance.clone(),
            Arc::new(Probes::new(Vec::new(), None, Default::default())),
        ));
        let task = spawn(listener, probes);
        let ask = |check: &'static str| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || query(&path, check, Duration::from_secs(5)))
        };
        let (status, body) = ask("/readyz").await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (503, "starting\n"));
        instance.set_serving();
        assert_eq!(ask("/readyz").await.unwrap().unwrap().0, 200);
        assert_eq!(ask("/healthz").await.unwrap().unwrap().0, 200);
        instance.set_draining();
        let (status, body) = ask("/readyz").await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (503, "draining\n"));
        assert_eq!(ask("/healthz").await.unwrap().unwrap().0, 200);
        task.abort();
        let _ = task.await;
        remove(&path);
        assert!(matches!(
            query(&path, "/readyz", Duration::from_secs(1)),
            Err(ProbeClientError::Connect { .. })
        ));
    }
}
