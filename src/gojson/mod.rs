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
//!
//! Limits, Go's: nesting deeper than 10,000 objects and arrays is refused
//! with `invalid character '[' exceeded max depth` (`maxNestingDepth` in
//! Go's `encoding/json/scanner.go`; every depth up to it is accepted, as Go
//! does). Time is linear in the input: one scanner pass, one building
//! pass, and [`parse_first`] reads no further than the first value. No
//! step recurses per nesting level (the scanner keeps Go's explicit state
//! stack, building and dropping use heap stacks), so the deepest accepted
//! document needs no more thread stack than a flat one. Everything read
//! here is bounded by its source before it arrives: a token by the request
//! head limit (`--max-header-bytes`), an EKS Auth answer by the SDK.

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

/// Dropping follows nesting with a heap stack: a value as deep as Go's
/// limit must not need a deep thread stack to be freed either.
impl Drop for Value {
    fn drop(&mut self) {
        let mut nested = Vec::new();
        self.take_nested(&mut nested);
        while let Some(mut v) = nested.pop() {
            v.take_nested(&mut nested);
        }
    }
}

impl Value {
    /// Moves the non-empty containers among this value's children to
    /// `out`; the other children are dropped here (they hold nothing).
    fn take_nested(&mut self, out: &mut Vec<Value>) {
        let deep = |v: &Value| match v {
            Value::Array(items) => !items.is_empty(),
            Value::Object(members) => !members.is_empty(),
            _ => false,
        };
        match self {
            Value::Array(items) => out.extend(items.drain(..).filter(deep)),
            Value::Object(members) => out.extend(members.drain(..).map(|(_, v)| v).filter(deep)),
            _ => {}
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

/// `json.Unmarshal`'s reading of a whole document (nothing may follow it).
pub fn parse(data: &[u8]) -> Result<Value, SyntaxError> {
    scanner::check_valid(data)?;
    Ok(builder::build(data))
}

/// The first value of a stream, as Go's `json.Decoder.Decode` reads it:
/// the scanner stops where the value ends, so whatever follows is never
/// read (one pass, linear in the value's length). `Ok(None)` when the data
/// is only white space (Go's `io.EOF`); an incomplete value is Go's
/// `unexpected EOF`.
pub fn parse_first(data: &[u8]) -> Result<Option<Value>, SyntaxError> {
    Ok(scanner::first_value_len(data)?.map(|len| builder::build(&data[..len])))
}

/// Bytes stepped through the scanner on this thread (tests: linear time).
#[cfg(test)]
pub(crate) fn bytes_scanned() -> usize {
    scanner::STEPPED.with(std::cell::Cell::get)
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
pub(crate) mod tests {
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

    /// Runs `f` on a thread with a 256 KiB stack: a document 10,000 levels
    /// deep then fits only if no step recurses per level (the builder used
    /// ~192 bytes of stack a level, and overflowed a debug build's 2 MiB
    /// worker stack near 6,000: issue #25).
    pub(crate) fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no stack overflow")
    }

    #[test]
    fn go_depth_limit_with_a_small_stack() {
        on_small_stack(|| {
            let depth = scanner::MAX_DEPTH;
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let v = parse(arrays.as_bytes()).expect("Go accepts 10,000 levels");
            let mut level = &v;
            let mut n = 1;
            while let Value::Array(items) = level {
                match items.first() {
                    Some(inner) => (level, n) = (inner, n + 1),
                    None => break,
                }
            }
            assert_eq!(n, depth);
            drop(v);
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            assert!(parse(objects.as_bytes()).is_ok());
            let mixed = format!(
                "{}1{}",
                r#"[{"a":"#.repeat(depth / 2),
                "}]".repeat(depth / 2)
            );
            assert!(parse_first(format!("{mixed} trailing").as_bytes()).is_ok());
            let over = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
            assert_eq!(
                parse(over.as_bytes()).unwrap_err().to_string(),
                "invalid character '[' exceeded max depth"
            );
        });
    }

    /// What Go's `json.Decoder.Decode` takes from a stream: the first value,
    /// never what follows it.
    #[test]
    fn the_first_value_as_go_decodes_it() {
        let first = |s: &str| parse_first(s.as_bytes()).map_err(|e| e.to_string());
        let num = |n: &str| Ok(Some(Value::Number(n.into())));
        assert_eq!(first("123 456"), num("123"));
        assert_eq!(first("123"), num("123"));
        assert_eq!(first("  -1.5e3x"), num("-1.5e3"));
        assert_eq!(first("1]"), num("1"));
        assert_eq!(first("\"abc\"x"), Ok(Some(Value::String("abc".into()))));
        assert_eq!(first("true false"), Ok(Some(Value::Bool(true))));
        assert_eq!(
            first(r#"{"a":1}{"b":2}"#),
            Ok(Some(Value::Object(vec![(
                "a".into(),
                Value::Number("1".into())
            )])))
        );
        assert_eq!(first("[]]"), Ok(Some(Value::Array(vec![]))));
        assert_eq!(first(""), Ok(None));
        assert_eq!(first(" \n\t"), Ok(None));
        assert_eq!(first("[1,2"), Err("unexpected EOF".into()));
        assert_eq!(first("tru"), Err("unexpected EOF".into()));
        assert_eq!(first("1."), Err("unexpected EOF".into()));
        assert_eq!(first("-"), Err("unexpected EOF".into()));
        assert_eq!(
            first("[1 2]"),
            Err("invalid character '2' after array element".into())
        );
        assert_eq!(
            first("x"),
            Err("invalid character 'x' looking for beginning of value".into())
        );
    }

    #[test]
    fn quoting_like_go() {
        assert_eq!(go_quote(b"\"abc\""), r#""\"abc\"""#);
        assert_eq!(go_quote(b"a\nb\xff"), r#""a\nb\xff""#);
    }
}
