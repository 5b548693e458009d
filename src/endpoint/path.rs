//! Paths as Go's `net/http` `ServeMux` routes them: matched unescaped, a
//! path that is not clean redirected (307) to its clean form.

use http::Request;
use hyper::body::Incoming;

use super::{CREDENTIALS_PATH, RequestError};

/// Paths other than `/v1/credentials`, as Go's `ServeMux` treats them: the
/// path is matched unescaped, and one that is not clean (`//`, `/./`,
/// `/../`) is redirected (307) to its clean form with the query kept.
#[cold]
pub(super) fn route_other(req: &Request<Incoming>) -> Result<(), RequestError> {
    let decoded = percent_decode(req.uri().path());
    let clean = clean_path(&decoded);
    if clean != decoded {
        let mut location = escape_path(&clean);
        if let Some(q) = req.uri().query() {
            location.push('?');
            location.push_str(q);
        }
        return Err(RequestError::Redirect {
            location,
            method: req.method().clone(),
        });
    }
    if decoded == CREDENTIALS_PATH.as_bytes() {
        return Ok(());
    }
    Err(RequestError::NotFound)
}

/// `%XX` sequences decoded; invalid ones kept as written.
fn percent_decode(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Go's `net/http.cleanPath`: `path.Clean` of the rooted path, keeping a
/// trailing slash.
fn clean_path(p: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for seg in p.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            seg => parts.push(seg),
        }
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    for seg in &parts {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if out.is_empty() || (p.ends_with(b"/") && !parts.is_empty()) {
        out.push(b'/');
    }
    out
}

/// Go's `url.URL.EscapedPath` for a path without a raw form.
fn escape_path(p: &[u8]) -> String {
    let mut out = String::with_capacity(p.len());
    for &c in p {
        if c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        for (input, clean) in [
            ("//v1/credentials", "/v1/credentials"),
            ("/v1/./credentials", "/v1/credentials"),
            ("/v1/x/../credentials", "/v1/credentials"),
            ("/../v1/credentials", "/v1/credentials"),
            ("/v1/credentials/", "/v1/credentials/"),
            ("/a//b/", "/a/b/"),
            ("/", "/"),
            ("//", "/"),
        ] {
            assert_eq!(clean_path(input.as_bytes()), clean.as_bytes(), "{input}");
        }
        assert_eq!(percent_decode("/v1/%63redentials"), b"/v1/credentials");
        assert_eq!(percent_decode("/a%zz%4"), b"/a%zz%4");
        assert_eq!(escape_path(b"/a b/\xc3\xa9"), "/a%20b/%C3%A9");
    }
}
