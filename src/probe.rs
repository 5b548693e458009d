//! Health and readiness, on `localhost:<probe-port>` and on the metrics
//! server (which also serves `/metrics`).
//!
//! Upstream semantics: `GET http://<bind address>/` on every credential
//! listener, one after the other, must answer 404 within one shared 10 s
//! deadline → 200 (empty body); deadline → 408 (empty); anything else → 500
//! `Internal Server Error occurred`. The probe connects from a local
//! address it announces first ([`Exemptions`]), so its connections are not
//! counted against the connection shares: a pod hoarding connections
//! cannot make the agent look dead. With
//! `--strict-verification`, readiness also waits for signing keys (without
//! keys every token would be refused); otherwise tokens are forwarded to EKS
//! Auth until keys load, and the agent is ready.
//!
//! Those answers are about the node, not the process: with `SO_REUSEPORT`
//! two agents share the probe port and the credential addresses during a
//! rollout, and either may answer. [`InstanceProbes`] adds what only this
//! process can say (is it serving yet, is it draining), for the
//! per-instance probe socket ([`crate::probe_socket`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use http_body_util::{Empty, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use crate::connections::Exemptions;
use crate::instance::{Instance, Phase};
use crate::jwks::KeyStore;
use crate::metrics::Metrics;
use crate::serve::{Handler, HttpResponse, text_response};

const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// Why one probe request failed (any failure is a 500; kept for debugging).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// `Probes::last_ready` before the first readiness check.
const UNKNOWN: u8 = 2;

pub struct Probes {
    deadline: Duration,
    /// 1 ready, 0 not, [`UNKNOWN`].
    last_ready: AtomicU8,
    targets: RwLock<Vec<SocketAddr>>,
    keys: Option<Arc<KeyStore>>,
    exemptions: Exemptions,
}

impl Probes {
    pub fn new(
        targets: Vec<SocketAddr>,
        keys: Option<Arc<KeyStore>>,
        exemptions: Exemptions,
    ) -> Self {
        Self::with_deadline(targets, keys, exemptions, PROBE_DEADLINE)
    }

    pub fn with_deadline(
        targets: Vec<SocketAddr>,
        keys: Option<Arc<KeyStore>>,
        exemptions: Exemptions,
        deadline: Duration,
    ) -> Self {
        Self {
            deadline,
            last_ready: AtomicU8::new(UNKNOWN),
            targets: RwLock::new(targets),
            keys,
            exemptions,
        }
    }

    /// `GET /` on `target`'s listener, from an announced local address.
    /// No connect timeout of its own: a connect that hangs (SYNs dropped)
    /// runs into the shared deadline and answers 408, as upstream's does.
    async fn get_root(&self, target: SocketAddr) -> Result<StatusCode, ProbeError> {
        // The listener's own address is local: connecting from it makes the
        // source known before the connection exists (unspecified listeners
        // are reached over loopback).
        let ip = match target.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
            ip if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let target = SocketAddr::new(ip, target.port());
        let socket = if ip.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.bind(SocketAddr::new(ip, 0))?;
        let _exempt = self.exemptions.announce(socket.local_addr()?);
        let stream = socket.connect(target).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let req = Request::get("/")
            .header(http::header::HOST, target.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a request to a socket address is valid");
        let status = sender.send_request(req).await?.status();
        conn.abort();
        Ok(status)
    }

    pub fn add_target(&self, addr: SocketAddr) {
        self.targets.write().expect("targets lock").push(addr);
    }

    /// Every credential listener answers 404 on `/`, asked one after the
    /// other under one deadline (upstream's order: its "deadline is shared
    /// across probes" case depends on it); the first failure decides.
    pub async fn healthy(&self) -> StatusCode {
        let targets = self.targets.read().expect("targets lock").clone();
        let all = async {
            for addr in targets {
                match self.get_root(addr).await {
                    Ok(StatusCode::NOT_FOUND) => {}
                    _ => return false,
                }
            }
            true
        };
        match tokio::time::timeout(self.deadline, all).await {
            Err(_) => StatusCode::REQUEST_TIMEOUT,
            Ok(true) => StatusCode::OK,
            Ok(false) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub async fn ready(&self) -> StatusCode {
        let status = if self.keys.as_ref().is_some_and(|k| !k.loaded()) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.healthy().await
        };
        self.last_ready.store(
            if status == StatusCode::OK { 1 } else { 0 },
            Ordering::Relaxed,
        );
        status
    }

    /// The outcome of the last [`Probes::ready`], if there was one.
    pub fn last_ready(&self) -> Option<bool> {
        match self.last_ready.load(Ordering::Relaxed) {
            UNKNOWN => None,
            v => Some(v == 1),
        }
    }
}

/// Probes of this agent process, for the kubelet's exec probes during a
/// surge rollout.
pub struct InstanceProbes {
    instance: Arc<Instance>,
    probes: Arc<Probes>,
}

impl InstanceProbes {
    pub fn new(instance: Arc<Instance>, probes: Arc<Probes>) -> Self {
        Self { instance, probes }
    }

    /// `/readyz`: this process accepts on every credential listener (it is
    /// in the kernel's reuseport groups, so it receives its share of new
    /// connections), is not draining, and the upstream checks pass.
    /// `/healthz`: the upstream check; a draining process is alive (it is
    /// finishing requests), so it stays 200 until it exits.
    pub async fn answer(&self, path: &str) -> HttpResponse {
        match (path, self.instance.phase()) {
            ("/readyz", Phase::Starting) => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
            ("/readyz", Phase::Draining) => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            ("/readyz", Phase::Serving) => probe_response(self.probes.ready().await),
            ("/healthz", Phase::Draining) => text_response(StatusCode::OK, "draining\n"),
            ("/healthz", _) => probe_response(self.probes.healthy().await),
            _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}

/// Router of the probe and metrics servers.
pub struct Admin {
    probes: Arc<Probes>,
    metrics: Option<Arc<Metrics>>,
}

impl Admin {
    pub fn new(probes: Arc<Probes>, metrics: Option<Arc<Metrics>>) -> Self {
        Self { probes, metrics }
    }
}

/// Upstream's bodies: empty for 200 and 408, `Internal Server Error
/// occurred` (no newline) for 500.
fn probe_response(status: StatusCode) -> HttpResponse {
    match status {
        StatusCode::OK | StatusCode::REQUEST_TIMEOUT => {
            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = status;
            resp
        }
        StatusCode::SERVICE_UNAVAILABLE => text_response(status, "signing keys not loaded yet\n"),
        _ => text_response(status, "Internal Server Error occurred"),
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> HttpResponse {
        match req.uri().path() {
            "/healthz" => probe_response(self.probes.healthy().await),
            "/readyz" => probe_response(self.probes.ready().await),
            "/metrics" if self.metrics.is_some() => {
                let metrics = self.metrics.as_ref().expect("checked above");
                // Readiness as a metric, for alerting without kube-state-metrics:
                // the kubelet's last /readyz, not a check of its own (that would
                // add the check's 404s to pod_identity_http_response on every
                // scrape). Absent until the first readiness probe.
                if let Some(ready) = self.probes.last_ready() {
                    metrics
                        .ready
                        .with_label_values::<&str>(&[])
                        .set(i64::from(ready));
                }
                let body = metrics.render();
                let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}
