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

use aws_sdk_eksauth::error::{DisplayErrorContext, SdkError};
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::credentials::ArnError;
use crate::gojson::{self, Value};

pub(super) type Sdk = SdkError<AssumeRoleForPodIdentityError, HttpResponse>;

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

    fn matching(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.code().eq_ignore_ascii_case(code))
    }

    fn fault(self) -> Fault {
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
fn request_id(raw: &HttpResponse) -> String {
    ["x-amzn-requestid", "x-amz-requestid"]
        .iter()
        .find_map(|h| raw.headers().get(*h))
        .unwrap_or_default()
        .to_owned()
}

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
            from_answer(status, request_id, header_code, body)
        }
        SdkError::TimeoutError(_) => EksAuthError::Timeout(Box::new(err)),
        SdkError::DispatchFailure(d) if d.is_timeout() => EksAuthError::Timeout(Box::new(err)),
        _ => EksAuthError::Transport(Box::new(err)),
    }
}

/// Reads an error answer as aws-sdk-go-v2's eksauth deserializer does.
pub(super) fn from_answer(
    status: u16,
    request_id: String,
    header_code: &str,
    body: &[u8],
) -> EksAuthError {
    let Some(info) = error_info(body) else {
        return EksAuthError::Undecodable { status, request_id };
    };
    let code = if !header_code.is_empty() {
        Some(sanitize(header_code))
    } else {
        info.code.as_deref().map(sanitize)
    };
    match code.as_deref().and_then(Modeled::matching) {
        Some(modeled) => {
            // The typed error reads `message` / `Message` exactly, and must
            // find a string there.
            let message = match body_message(body) {
                Ok(m) => m,
                Err(()) => return EksAuthError::Undecodable { status, request_id },
            };
            EksAuthError::Service {
                status,
                modeled: Some(modeled),
                code: Some(modeled.code().to_owned()),
                message,
                request_id,
                fault: modeled.fault(),
            }
        }
        None => EksAuthError::Service {
            status,
            modeled: None,
            code,
            message: info.message.unwrap_or_else(|| "UnknownError".into()),
            request_id,
            fault: Fault::Unknown,
        },
    }
}

struct ErrorInfo {
    code: Option<String>,
    message: Option<String>,
}

/// smithy-go's `restjson.GetErrorInfo`: the body decoded into
/// `struct { Code; Type "__type"; Message }` with Go's case-insensitive field
/// matching, reading only the first JSON value. `None` when it does not
/// decode.
fn error_info(body: &[u8]) -> Option<ErrorInfo> {
    let first = first_value(body)?;
    let Some(first) = first else {
        return Some(ErrorInfo {
            code: None,
            message: None,
        });
    };
    let members = match &first {
        Value::Object(m) => m.as_slice(),
        Value::Null => &[],
        _ => return None,
    };
    let (mut code, mut typ, mut message) = (None, None, None);
    for (key, value) in members {
        let slot = if key.eq_ignore_ascii_case("code") {
            &mut code
        } else if key.eq_ignore_ascii_case("__type") {
            &mut typ
        } else if key.eq_ignore_ascii_case("message") {
            &mut message
        } else {
            continue;
        };
        match value {
            Value::String(s) => *slot = Some(s.clone()),
            Value::Null => {}
            _ => return None,
        }
    }
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some(ErrorInfo {
        code: nonempty(code).or(nonempty(typ)),
        message: nonempty(message),
    })
}

/// The first JSON value of a stream, as Go's `json.Decoder` reads it:
/// `Some(None)` for an empty (whitespace) body, `None` for a syntax error.
fn first_value(body: &[u8]) -> Option<Option<Value>> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Some(None);
    }
    // The decoder stops after the first complete value; anything after it is
    // never read. Find where that value ends by growing a prefix until it
    // parses (bodies here are small).
    if let Ok(v) = gojson::parse(trimmed) {
        return Some(Some(v));
    }
    (1..trimmed.len())
        .find_map(|end| gojson::parse(&trimmed[..end]).ok())
        .map(Some)
}

/// The modeled error shape's `message`: keys `message` or `Message` only.
fn body_message(body: &[u8]) -> Result<String, ()> {
    let Some(Some(v)) = first_value(body) else {
        return Ok(String::new());
    };
    match v.get("message").or_else(|| v.get("Message")) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(()),
    }
}

