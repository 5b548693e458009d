//! The `server` subcommand: the pod-facing credential endpoint and the
//! assembly of everything behind it.
//!
//! Endpoint contract (upstream v0.1.37 statuses and messages; bodies are
//! `text/plain` and end in a newline unless JSON):
//! - path other than `/v1/credentials` → 404; method other than GET → 405;
//! - rate limited (per client IP, then global) → 429 `Too Many Requests`;
//! - `Host` (port and `[]` stripped) not an allowed host → 403
//!   `Access Denied. Called agent through invalid address, please use either [<hosts>] address not <host>`;
//! - token = raw `Authorization` header; empty, unparsable, expired,
//!   not-yet-valid, wrong audience or (with keys) unverifiable → 400;
//! - EKS Auth error → its status, `[<request-id>]: (<Code>): <message>, fault: client|server`;
//!   EKS Auth unreachable or timed out → 500;
//! - success → 200 `application/json`, see [`crate::credentials`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::cache::{CacheConfig, CredentialCache, FetchError, TokenRef};
use crate::cli::ServerArgs;
use crate::clock::SharedClock;
use crate::eksauth::{EksAuth, EksAuthConfig, EksAuthError};
use crate::jwks::{JwksError, KeyStore, KeyStoreConfig, resolve_source};
use crate::metrics::Metrics;
use crate::probe::{Admin, Probes};
use crate::ratelimit::{Limited, Rate, RateLimiter};
use crate::serve::{ConnLimits, Handler, HttpResponse, Server};
use crate::verify::{AdmitError, GateConfig, TokenGate};

pub const CREDENTIALS_PATH: &str = "/v1/credentials";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
    Jwks(#[from] JwksError),
    #[error("invalid --allowed-hosts: empty")]
    NoAllowedHosts,
}

/// Why one credential request failed. [`RequestError::status`] is the only
/// place statuses are decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("404 page not found")]
    NotFound,
    #[error("Method Not Allowed")]
    Method,
    #[error("Too Many Requests")]
    RateLimited(Limited),
    #[error(
        "Access Denied. Called agent through invalid address, please use either {allowed} address not {host}"
    )]
    Host { host: String, allowed: Arc<str> },
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    EksAuth(FetchError),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::NotFound => StatusCode::NOT_FOUND,
            RequestError::Method => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Host { .. } => StatusCode::FORBIDDEN,
            RequestError::Admit(_) => StatusCode::BAD_REQUEST,
            RequestError::EksAuth(err) => match err.as_ref() {
                EksAuthError::Service { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }
                EksAuthError::Timeout(_)
                | EksAuthError::Transport(_)
                | EksAuthError::Incomplete(_)
                | EksAuthError::Unreadable { .. }
                | EksAuthError::Expiring { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn response(&self) -> HttpResponse {
        let mut resp = text_response(self.status(), format!("{self}\n"));
        if matches!(self, RequestError::Method) {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
        }
        resp
    }
}

pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(body.into()));
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

fn json_response(body: Bytes) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `Host` without port and IPv6 brackets, lowercased.
pub fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The credential endpoint.
pub struct Agent {
    allowed_hosts: Vec<String>,
    allowed_display: Arc<str>,
    gate: TokenGate,
    cache: CredentialCache,
    limiter: RateLimiter,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Per-request series resolved once (`with_label_values` hashes and locks).
    ok_responses: prometheus::IntCounter,
    hit_latency: prometheus::Histogram,
}

