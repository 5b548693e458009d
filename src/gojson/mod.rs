//! JSON as Go's `encoding/json` reads it, with its error messages, so a
//! malformed token is refused with the same words the upstream agent uses
//! (golang-jwt wraps these errors verbatim in its 400 bodies).
//!
//! [`parse`] first validates the whole document with a port of Go's scanner
//! state machine (`encoding/json/scanner.go`: the first invalid byte and the
//! scanner's context name the error, e.g. `invalid character 'x' looking
//! for beginning of value`, or `unexpected end of JSON input`), then builds
//! a [`Value`] that keeps object members in document order, duplicates
//! included, because Go decodes members in order and the first aborting
//! error wins.
//!
//! Strings: escapes decoded; invalid UTF-8 and unpaired surrogates become
//! U+FFFD, as Go's decoder does.

mod builder;
mod scanner;

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The literal as written (Go keeps `json.Number` text).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order, duplicates kept.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The word Go's `UnmarshalTypeError` uses for this JSON value.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The value of the last member named exactly `key` (Go map semantics).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A syntax error, worded as Go's `*json.SyntaxError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(pub(crate) String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SyntaxError {}

pub fn parse(data: &[u8]) -> Result<Value, SyntaxError> {
    scanner::check_valid(data)?;
    Ok(builder::build(data))
}

/// Go's `quoteChar`: the byte as the rune U+00XX, quoted with `strconv.Quote`
/// rules inside single quotes.
pub fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".into(),
        b'"' => "'\"'".into(),
        _ => format!("'{}'", go_quote_rune(c as char)),
    }
}

/// `strconv.Quote`'s escaping of one rune, without the surrounding quotes.
fn go_quote_rune(r: char) -> String {
    match r {
        '\x07' => r"\a".into(),
        '\x08' => r"\b".into(),
        '\x0c' => r"\f".into(),
        '\n' => r"\n".into(),
        '\r' => r"\r".into(),
        '\t' => r"\t".into(),
        '\x0b' => r"\v".into(),
        '\\' => r"\\".into(),
        '"' => "\\\"".into(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!(r"\x{:02x}", c as u32),
        // Not printable by Go's unicode.IsPrint in Latin-1: C1 controls,
        // no-break space, soft hyphen.
        c if (0x80..=0xa0).contains(&(c as u32)) || c as u32 == 0xad => {
            format!(r"\u{:04x}", c as u32)
        }
        c => c.to_string(),
    }
}

/// `fmt.Sprintf("%q", s)` for a byte string (Go's `strconv.Quote`): invalid
/// UTF-8 bytes as `\xNN`.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.push_str(&go_quote_rune(c));
        }
        for b in chunk.invalid() {
            out.push_str(&format!(r"\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s.as_bytes()).unwrap_err().to_string()
    }

    /// Messages produced by Go 1.26 `json.Unmarshal` for the same inputs.
    #[test]
    fn go_syntax_errors() {
        for (input, message) in [
            ("", "unexpected end of JSON input"),
            (
                "xyz",
                "invalid character 'x' looking for beginning of value",
            ),
            ("{\"alg\":", "unexpected end of JSON input"),
            (
                "{\"alg\":\"RS256\"}x",
                "invalid character 'x' after top-level value",
            ),
            ("{\"a\" 1}", "invalid character '1' after object key"),
            (
                "{\"a\":1 2}",
                "invalid character '2' after object key:value pair",
            ),
            ("[1 2]", "invalid character '2' after array element"),
            (
                "{1:2}",
                "invalid character '1' looking for beginning of object key string",
            ),
            ("\"a\nb\"", "invalid character '\\n' in string literal"),
            ("\"\\x\"", "invalid character 'x' in string escape code"),
            (
                "\"\\u12g4\"",
                "invalid character 'g' in \\u hexadecimal character escape",
            ),
            ("-x", "invalid character 'x' in numeric literal"),
            (
                "1.x",
                "invalid character 'x' after decimal point in numeric literal",
            ),
            (
                "1ex",
                "invalid character 'x' in exponent of numeric literal",
            ),
            (
                "tru",
                "invalid character ' ' in literal true (expecting 'e')",
            ),
            (
                "1.",
                "invalid character ' ' after decimal point in numeric literal",
            ),
            ("\"abc", "unexpected end of JSON input"),
            (
                "trUe",
                "invalid character 'U' in literal true (expecting 'u')",
            ),
            (
                "nul!",
                "invalid character '!' in literal null (expecting 'l')",
            ),
            (
                "fals3",
                "invalid character '3' in literal false (expecting 'e')",
            ),
            (
                "\u{ef}",
                "invalid character 'Ã' looking for beginning of value",
            ),
            (
                "'",
                r"invalid character '\'' looking for beginning of value",
            ),
            (
                "\x01",
                r"invalid character '\x01' looking for beginning of value",
            ),
            ("01", "invalid character '1' after top-level value"),
        ] {
            assert_eq!(err(input), message, "{input:?}");
        }
        assert_eq!(
            parse(b"\xef\xbb\xbf{}").unwrap_err().to_string(),
            "invalid character 'ï' looking for beginning of value"
        );
        assert_eq!(
            parse(b"\xff\xfe").unwrap_err().to_string(),
            "invalid character 'ÿ' looking for beginning of value"
        );
        let deep = "[".repeat(scanner::MAX_DEPTH + 1);
        assert_eq!(err(&deep), "invalid character '[' exceeded max depth");
    }

    #[test]
    fn values_keep_order_and_duplicates() {
        let v = parse(br#" {"b":1,"a":[true,null,"x\u00e9\ud83d\ude00"],"b":-2.5e3} "#).unwrap();
        let Value::Object(members) = &v else {
            panic!("{v:?}")
        };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(v.get("b"), Some(&Value::Number("-2.5e3".into())));
        assert_eq!(
            v.get("a"),
            Some(&Value::Array(vec![
                Value::Bool(true),
                Value::Null,
                Value::String("xé😀".into())
            ]))
        );
        assert_eq!(
            parse(b"\"\\ud800x\xff\"").unwrap(),
            Value::String("\u{fffd}x\u{fffd}".into())
        );
    }

    #[test]
    fn quoting_like_go() {
        assert_eq!(go_quote(b"\"abc\""), r#""\"abc\"""#);
        assert_eq!(go_quote(b"a\nb\xff"), r#""a\nb\xff""#);
    }
}
