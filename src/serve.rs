//! Hardened HTTP/1 serving shared by the credential, probe and metrics
//! servers: connection shares ([`crate::connections`]: a cap, a share per
//! source address, room made at the cap, probe connections exempt), a
//! deadline for request heads (which also closes idle keep-alive
//! connections; shorter near the cap), a request-head size limit (hyper
//! answers 431 beyond it), Go's refusal of HTTP/1.1 requests without `Host`,
//! and a bounded graceful drain.
//!
//! Drain protocol (mini-redis shape): every connection task holds a clone of
//! `done_tx`; shutdown flips `signal`, each connection finishes its in-flight
//! request and closes, and the last dropped sender ends the wait.
//!
//! Stopping to accept closes the listeners. With `SO_REUSEPORT` and
//! `net.ipv4.tcp_migrate_req=1` the kernel then hands the connections queued
//! on them to the next agent's listeners instead of resetting them (see
//! [`crate::reuseport`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};

use crate::connections::{Admission, Connections, Exemptions, NEAR_CAP_IDLE};
use crate::logging::Topic;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Connections from these local addresses (the agent's own probe) are
    /// not counted.
    pub exemptions: Exemptions,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 1024,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            exemptions: Exemptions::default(),
        }
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

/// A `text/plain` response: every error body and probe answer.
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Go's server refuses an HTTP/1.1 request without `Host` before any
/// handler sees it, with this exact status line and body, and closes.
fn missing_host() -> HttpResponse {
    const TEXT: &str = "400 Bad Request: missing required Host header";
    let mut resp = Response::new(Full::new(Bytes::from_static(TEXT.as_bytes())));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Bad Request: missing required Host header",
        ));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request handler: the peer address and the request in, a response out.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = HttpResponse> + Send;
}

/// A set of listeners served by one handler, drained together.
pub struct Server<H> {
    adder: ListenerAdder<H>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl<H: Handler> Server<H> {
    pub fn new(handler: Arc<H>, limits: ConnLimits, metrics: Option<Arc<Metrics>>) -> Self {
        let (signal, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            adder: ListenerAdder {
                handler,
                connections: Connections::new(
                    limits.max_connections,
                    limits.max_connections_per_source,
                    limits.exemptions.clone(),
                    metrics.clone(),
                ),
                limits,
                metrics,
                signal,
                done_tx: done_tx.downgrade(),
            },
            done_tx,
            done_rx,
        }
    }

    /// Starts accepting on `listener` until [`drain`](Self::drain).
    pub fn add_listener(&self, listener: TcpListener) {
        self.adder.add(listener);
    }

    /// A handle that can add listeners later (IPv6 addresses that appear after start).
    pub fn adder(&self) -> ListenerAdder<H> {
        self.adder.clone()
    }

    /// Stops accepting, lets in-flight requests finish, and waits at most
    /// `grace`. Returns false (after a warning) when connections were still
    /// open at the deadline.
    pub async fn drain(self, grace: Duration) -> bool {
        let Server {
            adder,
            done_tx,
            mut done_rx,
        } = self;
        let _ = adder.signal.send(true);
        drop(done_tx);
        match tokio::time::timeout(grace, done_rx.recv()).await {
            Ok(_) => true,
            Err(_) => {
                warn!(
                    grace_ms = grace.as_millis() as u64,
                    "drain ran over its grace period; giving up on the connections still open"
                );
                false
            }
        }
    }
}

/// Spawns accept loops for a [`Server`]; holds no drain guard itself, so a
/// forgotten adder never delays a drain.
pub struct ListenerAdder<H> {
    handler: Arc<H>,
    limits: ConnLimits,
    connections: Arc<Connections>,
    metrics: Option<Arc<Metrics>>,
    signal: watch::Sender<bool>,
    done_tx: mpsc::WeakSender<()>,
}

impl<H> Clone for ListenerAdder<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            limits: self.limits.clone(),
            connections: self.connections.clone(),
            metrics: self.metrics.clone(),
            signal: self.signal.clone(),
            done_tx: self.done_tx.clone(),
        }
    }
}

impl<H: Handler> ListenerAdder<H> {
    /// False when the server is already draining.
    pub fn add(&self, listener: TcpListener) -> bool {
        let Some(done_tx) = self.done_tx.upgrade() else {
            return false;
        };
        if *self.signal.borrow() {
            return false;
        }
        let ctx = AcceptCtx {
            handler: self.handler.clone(),
            limits: self.limits.clone(),
            connections: self.connections.clone(),
            metrics: self.metrics.clone(),
            signal: self.signal.subscribe(),
            done_tx,
        };
        tokio::spawn(ctx.run(listener));
        true
    }
}

/// Marks a connection busy while a request is answered on it (room is
/// made at the cap with idle connections first).
struct Busy<'a>(&'a crate::connections::Conn);

