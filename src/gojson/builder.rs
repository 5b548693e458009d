//! Building the value of a document the scanner already accepted: no
//! error paths, members kept in order.

use super::Value;
use super::scanner::is_space;

pub(super) fn build(data: &[u8]) -> Value {
    Builder { data, pos: 0 }.value()
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
