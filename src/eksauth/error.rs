//! The EKS Auth error boundary: what a failed `AssumeRoleForPodIdentity`
//! becomes, worded as the upstream agent words it.
//!
//! Upstream (aws-sdk-go-v2 eksauth + smithy-go) reads an error answer so:
//! the code is `X-Amzn-ErrorType` if present, else the body's `code` or
//! `__type` (JSON keys matched case-insensitively), sanitized (`a:b` → `a`,
//! `ns#Code` → `Code`), default `UnknownError`; it is matched to the nine
//! modeled codes case-insensitively and then printed with the model's
//! spelling; a modeled error's message is the body's `message`/`Message`
//! (empty if absent), any other's the decoded message or `UnknownError`;
//! the fault is `client`/`server` for modeled codes and `unknown` otherwise.
//! A body that does not decode (HTML from a proxy, plain text, a JSON
//! non-object, wrong value types) gives just `[<request-id>]`. The pod gets
//! EKS Auth's status and `[<request-id>]: (<Code>): <message>, fault: <fault>`.

#[cfg(feature = "aws-sdk")]
use aws_sdk_eksauth::error::SdkError;
#[cfg(feature = "aws-sdk")]
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityError;
#[cfg(feature = "aws-sdk")]
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::credentials::{ArnError, ExpirationOutOfRange};

#[cfg(feature = "aws-sdk")]
pub(super) type Sdk = SdkError<AssumeRoleForPodIdentityError, HttpResponse>;
/// Without the SDK (the fuzz targets) no call is made: the variants that
/// carry its errors cannot occur.
#[cfg(not(feature = "aws-sdk"))]
pub(super) type Sdk = std::convert::Infallible;

/// The error codes of the EKS Auth service model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modeled {
    AccessDenied,
    ExpiredToken,
    InternalServer,
    InvalidParameter,
    InvalidRequest,
    InvalidToken,
    ResourceNotFound,
    ServiceUnavailable,
    Throttling,
}

impl Modeled {
    const ALL: [Modeled; 9] = [
        Modeled::AccessDenied,
        Modeled::ExpiredToken,
        Modeled::InternalServer,
        Modeled::InvalidParameter,
        Modeled::InvalidRequest,
        Modeled::InvalidToken,
        Modeled::ResourceNotFound,
        Modeled::ServiceUnavailable,
        Modeled::Throttling,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Modeled::AccessDenied => "AccessDeniedException",
            Modeled::ExpiredToken => "ExpiredTokenException",
            Modeled::InternalServer => "InternalServerException",
            Modeled::InvalidParameter => "InvalidParameterException",
            Modeled::InvalidRequest => "InvalidRequestException",
            Modeled::InvalidToken => "InvalidTokenException",
            Modeled::ResourceNotFound => "ResourceNotFoundException",
            Modeled::ServiceUnavailable => "ServiceUnavailableException",
            Modeled::Throttling => "ThrottlingException",
        }
    }

    pub(super) fn matching(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.code().eq_ignore_ascii_case(code))
    }

    pub(super) fn fault(self) -> Fault {
        match self {
            Modeled::InternalServer | Modeled::ServiceUnavailable => Fault::Server,
            _ => Fault::Client,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Server,
    Unknown,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Client => "client",
            Fault::Server => "server",
            Fault::Unknown => "unknown",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EksAuthError {
    /// EKS Auth answered with an error; its HTTP status is passed to the pod.
    #[error("[{request_id}]: ({}): {message}, fault: {fault}", .code.as_deref().unwrap_or("UnknownError"))]
    Service {
        status: u16,
        /// `None`: a code outside the model, or none at all.
        modeled: Option<Modeled>,
        /// As printed; `None` when EKS Auth sent no code (`UnknownError`).
        code: Option<String>,
        message: String,
        request_id: String,
        fault: Fault,
    },
    /// An error status whose body does not decode as an error document.
    #[error("[{request_id}]")]
    Undecodable { status: u16, request_id: String },
    #[error("calling EKS Auth timed out: {}", DisplayErrorContext(.0.as_ref()))]
    Timeout(Box<Sdk>),
    #[error("calling EKS Auth failed: {}", DisplayErrorContext(.0.as_ref()))]
    Transport(Box<Sdk>),
    #[error("EKS Auth response is missing {0}")]
    Incomplete(&'static str),
    /// A success status whose body is not an AssumeRoleForPodIdentity answer
    /// (not JSON, wrong shape). Never passed through as a 200. The parser's
    /// message is not kept: it can quote the body, which may hold secrets.
    #[error(
        "[{request_id}]: EKS Auth answered {status} with a body that is not a credential response"
    )]
    Unreadable { status: u16, request_id: String },
    /// A credential whose expiration the pod-facing document cannot carry
    /// (before 1970, after 9999): a bad answer, refused before anything
    /// formats it.
    #[error("[{request_id}]: EKS Auth answered a credential {source}")]
    Expiration {
        source: ExpirationOutOfRange,
        request_id: String,
    },
    /// The task fetching for this identity ended without a result (it
    /// panicked): its waiters get a 500, the next request a fresh fetch.
    #[error("fetching credentials failed unexpectedly; retry")]
    FetchAborted,
    /// Upstream's wording; the cache adds its prefix as upstream's does.
    #[error("{}unable to parse arn from assumed role: {source}", if *.via_cache { "error getting credentials to cache: " } else { "" })]
    Arn { source: ArnError, via_cache: bool },
    /// The node-wide call queue is full ([`super::CallGate`]): the request
    /// is refused at once (503, which SDKs retry) rather than queued.
    #[error(
        "too many credential requests are waiting for EKS Auth ({queued} queued); retry shortly"
    )]
    Saturated { queued: usize },
    /// The credentials EKS Auth issued are already expired or expire within
    /// the serving margin: an SDK could not use them. `remaining_ms` is their
    /// time left when checked (negative when past), printed as upstream does.
    #[error("fetched credentials are expired or will expire within the next {:.2} seconds", *.remaining_ms as f64 / 1000.0)]
    Expiring { remaining_ms: i64 },
}