impl<'a> Busy<'a> {
    fn enter(conn: &'a crate::connections::Conn) -> Self {
        conn.set_busy(true);
        Self(conn)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set_busy(false);
    }
}

/// Whether a connection's first request has begun, and a way to wait for it.
#[derive(Clone, Default)]
struct FirstRequest(Arc<FirstRequestState>);

#[derive(Default)]
struct FirstRequestState {
    begun: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    fn begin(&self) {
        // A load on every request, a write only on the first.
        let s = &self.0;
        if !s.begun.load(Ordering::Acquire) && !s.begun.swap(true, Ordering::AcqRel) {
            s.notify.notify_one();
        }
    }

    fn begun(&self) -> bool {
        self.0.begun.load(Ordering::Acquire)
    }

    /// Resolves once [`begin`](Self::begin) ran (`notify_one` keeps the
    /// wake-up if nobody waits yet).
    async fn wait(&self) {
        self.0.notify.notified().await;
    }
}

struct AcceptCtx<H> {
    handler: Arc<H>,
    limits: ConnLimits,
    connections: Arc<Connections>,
    metrics: Option<Arc<Metrics>>,
    signal: watch::Receiver<bool>,
    done_tx: mpsc::Sender<()>,
}

impl<H: Handler> AcceptCtx<H> {
    fn allow_log(&self, topic: Topic) -> Option<Option<u64>> {
        match &self.metrics {
            Some(m) => m.logs.allow(topic),
            None => Some(None),
        }
    }

    async fn run(mut self, listener: TcpListener) {
        let builder = |idle: Duration| {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .max_buf_size(self.limits.max_header_bytes.max(8192))
                .max_header_size(self.limits.max_header_bytes)
                .keep_alive(true);
            Arc::new(builder)
        };
        let normal = builder(self.limits.header_read_timeout);
        let near_cap = builder(self.limits.header_read_timeout.min(NEAR_CAP_IDLE));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.signal.wait_for(|draining| *draining) => None,
                accepted = listener.accept() => Some(accepted),
            };
            let Some(accepted) = accepted else { return };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(suppressed) = self.allow_log(Topic::Accept) {
                        warn!(error = %err, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (held, builder) = match self.connections.admit(peer) {
                Admission::Admitted(held) => {
                    let builder = if held.near_cap { &near_cap } else { &normal };
                    (Some(held), builder.clone())
                }
                Admission::Exempt => (None, normal.clone()),
                Admission::Refused(reason) => {
                    if let Some(suppressed) = self.allow_log(Topic::Connection) {
                        debug!(%peer, reason, suppressed, "connection refused by the connection shares");
                    }
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = self.handler.clone();
            let metrics = self.metrics.clone();
            let mut signal = self.signal.clone();
            let done_tx = self.done_tx.clone();
            tokio::spawn(async move {
                let _ = &metrics;
                let conn = held.as_ref().map(|h| h.conn.clone());
                let first = FirstRequest::default();
                let begun = first.clone();
                let busy = conn.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    begun.begin();
                    let handler = handler.clone();
                    let busy = busy.clone();
                    async move {
                        if req.version() == http::Version::HTTP_11
                            && !req.headers().contains_key(http::header::HOST)
                        {
                            return Ok::<_, Infallible>(missing_host());
                        }
                        let _busy = busy.as_deref().map(Busy::enter);
                        Ok(handler.handle(req, peer).await)
                    }
                });
                let hyper_conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(hyper_conn);
                // Connection first: when the drain signal and a request's
                // bytes arrive together, the request is read (and then
                // answered with `Connection: close`) rather than the
                // connection closed with the request unread, which resets it.
                let evicted = async {
                    match &conn {
                        Some(c) => c.evicted().await,
                        None => std::future::pending().await,
                    }
                };
                let mut served = hyper_conn;
                let (mut drained, evict) = tokio::select! {
                    biased;
                    res = served.as_mut() => {
                        if let Err(err) = res {
                            debug!(%peer, error = %err, "connection ended with an error");
                        }
                        (false, false)
                    }
                    _ = signal.wait_for(|draining| *draining) => (true, false),
                    _ = evicted => (false, true),
                };
                // Made room for another source: close once idle (hyper
                // answers a request in progress first).
                if evict {
                    served.as_mut().graceful_shutdown();
                    let _ = served.as_mut().await;
                }
                // hyper's graceful shutdown closes a connection on which it
                // has read nothing yet. But the client connected to this
                // agent and its request is on the way: closing would reset
                // it. So wait for the first request to begin (hyper's header
                // read timeout bounds the wait), then shut down: hyper
                // answers that request and closes.
                if drained && !first.begun() {
                    drained = tokio::select! {
                        biased;
                        _ = served.as_mut() => false,
                        _ = first.wait() => true,
                    };
                }
                if drained {
                    served.as_mut().graceful_shutdown();
                    let _ = served.as_mut().await;
                }
                drop(held);
                drop(done_tx);
            });
        }
    }
}
