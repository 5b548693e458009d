//! The pod-facing credential endpoint: `GET /v1/credentials`.
//!
//! Contract (upstream v0.1.37 statuses and messages; error bodies are
//! `text/plain` and end in a newline):
//! - path other than `/v1/credentials` (matched unescaped) → 404 `404 page
//!   not found`; a path that is not clean (`//v1/credentials`) → 307 to
//!   the clean one, as Go's mux;
//! - any method (upstream routes them all);
//! - `Host` (of an absolute-form target, else the header; port and `[]`
//!   stripped) not an allowed host → 403
//!   `Access Denied. Called agent through invalid address, please use either [<hosts>] address not <host>`;
//! - token = raw `Authorization` header; empty → 400;
//! - rate limited → 429 `Too Many Requests` ([`crate::ratelimit`]): a
//!   token admission remembers is charged to its [flow](crate::flow); any
//!   other to the caller's address, before it is parsed, so what a pod
//!   sends (forged tokens, garbage) costs its own share;
//! - unparsable, expired, not-yet-valid, wrong audience or refused by local
//!   verification → 400 with golang-jwt's words ([`crate::token`]);
//! - EKS Auth error → its status, `[<request-id>]: (<Code>): <message>, fault: client|server`;
//!   EKS Auth unreachable, timed out, or an answer that is not a usable
//!   credential → 500;
//! - success → 200 `application/json`, see [`crate::credentials`].
//!
//! [`RequestError::status`] is the only place a status is chosen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use tracing::debug;

use crate::admission::{Admission, AdmissionError};
use crate::cache::{CredentialCache, Outcome};
use crate::clock::SharedClock;
use crate::eksauth::EksAuthError;
use crate::flow::Flows;
use crate::logging::Topic;
use crate::metrics::Metrics;
use crate::policy::FetchError;
use crate::ratelimit::{Limited, RateLimiter};
use crate::serve::{Handler, HttpResponse, text_response};

mod path;

use path::route_other;

pub const CREDENTIALS_PATH: &str = "/v1/credentials";

