//! A JSON reader for the policy document: bytes to a [`Value`] tree, every error naming its
//! field path (`rate_limits[0].limit`).
//!
//! Hand-written rather than serde_json because of where the document is read: inside the Envoy
//! filter's `.wasm`, serde_json's generic deserialisers for the policy types, its float parsing
//! and formatting and their tables were over a third of the module. A policy has no floats, no
//! big numbers and no streaming, so a tree of owned values read in one pass does. The config
//! types keep serde's derive: the core's tests check this reader against serde_json over the
//! same documents (same values, same error paths).

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use crate::bytes::LOWER_HEX;

/// One JSON value. Numbers keep their text: the reader that wants one decides what fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order; a repeated key is kept twice (readers decide).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// What the value is, for "invalid type" errors, in serde's words.
    pub(crate) fn kind(&self) -> String {
        match self {
            Self::Null => "null".to_owned(),
            Self::Bool(b) => if *b { "boolean `true`" } else { "boolean `false`" }.to_owned(),
            // serde_json reads `-0` as a float: the only integer spelling of negative zero.
            Self::Number(n) if n == "-0" => "floating point `-0.0`".to_owned(),
            Self::Number(n) if n.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => {
                ["floating point `", n, "`"].concat()
            }
            Self::Number(n) => ["integer `", n, "`"].concat(),
            Self::String(s) => ["string ", &quoted(s)].concat(),
            Self::Array(_) => "sequence".to_owned(),
            Self::Object(_) => "map".to_owned(),
        }
    }
}

/// A syntax or type error at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    /// `rate_limits[3].limit`; `.` for the document itself.
    pub(crate) path: String,
    pub(crate) reason: String,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The escapes JSON and `{:?}` write alike.
fn short_escape(c: char) -> Option<&'static str> {
    match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    }
}

