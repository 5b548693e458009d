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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::issuer::{Issuer, TokenSpec, now_secs, uuid};
use crate::jwks::parse_jwks;
use crate::serve::{Handler, HttpResponse};
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub calls: u64,
    pub successes: u64,
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
    successes: AtomicU64,
    key_requests: AtomicU64,
    access_key_ids: Mutex<Vec<String>>,
}

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).expect("static status"),
        code,
        message: message.into(),
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
        self.access_key_ids
            .lock()
            .expect("emulator lock")
            .push(akid);
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
        let lifetime = *self.credential_lifetime.read().expect("emulator lock");
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
                "expiration": now + lifetime.as_secs() as i64,
            },
        });
        if let (Some(field), Some(obj)) = (&faults.omit_field, answer.as_object_mut()) {
            obj.remove(field);
        }
        Ok(answer)
    }

    /// Returns the access key id of a correctly shaped (and, for registered
    /// keys, correctly signed) SigV4 request for service `eks-auth`.
    fn check_sigv4(&self, parts: &http::request::Parts, body: &[u8]) -> Result<String, ApiError> {
        let missing = || {
            api_error(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        };
        let auth = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(missing)?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for field in rest.split(',') {
            let field = field.trim();
            if let Some(v) = field.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = field.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = field.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let bad = |m: &str| api_error(403, "IncompleteSignatureException", m.to_owned());
        let credential = credential.ok_or_else(|| bad("Credential missing"))?;
        let signed_headers = signed_headers.ok_or_else(|| bad("SignedHeaders missing"))?;
        let signature = signature.ok_or_else(|| bad("Signature missing"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [akid, _date, region, service, "aws4_request"] = scope[..] else {
            return Err(bad("Credential scope malformed"));
        };
        if service != "eks-auth" {
            return Err(api_error(
                403,
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped to correct service: 'eks-auth', not '{service}'"
                ),
            ));
        }
        let amz_date = parts
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_amz_date)
            .ok_or_else(|| bad("X-Amz-Date missing or malformed"))?;
        let skew = SystemTime::now()
            .duration_since(amz_date)
            .unwrap_or_else(|e| e.duration());
        if skew > Duration::from_secs(15 * 60) {
            return Err(api_error(
                403,
                "InvalidSignatureException",
                "Signature expired",
            ));
        }
        let secret = self
            .node_credentials
            .read()
            .expect("emulator lock")
            .get(akid)
            .cloned();
        if let Some(secret) = secret {
            let mut headers = Vec::new();
            for name in signed_headers.split(';') {
                let value = parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| bad("a signed header is missing"))?;
                headers.push((name, value));
            }
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri = format!("http://{host}{path}");
            let identity = Credentials::new(akid, secret, None, None, "emulator").into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name("eks-auth")
                .time(amz_date)
                .settings(SigningSettings::default())
                .build()
                .map_err(|_| bad("signing parameters"))?
                .into();
            let signable = SignableRequest::new(
                parts.method.as_str(),
                uri,
                headers.into_iter(),
                SignableBody::Bytes(body),
            )
            .map_err(|_| bad("request not signable"))?;
            let expected = sign(signable, &params)
                .map_err(|_| bad("signing failed"))?
                .into_parts()
                .1;
            if expected != signature {
                return Err(api_error(
                    403,
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided.",
                ));
            }
        } else if !self
            .node_credentials
            .read()
            .expect("emulator lock")
            .is_empty()
        {
            return Err(api_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        Ok(akid.to_owned())
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

/// `20261129T060102Z`.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || s.as_bytes()[8] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn json_body(status: StatusCode, v: &impl Serialize) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).expect("JSON values serialize"),
    )));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Handler for Emulator {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> HttpResponse {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["clusters", cluster, "assume-role-for-pod-identity"]) => {
                let cluster = (*cluster).to_owned();
                let request_id = uuid();
                let mut resp = match self.assume(req, cluster).await {
                    Ok(v) => json_body(StatusCode::OK, &v),
                    Err(e) => {
                        let mut r =
                            json_body(e.status, &json!({"__type": e.code, "message": e.message}));
                        r.headers_mut()
                            .insert("x-amzn-errortype", HeaderValue::from_static(e.code));
                        r
                    }
                };
                resp.headers_mut().insert(
                    "x-amzn-requestid",
                    HeaderValue::from_str(&request_id).expect("uuid is a valid header value"),
                );
                resp
            }
            (&Method::GET, [".well-known", "openid-configuration"]) => {
                self.key_requests.fetch_add(1, Ordering::SeqCst);
                let base = self.base_url.read().expect("emulator lock").clone();
                json_body(
                    StatusCode::OK,
                    &self.issuer.discovery(&format!("{base}/openid/v1/jwks")),
                )
            }
            (&Method::GET, ["openid", "v1", "jwks"]) => {
                self.key_requests.fetch_add(1, Ordering::SeqCst);
                if !self.keys_authorized(&req) {
                    return json_body(
                        StatusCode::UNAUTHORIZED,
                        &json!({"kind":"Status","code":401,"message":"Unauthorized"}),
                    );
                }
                let mut r = json_body(StatusCode::OK, &self.issuer.jwks());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                r
            }
            (&Method::GET, ["_emulator", "stats"]) => json_body(StatusCode::OK, &self.stats()),
            (&Method::POST, ["_emulator", "faults"]) => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                match serde_json::from_slice::<Faults>(&body) {
                    Ok(f) => {
                        self.set_faults(f.clone());
                        json_body(StatusCode::OK, &f)
                    }
                    Err(e) => json_body(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
                }
            }
            (&Method::POST, ["_emulator", "mint"]) => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let m: MintRequest = match serde_json::from_slice(&body) {
                    Ok(m) => m,
                    Err(e) => {
                        return json_body(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": e.to_string()}),
                        );
                    }
                };
                let mut spec = TokenSpec::pod(
                    &m.namespace,
                    &m.service_account,
                    m.pod.as_deref().unwrap_or("pod"),
                );
                if let Some(uid) = m.pod_uid {
                    spec.pod_uid = uid;
                }
                if let Some(l) = m.lifetime_s {
                    spec.lifetime = Duration::from_secs(l);
                }
                match self.issuer.mint(&spec) {
                    Ok(t) => crate::server::text_response(StatusCode::OK, t),
                    Err(e) => crate::server::text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.to_string(),
                    ),
                }
            }
            _ => crate::server::text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates() {
        let t = parse_amz_date("20260413T003509Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1776040509);
        assert!(parse_amz_date("2026-04-13T00:35:09Z").is_none());
    }

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

/// A running emulator on loopback.
pub struct RunningEmulator {
    pub emulator: Arc<Emulator>,
    pub addr: SocketAddr,
    server: Option<crate::serve::Server<Emulator>>,
}

impl RunningEmulator {
    /// Serves `emulator` on `listener` (plain HTTP).
    pub fn start(emulator: Arc<Emulator>, listener: tokio::net::TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        emulator.set_base_url(&format!("http://{addr}"));
        let server = crate::serve::Server::new(
            emulator.clone(),
            crate::serve::ConnLimits {
                max_connections: 65_536,
                ..Default::default()
            },
            None,
        );
        server.add_listener(listener);
        Self {
            emulator,
            addr,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.drain(Duration::from_secs(1)).await;
        }
    }
}

/// Serves `emulator` over TLS (tests of HTTPS key sources). Runs until the
/// returned task is aborted.
pub fn serve_tls(
    emulator: Arc<Emulator>,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let emulator = emulator.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, std::convert::Infallible>(emulator.handle(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Issuer(#[from] crate::issuer::IssuerError),
    #[error("{0}")]
    Association(String),
}

/// The `emulator` subcommand.
pub async fn run_standalone(
    args: crate::cli::EmulatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StandaloneError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StandaloneError::Bind {
            addr: args.listen,
            source,
        })?;
    let url = format!("http://{addr}");
    let issuer_url = args.issuer.clone().unwrap_or_else(|| url.clone());
    let issuer = match &args.key_file {
        Some(path) if path.exists() => {
            let pem = std::fs::read_to_string(path).map_err(|source| StandaloneError::KeyFile {
                path: path.clone(),
                source,
            })?;
            Issuer::from_pem(issuer_url, &pem)?
        }
        Some(path) => {
            let issuer = Issuer::generate(issuer_url)?;
            let pem = issuer.private_key_pem().expect("generated keys are RSA");
            std::fs::write(path, pem).map_err(|source| StandaloneError::KeyFile {
                path: path.clone(),
                source,
            })?;
            issuer
        }
        None => Issuer::generate(issuer_url)?,
    };
    let emulator = Arc::new(Emulator::new(Arc::new(issuer)));
    for spec in &args.associations {
        emulator.associate(Association::parse(spec).map_err(StandaloneError::Association)?);
    }
    emulator.set_credential_lifetime(args.credential_lifetime);
    emulator.set_faults(Faults {
        latency_ms: args.latency.as_millis() as u64,
        ..Default::default()
    });
    let running = RunningEmulator::start(emulator, listener);
    println!("{url}");
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::write(&tmp, format!("{url}\n"));
        let _ = std::fs::rename(&tmp, path);
    }
    tracing::info!(%url, "EKS Auth emulator and token issuer listening");
    shutdown.await;
    running.stop().await;
    Ok(())
}