impl Agent {
    async fn credentials(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<(Bytes, crate::cache::Outcome), RequestError> {
        if req.uri().path() != CREDENTIALS_PATH {
            return Err(RequestError::NotFound);
        }
        self.limiter
            .check(peer.ip())
            .map_err(RequestError::RateLimited)?;
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default();
        let bare = host_only(host);
        if !self
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(bare))
        {
            return Err(RequestError::Host {
                host: bare.to_owned(),
                allowed: self.allowed_display.clone(),
            });
        }
        if req.method() != Method::GET {
            return Err(RequestError::Method);
        }
        // httparse already refused control characters in header values; UTF-8
        // validation (vectorized) is all that is left, and anything not
        // base64url fails parsing on first sight.
        let token = match req.headers().get(AUTHORIZATION) {
            None => "",
            Some(v) => std::str::from_utf8(v.as_bytes()).map_err(|_| {
                AdmitError::Token(crate::token::TokenError::Malformed(
                    "token is not valid UTF-8",
                ))
            })?,
        };
        let now_ms = self.clock.now_ms();
        let admitted = self.gate.admit(token, (now_ms / 1000) as i64).await?;
        let token_ref = || TokenRef {
            raw: admitted.raw.clone(),
            hash: admitted.hash,
            expires: admitted.validity.expires,
        };
        self.cache
            .get(
                &admitted.key,
                admitted.hash,
                token_ref,
                &admitted.subject,
                now_ms,
            )
            .await
            .map_err(RequestError::EksAuth)
    }
}

impl Handler for Agent {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let result = {
            // hyper drops this future when the client hangs up mid-request;
            // the guard keeps the gauge right either way.
            let _in_flight = InFlight::enter(&self.metrics.in_flight);
            self.credentials(&req, peer).await
        };
        let (resp, outcome) = match result {
            Ok((body, outcome)) => (json_response(body), outcome.as_str()),
            Err(err) => {
                if let RequestError::RateLimited(which) = &err {
                    let limit = match which {
                        Limited::Global => "global",
                        Limited::Client => "client",
                    };
                    self.metrics.rate_limited.with_label_values(&[limit]).inc();
                }
                (err.response(), "error")
            }
        };
        let status = resp.status();
        let took = started.elapsed();
        if status == StatusCode::OK {
            self.ok_responses.inc();
        } else {
            self.metrics
                .http_response
                .with_label_values(&[status.as_str()])
                .inc();
        }
        if outcome == "hit" {
            self.hit_latency.observe(took.as_secs_f64());
        } else {
            self.metrics
                .request_duration
                .with_label_values(&[outcome])
                .observe(took.as_secs_f64());
        }
        debug!(%peer, status = status.as_u16(), outcome, latency_us = took.as_micros() as u64, "credential request");
        resp
    }
}

/// Counts a request in `pod_identity_requests_in_flight` until dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything `server` needs besides its flags; tests inject a clock and
/// credentials here instead of touching the process environment.
pub struct Options {
    pub args: ServerArgs,
    pub clock: SharedClock,
    /// The agent's own AWS credentials; `None` = the SDK default chain
    /// (or the shared credentials file with `--rotate-credentials`).
    pub credentials: Option<SharedCredentialsProvider>,
    /// Environment lookup (KUBERNETES_SERVICE_HOST/PORT, shared credentials file).
    pub env: fn(&str) -> Option<String>,
}

impl Options {
    pub fn new(args: ServerArgs) -> Self {
        Self {
            args,
            clock: crate::clock::system(),
            credentials: None,
            env: |k| std::env::var(k).ok(),
        }
    }
}

/// The assembled agent, not yet listening.
pub struct Built {
    pub agent: Arc<Agent>,
    pub keys: Option<Arc<KeyStore>>,
    pub cache: CredentialCache,
    pub metrics: Arc<Metrics>,
    args: ServerArgs,
}

