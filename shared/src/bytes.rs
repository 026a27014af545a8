//! Byte helpers for the request path: slice equality and byte-class tables.

/// Lowercase hex digits by value: JSON's `\u00XX` escapes and IPv6 text.
pub(crate) const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `a` and `b` hold the same bytes, compared eight at a time. In a Wasm VM `==` on
/// slices calls wasi-libc's `memcmp`, which compares one byte per loop: about 22 Wasm
/// operations a byte, 300 for a 14-byte route. Here a word costs a few, and the tail is
/// compared as one zero-padded word. No library does this for `wasm32`: `memchr` and `bstr`
/// search and split, and their equality is the same `memcmp`.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        if word(x) != word(y) {
            return false;
        }
    }
    word(a_words.remainder()) == word(b_words.remainder())
}

/// Up to eight bytes as one word, zero-padded.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    let mut padded = [0u8; 8];
    if let Some(start) = padded.get_mut(..bytes.len()) {
        start.copy_from_slice(bytes);
    }
    u64::from_le_bytes(padded)
}

/// The value of at most nine ASCII digits (the caller has checked that they are digits).
pub(crate) fn decimal(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |n, &d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// A table of each byte's class, built at compile time from an expression over the byte
/// (`byte_classes!(b => match b { … })`): the request path classes each byte it reads with one
/// lookup instead of a chain of range comparisons.
macro_rules! byte_classes {
    ($byte:ident => $class:expr) => {{
        let mut table = [0u8; 256];
        let mut index = 0;
        while index < 256 {
            let $byte = index as u8;
            table[index] = $class;
            index += 1;
        }
        table
    }};
}
pub(crate) use byte_classes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_exactly_when_the_slices_are() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"", b""),
            (b"a", b"a"),
            (b"a", b"b"),
            (b"a", b"a\0"),
            (b"/api/v1/videos", b"/api/v1/videos"),
            (b"/api/v1/videos", b"/api/v1/videoz"),
            (b"/api/v1/videos", b"/bpi/v1/videos"),
            (b"0123456789abcdef", b"0123456789abcdef"),
        ];
        for (a, b) in cases {
            assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_slice_equality(a in proptest::collection::vec(0u8..4, 0..20), b in proptest::collection::vec(0u8..4, 0..20)) {
            proptest::prop_assert_eq!(same_bytes(&a, &b), a == b);
            proptest::prop_assert!(same_bytes(&a, &a.clone()));
        }
    }
}