/// smithy-go's `SanitizeErrorCode`.
fn sanitize(code: &str) -> String {
    let code = code.split(':').next().unwrap_or(code);
    match code.split_once('#') {
        Some((_, after)) => after.to_owned(),
        None => code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: u16, header: &str, body: &str) -> String {
        from_answer(status, "req-1".into(), header, body.as_bytes()).to_string()
    }

    /// Upstream's answers for the same EKS Auth responses (Go 1.26.1,
    /// aws-sdk-go-v2 eksauth v1.11.7, smithy-go v1.23.0).
    #[test]
    fn worded_as_upstream() {
        for (status, header, input, expected) in [
            (
                400,
                "",
                r#"{"__type":"InvalidTokenException","message":"bad token"}"#,
                "[req-1]: (InvalidTokenException): bad token, fault: client",
            ),
            (
                400,
                "",
                r#"{"code":"InvalidTokenException","Message":"bad token"}"#,
                "[req-1]: (InvalidTokenException): bad token, fault: client",
            ),
            (
                400,
                "",
                r#"{"__type":"com.amazonaws.eksauth#ExpiredTokenException","message":"expired"}"#,
                "[req-1]: (ExpiredTokenException): expired, fault: client",
            ),
            (
                400,
                "ResourceNotFoundException:http://internal.amazon.com/",
                r#"{"message":"nf"}"#,
                "[req-1]: (ResourceNotFoundException): nf, fault: client",
            ),
            (
                400,
                "AccessDeniedException",
                r#"{"__type":"InvalidTokenException","message":"m"}"#,
                "[req-1]: (AccessDeniedException): m, fault: client",
            ),
            (
                429,
                "",
                r#"{"__type":"throttlingexception","message":"slow down"}"#,
                "[req-1]: (ThrottlingException): slow down, fault: client",
            ),
            (
                400,
                "",
                r#"{"__type":"InvalidTokenException"}"#,
                "[req-1]: (InvalidTokenException): , fault: client",
            ),
            (
                400,
                "",
                r#"{"__type":"InvalidTokenException","MESSAGE":"x"}"#,
                "[req-1]: (InvalidTokenException): , fault: client",
            ),
            (
                400,
                "",
                r#"{"__type":"InvalidTokenException","message":null}"#,
                "[req-1]: (InvalidTokenException): , fault: client",
            ),
            (
                400,
                "",
                r#"{"__type":"InvalidTokenException","message":5}"#,
                "[req-1]",
            ),
            (
                400,
                "",
                r#"{"__type":"SomethingNewException","message":"new thing"}"#,
                "[req-1]: (SomethingNewException): new thing, fault: unknown",
            ),
            (
                418,
                "",
                r#"{"__type":"SomethingNewException"}"#,
                "[req-1]: (SomethingNewException): UnknownError, fault: unknown",
            ),
            (
                403,
                "",
                r#"{"message":"only msg"}"#,
                "[req-1]: (UnknownError): only msg, fault: unknown",
            ),
            (
                500,
                "",
                "{}",
                "[req-1]: (UnknownError): UnknownError, fault: unknown",
            ),
            (
                500,
                "",
                "",
                "[req-1]: (UnknownError): UnknownError, fault: unknown",
            ),
            (
                400,
                "AccessDeniedException",
                "",
                "[req-1]: (AccessDeniedException): , fault: client",
            ),
            (502, "", "<html><body>Bad Gateway</body></html>", "[req-1]"),
            (403, "", "Forbidden", "[req-1]"),
            (400, "", "[]", "[req-1]"),
            (400, "", "\"oops\"", "[req-1]"),
            (400, "", r#"{"code":5}"#, "[req-1]"),
            (400, "", r#"{"code":"#, "[req-1]"),
        ] {
            assert_eq!(
                body(status, header, input),
                expected,
                "{status} {header:?} {input:?}"
            );
        }
    }

    #[test]
    fn only_the_first_value_is_read() {
        assert_eq!(
            body(
                400,
                "",
                r#"{"__type":"InvalidTokenException","message":"m"} trailing"#
            ),
            "[req-1]: (InvalidTokenException): m, fault: client"
        );
    }

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