pub async fn build(opts: Options) -> Result<Built, ServerError> {
    let Options {
        args,
        clock,
        credentials,
        env,
    } = opts;
    let metrics = Arc::new(Metrics::new());
    let credentials = match credentials {
        Some(c) => Some(c),
        None if args.rotate_credentials => Some(SharedCredentialsProvider::new(
            crate::rotating::SharedFileCredentials::from_env(env, args.credentials_reload_interval),
        )),
        None => None,
    };
    let eksauth = EksAuth::new(
        EksAuthConfig {
            cluster_name: args.cluster_name.clone(),
            endpoint: args.endpoint.clone(),
            region: args.region.clone(),
            connect_timeout: args.eks_auth_connect_timeout,
            request_timeout: args.eks_auth_request_timeout,
            max_attempts: args.eks_auth_max_attempts,
            credentials,
        },
        metrics.clone(),
    )
    .await;
    let v = &args.verify;
    let source = resolve_source(
        &v.jwks_source,
        v.kube_api_url.as_deref(),
        &v.service_account_dir,
        env,
    )?;
    let issuer = v.token_issuer.clone().or_else(|| match &source {
        Some(crate::jwks::KeySource::Issuer { url }) => Some(url.clone()),
        _ => None,
    });
    let keys = match source {
        None => None,
        Some(source) => {
            // In-cluster, the API server's CA is the mounted ServiceAccount's.
            let ca_file = match (&source, &v.jwks_ca_file) {
                (_, Some(ca)) => Some(ca.clone()),
                (crate::jwks::KeySource::ApiServer { sa_dir, .. }, None) => {
                    Some(sa_dir.join("ca.crt")).filter(|p| p.exists())
                }
                _ => None,
            };
            let store = Arc::new(KeyStore::new(
                KeyStoreConfig {
                    source,
                    ca_file,
                    cache_path: v.jwks_cache_path.clone(),
                    refetch_interval: v.jwks_refetch_interval,
                },
                metrics.clone(),
            )?);
            if let Err(err) = store.initial_load().await {
                warn!(error = %err, "signing keys unavailable at start; tokens are admitted unverified until they load");
            }
            store.spawn_refresh(v.jwks_refresh_interval);
            Some(store)
        }
    };
    let gate = TokenGate::new(
        GateConfig {
            audience: args.audience.clone(),
            leeway_secs: v.token_leeway.as_secs() as i64,
            issuer,
            scope: args.cache_scope,
            memo_size: v.verified_token_cache_size,
        },
        keys.clone(),
        metrics.clone(),
    );
    let cache = CredentialCache::new(
        CacheConfig {
            retention: args.max_credential_retention_before_renewal,
            max_size: args.max_cache_size,
            max_service_qps: args.max_service_qps,
            negative_ttl: args.negative_cache_ttl,
        },
        eksauth,
        clock.clone(),
        metrics.clone(),
    );
    if args.allowed_hosts.is_empty() {
        return Err(ServerError::NoAllowedHosts);
    }
    let allowed_hosts: Vec<String> = args
        .allowed_hosts
        .iter()
        .map(|h| host_only(h).to_ascii_lowercase())
        .collect();
    let allowed_display = format!("[{}]", allowed_hosts.join(" ")).into();
    let agent = Arc::new(Agent {
        allowed_hosts,
        allowed_display,
        gate,
        cache: cache.clone(),
        limiter: RateLimiter::new(
            Rate {
                per_second: args.rate_limit,
                burst: args.rate_limit_burst,
            },
            Rate {
                per_second: args.per_client_rate_limit,
                burst: args.per_client_rate_limit_burst,
            },
        ),
        clock,
        ok_responses: metrics.http_response.with_label_values(&["200"]),
        hit_latency: metrics.request_duration.with_label_values(&["hit"]),
        metrics: metrics.clone(),
    });
    Ok(Built {
        agent,
        keys,
        cache,
        metrics,
        args,
    })
}

/// Bound sockets. IPv6 hosts that could not be bound yet are in `pending`.
pub struct Listeners {
    pub credentials: Vec<TcpListener>,
    pub pending_v6: Vec<SocketAddr>,
    pub probe: Vec<TcpListener>,
    pub metrics: TcpListener,
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

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ServerError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err(ServerError::BadHost(host.to_owned()));
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    tokio::net::lookup_host((bare, port))
        .await
        .map(|a| a.collect())
        .map_err(|source| ServerError::Resolve {
            host: host.to_owned(),
            source,
        })
}

