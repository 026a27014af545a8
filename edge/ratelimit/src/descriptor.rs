//! What a limited request looks like on the rate-limit service API, both ways: the descriptor
//! a Portcullis host sends for a [`LimitCheck`], and the verdict it reads back from any
//! service that fills the standard fields (this one, envoyproxy/ratelimit).

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use portcullis_core::{Acquire, LimitCheck, Policy, Verdict};

use crate::proto::{Code, DescriptorStatus, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse};

/// The domain Portcullis hosts send by default.
pub const DEFAULT_DOMAIN: &str = "portcullis";
/// The descriptor entry naming the policy tier.
pub const TIER_KEY: &str = "tier";
/// The descriptor entry naming the client: the host's keyed client id, never an address.
pub const CLIENT_KEY: &str = "client";

/// The request for one limited request: one descriptor, `tier` then `client`.
pub fn request_for(policy: &Policy, check: &LimitCheck, domain: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry { key: TIER_KEY.to_owned(), value: policy.tier_name(check).to_owned() },
                Entry { key: CLIENT_KEY.to_owned(), value: hex_id(check.client_id()) },
            ],
            limit: None,
        }],
        hits_addend: 0,
    }
}

/// `id` as 32 lowercase hex digits, as `{:032x}` writes it, without `core::fmt` (which the
/// filter, building the descriptor, does not link).
fn hex_id(id: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..32).rev().map(|digit| char::from(DIGITS[((id >> (digit * 4)) & 0xf) as usize])).collect()
}

/// The keyed id a store keeps for a descriptor's client: the domain and every entry but the
/// first `tier`, unambiguously joined, hashed with the policy's `limiter.hash_key`.
pub fn identity_id(policy: &Policy, domain: &str, entries: &[Entry]) -> u128 {
    let tier = entries.iter().position(|e| e.key == TIER_KEY);
    let mut identity = Vec::with_capacity(64);
    for part in core::iter::once(domain).chain(
        entries
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != tier)
            .flat_map(|(_, e)| [e.key.as_str(), e.value.as_str()]),
    ) {
        identity.extend_from_slice(&(part.len() as u32).to_le_bytes());
        identity.extend_from_slice(part.as_bytes());
    }
    policy.keyed_id(&identity)
}

/// The Redis key of `check`: the one the rate-limit service uses for [`request_for`]'s
/// descriptor, so origins with a Redis URL and Envoys behind the service share one count.
#[cfg(feature = "redis")]
pub fn limit_key(policy: &Policy, check: &LimitCheck, domain: &str) -> crate::store::LimitKey {
    let request = request_for(policy, check, domain);
    let entries = request.descriptors.first().map_or(&[][..], |d| d.entries.as_slice());
    crate::store::LimitKey::new(identity_id(policy, domain, entries), policy.tier_name(check), check.gcra(), 1)
}

/// Why an answer cannot be used; the host's fallback decides instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableAnswer(pub String);

impl core::fmt::Display for UnusableAnswer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unusable rate-limit answer: {}", self.0)
    }
}

/// The verdict in a service's answer to [`request_for`]'s request.
///
/// `duration_until_reset` is read as the standard says, the time until the limit's window
/// resets: for an allowed request the time until the whole quota is back, for a refused one
/// the time until a request is allowed again (a fixed window resets at once; for GCRA it is
/// when the next request fits). The refused request's full reset follows from the tier's rate.
pub fn verdict_from(check: &LimitCheck, response: &RateLimitResponse) -> Result<Acquire, UnusableAnswer> {
    let status: Option<&DescriptorStatus> = response.statuses.first();
    let until = status.and_then(|s| s.duration_until_reset).map_or(0, |d| d.as_nanos());
    let remaining = status.map_or(0, |s| s.limit_remaining);
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => {
            Ok(Acquire::from_verdict(Verdict { allowed: true, remaining, reset_after: until, retry_after: 0 }))
        }
        Ok(Code::OverLimit) => {
            let gcra = check.gcra();
            // A refusal always waits: a service that says 0 still means "not now".
            let retry_after = until.max(1);
            let reset_after = retry_after.saturating_add(gcra.window().saturating_sub(gcra.emission()));
            Ok(Acquire::from_verdict(Verdict { allowed: false, remaining: 0, reset_after, retry_after }))
        }
        Ok(Code::Unknown) => Err(UnusableAnswer("overall_code is UNKNOWN".into())),
        Err(_) => Err(UnusableAnswer(
            ["overall_code ", itoa::Buffer::new().format(response.overall_code), " is not a code"].concat(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_written_as_032x_writes_them() {
        let mut id: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for special in [0, 1, 0xf, u128::MAX, 1 << 127] {
            assert_eq!(hex_id(special), alloc::format!("{special:032x}"));
        }
        for _ in 0..1000 {
            id = id.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(0x1405_7b7e_f767_814f) ^ (id >> 61);
            assert_eq!(hex_id(id), alloc::format!("{id:032x}"));
        }
    }
}
