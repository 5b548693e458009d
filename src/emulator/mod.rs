//! EKS Auth emulator: `AssumeRoleForPodIdentity` on the real wire protocol,
//! backed by the project's [`Issuer`], so the agent runs and is tested with
//! no AWS account. It also publishes the issuer's keys like kube-apiserver.
//!
//! Routes:
//! - `POST /clusters/{clusterName}/assume-role-for-pod-identity` `{"token":..}`:
//!   SigV4 (`eks-auth`) checked — structurally always, cryptographically for
//!   access keys registered with [`Emulator::add_node_credentials`]; token
//!   verified against the issuer (signature, audience, exp); association
//!   looked up by (namespace, serviceaccount); errors as
//!   `{"__type":..,"message":..}` with AWS's status codes.
//! - `GET /.well-known/openid-configuration`, `GET /openid/v1/jwks` (bearer
//!   token required if set with [`Emulator::require_bearer`]).
//! - Control plane for tests and benchmarks (loopback only, no auth):
//!   `GET /_emulator/stats`, `POST /_emulator/faults` (JSON [`Faults`]),
//!   `POST /_emulator/mint` (JSON [`MintRequest`] → token).

mod routes;
mod sigv4;

pub use routes::{RunningEmulator, StandaloneError, run_standalone, serve_tls};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use http::header::AUTHORIZATION;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::issuer::{Issuer, now_secs, uuid};
use crate::jwks::parse_jwks;
use crate::token;

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

/// Fault injection, settable at run time.
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
    /// (`credentials`, `assumedRoleUser`): malformed-response tests.
    pub omit_field: Option<String>,
    /// Credentials expire this many seconds after issue (may be negative);
    /// overrides the configured lifetime.
    pub credential_lifetime_s: Option<i64>,
    /// Answer every call with exactly this response (after the SigV4 check):
    /// non-JSON 2xx, empty/HTML/text error bodies, codes outside the model.
    pub raw_response: Option<RawResponse>,
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
    key_requests: AtomicU64,
    access_key_ids: Mutex<Vec<String>>,
}

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    raw: Option<Box<RawResponse>>,
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).expect("static status"),
        code,
        message: message.into(),
        raw: None,
    }
}

/// AWS's status for each EKS Auth error code.
fn error_for_code(code: &str) -> ApiError {
    match code {
        "AccessDeniedException" => {
            api_error(400, "AccessDeniedException", "Access denied (injected)")
        }
        "ExpiredTokenException" => {
            api_error(400, "ExpiredTokenException", "Token expired (injected)")
        }
        "InvalidParameterException" => api_error(
            400,
            "InvalidParameterException",
            "Invalid parameter (injected)",
        ),
        "InvalidRequestException" => {
            api_error(400, "InvalidRequestException", "Invalid request (injected)")
        }
        "InvalidTokenException" => {
            api_error(400, "InvalidTokenException", "Invalid token (injected)")
        }
        "ResourceNotFoundException" => {
            api_error(404, "ResourceNotFoundException", "Not found (injected)")
        }
        "ThrottlingException" => api_error(429, "ThrottlingException", "Rate exceeded"),
        "ServiceUnavailableException" => api_error(
            503,
            "ServiceUnavailableException",
            "Service unavailable (injected)",
        ),
        _ => api_error(
            500,
            "InternalServerException",
            "Internal server error (injected)",
        ),
    }
}

