//! GCRA: the generic cell rate algorithm, as a pure function of one timestamp of state.
//!
//! State is the theoretical arrival time (TAT). With burst equal to the limit a fresh client
//! may send `limit` requests at once, after which quota returns smoothly, one request every
//! `period / limit`.

use crate::rate::Rate;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A compiled rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two requests at the sustained rate (rounded up: never more lenient).
    emission: u64,
    /// `emission × limit`: how far the TAT may run ahead of now.
    window: u64,
    limit: u32,
    period_secs: u32,
}

/// The outcome of one request against one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// Nanoseconds until the key is back to its full quota.
    pub reset_after: u64,
    /// Nanoseconds until a denied request would be allowed (0 when allowed).
    pub retry_after: u64,
}

impl Gcra {
    pub fn new(rate: Rate) -> Self {
        let period = u64::from(rate.period_secs()) * NANOS_PER_SEC;
        let limit = u64::from(rate.limit());
        let emission = period.div_ceil(limit);
        Self { emission, window: emission * limit, limit: rate.limit(), period_secs: rate.period_secs() }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The rate this was compiled from.
    pub fn rate(&self) -> Rate {
        Rate::from_parts(self.limit, self.period_secs)
    }

    pub fn period_secs(&self) -> u32 {
        self.period_secs
    }

    /// Nanoseconds between two requests at the sustained rate.
    pub fn emission(&self) -> u64 {
        self.emission
    }

    /// `emission × limit` nanoseconds: how far a key's TAT may run ahead of now (a spent burst).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Decides one request at `now` for a key whose stored TAT is `tat` (0 for a new key).
    /// Returns the verdict and, when allowed, the TAT to store.
    pub fn check(&self, tat: u64, now: u64) -> (Verdict, Option<u64>) {
        let tat = tat.max(now);
        let next = tat.saturating_add(self.emission);
        let allowed_from = next.saturating_sub(self.window);
        if now >= allowed_from {
            let spare = self.window - (next - now);
            let verdict = Verdict {
                allowed: true,
                remaining: u32::try_from(spare / self.emission).unwrap_or(u32::MAX),
                reset_after: next - now,
                retry_after: 0,
            };
            (verdict, Some(next))
        } else {
            let verdict =
                Verdict { allowed: false, remaining: 0, reset_after: tat - now, retry_after: allowed_from - now };
            (verdict, None)
        }
    }

    /// The furthest ahead of `now` a TAT can be when it is stored: a spent burst.
    pub fn horizon(&self, now: u64) -> u64 {
        now.saturating_add(self.window)
    }

    /// Whether a stored TAT means the key has its whole quota again (its state carries nothing).
    pub fn is_idle(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

/// Whole seconds, rounded up: a client told to wait must not come back early.
pub fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u32) -> Gcra {
        Gcra::new(Rate::new(n, 60).unwrap())
    }

    #[test]
    fn a_fresh_key_gets_the_whole_burst_then_waits_one_interval() {
        let gcra = per_minute(5);
        let now = 1_000 * NANOS_PER_SEC;
        let mut tat = 0;
        for expected_remaining in (0..5).rev() {
            let (verdict, next) = gcra.check(tat, now);
            assert!(verdict.allowed);
            assert_eq!(verdict.remaining, expected_remaining);
            tat = next.unwrap();
        }
        let (denied, next) = gcra.check(tat, now);
        assert!(!denied.allowed);
        assert_eq!(next, None);
        assert_eq!(denied.retry_after, 12 * NANOS_PER_SEC);
        assert_eq!(denied.reset_after, 60 * NANOS_PER_SEC);
        let (later, _) = gcra.check(tat, now + 12 * NANOS_PER_SEC);
        assert!(later.allowed, "one request back after one emission interval");
    }

    #[test]
    fn quota_refills_smoothly_and_caps_at_the_burst() {
        let gcra = per_minute(60);
        let now = 5 * NANOS_PER_SEC;
        let (first, tat) = gcra.check(0, now);
        assert_eq!(first.remaining, 59);
        let (after_an_hour, _) = gcra.check(tat.unwrap(), now + 3600 * NANOS_PER_SEC);
        assert_eq!(after_an_hour.remaining, 59, "idle time never banks more than the burst");
    }

    #[test]
    fn odd_limits_round_toward_strictness() {
        let gcra = per_minute(7);
        assert!(gcra.emission * 7 >= 60 * NANOS_PER_SEC);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(NANOS_PER_SEC), 1);
        assert_eq!(ceil_secs(NANOS_PER_SEC + 1), 2);
    }
}
