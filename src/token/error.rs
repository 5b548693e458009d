//! Why a token was not accepted before anything is verified: golang-jwt's
//! errors, worded as it words them.

use std::fmt;

/// Why a token was refused before reaching EKS Auth. Display strings are the
/// pod-facing messages, upstream's wording; none contains key material, and
/// only parse errors quote the token (as upstream does: Go's JSON errors
/// name the offending character).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Service account token cannot be empty")]
    Empty,
    #[error("Service account token cannot be parsed: {0}")]
    Parse(#[from] ParseError),
    #[error("Service account token failed basic claim validations: {}", .0.message())]
    Claims(ClaimFailures),
}

impl TokenError {
    /// The `outcome` label of `pod_identity_token_verifications_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Empty => "empty",
            TokenError::Parse(ParseError::AlgUnspecified | ParseError::AlgUnavailable) => {
                "unverifiable"
            }
            TokenError::Parse(_) => "malformed",
            TokenError::Claims(f) if f.expired => "expired",
            TokenError::Claims(f) if f.not_yet_valid => "not_yet_valid",
            TokenError::Claims(_) => "audience",
        }
    }
}

/// The part of the token a parse error is in, as golang-jwt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Header,
    Claim,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Segment::Header => "header",
            Segment::Claim => "claim",
        })
    }
}

/// golang-jwt's parse errors, worded as it words them (`Display`, to the
/// byte: `tests/golang_jwt.rs` checks them against its answers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("token is malformed: token contains an invalid number of segments")]
    Segments,
    #[error(
        "token is malformed: could not base64 decode {0}: illegal base64 data at input byte {1}"
    )]
    Base64(Segment, usize),
    /// Go's `encoding/json` error, as Go prints it (message only: nothing
    /// decides on its text).
    #[error("token is malformed: could not JSON decode {0}: {1}")]
    Json(Segment, String),
    #[error("token is malformed: token is not valid UTF-8")]
    NotUtf8,
    #[error("token is unverifiable: signing method (alg) is unspecified")]
    AlgUnspecified,
    #[error("token is unverifiable: signing method (alg) is unavailable")]
    AlgUnavailable,
}

/// The claim checks that failed, reported together as golang-jwt joins
/// them: `token is expired, token is not valid yet, token has invalid audience`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimFailures {
    pub expired: bool,
    pub not_yet_valid: bool,
    pub audience: bool,
}

impl ClaimFailures {
    pub(crate) fn any(&self) -> bool {
        self.expired || self.not_yet_valid || self.audience
    }

    fn message(&self) -> String {
        let parts: Vec<&str> = [
            (self.expired, "token is expired"),
            (self.not_yet_valid, "token is not valid yet"),
            (self.audience, "token has invalid audience"),
        ]
        .iter()
        .filter(|(failed, _)| *failed)
        .map(|(_, m)| *m)
        .collect();
        parts.join(", ")
    }
}