impl EksAuthError {
    /// The error code for metrics and logs.
    pub fn code(&self) -> &str {
        match self {
            EksAuthError::Service { code, .. } => code.as_deref().unwrap_or("UnknownError"),
            EksAuthError::Undecodable { .. } => "UndecodableError",
            EksAuthError::Timeout(_) => "Timeout",
            EksAuthError::Transport(_) => "Transport",
            EksAuthError::Incomplete(_) => "IncompleteResponse",
            EksAuthError::Unreadable { .. } => "UnreadableResponse",
            EksAuthError::Expiration { .. } => "InvalidExpiration",
            EksAuthError::FetchAborted => "FetchAborted",
            EksAuthError::Arn { .. } => "InvalidRoleArn",
            EksAuthError::Expiring { .. } => "ExpiringCredentials",
            EksAuthError::Saturated { .. } => "QueueFull",
        }
    }

    /// The HTTP status EKS Auth answered with, if it answered with an error.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            EksAuthError::Service { status, .. } | EksAuthError::Undecodable { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Answers that will not change by asking again with the same token:
    /// the cache evicts the pod's credential and remembers the answer for a
    /// while. Upstream's list, plus the two validation errors, which are just
    /// as deterministic.
    pub fn is_irrecoverable(&self) -> bool {
        matches!(
            self,
            EksAuthError::Service {
                modeled: Some(
                    Modeled::AccessDenied
                        | Modeled::ExpiredToken
                        | Modeled::InvalidToken
                        | Modeled::ResourceNotFound
                        | Modeled::InvalidParameter
                        | Modeled::InvalidRequest
                ),
                ..
            }
        )
    }

    /// EKS Auth asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        matches!(
            self,
            EksAuthError::Service {
                modeled: Some(Modeled::Throttling),
                ..
            }
        ) || self.upstream_status() == Some(429)
    }

    /// Worth retrying later: throttling, 5xx, timeouts, connection errors.
    pub fn is_recoverable(&self) -> bool {
        match self {
            EksAuthError::Timeout(_) | EksAuthError::Transport(_) => true,
            _ => self.is_throttling() || self.upstream_status().is_some_and(|s| s >= 500),
        }
    }
}

/// The request id EKS Auth sent, or empty.
#[cfg(feature = "aws-sdk")]
fn request_id(raw: &HttpResponse) -> String {
    ["x-amzn-requestid", "x-amz-requestid"]
        .iter()
        .find_map(|h| raw.headers().get(*h))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(feature = "aws-sdk")]
pub(super) fn classify(err: Sdk) -> EksAuthError {
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
            super::answer::from_answer(status, request_id, header_code, body)
        }
        SdkError::TimeoutError(_) => EksAuthError::Timeout(Box::new(err)),
        SdkError::DispatchFailure(d) if d.is_timeout() => EksAuthError::Timeout(Box::new(err)),
        _ => EksAuthError::Transport(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_is_printed_with_the_time_left() {
        assert_eq!(
            EksAuthError::Expiring {
                remaining_ms: 14_000
            }
            .to_string(),
            "fetched credentials are expired or will expire within the next 14.00 seconds"
        );
        assert_eq!(
            EksAuthError::Expiring {
                remaining_ms: -3_600_000
            }
            .to_string(),
            "fetched credentials are expired or will expire within the next -3600.00 seconds"
        );
    }
}
