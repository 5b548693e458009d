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

use std::fmt;

/// Go's `maxNestingDepth`.
const MAX_DEPTH: usize = 10_000;

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
pub struct SyntaxError(String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SyntaxError {}

pub fn parse(data: &[u8]) -> Result<Value, SyntaxError> {
    check_valid(data)?;
    let mut builder = Builder { data, pos: 0 };
    Ok(builder.value())
}

// ---------------------------------------------------------------------------
// Validation: Go's scanner, one state per Go `state*` function.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    ObjectKey,
    ObjectValue,
    ArrayValue,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    BeginValueOrEmpty,
    BeginValue,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    EndTop,
    InString,
    InStringEsc,
    InStringEscU(u8),
    Neg,
    One,
    Zero,
    Dot,
    Dot0,
    E,
    ESign,
    E0,
    Literal(&'static [u8], usize),
    Error,
}

struct Scanner {
    state: State,
    stack: Vec<Frame>,
    end_top: bool,
    err: Option<SyntaxError>,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

impl Scanner {
    fn error(&mut self, c: u8, context: &str) {
        self.state = State::Error;
        self.err = Some(SyntaxError(format!(
            "invalid character {} {context}",
            quote_char(c)
        )));
    }

    fn push(&mut self, c: u8, frame: Frame) {
        self.stack.push(frame);
        if self.stack.len() > MAX_DEPTH {
            self.error(c, "exceeded max depth");
        }
    }

    fn pop(&mut self) {
        self.stack.pop();
        if self.stack.is_empty() {
            self.state = State::EndTop;
            self.end_top = true;
        } else {
            self.state = State::EndValue;
        }
    }

    fn step(&mut self, c: u8) {
        match self.state {
            State::Error => {}
            State::BeginValueOrEmpty => {
                if is_space(c) {
                } else if c == b']' {
                    self.end_value(c);
                } else {
                    self.begin_value(c);
                }
            }
            State::BeginValue => self.begin_value(c),
            State::BeginStringOrEmpty => {
                if is_space(c) {
                } else if c == b'}' {
                    if let Some(top) = self.stack.last_mut() {
                        *top = Frame::ObjectValue;
                    }
                    self.end_value(c);
                } else {
                    self.begin_string(c);
                }
            }
            State::BeginString => self.begin_string(c),
            State::EndValue => self.end_value(c),
            State::EndTop => {
                if !is_space(c) {
                    self.error(c, "after top-level value");
                }
            }
            State::InString => match c {
                b'"' => self.state = State::EndValue,
                b'\\' => self.state = State::InStringEsc,
                c if c < 0x20 => self.error(c, "in string literal"),
                _ => {}
            },
            State::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => {
                    self.state = State::InString
                }
                b'u' => self.state = State::InStringEscU(0),
                _ => self.error(c, "in string escape code"),
            },
            State::InStringEscU(n) => {
                if c.is_ascii_hexdigit() {
                    self.state = if n == 3 {
                        State::InString
                    } else {
                        State::InStringEscU(n + 1)
                    };
                } else {
                    self.error(c, "in \\u hexadecimal character escape");
                }
            }
            State::Neg => match c {
                b'0' => self.state = State::Zero,
                b'1'..=b'9' => self.state = State::One,
                _ => self.error(c, "in numeric literal"),
            },
            State::One => {
                if !c.is_ascii_digit() {
                    self.zero(c);
                }
            }
            State::Zero => self.zero(c),
            State::Dot => {
                if c.is_ascii_digit() {
                    self.state = State::Dot0;
                } else {
                    self.error(c, "after decimal point in numeric literal");
                }
            }
            State::Dot0 => {
                if c == b'e' || c == b'E' {
                    self.state = State::E;
                } else if !c.is_ascii_digit() {
                    self.end_value(c);
                }
            }
            State::E => {
                if c == b'+' || c == b'-' {
                    self.state = State::ESign;
                } else {
                    self.e_sign(c);
                }
            }
            State::ESign => self.e_sign(c),
            State::E0 => {
                if !c.is_ascii_digit() {
                    self.end_value(c);
                }
            }
            State::Literal(word, i) => {
                if c == word[i] {
                    self.state = if i + 1 == word.len() {
                        State::EndValue
                    } else {
                        State::Literal(word, i + 1)
                    };
                } else {
                    let name = match word {
                        b"true" => "true",
                        b"false" => "false",
                        _ => "null",
                    };
                    let context = format!("in literal {name} (expecting {})", quote_char(word[i]));
                    self.error(c, &context);
                }
            }
        }
    }

    fn begin_value(&mut self, c: u8) {
        if is_space(c) {
            self.state = State::BeginValue;
            return;
        }
        match c {
            b'{' => {
                self.state = State::BeginStringOrEmpty;
                self.push(c, Frame::ObjectKey);
            }
            b'[' => {
                self.state = State::BeginValueOrEmpty;
                self.push(c, Frame::ArrayValue);
            }
            b'"' => self.state = State::InString,
            b'-' => self.state = State::Neg,
            b'0' => self.state = State::Zero,
            b'1'..=b'9' => self.state = State::One,
            b't' => self.state = State::Literal(b"true", 1),
            b'f' => self.state = State::Literal(b"false", 1),
            b'n' => self.state = State::Literal(b"null", 1),
            _ => self.error(c, "looking for beginning of value"),
        }
    }

    fn begin_string(&mut self, c: u8) {
        if is_space(c) {
            self.state = State::BeginString;
        } else if c == b'"' {
            self.state = State::InString;
        } else {
            self.error(c, "looking for beginning of object key string");
        }
    }

    fn zero(&mut self, c: u8) {
        match c {
            b'.' => self.state = State::Dot,
            b'e' | b'E' => self.state = State::E,
            _ => self.end_value(c),
        }
    }

    fn e_sign(&mut self, c: u8) {
        if c.is_ascii_digit() {
            self.state = State::E0;
        } else {
            self.error(c, "in exponent of numeric literal");
        }
    }

    fn end_value(&mut self, c: u8) {
        let Some(&top) = self.stack.last() else {
            self.state = State::EndTop;
            self.end_top = true;
            self.step(c);
            return;
        };
        if is_space(c) {
            self.state = State::EndValue;
            return;
        }
        match top {
            Frame::ObjectKey => {
                if c == b':' {
                    *self.stack.last_mut().expect("checked above") = Frame::ObjectValue;
                    self.state = State::BeginValue;
                } else {
                    self.error(c, "after object key");
                }
            }
            Frame::ObjectValue => match c {
                b',' => {
                    *self.stack.last_mut().expect("checked above") = Frame::ObjectKey;
                    self.state = State::BeginString;
                }
                b'}' => self.pop(),
                _ => self.error(c, "after object key:value pair"),
            },
            Frame::ArrayValue => match c {
                b',' => self.state = State::BeginValue,
                b']' => self.pop(),
                _ => self.error(c, "after array element"),
            },
        }
    }
}

fn check_valid(data: &[u8]) -> Result<(), SyntaxError> {
    let mut s = Scanner {
        state: State::BeginValue,
        stack: Vec::new(),
        end_top: false,
        err: None,
    };
    for &c in data {
        s.step(c);
        if let Some(err) = s.err.take() {
            return Err(err);
        }
    }
    // Go's `eof`: a number at the very end is only complete after a space.
    if !s.end_top {
        s.step(b' ');
    }
    if let Some(err) = s.err.take() {
        return Err(err);
    }
    if s.end_top {
        Ok(())
    } else {
        Err(SyntaxError("unexpected end of JSON input".into()))
    }
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

// ---------------------------------------------------------------------------
// Building the value of a document already known to be valid.

struct Builder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Builder<'_> {
    fn skip_space(&mut self) {
        while self.pos < self.data.len() && is_space(self.data[self.pos]) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Value {
        self.skip_space();
        let c = self.data[self.pos];
        match c {
            b'{' => {
                self.pos += 1;
                let mut members = Vec::new();
                loop {
                    self.skip_space();
                    if self.data[self.pos] == b'}' {
                        self.pos += 1;
                        break;
                    }
                    let key = self.string();
                    self.skip_space();
                    self.pos += 1; // ':'
                    let value = self.value();
                    members.push((key, value));
                    self.skip_space();
                    if self.data[self.pos] == b',' {
                        self.pos += 1;
                    }
                }
                Value::Object(members)
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    if self.data[self.pos] == b']' {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value());
                    self.skip_space();
                    if self.data[self.pos] == b',' {
                        self.pos += 1;
                    }
                }
                Value::Array(items)
            }
            b'"' => Value::String(self.string()),
            b't' => {
                self.pos += 4;
                Value::Bool(true)
            }
            b'f' => {
                self.pos += 5;
                Value::Bool(false)
            }
            b'n' => {
                self.pos += 4;
                Value::Null
            }
            _ => {
                let start = self.pos;
                while self.pos < self.data.len()
                    && matches!(
                        self.data[self.pos],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.pos += 1;
                }
                Value::Number(String::from_utf8_lossy(&self.data[start..self.pos]).into_owned())
            }
        }
    }

    /// A string literal at `pos` (the opening quote), unescaped.
    fn string(&mut self) -> String {
        self.pos += 1;
        let mut bytes = Vec::new();
        loop {
            let c = self.data[self.pos];
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.data[self.pos];
                    self.pos += 1;
                    match e {
                        b'b' => bytes.push(8),
                        b'f' => bytes.push(12),
                        b'n' => bytes.push(b'\n'),
                        b'r' => bytes.push(b'\r'),
                        b't' => bytes.push(b'\t'),
                        b'u' => {
                            let mut unit = self.hex4();
                            let ch = if (0xd800..0xdc00).contains(&unit)
                                && self.data[self.pos..].starts_with(b"\\u")
                            {
                                let save = self.pos;
                                self.pos += 2;
                                let low = self.hex4();
                                if (0xdc00..0xe000).contains(&low) {
                                    unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                                    char::from_u32(unit)
                                } else {
                                    self.pos = save;
                                    None
                                }
                            } else {
                                char::from_u32(unit)
                            };
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(
                                ch.unwrap_or('\u{fffd}').encode_utf8(&mut buf).as_bytes(),
                            );
                        }
                        other => bytes.push(other),
                    }
                }
                other => bytes.push(other),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn hex4(&mut self) -> u32 {
        let digits = &self.data[self.pos..self.pos + 4];
        self.pos += 4;
        digits.iter().fold(0, |acc, d| {
            acc * 16 + (*d as char).to_digit(16).expect("validated hex digit")
        })
    }
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
        let deep = "[".repeat(MAX_DEPTH + 1);
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
