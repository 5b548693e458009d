//! EKS Auth emulator: `AssumeRoleForPodIdentity` on the real wire protocol,
//! backed by the [`Issuer`], so the agent runs and is tested with no AWS
//! account. It also publishes the issuer's keys like kube-apiserver.
//!
//! It checks tokens with its own code ([`tokens`]: jsonwebtoken's `decode`
//! and its own claim structs), never with the agent's parser or verifier, so
//! a parsing bug in the agent is not mirrored here.
//!
//! Routes ([`routes`]):
//! - `POST /clusters/{clusterName}/assume-role-for-pod-identity` `{"token":..}`:
//!   SigV4 (`eks-auth`) checked, structurally always and cryptographically
//!   for access keys registered with [`Emulator::add_node_credentials`];
//!   token verified against the issuer; association looked up by
//!   (namespace, serviceaccount); errors as `{"__type":..,"message":..}` with
//!   AWS's status codes and `x-amzn-errortype`.
//! - `GET /.well-known/openid-configuration`, `GET /openid/v1/jwks` (bearer
//!   token required if set with [`Emulator::require_bearer`]).
//! - Control plane for tests and benchmarks (loopback only, no auth):
//!   `GET /_emulator/stats`, `GET /_emulator/calls-per-second`
//!   ([`SecondCount`]s), `POST /_emulator/faults` (JSON [`Faults`]),
//!   `POST /_emulator/mint` (JSON [`MintRequest`] → token).
//!
//! Tests await [`Emulator::calls_started`] instead of sleeping.

mod assume;
mod routes;
mod seconds;
mod sigv4;
mod tokens;

pub use routes::{RunningEmulator, StandaloneError, run_standalone};
pub use seconds::SecondCount;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::StatusCode;
use pod_identity_agent::clock::{SharedClock, system};
use serde::{Deserialize, Serialize};

use crate::issuer::{Issuer, uuid};

pub const ACCOUNT_ID: &str = "111122223333";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    pub namespace: String,
    pub service_account: String,
    pub role_arn: String,
    pub association_id: String,
}

impl Association {
    /// `namespace/serviceaccount=roleArn` (the `--association` flag).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (who, role) = spec.split_once('=').ok_or_else(|| {
            format!("association {spec:?}: expected namespace/serviceaccount=roleArn")
        })?;
        let (ns, sa) = who
            .split_once('/')
            .ok_or_else(|| format!("association {spec:?}: expected namespace/serviceaccount"))?;
        if ns.is_empty() || sa.is_empty() || !role.starts_with("arn:") {
            return Err(format!(
                "association {spec:?}: empty name or role not an ARN"
            ));
        }
        Ok(Self::new(ns, sa, role))
    }

    pub fn new(namespace: &str, service_account: &str, role_arn: &str) -> Self {
        let id: String = uuid().replace('-', "")[..17].to_owned();
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            role_arn: role_arn.into(),
            association_id: format!("a-{id}"),
        }
    }
}

/// Fault injection, settable at run time. Every knob produces one kind of
/// answer the agent must handle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every AssumeRoleForPodIdentity call.
    pub latency_ms: u64,
    /// Share of calls answered with `error_code` (or InternalServerException).
    pub error_rate: f64,
    /// Error returned for every call (e.g. `ThrottlingException`,
    /// `ServiceUnavailableException`); wins over `error_rate`.
    pub force_error: Option<String>,
    pub error_code: Option<String>,
    /// Leave this top-level field out of successful answers
    /// (`credentials`, `assumedRoleUser`).
    pub omit_field: Option<String>,
    /// Credentials expire this many seconds after issue (may be negative);
    /// overrides the configured lifetime.
    pub credential_lifetime_s: Option<i64>,
    /// `credentials.expiration` exactly as given (epoch seconds, possibly
    /// fractional); overrides the lifetime.
    pub credential_expiration: Option<f64>,
    /// `assumedRoleUser.arn` exactly as given (unparsable ARNs).
    pub role_arn: Option<String>,
    /// Answer every call with exactly this response (after the SigV4 check):
    /// non-JSON 2xx, empty/HTML/text error bodies, codes outside the model,
    /// lower-case codes.
    pub raw_response: Option<RawResponse>,
    /// Close the connection after reading the request, without answering.
    pub drop_connection: bool,
    /// Throttle above this many calls per second (token bucket, burst of
    /// the same size): `ThrottlingException` 429.
    pub throttle_above_per_s: Option<f64>,
}

/// A response written as is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Extra headers, e.g. `x-amzn-errortype`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub calls: u64,
    pub successes: u64,
    /// Calls answered with ThrottlingException by `throttle_above_per_s`.
    pub throttled: u64,
    /// Distinct signing access key ids, in first-seen order.
    pub access_key_ids: Vec<String>,
    /// GETs of the JWKS and discovery documents.
    pub key_requests: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MintRequest {
    pub namespace: String,
    pub service_account: String,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub lifetime_s: Option<u64>,
}

