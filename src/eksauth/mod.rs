//! The agent's one upstream: EKS Auth `AssumeRoleForPodIdentity`.
//!
//! Wire (rest-json, SigV4 service `eks-auth`):
//! `POST /clusters/{clusterName}/assume-role-for-pod-identity` `{"token":"<jwt>"}` →
//! `{"subject":{"namespace","serviceAccount"},"audience",
//!   "podIdentityAssociation":{"associationArn","associationId"},
//!   "assumedRoleUser":{"arn","assumeRoleId"},
//!   "credentials":{"sessionToken","secretAccessKey","accessKeyId","expiration":<epoch s>}}`.
//! Errors: `{"__type":"<Code>","message":".."}` with 400 (AccessDenied,
//! ExpiredToken, InvalidParameter, InvalidRequest, InvalidToken), 404
//! (ResourceNotFound), 429 (Throttling), 500 (InternalServer), 503
//! (ServiceUnavailable); how they reach the pod is in [`error`].
//!
//! Client: aws-config default chain (env, profile, IMDS), timeouts connect
//! 500 ms / attempt 1 s (upstream's), SDK standard retries except for
//! throttling (see [`retry`]), proxy from
//! `HTTP(S)_PROXY`/`NO_PROXY` (behavior version ≥ 2025-08-07), endpoint from
//! `--endpoint` or `AWS_ENDPOINT_URL_EKS_AUTH`.

use crate::credentials::Credentials;

pub mod answer;
#[cfg(feature = "aws-sdk")]
mod client;
mod error;
#[cfg(feature = "aws-sdk")]
mod retry;

#[cfg(feature = "aws-sdk")]
pub use client::{EksAuth, EksAuthConfig};
pub use error::{EksAuthError, Fault, Modeled};

/// Where credentials come from: EKS Auth in production; a model of it in
/// the fleet simulation (bench), which drives the real cache.
pub trait Upstream: Send + Sync + 'static {
    fn assume<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>>;

    fn cluster_name(&self) -> &str;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What EKS Auth answered, minus what the pod must not see in logs.
#[derive(Debug, Clone)]
pub struct Issued {
    pub credentials: Credentials,
    pub association_id: Option<String>,
    pub assumed_role_arn: String,
    pub request_id: Option<String>,
}

impl Issued {
    /// The pod-facing document (built once, served from the cache as is).
    /// An expiration it cannot carry is a bad answer, never a panic.
    pub fn body(&self) -> Result<bytes::Bytes, EksAuthError> {
        self.credentials
            .to_body()
            .map_err(|source| EksAuthError::Expiration {
                source,
                request_id: self.request_id.clone().unwrap_or_default(),
            })
    }
}
