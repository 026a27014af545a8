//! The bounded key table: fixed-size buckets of a few ways each.
//!
//! Hosts that cannot free keys (Envoy never deletes a shared-data key) need a fixed key space,
//! so client keys hash to one of N buckets. A bucket holds `WAYS` (fingerprint, TAT) ways and a
//! floor. When every way is busy, the way with the least debt is evicted and its TAT is folded
//! into the floor; every key that enters the bucket starts at or above the floor. An evicted
//! key that returns therefore never finds more quota than it left with. The price is paid only
//! under memory pressure: newcomers to a full bucket inherit the evicted debt (fail closed).

use super::gcra::{Gcra, Verdict};

/// Ways per bucket.
pub const WAYS: usize = 4;
/// Encoded size of one bucket: the floor, then `WAYS` × (fingerprint, TAT), little-endian u64s.
pub const BUCKET_BYTES: usize = 8 + WAYS * 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Way {
    /// 0 marks an empty way.
    fingerprint: u64,
    tat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    floor: u64,
    ways: [Way; WAYS],
}

/// What admitting one request did to the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub verdict: Verdict,
    /// The bucket changed and must be written back.
    pub changed: bool,
    /// An active key was evicted to make room.
    pub evicted: bool,
}

impl Bucket {
    /// Decodes stored bytes. Anything but a well-formed bucket reads as empty: the store only
    /// ever holds what [`Bucket::encode`] wrote, so this is a host fault, not client input.
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(bytes) = bytes.filter(|b| b.len() == BUCKET_BYTES) else {
            return Self::default();
        };
        let word = |i: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(buf)
        };
        let mut bucket = Self { floor: word(0), ways: [Way::default(); WAYS] };
        for (i, way) in bucket.ways.iter_mut().enumerate() {
            *way = Way { fingerprint: word(1 + 2 * i), tat: word(2 + 2 * i) };
        }
        bucket
    }

    pub fn encode(&self) -> [u8; BUCKET_BYTES] {
        let mut out = [0u8; BUCKET_BYTES];
        out[..8].copy_from_slice(&self.floor.to_le_bytes());
        for (i, way) in self.ways.iter().enumerate() {
            let at = 8 + i * 16;
            out[at..at + 8].copy_from_slice(&way.fingerprint.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&way.tat.to_le_bytes());
        }
        out
    }

    /// Runs one request of key `fingerprint` (non-zero) through the bucket.
    pub fn admit(&mut self, fingerprint: u64, gcra: &Gcra, now: u64) -> Admission {
        // No TAT is stored more than one window ahead of the time it is written, so one further
        // ahead of `now` means the clock stepped back (hosts read the wall clock, which NTP or a
        // resumed VM can move). Kept, it would refuse its key, and through the floor every
        // newcomer, for as long as the step. It is cut to a spent burst and written back, so
        // quota returns at the sustained rate from the new time.
        let horizon = gcra.horizon(now);
        let mut rewound = false;
        for tat in core::iter::once(&mut self.floor).chain(self.ways.iter_mut().map(|w| &mut w.tat)) {
            if *tat > horizon {
                *tat = horizon;
                rewound = true;
            }
        }

        if let Some(way) = self.ways.iter_mut().find(|w| w.fingerprint == fingerprint) {
            let (verdict, next) = gcra.check(way.tat, now);
            if let Some(next) = next {
                way.tat = next;
            }
            return Admission { verdict, changed: next.is_some() || rewound, evicted: false };
        }

        // A newcomer takes an empty way, else an idle one, else evicts the least indebted.
        let target =
            self.ways.iter().enumerate().min_by_key(|(_, w)| (w.fingerprint != 0, w.tat)).map_or(0, |(i, _)| i);
        let victim = self.ways[target];
        let evicted = victim.fingerprint != 0 && !Gcra::is_idle(victim.tat, now);
        let floor = if evicted { self.floor.max(victim.tat) } else { self.floor };

        let (verdict, next) = gcra.check(floor, now);
        match next {
            Some(next) => {
                self.floor = floor;
                self.ways[target] = Way { fingerprint, tat: next };
                Admission { verdict, changed: true, evicted }
            }
            // Denied newcomers leave no trace: they would be denied the same way next time.
            None => Admission { verdict, changed: rewound, evicted: false },
        }
    }

    /// Number of ways holding a key.
    pub fn occupancy(&self) -> usize {
        self.ways.iter().filter(|w| w.fingerprint != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    const SEC: u64 = 1_000_000_000;

    fn gcra() -> Gcra {
        Gcra::new(Rate::new(2, 60).unwrap())
    }

    #[test]
    fn encodes_and_decodes_losslessly() {
        let mut bucket = Bucket::default();
        bucket.admit(7, &gcra(), 100 * SEC);
        bucket.admit(9, &gcra(), 101 * SEC);
        let bytes = bucket.encode();
        assert_eq!(Bucket::decode(Some(&bytes)), bucket);
        assert_eq!(Bucket::decode(Some(&bytes[..3])), Bucket::default());
        assert_eq!(Bucket::decode(None), Bucket::default());
    }

    #[test]
    fn keys_in_one_bucket_keep_separate_quotas() {
        let mut bucket = Bucket::default();
        let now = 100 * SEC;
        for fp in 1..=WAYS as u64 {
            assert!(bucket.admit(fp, &gcra(), now).verdict.allowed);
            assert!(bucket.admit(fp, &gcra(), now).verdict.allowed);
            assert!(!bucket.admit(fp, &gcra(), now).verdict.allowed);
        }
        assert_eq!(bucket.occupancy(), WAYS);
    }

    #[test]
    fn an_evicted_throttled_key_returns_no_richer() {
        let mut bucket = Bucket::default();
        let now = 100 * SEC;
        // Key 1 spends its quota.
        assert!(bucket.admit(1, &gcra(), now).verdict.allowed);
        assert!(bucket.admit(1, &gcra(), now).verdict.allowed);
        assert!(!bucket.admit(1, &gcra(), now).verdict.allowed);
        // Others fill the remaining ways, then one more pushes key 1 out.
        for fp in 2..=WAYS as u64 {
            bucket.admit(fp, &gcra(), now);
        }
        let later = now + SEC;
        let push = bucket.admit(99, &gcra(), later);
        assert!(push.evicted);
        // Key 1 is back within its window and must still be denied.
        let back = bucket.admit(1, &gcra(), later);
        assert!(!back.verdict.allowed);
    }

    /// Found by the filter fuzz target: after the wall clock stepped back ten hours, a client
    /// was told to retry in 36,971 s, and would have been refused for all ten.
    #[test]
    fn a_clock_that_steps_back_costs_at_most_a_spent_burst() {
        let gcra = Gcra::new(Rate::new(5, 60).unwrap());
        let mut bucket = Bucket::default();
        let before = 40_000 * SEC;
        for _ in 0..5 {
            assert!(bucket.admit(1, &gcra, before).verdict.allowed);
        }
        // One more key than ways: an eviction puts a TAT in the floor.
        for fp in 2..=WAYS as u64 + 1 {
            bucket.admit(fp, &gcra, before);
        }
        assert!(bucket.floor > before);

        let back = before - 36_000 * SEC;
        let known = bucket.admit(1, &gcra, back);
        assert!(!known.verdict.allowed);
        assert_eq!(known.verdict.retry_after, 12 * SEC, "one interval, not the step");
        assert!(known.changed, "the cut state is written back");
        let newcomer = bucket.admit(99, &gcra, back);
        assert_eq!(newcomer.verdict.retry_after, 12 * SEC, "the floor is cut too");

        let later = back + 12 * SEC;
        assert!(bucket.admit(1, &gcra, later).verdict.allowed, "quota returns from the new time");
        assert!(bucket.admit(99, &gcra, later).verdict.allowed);
    }

    #[test]
    fn idle_ways_are_reused_without_raising_the_floor() {
        let mut bucket = Bucket::default();
        for fp in 1..=WAYS as u64 {
            bucket.admit(fp, &gcra(), 100 * SEC);
        }
        let much_later = 1000 * SEC;
        let admission = bucket.admit(50, &gcra(), much_later);
        assert!(admission.verdict.allowed && !admission.evicted);
        assert_eq!(admission.verdict.remaining, 1);
    }
}
