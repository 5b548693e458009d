//! An EKS Auth error answer read as aws-sdk-go-v2's eksauth deserializer
//! and smithy-go read it (see [`super::error`] for the rules), so the pod
//! gets upstream's words.

use super::error::{EksAuthError, Fault, Modeled};
use crate::gojson::{self, Value};

/// Reads an error answer (its status, `X-Amzn-ErrorType` code and body) as
/// aws-sdk-go-v2's eksauth deserializer does. Public for the fuzz targets.
pub fn from_answer(
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
/// Linear: the scanner stops where that value ends.
fn first_value(body: &[u8]) -> Option<Option<Value>> {
    gojson::parse_first(body).ok()
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

    /// The first value is found in one pass: the prefix search it replaced
    /// re-parsed every prefix of a body with trailing data (quadratic).
    #[test]
    fn reading_an_answer_is_linear() {
        let long = format!(
            r#"{{"__type":"InvalidTokenException","message":"{}"}} trailing"#,
            "m".repeat(10_000)
        );
        let before = gojson::bytes_scanned();
        let e = from_answer(400, "req-1".into(), "", long.as_bytes());
        let scanned = gojson::bytes_scanned() - before;
        assert!(matches!(e, EksAuthError::Service { .. }), "{e}");
        assert!(
            scanned <= 4 * long.len(),
            "{scanned} bytes scanned for {}",
            long.len()
        );
    }

    #[test]
    fn deep_answers_are_read_with_a_small_stack() {
        crate::gojson::tests::on_small_stack(|| {
            let deep = format!(
                r#"{{"__type":"InvalidTokenException","x":{}{}}}"#,
                "[".repeat(9_999),
                "]".repeat(9_999)
            );
            assert_eq!(
                body(400, "", &deep),
                "[req-1]: (InvalidTokenException): , fault: client"
            );
            let too_deep = format!(r#"{{"x":{}"#, "[".repeat(10_000));
            assert_eq!(body(400, "", &too_deep), "[req-1]");
        });
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
}
