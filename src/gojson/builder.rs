//! Building the value of a document the scanner already accepted: no
//! error paths, members kept in order, no recursion.

use super::Value;
use super::scanner::is_space;

/// Builds the value of `data`, which the scanner accepted. Nesting is
/// followed with a heap stack of open containers, not recursion: a document
/// at Go's depth limit needs no more thread stack than a flat one.
pub(super) fn build(data: &[u8]) -> Value {
    let mut b = Builder { data, pos: 0 };
    let mut open: Vec<Open> = Vec::new();
    loop {
        let mut value = match b.begin() {
            Begin::Value(v) => v,
            // A non-empty container: its first member or element next.
            Begin::Object => {
                let key = b.key();
                open.push(Open::Object(Vec::new(), key));
                continue;
            }
            Begin::Array => {
                open.push(Open::Array(Vec::new()));
                continue;
            }
        };
        // Hand the finished value to its container, closing containers
        // that end here, until one has another member or element to read.
        loop {
            let Some(top) = open.last_mut() else {
                return value;
            };
            match top {
                Open::Array(items) => items.push(value),
                Open::Object(members, key) => members.push((std::mem::take(key), value)),
            }
            b.skip_space();
            let c = b.data[b.pos];
            b.pos += 1;
            if c == b',' {
                if let Some(Open::Object(_, key)) = open.last_mut() {
                    *key = b.key();
                }
                break;
            }
            value = match open.pop().expect("a container is open") {
                Open::Array(items) => Value::Array(items),
                Open::Object(members, _) => Value::Object(members),
            };
        }
    }
}

enum Begin {
    Value(Value),
    /// The opening byte of a non-empty object or array was read.
    Object,
    Array,
}

/// A container being built, with the key of the member being read.
enum Open {
    Array(Vec<Value>),
    Object(Vec<(String, Value)>, String),
}

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

    /// The value starting at `pos`, complete when it is a scalar or an
    /// empty container.
    fn begin(&mut self) -> Begin {
        self.skip_space();
        let c = self.data[self.pos];
        Begin::Value(match c {
            b'{' | b'[' => {
                self.pos += 1;
                self.skip_space();
                let close = if c == b'{' { b'}' } else { b']' };
                if self.data[self.pos] != close {
                    return if c == b'{' {
                        Begin::Object
                    } else {
                        Begin::Array
                    };
                }
                self.pos += 1;
                if c == b'{' {
                    Value::Object(Vec::new())
                } else {
                    Value::Array(Vec::new())
                }
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
        })
    }

    /// A member's key and its `:`.
    fn key(&mut self) -> String {
        self.skip_space();
        let key = self.string();
        self.skip_space();
        self.pos += 1;
        key
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
