//! The EKS Auth client: the SDK, its credential chain and timeouts, and
//! what a call's outcome becomes ([`Issued`] or [`EksAuthError`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_eksauth::error::SdkError;
use aws_sdk_eksauth::operation::RequestId;
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityOutput;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::{BoxFuture, EksAuthError, Issued, Upstream, answer, retry};
use crate::credentials::{Credentials, Secret, account_from_arn};
use crate::metrics::Metrics;

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

#[derive(Clone)]
pub struct EksAuth {
    client: aws_sdk_eksauth::Client,
    cluster_name: Arc<str>,
    metrics: Arc<Metrics>,
}

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
            .map_err(EksAuthError::Arn)?
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

/// The request id EKS Auth sent, or empty.
fn request_id(raw: &HttpResponse) -> String {
    ["x-amzn-requestid", "x-amz-requestid"]
        .iter()
        .find_map(|h| raw.headers().get(*h))
        .unwrap_or_default()
        .to_owned()
}

fn classify(err: super::error::Sdk) -> EksAuthError {
    match &err {
        // A 2xx that failed to deserialize surfaces as an unhandled service
        // error carrying the success status.
        SdkError::ServiceError(service) if service.raw().status().is_success() => {
            EksAuthError::Unreadable {
                status: service.raw().status().as_u16(),
                request_id: request_id(service.raw()),
            }
        }
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let request_id = request_id(raw);
            let header_code = raw.headers().get("x-amzn-errortype").unwrap_or_default();
            let body = raw.body().bytes().unwrap_or_default();
            answer::from_answer(status, request_id, header_code, body)
        }
        SdkError::TimeoutError(_) => EksAuthError::Timeout(Box::new(err)),
        SdkError::DispatchFailure(d) if d.is_timeout() => EksAuthError::Timeout(Box::new(err)),
        _ => EksAuthError::Transport(Box::new(err)),
    }
}

impl Upstream for EksAuth {
    fn assume<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>> {
        Box::pin(EksAuth::assume(self, token))
    }

    fn cluster_name(&self) -> &str {
        EksAuth::cluster_name(self)
    }
}
