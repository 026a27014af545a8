//! The ABI's serialised header map: a little-endian `u32` count, then a `u32` name length and a
//! `u32` value length per pair, then each name and each value followed by a NUL.

use alloc::string::String;
use alloc::vec::Vec;

/// The pairs of a serialised map, borrowed from it. A map that does not parse ends where it
/// stops parsing: the filter treats what it cannot read as absent rather than trapping.
#[inline]
pub fn pairs(serialised: &[u8]) -> Pairs<'_> {
    let count = word(serialised, 0).unwrap_or(0);
    let data = count.checked_mul(8).and_then(|lengths| lengths.checked_add(4)).unwrap_or(usize::MAX);
    Pairs { serialised, next: 0, count, data }
}

pub struct Pairs<'a> {
    serialised: &'a [u8],
    next: usize,
    count: usize,
    /// Where the next name starts.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let lengths = 4 + self.next * 8;
        let pair = (|| {
            let (name_len, value_len) = (word(self.serialised, lengths)?, word(self.serialised, lengths + 4)?);
            let name_end = self.data.checked_add(name_len)?;
            let name = self.serialised.get(self.data..name_end)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            let value = self.serialised.get(value_start..value_end)?;
            Some((name, value, value_end + 1))
        })();
        match pair {
            Some((name, value, after)) => {
                self.next += 1;
                self.data = after;
                Some((name, value))
            }
            None => {
                self.next = self.count;
                None
            }
        }
    }
}

#[inline]
fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Builds a serialised map of a count known up front.
pub struct MapWriter {
    out: Vec<u8>,
    /// Where the next pair's lengths go.
    lengths: usize,
}

impl MapWriter {
    /// Room for `count` pairs whose names and values add up to `bytes`.
    pub fn new(count: usize, bytes: usize) -> Self {
        let header = 4 + count * 8;
        let mut out = Vec::with_capacity(header + bytes + count * 2);
        out.extend_from_slice(&len_word(count));
        out.resize(header, 0);
        Self { out, lengths: 4 }
    }

    /// Appends one pair. Pairs beyond the `count` given to [`MapWriter::new`] are dropped,
    /// since the count is already written.
    #[inline]
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let Some(slot) = self.out.get_mut(self.lengths..self.lengths + 8) else { return };
        slot[..4].copy_from_slice(&len_word(name.len()));
        slot[4..].copy_from_slice(&len_word(value.len()));
        self.lengths += 8;
        self.out.extend_from_slice(name);
        self.out.push(0);
        self.out.extend_from_slice(value);
        self.out.push(0);
    }

    /// Appends every pair of `block`, as [`MapWriter::push`] would one by one. A block that
    /// does not fit the declared count is dropped whole.
    #[inline]
    pub fn push_block(&mut self, block: &Block) {
        let Some(slot) = self.out.get_mut(self.lengths..self.lengths + block.lengths.len()) else { return };
        slot.copy_from_slice(&block.lengths);
        self.lengths += block.lengths.len();
        self.out.extend_from_slice(&block.data);
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Pairs serialised once and copied into many maps: the length words and the NUL-terminated
/// names and values, kept apart because the ABI puts all lengths before all data.
pub struct Block {
    lengths: Vec<u8>,
    data: Vec<u8>,
    text_len: usize,
}

impl Block {
    pub fn new(pairs: &[(String, String)]) -> Self {
        let mut block = Self { lengths: Vec::with_capacity(pairs.len() * 8), data: Vec::new(), text_len: 0 };
        for (name, value) in pairs {
            block.lengths.extend_from_slice(&len_word(name.len()));
            block.lengths.extend_from_slice(&len_word(value.len()));
            block.data.extend_from_slice(name.as_bytes());
            block.data.push(0);
            block.data.extend_from_slice(value.as_bytes());
            block.data.push(0);
            block.text_len += name.len() + value.len();
        }
        block
    }

    pub fn count(&self) -> usize {
        self.lengths.len() / 8
    }

    /// The names' and values' bytes, as [`MapWriter::new`] counts them.
    pub fn text_len(&self) -> usize {
        self.text_len
    }
}

/// A length as the ABI's `u32`. Host maps live in a 32-bit address space, so nothing longer
/// ever reaches the filter.
#[inline]
fn len_word(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::ToOwned;
    use std::vec;

    fn serialise(map: &[(&str, &str)]) -> Vec<u8> {
        let bytes = map.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut writer = MapWriter::new(map.len(), bytes);
        for (name, value) in map {
            writer.push(name.as_bytes(), value.as_bytes());
        }
        writer.finish()
    }

    #[test]
    fn round_trips_the_abi_layout() {
        let map = [(":status", "200"), ("server", ""), ("x-a", "b")];
        let bytes = serialise(&map);
        assert_eq!(&bytes[..12], &[3, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[28..], b":status\x00200\x00server\x00\x00x-a\x00b\x00");
        let back: Vec<_> = pairs(&bytes).collect();
        let expected: Vec<_> = map.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        assert_eq!(back, expected);
        assert_eq!(pairs(&[]).count(), 0);
    }

    #[test]
    fn a_malformed_map_ends_where_it_stops_parsing() {
        let bytes = serialise(&[("a", "1"), ("b", "2")]);
        // Only the last NUL may go missing without losing the second pair.
        for cut in 0..bytes.len() - 1 {
            assert!(pairs(&bytes[..cut]).count() <= 1, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge).count(), 1);
        let mut count = bytes;
        count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&count).count(), 0);
    }

    #[test]
    fn pairs_beyond_the_declared_count_are_dropped() {
        let mut writer = MapWriter::new(1, 2);
        writer.push(b"a", b"1");
        writer.push(b"b", b"2");
        assert_eq!(pairs(&writer.finish()).collect::<Vec<_>>(), vec![(&b"a"[..], &b"1"[..])]);
    }

    #[test]
    fn a_block_writes_what_its_pairs_would() {
        let block = Block::new(&[("x-a".to_owned(), "1".to_owned()), ("x-bb".to_owned(), String::new())]);
        let mut writer = MapWriter::new(3, 2 + block.text_len());
        writer.push(b"c", b"d");
        writer.push_block(&block);
        let by_block = writer.finish();
        let by_pairs = serialise(&[("c", "d"), ("x-a", "1"), ("x-bb", "")]);
        assert_eq!(by_block, by_pairs);
        assert_eq!(by_block.capacity(), by_block.len(), "the size given up front was exact");
        let mut short = MapWriter::new(2, 0);
        short.push_block(&block);
        short.push_block(&block);
        assert_eq!(pairs(&short.finish()).count(), 2);
    }
}