pub struct Emulator {
    issuer: Arc<Issuer>,
    clock: SharedClock,
    cluster_name: Option<String>,
    region: String,
    associations: RwLock<HashMap<(String, String), Association>>,
    credential_lifetime: RwLock<Duration>,
    faults: RwLock<Faults>,
    node_credentials: RwLock<HashMap<String, String>>,
    bearer: RwLock<Option<String>>,
    base_url: RwLock<String>,
    calls: AtomicU64,
    /// Calls started so far, for tests to await instead of sleeping.
    started: tokio::sync::watch::Sender<u64>,
    successes: AtomicU64,
    throttled: AtomicU64,
    per_second: seconds::PerSecond,
    /// (tokens, last refill ms) of the `throttle_above_per_s` bucket.
    throttle_bucket: Mutex<(f64, u64)>,
    key_requests: AtomicU64,
    access_key_ids: Mutex<Vec<String>>,
}

/// An EKS Auth error answer.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

pub(crate) fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).expect("static status"),
        code,
        message: message.into(),
    }
}

/// AWS's status for each EKS Auth error code.
fn error_for_code(code: &str) -> ApiError {
    let (status, code): (u16, &'static str) = match code {
        "AccessDeniedException" => (400, "AccessDeniedException"),
        "ExpiredTokenException" => (400, "ExpiredTokenException"),
        "InvalidParameterException" => (400, "InvalidParameterException"),
        "InvalidRequestException" => (400, "InvalidRequestException"),
        "InvalidTokenException" => (400, "InvalidTokenException"),
        "ResourceNotFoundException" => (404, "ResourceNotFoundException"),
        "ThrottlingException" => (429, "ThrottlingException"),
        "ServiceUnavailableException" => (503, "ServiceUnavailableException"),
        _ => (500, "InternalServerException"),
    };
    let message = match code {
        "ThrottlingException" => "Rate exceeded".to_owned(),
        _ => format!("{code} (injected)"),
    };
    api_error(status, code, message)
}

impl Emulator {
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            issuer,
            clock: system(),
            cluster_name: None,
            region: "us-west-2".into(),
            associations: RwLock::new(HashMap::new()),
            credential_lifetime: RwLock::new(Duration::from_secs(6 * 3600)),
            faults: RwLock::new(Faults::default()),
            node_credentials: RwLock::new(HashMap::new()),
            bearer: RwLock::new(None),
            base_url: RwLock::new(String::new()),
            calls: AtomicU64::new(0),
            started: tokio::sync::watch::Sender::new(0),
            successes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            per_second: seconds::PerSecond::default(),
            throttle_bucket: Mutex::new((f64::NAN, 0)),
            key_requests: AtomicU64::new(0),
            access_key_ids: Mutex::new(Vec::new()),
        }
    }

    /// Only this cluster exists (ResourceNotFoundException for others).
    pub fn with_cluster(mut self, name: &str) -> Self {
        self.cluster_name = Some(name.into());
        self
    }

    /// Token expiry and credential expiration follow this clock (a test's
    /// manual clock, shared with the agent).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    pub fn associate(&self, a: Association) {
        self.associations
            .write()
            .expect("emulator lock")
            .insert((a.namespace.clone(), a.service_account.clone()), a);
    }

    pub fn set_credential_lifetime(&self, d: Duration) {
        *self.credential_lifetime.write().expect("emulator lock") = d;
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.write().expect("emulator lock") = f;
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().expect("emulator lock").clone()
    }

    /// Requests signed with this access key id must carry a valid SigV4 signature.
    pub fn add_node_credentials(&self, access_key_id: &str, secret: &str) {
        self.node_credentials
            .write()
            .expect("emulator lock")
            .insert(access_key_id.into(), secret.into());
    }

    pub fn require_bearer(&self, token: Option<String>) {
        *self.bearer.write().expect("emulator lock") = token;
    }

    /// The URL the key endpoints are reachable at (for discovery's `jwks_uri`).
    pub fn set_base_url(&self, url: &str) {
        *self.base_url.write().expect("emulator lock") = url.trim_end_matches('/').to_owned();
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Resolves once `n` AssumeRoleForPodIdentity calls have started.
    pub async fn calls_started(&self, n: u64) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|started| *started >= n).await;
    }

    pub fn stats(&self) -> Stats {
        Stats {
            calls: self.calls(),
            successes: self.successes.load(Ordering::SeqCst),
            throttled: self.throttled.load(Ordering::SeqCst),
            key_requests: self.key_requests.load(Ordering::SeqCst),
            access_key_ids: self.access_key_ids.lock().expect("emulator lock").clone(),
        }
    }

    /// Calls per second over the last hour, oldest first.
    pub fn calls_per_second(&self) -> Vec<SecondCount> {
        self.per_second.snapshot()
    }

    fn now_secs(&self) -> i64 {
        (self.clock.now_ms() / 1000) as i64
    }

    /// The `throttle_above_per_s` bucket: false when this call is over it.
    fn within_rate(&self, per_s: f64) -> bool {
        let now = self.clock.now_ms();
        let mut bucket = self.throttle_bucket.lock().expect("emulator lock");
        let (tokens, last) = *bucket;
        let tokens = if tokens.is_nan() {
            per_s.max(1.0)
        } else {
            (tokens + now.saturating_sub(last) as f64 / 1000.0 * per_s).min(per_s.max(1.0))
        };
        let (tokens, ok) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *bucket = (tokens, now.max(last));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn association_specs() {
        let a = Association::parse("default/s3-sa=arn:aws:iam::111122223333:role/s3").unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.service_account.as_str()),
            ("default", "s3-sa")
        );
        assert!(a.association_id.starts_with("a-"));
        assert!(Association::parse("default=arn:aws:iam::1:role/x").is_err());
        assert!(Association::parse("default/sa=role").is_err());
    }
}
