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

use aws_smithy_types::error::display::DisplayErrorContext;

use crate::credentials::{ArnError, ExpirationOutOfRange};

/// The SDK's error for one call.
#[cfg(feature = "aws-sdk")]
pub type Sdk = aws_sdk_eksauth::error::SdkError<
    aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityError,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;
/// Without the SDK (the fuzz targets) no call is made: the variants that
/// carry its errors cannot occur.
#[cfg(not(feature = "aws-sdk"))]
pub type Sdk = std::convert::Infallible;

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
    /// The assumed-role ARN does not parse (upstream's wording; the
    /// endpoint adds upstream's cache prefix when the cache is on).
    #[error("unable to parse arn from assumed role: {0}")]
    Arn(ArnError),
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
            EksAuthError::Arn(_) => "InvalidRoleArn",
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