/// Why one credential request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("404 page not found")]
    NotFound,
    /// A path that is not clean, as Go's mux answers it (not an error to
    /// the client, but decided here with every other status).
    #[error("<a href=\"{location}\">Temporary Redirect</a>.\n")]
    Redirect { location: String, method: Method },
    #[error("Too Many Requests")]
    RateLimited(Limited),
    #[error(
        "Access Denied. Called agent through invalid address, please use either {allowed} address not {host}"
    )]
    Host { host: String, allowed: Arc<str> },
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Fetch(Arc<FetchError>),
    /// Upstream's cache words the failures of what it fetched so (the
    /// endpoint words it when its cache is on).
    #[error("error getting credentials to cache: {0}")]
    Caching(Arc<FetchError>),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::NotFound => StatusCode::NOT_FOUND,
            RequestError::Redirect { .. } => StatusCode::TEMPORARY_REDIRECT,
            RequestError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Host { .. } => StatusCode::FORBIDDEN,
            RequestError::Admission(_) => StatusCode::BAD_REQUEST,
            // Our own queue being full is a 503, which SDKs retry.
            RequestError::Fetch(err) if matches!(**err, FetchError::Saturated { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // EKS Auth's own error status passes through, as upstream's
            // does; everything else that went wrong fetching is a 500.
            RequestError::Fetch(err) | RequestError::Caching(err) => err
                .eksauth()
                .and_then(EksAuthError::upstream_status)
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn response(&self) -> HttpResponse {
        let RequestError::Redirect { location, method } = self else {
            return text_response(self.status(), format!("{self}\n"));
        };
        // http.Redirect: an HTML body for GET, its type for GET and HEAD.
        let body = if method == Method::GET {
            Bytes::from(format!("{self}\n"))
        } else {
            Bytes::new()
        };
        let mut resp = hyper::Response::new(Full::new(body));
        *resp.status_mut() = self.status();
        if method == Method::GET || method == Method::HEAD {
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
        }
        if let Ok(location) = HeaderValue::from_str(location) {
            resp.headers_mut().insert(LOCATION, location);
        }
        resp
    }
}

fn json_response(body: Bytes) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `Host` without its port and IPv6 brackets (case kept: comparisons are
/// case-insensitive).
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

/// The `/v1/credentials` handler: checks, admission, cache.
pub struct CredentialEndpoint {
    allowed_hosts: Vec<String>,
    allowed_display: Arc<str>,
    admission: Admission,
    cache: CredentialCache,
    limiter: RateLimiter,
    flows: Flows,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Per-request series resolved once (`with_label_values` hashes and locks).
    ok_responses: prometheus::IntCounter,
}

impl CredentialEndpoint {
    /// `allowed_hosts` as given on the command line (ports and brackets are
    /// stripped here).
    pub fn new(
        allowed_hosts: &[String],
        admission: Admission,
        cache: CredentialCache,
        limiter: RateLimiter,
        flows: Flows,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let allowed_hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| host_only(h).to_ascii_lowercase())
            .collect();
        let allowed_display = format!("[{}]", allowed_hosts.join(" ")).into();
        Self {
            allowed_hosts,
            allowed_display,
            admission,
            cache,
            limiter,
            flows,
            clock,
            ok_responses: metrics.http_response.with_label_values(&["200"]),
            metrics,
        }
    }

    async fn credentials(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        now_ms: u64,
    ) -> Result<(Bytes, Outcome), RequestError> {
        if req.uri().path() != CREDENTIALS_PATH {
            route_other(req)?;
        }
        // Go's server takes the host of an absolute-form target over the
        // Host header; upstream compares what is left after port and
        // brackets (we compare case-insensitively: hosts and IPv6 literals
        // are, and no SDK sends upper case).
        let host = match req.uri().authority() {
            Some(authority) => authority.as_str(),
            None => req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        };
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
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .map_or(&b""[..], |v| v.as_bytes());
        let now_secs = (now_ms / 1000) as i64;
        let source = || self.flows.source(peer.ip());
        // Every request is charged once: a remembered token to its flow,
        // any other to its caller's address before it is parsed.
        let (admitted, first) = match self.admission.remembered(token, now_secs)? {
            Some(admitted) => {
                let flow = admitted.flow.unwrap_or_else(source);
                self.limiter
                    .check(flow, now_ms)
                    .map_err(RequestError::RateLimited)?;
                (admitted, false)
            }
            None => {
                self.limiter
                    .check(source(), now_ms)
                    .map_err(RequestError::RateLimited)?;
                (self.admission.admit(token, now_secs).await?, true)
            }
        };
        let token_ref = || admitted.token_ref();
        let flow = admitted.flow.unwrap_or_else(source);
        let result = self
            .cache
            .get(&admitted.key, admitted.hash, token_ref, flow, now_ms)
            .await
            .map_err(|err| self.fetch_error(err))?;
        if first {
            self.admission.confirm(&admitted, now_secs);
        }
        Ok(result)
    }
}

impl CredentialEndpoint {
    /// Upstream's cache prefixes what its delegate could not give it (an
    /// ARN that does not parse; EKS Auth's own errors keep their words).
    fn fetch_error(&self, err: Arc<FetchError>) -> RequestError {
        if self.cache.enabled() && matches!(err.eksauth(), Some(EksAuthError::Arn(_))) {
            RequestError::Caching(err)
        } else {
            RequestError::Fetch(err)
        }
    }
}

impl Handler for CredentialEndpoint {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let now_ms = self.clock.now_ms_at(started);
        let result = {
            // hyper drops this future when the client hangs up mid-request;
            // the guard keeps the gauge right either way.
            let _in_flight = InFlight::enter(&self.metrics.in_flight);
            self.credentials(&req, peer, now_ms).await
        };
        let (resp, outcome) = match result {
            Ok((body, outcome)) => (json_response(body), outcome.as_str()),
            Err(err) => {
                if let RequestError::RateLimited(which) = &err {
                    self.metrics
                        .rate_limited
                        .with_label_values(&[which.as_str()])
                        .inc();
                }
                (err.response(), "error")
            }
        };
        let status = resp.status();
        if status == StatusCode::OK {
            self.ok_responses.inc();
        } else {
            self.metrics
                .http_response
                .with_label_values(&[status.as_str()])
                .inc();
        }
        // A hit takes a microsecond or two, below the histogram's first
        // bucket: hits are counted (`cache_state{state="hit"}`), not timed,
        // which spares the hot path a clock read.
        let took = (outcome != "hit").then(|| started.elapsed());
        if let Some(took) = took {
            self.metrics
                .request_duration
                .with_label_values(&[outcome])
                .observe(took.as_secs_f64());
        }
        if tracing::enabled!(tracing::Level::DEBUG)
            && let Some(suppressed) = self.metrics.logs.allow(Topic::Request)
        {
            debug!(%peer, status = status.as_u16(), outcome, latency_us = took.map(|t| t.as_micros() as u64), suppressed, "credential request");
        }
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