impl Emulator {
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            issuer,
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
            key_requests: AtomicU64::new(0),
            access_key_ids: Mutex::new(Vec::new()),
        }
    }

    /// Only this cluster exists (ResourceNotFoundException for others).
    pub fn with_cluster(mut self, name: &str) -> Self {
        self.cluster_name = Some(name.into());
        self
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
            key_requests: self.key_requests.load(Ordering::SeqCst),
            access_key_ids: self.access_key_ids.lock().expect("emulator lock").clone(),
        }
    }

    async fn assume(
        &self,
        req: Request<Incoming>,
        cluster: String,
    ) -> Result<serde_json::Value, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.send_modify(|n| *n += 1);
        let faults = self.faults.read().expect("emulator lock").clone();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map_err(|_| {
                api_error(
                    400,
                    "InvalidRequestException",
                    "request body too large or unreadable",
                )
            })?
            .to_bytes();
        let akid = self.check_sigv4(&parts, &body)?;
        {
            let mut seen = self.access_key_ids.lock().expect("emulator lock");
            if !seen.contains(&akid) {
                seen.push(akid);
            }
        }
        if let Some(raw) = faults.raw_response {
            return Err(ApiError {
                raw: Some(Box::new(raw)),
                ..api_error(500, "InternalServerException", "")
            });
        }
        if let Some(code) = &faults.force_error {
            return Err(error_for_code(code));
        }
        if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
            return Err(error_for_code(
                faults
                    .error_code
                    .as_deref()
                    .unwrap_or("InternalServerException"),
            ));
        }
        if cluster.is_empty()
            || cluster.len() > 100
            || !cluster.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(api_error(
                400,
                "InvalidParameterException",
                "clusterName is invalid",
            ));
        }
        if self.cluster_name.as_deref().is_some_and(|c| c != cluster) {
            return Err(api_error(
                404,
                "ResourceNotFoundException",
                format!("No cluster found for name: {cluster}."),
            ));
        }
        #[derive(Deserialize)]
        struct Input {
            token: Option<String>,
        }
        let input: Input = serde_json::from_slice(&body).map_err(|_| {
            api_error(
                400,
                "InvalidRequestException",
                "request body is not valid JSON",
            )
        })?;
        let raw = input
            .token
            .filter(|t| t.split('.').count() == 3)
            .ok_or_else(|| api_error(400, "InvalidParameterException", "token must be a JWT"))?;
        let parsed = token::parse(&raw)
            .map_err(|_| api_error(400, "InvalidTokenException", "The token is invalid."))?;
        let keys = parse_jwks(self.issuer.jwks().to_string().as_bytes())
            .map_err(|_| api_error(500, "InternalServerException", "issuer has no keys"))?;
        let key = parsed
            .header
            .kid
            .as_deref()
            .and_then(|kid| keys.get(kid))
            .ok_or_else(|| api_error(400, "InvalidTokenException", "The token is invalid."))?;
        let alg_ok = parsed.header.alg.parse::<jsonwebtoken::Algorithm>().ok() == Some(key.alg);
        let sig_ok = alg_ok
            && jsonwebtoken::crypto::verify(
                parsed.signature,
                parsed.signing_input.as_bytes(),
                &key.decoding,
                key.alg,
            )
            .unwrap_or(false);
        if !sig_ok {
            return Err(api_error(
                400,
                "InvalidTokenException",
                "The token is invalid.",
            ));
        }
        let claims = &parsed.claims;
        if !claims.aud.contains("pods.eks.amazonaws.com") {
            return Err(api_error(
                400,
                "InvalidTokenException",
                "The token audience is invalid.",
            ));
        }
        let now = now_secs();
        if claims.exp.is_none_or(|exp| exp < now) {
            return Err(api_error(
                400,
                "ExpiredTokenException",
                "The token has expired.",
            ));
        }
        let identity = crate::verify::identity_of(claims).map_err(|_| {
            api_error(
                400,
                "InvalidTokenException",
                "The token subject is invalid.",
            )
        })?;
        let assoc = self
            .associations
            .read()
            .expect("emulator lock")
            .get(&(identity.namespace.clone(), identity.service_account.clone()))
            .cloned()
            .ok_or_else(|| {
                api_error(404, "ResourceNotFoundException", format!(
                    "Pod Identity Association not found for namespace {} and service account {}.",
                    identity.namespace, identity.service_account
                ))
            })?;
        let lifetime_s = faults.credential_lifetime_s.unwrap_or_else(|| {
            self.credential_lifetime
                .read()
                .expect("emulator lock")
                .as_secs() as i64
        });
        let role_name = assoc.role_arn.rsplit('/').next().unwrap_or("role");
        let pod = identity.pod_name.clone().unwrap_or_default();
        let cluster_name = cluster.clone();
        let session = format!("eks-{cluster_name}-{pod}-{}", uuid());
        let session: String = session.chars().take(64).collect();
        self.successes.fetch_add(1, Ordering::SeqCst);
        let mut answer = json!({
            "subject": {"namespace": identity.namespace, "serviceAccount": identity.service_account},
            "audience": "pods.eks.amazonaws.com",
            "podIdentityAssociation": {
                "associationArn": format!("arn:aws:eks:{}:{ACCOUNT_ID}:podidentityassociation/{cluster_name}/{}", self.region, assoc.association_id),
                "associationId": assoc.association_id,
            },
            "assumedRoleUser": {
                "arn": format!("arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role_name}/{session}"),
                "assumeRoleId": format!("AROA{}:{session}", random_upper(17)),
            },
            "credentials": {
                "sessionToken": fake_session_token(),
                "secretAccessKey": STANDARD.encode(rand::random::<[u8; 30]>()),
                "accessKeyId": format!("ASIA{}", random_upper(16)),
                "expiration": now + lifetime_s,
            },
        });
        if let (Some(field), Some(obj)) = (&faults.omit_field, answer.as_object_mut()) {
            obj.remove(field);
        }
        Ok(answer)
    }

    fn keys_authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = self.bearer.read().expect("emulator lock").clone() else {
            return true;
        };
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(expected.as_str())
    }
}

fn random_upper(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..n)
        .map(|_| ALPHABET[rand::random::<u8>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// As long as a real STS session token (~1 KB).
fn fake_session_token() -> String {
    let mut raw = Vec::with_capacity(720);
    while raw.len() < 720 {
        raw.extend_from_slice(&rand::random::<[u8; 32]>());
    }
    format!("IQoJb3JpZ2luX2VjE{}", STANDARD.encode(raw))
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