/// `s` in double quotes, as `{:?}` writes it for ASCII, with every other character escaped
/// (`\u{e9}`), so an error message never carries a document's raw bytes into a log line.
/// Written out because `{:?}` would link Unicode's printable-character tables into the filter.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match (short_escape(c), c) {
            (Some(escape), _) => out.push_str(escape),
            (None, ' '..='~') => out.push(c),
            (None, _) => out.extend(c.escape_unicode()),
        }
    }
    out.push('"');
    out
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it (only `"`, `\` and control
/// characters), so a body written here is byte for byte what a serializer would write.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match (short_escape(c), c) {
            (Some(escape), _) => out.push_str(escape),
            (None, '\u{8}') => out.push_str("\\b"),
            (None, '\u{c}') => out.push_str("\\f"),
            (None, '\0'..='\u{1f}') => {
                let byte = c as usize;
                out.push_str("\\u00");
                out.push(char::from(LOWER_HEX[byte >> 4]));
                out.push(char::from(LOWER_HEX[byte & 0xf]));
            }
            (None, _) => out.push(c),
        }
    }
    out.push('"');
}

/// One step from the root: a member's key or an element's index.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A field path; rendered as `a.b[2].c`, or `.` for the document itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path(Vec<Step>);

impl Path {
    pub(crate) fn push(&mut self, step: Step) {
        self.0.push(step);
    }

    pub(crate) fn pop(&mut self) {
        self.0.pop();
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error { path: self.render(), reason: reason.into() }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for step in &self.0 {
            match step {
                Step::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(itoa::Buffer::new().format(*i));
                    out.push(']');
                }
            }
        }
        // An empty key gives an empty path: report it against the document instead.
        if out.is_empty() {
            out.push('.');
        }
        out
    }
}

/// Deep enough for any policy, shallow enough that recursion cannot exhaust a Wasm stack.
const MAX_DEPTH: usize = 128;

/// Reads one JSON document (RFC 8259) with nothing but whitespace after it.
pub(crate) fn parse(json: &[u8]) -> Result<Value, Error> {
    let mut reader = Reader { json, at: 0, path: Path::default(), depth: 0 };
    let value = reader.value()?;
    reader.skip_whitespace();
    if reader.at < json.len() {
        return Err(Path::default().error("trailing characters after the document"));
    }
    Ok(value)
}

struct Reader<'a> {
    json: &'a [u8],
    at: usize,
    /// Where the reader is, for errors: the member being read stays on the path until the
    /// next one starts, so a document cut off after a value still names that value.
    path: Path,
    depth: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, reason: &str) -> Result<T, Error> {
        Err(self.path.error(reason))
    }

    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        if self.json[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            self.fail("expected value")
        }
    }

    fn value(&mut self) -> Result<Value, Error> {
        self.skip_whitespace();
        match self.peek() {
            None => self.fail("EOF while parsing a value"),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.fail("expected value"),
        }
    }

    fn nested(&mut self, read: fn(&mut Self) -> Result<Value, Error>) -> Result<Value, Error> {
        if self.depth == MAX_DEPTH {
            return self.fail("recursion limit exceeded");
        }
        self.depth += 1;
        self.at += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Result<Value, Error> {
        let mut members = Vec::new();
        self.items(b'}', "EOF while parsing an object", "expected `,` or `}`", |reader| {
            if reader.peek() != Some(b'"') {
                return reader.fail("key must be a string");
            }
            let key = reader.string()?;
            reader.skip_whitespace();
            match reader.peek() {
                None => return reader.fail("EOF while parsing an object"),
                Some(b':') => reader.at += 1,
                Some(_) => return reader.fail("expected `:`"),
            }
            reader.path.push(Step::Key(key.clone()));
            members.push((key, reader.value()?));
            Ok(())
        })?;
        Ok(Value::Object(members))
    }

    fn array(&mut self) -> Result<Value, Error> {
        let mut elements = Vec::new();
        self.items(b']', "EOF while parsing a list", "expected `,` or `]`", |reader| {
            reader.path.push(Step::Index(elements.len()));
            elements.push(reader.value()?);
            Ok(())
        })?;
        Ok(Value::Array(elements))
    }

    /// The comma-separated items of an object or a list, the reader past its opening bracket,
    /// up to and past `close`. `item` reads one from its first byte and puts its step on the
    /// path; the step stays there until the separator after the item has been read, so a
    /// document cut off right after a value still names it.
    fn items(
        &mut self,
        close: u8,
        eof: &str,
        expected: &str,
        mut item: impl FnMut(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.skip_whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return self.fail(eof),
                // Not the first item: an empty container returned above.
                Some(byte) if byte == close => return self.fail("trailing comma"),
                Some(_) => {}
            }
            item(self)?;
            self.skip_whitespace();
            let next = self.peek();
            match next {
                None => return self.fail(eof),
                Some(byte) if byte == b',' || byte == close => self.at += 1,
                Some(_) => return self.fail(expected),
            }
            self.path.pop();
            if next == Some(close) {
                return Ok(());
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let leading_zero = self.peek() == Some(b'0');
        match self.digits() {
            0 => return self.fail("invalid number"),
            1 => {}
            _ if leading_zero => return self.fail("invalid number"),
            _ => {}
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return self.fail("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return self.fail("invalid number");
            }
        }
        // Only ASCII digits, signs, `.` and `e` were consumed.
        let text = self.json[start..self.at].iter().map(|&b| char::from(b)).collect();
        Ok(Value::Number(text))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                None => return self.fail("EOF while parsing a string"),
                Some(b) => char::from(b).to_digit(16),
            };
            let Some(digit) = digit else { return self.fail("invalid escape") };
            code = code * 16 + digit;
            self.at += 1;
        }
        Ok(code)
    }

    /// A string, the reader on its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            let Some(byte) = self.peek() else { return self.fail("EOF while parsing a string") };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(escape) = self.peek() else { return self.fail("EOF while parsing a string") };
                    self.at += 1;
                    let code = match escape {
                        b'"' | b'\\' | b'/' => u32::from(escape),
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => u32::from(b'\n'),
                        b'r' => u32::from(b'\r'),
                        b't' => u32::from(b'\t'),
                        b'u' => self.unicode_escape()?,
                        _ => return self.fail("invalid escape"),
                    };
                    let Some(c) = char::from_u32(code) else { return self.fail("invalid unicode code point") };
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1f => return self.fail("control character (\\u0000-\\u001F) found while parsing a string"),
                _ => bytes.push(byte),
            }
        }
        String::from_utf8(bytes).or_else(|_| self.fail("invalid unicode code point"))
    }

    /// The code point of `\uXXXX`, or of a `\uD8xx\uDCxx` surrogate pair.
    fn unicode_escape(&mut self) -> Result<u32, Error> {
        let first = self.hex4()?;
        match first {
            0xdc00..=0xdfff => self.fail("lone trailing surrogate in hex escape"),
            0xd800..=0xdbff => {
                if !self.json[self.at..].starts_with(b"\\u") {
                    return self.fail("lone leading surrogate in hex escape");
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return self.fail("lone leading surrogate in hex escape");
                }
                Ok(0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00))
            }
            _ => Ok(first),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::prelude::rust_2024::*;

    use super::*;

    fn error(json: &str) -> String {
        parse(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reads_every_kind_of_value() {
        let value = parse(br#" {"a": [1, -2.5e3, true, false, null], "b\u00e9\ud83d\ude00": "x\n\"y\""} "#).unwrap();
        let expected = Value::Object(vec![
            (
                "a".to_owned(),
                Value::Array(vec![
                    Value::Number("1".to_owned()),
                    Value::Number("-2.5e3".to_owned()),
                    Value::Bool(true),
                    Value::Bool(false),
                    Value::Null,
                ]),
            ),
            ("b\u{e9}\u{1f600}".to_owned(), Value::String("x\n\"y\"".to_owned())),
        ]);
        assert_eq!(value, expected);
        assert_eq!(parse(b"[]").unwrap(), Value::Array(Vec::new()));
        assert_eq!(parse(b"{}").unwrap(), Value::Object(Vec::new()));
    }

    #[test]
    fn errors_name_where_the_reader_was() {
        assert_eq!(error("["), ".: EOF while parsing a list");
        assert_eq!(error(r#"{"a": [1, {"b": tru}]}"#), "a[1].b: expected value");
        assert_eq!(error(r#"{"a": 1"#), "a: EOF while parsing an object");
        assert_eq!(error(r#"{"a": 1,}"#), ".: trailing comma");
        assert_eq!(error(r#"{"a": [1,]}"#), "a: trailing comma");
        assert_eq!(error(r#"{"a" 1}"#), ".: expected `:`");
        assert_eq!(error(r#"{"a": 1 "b": 2}"#), "a: expected `,` or `}`");
        assert_eq!(error(r#"{1: 2}"#), ".: key must be a string");
        assert_eq!(error(r#"{"a": 01}"#), "a: invalid number");
        assert_eq!(error(r#"{"a": 1.}"#), "a: invalid number");
        assert_eq!(error(r#"{"a": "\x"}"#), "a: invalid escape");
        assert_eq!(error(r#"{"a": "\ud800"}"#), "a: lone leading surrogate in hex escape");
        assert_eq!(error("{\"a\": \"\u{1}\"}"), "a: control character (\\u0000-\\u001F) found while parsing a string");
        assert_eq!(error("{} {}"), ".: trailing characters after the document");
        assert_eq!(parse(b"{\"a\": \"\xff\"}").unwrap_err().to_string(), "a: invalid unicode code point");
        assert_eq!(error(&"[".repeat(MAX_DEPTH + 1)), format!("{}: recursion limit exceeded", "[0]".repeat(MAX_DEPTH)));
    }

    proptest::proptest! {
        #[test]
        fn strings_are_written_as_serde_json_writes_them(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut ours = String::new();
            write_string(&mut ours, &s);
            proptest::prop_assert_eq!(ours, serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn quoting_escapes_what_a_log_line_must_not_carry() {
        assert_eq!(quoted("a\nb\u{e9}\"'\u{7f}"), r#""a\nb\u{e9}\"'\u{7f}""#);
        assert_eq!(quoted("plain ASCII: {x}"), format!("{:?}", "plain ASCII: {x}"));
    }
}
