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

#[cfg(feature = "aws-sdk")]
use std::sync::Arc;
#[cfg(feature = "aws-sdk")]
use std::time::{Duration, Instant};

#[cfg(feature = "aws-sdk")]
use aws_config::BehaviorVersion;
#[cfg(feature = "aws-sdk")]
use aws_config::retry::RetryConfig;
#[cfg(feature = "aws-sdk")]
use aws_config::timeout::TimeoutConfig;
#[cfg(feature = "aws-sdk")]
use aws_credential_types::provider::SharedCredentialsProvider;
#[cfg(feature = "aws-sdk")]
use aws_sdk_eksauth::operation::RequestId;
#[cfg(feature = "aws-sdk")]
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityOutput;
#[cfg(feature = "aws-sdk")]
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::credentials::Credentials;
#[cfg(feature = "aws-sdk")]
use crate::credentials::{Secret, account_from_arn};
#[cfg(feature = "aws-sdk")]
use crate::metrics::Metrics;

pub mod answer;
mod error;
mod gate;
#[cfg(feature = "aws-sdk")]
mod retry;

#[cfg(feature = "aws-sdk")]
use error::classify;
pub use error::{EksAuthError, Fault, Modeled};
pub use gate::{CallGate, CallGateConfig, Class, Saturated};

/// Where credentials come from: EKS Auth in production; a model of it in
/// the fleet simulation (bench), which drives the real cache.
pub trait Upstream: Send + Sync + 'static {
    fn assume<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>>;

    fn cluster_name(&self) -> &str;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[cfg(feature = "aws-sdk")]
impl Upstream for EksAuth {
    fn assume<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>> {
        Box::pin(EksAuth::assume(self, token))
    }

    fn cluster_name(&self) -> &str {
        EksAuth::cluster_name(self)
    }
}

#[cfg(feature = "aws-sdk")]
#[derive(Clone)]
pub struct EksAuthConfig {
    pub cluster_name: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    /// Overrides the default credential chain (hybrid rotation, demo, tests).
    pub credentials: Option<SharedCredentialsProvider>,
}

/// What EKS Auth answered, minus what the pod must not see in logs.
#[derive(Debug, Clone)]
pub struct Issued {
    pub credentials: Credentials,
    pub association_id: Option<String>,
    pub assumed_role_arn: String,
    pub request_id: Option<String>,
}

#[cfg(feature = "aws-sdk")]
#[derive(Clone)]
pub struct EksAuth {
    client: aws_sdk_eksauth::Client,
    cluster_name: Arc<str>,
    metrics: Arc<Metrics>,
}

#[cfg(feature = "aws-sdk")]
impl EksAuth {
    pub async fn new(config: EksAuthConfig, metrics: Arc<Metrics>) -> Self {
        Self::with_http_client(config, None, metrics).await
    }

    /// `http_client`: instead of the SDK's default HTTPS client (`--ca-bundle`).
    pub async fn with_http_client(
        config: EksAuthConfig,
        http_client: Option<SharedHttpClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.request_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)));
        if let Some(region) = config.region {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(endpoint) = config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = config.credentials {
            loader = loader.credentials_provider(credentials);
        }
        if let Some(client) = http_client {
            loader = loader.http_client(client);
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_eksauth::config::Builder::from(&sdk)
            .retry_classifier(retry::NoThrottleRetry)
            .build();
        Self {
            client: aws_sdk_eksauth::Client::from_conf(conf),
            cluster_name: config.cluster_name.into(),
            metrics,
        }
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    pub async fn assume(&self, token: &str) -> Result<Issued, EksAuthError> {
        let started = Instant::now();
        let result = self
            .client
            .assume_role_for_pod_identity()
            .cluster_name(self.cluster_name.as_ref())
            .token(token)
            .send()
            .await;
        let result = match result {
            Ok(out) => issued(out),
            Err(err) => Err(classify(err)),
        };
        let code = match &result {
            Ok(_) => "OK",
            Err(e) => e.code(),
        };
        self.metrics.eksauth_call(code, started.elapsed());
        result
    }
}

#[cfg(feature = "aws-sdk")]
fn issued(out: AssumeRoleForPodIdentityOutput) -> Result<Issued, EksAuthError> {
    let request_id = out.request_id().map(str::to_owned);
    // The SDK fills missing required members with defaults (smithy error
    // correction), so absence shows up as empty strings.
    let user = out
        .assumed_role_user()
        .filter(|u| !u.arn().is_empty())
        .ok_or(EksAuthError::Incomplete("assumedRoleUser"))?;
    let creds = out
        .credentials()
        .ok_or(EksAuthError::Incomplete("credentials"))?;
    if creds.access_key_id().is_empty() || creds.secret_access_key().is_empty() {
        return Err(EksAuthError::Incomplete("credentials"));
    }
    let credentials = Credentials {
        access_key_id: creds.access_key_id().to_owned(),
        secret_access_key: Secret::new(creds.secret_access_key()),
        session_token: Secret::new(creds.session_token()),
        account_id: account_from_arn(user.arn())
            .map_err(|source| EksAuthError::Arn {
                source,
                via_cache: false,
            })?
            .to_owned(),
        expiration: *creds.expiration(),
    };
    credentials
        .check_expiration()
        .map_err(|source| EksAuthError::Expiration {
            source,
            request_id: request_id.clone().unwrap_or_default(),
        })?;
    Ok(Issued {
        credentials,
        association_id: out
            .pod_identity_association()
            .map(|a| a.association_id().to_owned()),
        assumed_role_arn: user.arn().to_owned(),
        request_id,
    })
}