/// IPv4 failures are fatal. IPv6 `EADDRNOTAVAIL` (address not yet assigned,
/// or still in duplicate address detection) is retried for `v6_wait`, then
/// left pending; `EAFNOSUPPORT` (IPv6 off) is skipped. Upstream crash-looped
/// here (its issue #16).
pub async fn bind(args: &ServerArgs) -> Result<Listeners, ServerError> {
    let mut credentials = Vec::new();
    let mut pending_v6 = Vec::new();
    for host in &args.bind_hosts {
        for addr in resolve(host, args.port).await? {
            let deadline = Instant::now() + args.ipv6_bind_wait;
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        info!(addr = %l.local_addr().unwrap_or(addr), "listening for credential requests");
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
                    Err(source) => return Err(ServerError::Bind { addr, source }),
                }
            }
        }
    }
    let mut probe = Vec::new();
    let probe_v4 = SocketAddr::from(([127, 0, 0, 1], args.probe_port));
    probe.push(
        TcpListener::bind(probe_v4)
            .await
            .map_err(|source| ServerError::Bind {
                addr: probe_v4,
                source,
            })?,
    );
    let metrics_addr = SocketAddr::new(args.metrics_address, args.metrics_port);
    let metrics = TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: metrics_addr,
            source,
        })?;
    Ok(Listeners {
        credentials,
        pending_v6,
        probe,
        metrics,
    })
}

/// Serves until `shutdown` resolves, then drains (bounded by
/// `--drain-timeout`). Returns whether the drain finished in time.
pub async fn run(
    built: Built,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let Built {
        agent,
        keys,
        cache,
        metrics,
        args,
    } = built;
    let limits = ConnLimits {
        max_connections: args.max_connections,
        header_read_timeout: args.header_read_timeout,
        max_header_bytes: args.max_header_bytes,
    };
    let maintenance = cache.spawn_maintenance(Duration::from_secs(5));
    let probes = Arc::new(Probes::new(listeners.credential_addrs(), keys.clone()));
    let server = Server::new(agent, limits.clone(), Some(metrics.clone()));
    for l in listeners.credentials {
        server.add_listener(l);
    }
    let retry_v6 = (!listeners.pending_v6.is_empty()).then(|| {
        let adder = server.adder();
        let probes = probes.clone();
        let pending = listeners.pending_v6;
        tokio::spawn(async move {
            let mut pending = pending;
            while !pending.is_empty() {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let mut still = Vec::new();
                for addr in pending {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            info!(%addr, "IPv6 bind address appeared; listening");
                            if !adder.add(l) {
                                return;
                            }
                            probes.add_target(addr);
                        }
                        Err(_) => still.push(addr),
                    }
                }
                pending = still;
            }
        })
    });
    let admin_limits = ConnLimits {
        max_connections: 64,
        ..limits
    };
    let probe_server = Server::new(
        Arc::new(Admin::new(probes.clone(), None)),
        admin_limits.clone(),
        None,
    );
    for l in listeners.probe {
        probe_server.add_listener(l);
    }
    let metrics_server = Server::new(
        Arc::new(Admin::new(probes, Some(metrics))),
        admin_limits,
        None,
    );
    metrics_server.add_listener(listeners.metrics);

    shutdown.await;
    info!(
        grace_ms = args.drain_timeout.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    if let Some(t) = retry_v6 {
        t.abort();
    }
    let started = Instant::now();
    let (ok, _, _) = tokio::join!(
        server.drain(args.drain_timeout),
        probe_server.drain(args.drain_timeout),
        metrics_server.drain(args.drain_timeout),
    );
    maintenance.abort();
    info!(
        took_ms = started.elapsed().as_millis() as u64,
        clean = ok,
        "drained"
    );
    ok
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Raises the soft open-files limit to the hard limit (as the Go runtime
/// does), so `--max-connections` is not capped by a low default of 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(host_only("169.254.170.23"), "169.254.170.23");
        assert_eq!(host_only("169.254.170.23:80"), "169.254.170.23");
        assert_eq!(host_only("[fd00:ec2::23]"), "fd00:ec2::23");
        assert_eq!(host_only("[fd00:ec2::23]:80"), "fd00:ec2::23");
        assert_eq!(host_only("fd00:ec2::23"), "fd00:ec2::23");
        assert_eq!(host_only("localhost:8080"), "localhost");
    }
}
