//! The field path (`rate_limits[0].limit`) at a byte offset of a JSON document: how a serde_json
//! error, which knows only its line and column, names the field it is about.
//!
//! `serde_path_to_error` does this by wrapping every deserializer call for every type, which
//! inside the Envoy filter is a seventh of the module's code; scanning the document once, only
//! after an error, costs a few hundred bytes. No crate does just this scan, so it is written here.

/// One level of nesting, and where the scan is inside it.
enum Frame {
    /// The member being read, once its key has been read (until the `,` or `}` after its value).
    Object { key: Option<String>, expecting_key: bool },
    /// The element being read, once it has started (until the `,` or `]` after it).
    Array { index: usize, in_element: bool },
}

/// The path of the value being read at `offset` in `json`: keys joined by `.`, array indices
/// as `[i]`; empty at the document's own level.
pub(crate) fn path_at(json: &[u8], offset: usize) -> String {
    let end = offset.min(json.len());
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = json.get(i).filter(|_| i < end) {
        match byte {
            b'"' => {
                let close = string_end(json, i);
                let key_wanted = matches!(frames.last(), Some(Frame::Object { expecting_key: true, .. }));
                if let (true, Some(Frame::Object { key, expecting_key })) = (key_wanted, frames.last_mut()) {
                    *key = Some(decode_key(json.get(i..close.min(json.len())).unwrap_or_default()));
                    *expecting_key = false;
                } else {
                    start_value(&mut frames);
                }
                i = close;
                continue;
            }
            b'{' => {
                start_value(&mut frames);
                frames.push(Frame::Object { key: None, expecting_key: true });
            }
            b'[' => {
                start_value(&mut frames);
                frames.push(Frame::Array { index: 0, in_element: false });
            }
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Object { key, expecting_key }) => {
                    *key = None;
                    *expecting_key = true;
                }
                Some(Frame::Array { index, in_element }) => {
                    *index += 1;
                    *in_element = false;
                }
                None => {}
            },
            b':' => {}
            byte if byte.is_ascii_whitespace() => {}
            // A number, `true`, `false` or `null`.
            _ => start_value(&mut frames),
        }
        i += 1;
    }
    // serde_json places an error about a map or a list where something else was expected just
    // before its `{` or `[`: in a list, that value is already the next element.
    let next = json.get(end..).unwrap_or_default().iter().find(|b| !b.is_ascii_whitespace());
    if next.is_some_and(|&b| matches!(b, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) {
        start_value(&mut frames);
    }
    let mut path = String::new();
    for frame in &frames {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array { index, in_element: true } => {
                path.push('[');
                path.push_str(itoa::Buffer::new().format(*index));
                path.push(']');
            }
            _ => {}
        }
    }
    path
}

/// The byte offset `line` and `column` (serde_json's: 1-based line, bytes read on that line)
/// point just past.
pub(crate) fn offset_of(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(line - 2).map_or(json.len(), |(at, _)| at + 1)
    };
    line_start.saturating_add(column).min(json.len())
}

/// A value starts: in an array, that is the next element.
fn start_value(frames: &mut [Frame]) {
    if let Some(Frame::Array { in_element, .. }) = frames.last_mut() {
        *in_element = true;
    }
}

/// Just past the string starting with the quote at `open` (or the document's end).
fn string_end(json: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    json.len()
}

/// A key as its string token spells it, escapes decoded; a token that does not decode (cut off,
/// or a bad escape) as its raw text.
fn decode_key(token: &[u8]) -> String {
    serde_json::from_slice::<String>(token).unwrap_or_else(|_| {
        let inner = token.strip_prefix(b"\"").unwrap_or(token);
        String::from_utf8_lossy(inner.strip_suffix(b"\"").unwrap_or(inner)).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path at the byte just past the first occurrence of `marker`.
    fn at(json: &str, marker: &str) -> String {
        let offset = json.find(marker).map(|at| at + marker.len()).unwrap();
        path_at(json.as_bytes(), offset)
    }

    #[test]
    fn paths_name_keys_and_indices() {
        let json = r#"{"a": {"b": [1, {"c": "x"}, [true, null]]}, "d\u0041": 5, "e": []}"#;
        assert_eq!(at(json, r#"{"a""#), "a");
        assert_eq!(at(json, "[1"), "a.b[0]");
        assert_eq!(at(json, r#""c": "x""#), "a.b[1].c");
        assert_eq!(at(json, r#""x"}"#), "a.b[1]", "an object's end is its own level");
        assert_eq!(at(json, "[true"), "a.b[2][0]");
        assert_eq!(at(json, "null"), "a.b[2][1]");
        assert_eq!(at(json, "5"), "dA", "escapes in keys are decoded");
        assert_eq!(at(json, "[]"), "e");
        assert_eq!(at(json, "[]}"), "");
        assert_eq!(path_at(b"[", 1), "");
        assert_eq!(path_at(br#"["a", {"b": 1}]"#, 6), "[1]", "just before a value that starts an element");
        assert_eq!(at(r#"{"k\"}": {"x": 1}}"#, r#""x": 1"#), r#"k"}.x"#, "quotes and braces inside keys");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_and_offset_give_a_path(json: Vec<u8>, offset: usize, line: usize, column: usize) {
            let _ = path_at(&json, offset);
            proptest::prop_assert!(offset_of(&json, line, column) <= json.len());
        }
    }

    #[test]
    fn offsets_follow_serde_jsons_lines_and_columns() {
        let json = b"{\n  \"a\": 1,\n  \"b\": x}";
        let err = serde_json::from_slice::<serde_json::Value>(json).unwrap_err();
        assert_eq!(path_at(json, offset_of(json, err.line(), err.column())), "b");
        assert_eq!(offset_of(json, 1, 3), 3);
        assert_eq!(offset_of(json, 9, 3), json.len());
    }
}
