//! Validation: a port of Go's `encoding/json` scanner, one state per Go
//! `state*` function, so the first invalid byte and the scanner's context
//! word the error exactly as Go does.

use super::{SyntaxError, quote_char};

/// Go's `maxNestingDepth`.
pub(super) const MAX_DEPTH: usize = 10_000;

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

pub(super) fn is_space(c: u8) -> bool {
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
        #[cfg(test)]
        STEPPED.with(|n| n.set(n.get() + 1));
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

#[cfg(test)]
thread_local! {
    pub(super) static STEPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            state: State::BeginValue,
            stack: Vec::new(),
            end_top: false,
            err: None,
        }
    }
}

/// Where the first value of `data` ends, as Go's `Decoder.readValue` finds
/// it: an object or array ends with its closing byte; any other value when
/// the next byte cannot continue it (that byte is not part of it, and
/// whatever it is, Go reports nothing about it). `None` when `data` is only
/// white space.
pub(super) fn first_value_len(data: &[u8]) -> Result<Option<usize>, SyntaxError> {
    let mut s = Scanner::new();
    let mut container = None;
    for (i, &c) in data.iter().enumerate() {
        if container.is_none() && !is_space(c) {
            container = Some(c == b'{' || c == b'[');
        }
        s.step(c);
        if s.end_top {
            // An error from this byte is Go's "complain on the next call",
            // which never comes.
            return Ok(Some(if container == Some(true) { i + 1 } else { i }));
        }
        if let Some(err) = s.err.take() {
            return Err(err);
        }
    }
    if container.is_none() {
        return Ok(None);
    }
    s.step(b' ');
    if s.end_top {
        Ok(Some(data.len()))
    } else {
        Err(SyntaxError("unexpected EOF".into()))
    }
}

pub(super) fn check_valid(data: &[u8]) -> Result<(), SyntaxError> {
    let mut s = Scanner::new();
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
