//! The pod-facing credential endpoint: `GET /v1/credentials`.
//!
//! Contract (upstream v0.1.37 statuses and messages; error bodies are
//! `text/plain` and end in a newline):
//! - path other than `/v1/credentials` → 404 `404 page not found`;
//! - rate limited (per client, then global) → 429 `Too Many Requests`;
//! - `Host` (port and `[]` stripped) not an allowed host → 403
//!   `Access Denied. Called agent through invalid address, please use either [<hosts>] address not <host>`;
//! - method other than GET → 405 (`Allow: GET`);
//! - token = raw `Authorization` header; empty, unparsable, expired,
//!   not-yet-valid, wrong audience or refused by local verification → 400;
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
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use tracing::debug;

use crate::cache::{CredentialCache, FetchError, Outcome, TokenRef};
use crate::clock::SharedClock;
use crate::eksauth::EksAuthError;
use crate::metrics::Metrics;
use crate::ratelimit::{Limited, RateLimiter};
use crate::serve::{Handler, HttpResponse, text_response};
use crate::token::TokenError;
use crate::verify::{AdmitError, TokenGate};

pub const CREDENTIALS_PATH: &str = "/v1/credentials";

/// Why one credential request failed.
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
    gate: TokenGate,
    cache: CredentialCache,
    limiter: RateLimiter,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Per-request series resolved once (`with_label_values` hashes and locks).
    ok_responses: prometheus::IntCounter,
    hit_latency: prometheus::Histogram,
}

impl CredentialEndpoint {
    /// `allowed_hosts` as given on the command line (ports and brackets are
    /// stripped here).
    pub fn new(
        allowed_hosts: &[String],
        gate: TokenGate,
        cache: CredentialCache,
        limiter: RateLimiter,
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
            gate,
            cache,
            limiter,
            clock,
            ok_responses: metrics.http_response.with_label_values(&["200"]),
            hit_latency: metrics.request_duration.with_label_values(&["hit"]),
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
            return Err(RequestError::NotFound);
        }
        self.limiter
            .check(peer.ip(), now_ms)
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
                AdmitError::Token(TokenError::Malformed("token is not valid UTF-8".into()))
            })?,
        };
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

impl Handler for CredentialEndpoint {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let now_ms = self.clock.now_ms();
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
