//! Tiered per-client rate limiting: which bucket a (tier, client) lives in, and the
//! compare-and-swap loop that runs [`gcra`] over a [`BucketStore`].

pub mod gcra;
pub mod store;
pub mod table;

use core::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::client::ClientKey;
use crate::config::{Backend, ConfigError, GlobalConfig, LimiterConfig};
use gcra::{Gcra, Verdict};
use store::{BucketStore, StoreError, Swap};
use table::{Bucket, WAYS};

/// Where one (tier, client) pair lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Bucket index in the store, `0..Limiter::bucket_count()`.
    pub index: u32,
    /// Non-zero identity of the pair inside its bucket.
    pub fingerprint: u64,
}

/// The result of one limit check, wherever its state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    Allowed(Verdict),
    Denied(Verdict),
    /// Every compare-and-swap attempt lost a race; the request counts as over the limit.
    Contended,
    /// The store failed; the configured `on_store_error` decides.
    StoreFailed(StoreError),
}

impl Acquire {
    /// A verdict reached elsewhere (a Durable Object, a rate-limit service).
    pub fn from_verdict(verdict: Verdict) -> Self {
        if verdict.allowed { Self::Allowed(verdict) } else { Self::Denied(verdict) }
    }
}

/// The secret key of the limiter's keyed hashes (bucket slots, client ids).
///
/// Secret so that outsiders cannot compute which addresses share a victim's bucket. A policy
/// names it in `limiter.hash_key`; without one, the host makes a random key
/// ([`crate::Policy::with_hash_key`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey(u64, u64);

impl HashKey {
    /// A key from 16 random bytes (the host's entropy source: the core has none).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let (k0, k1) = bytes.split_at(8);
        let half = |b: &[u8]| b.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        Self(half(k0), half(k1))
    }

    /// The key as 16 bytes, for a host that keeps it where its other instances find it.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.0.to_be_bytes());
        bytes[8..].copy_from_slice(&self.1.to_be_bytes());
        bytes
    }

    /// 32 hexadecimal digits, as `limiter.hash_key` writes it.
    pub fn parse_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let k0 = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
        let k1 = u64::from_str_radix(hex.get(16..)?, 16).ok()?;
        Some(Self(k0, k1))
    }
}

impl core::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    /// `None` until the configuration or the host gives one.
    pub(crate) key: Option<HashKey>,
    /// Whether `key` came from the configuration (else from the host).
    pub(crate) key_configured: bool,
    buckets_per_tier: u32,
    limited_tiers: u32,
    max_retries: u8,
    pub(crate) global: Option<GlobalConfig>,
}

/// The key of a policy without `limiter.hash_key` until its host gives it one
/// ([`crate::Policy::with_hash_key`]); every host does before it serves.
const UNSET_KEY: HashKey = HashKey(0, 0);

impl Limiter {
    pub(crate) fn compile(config: &LimiterConfig, limited_tiers: u32) -> Result<Self, ConfigError> {
        let key = match &config.hash_key {
            None => None,
            Some(hex) => Some(
                HashKey::parse_hex(hex)
                    .ok_or_else(|| ConfigError::at("limiter.hash_key", "must be exactly 32 hexadecimal digits"))?,
            ),
        };
        if config.capacity_per_tier == 0 {
            return Err(ConfigError::at("limiter.capacity_per_tier", "must be at least 1"));
        }
        let buckets_per_tier = config.capacity_per_tier.div_ceil(WAYS as u32);
        if u64::from(buckets_per_tier) * u64::from(limited_tiers.max(1)) > u64::from(u32::MAX) {
            return Err(ConfigError::at(
                "limiter.capacity_per_tier",
                [
                    itoa::Buffer::new().format(config.capacity_per_tier),
                    " keys per tier over ",
                    itoa::Buffer::new().format(limited_tiers),
                    " tiers is more buckets than a store can index",
                ]
                .concat(),
            ));
        }
        let global = match (config.backend, &config.global) {
            (Backend::Local, _) => None,
            (Backend::Global, None) => {
                return Err(ConfigError::at("limiter.global", "is required with \"backend\": \"global\""));
            }
            (Backend::Global, Some(global)) => {
                if global.cluster.is_empty() {
                    return Err(ConfigError::at(
                        "limiter.global.cluster",
                        "must name the rate-limit service's cluster",
                    ));
                }
                if !(1..=10_000).contains(&global.timeout_ms) {
                    return Err(ConfigError::at(
                        "limiter.global.timeout_ms",
                        [itoa::Buffer::new().format(global.timeout_ms), " is not between 1 and 10000"].concat(),
                    ));
                }
                if global.domain.is_empty() {
                    return Err(ConfigError::at("limiter.global.domain", "must not be empty"));
                }
                if key.is_none() {
                    return Err(ConfigError::at(
                        "limiter.hash_key",
                        "is required with \"backend\": \"global\": every host sharing the service must \
                         name a client alike (generate one: openssl rand -hex 16)",
                    ));
                }
                Some(global.clone())
            }
        };
        Ok(Self {
            key,
            key_configured: key.is_some(),
            buckets_per_tier,
            limited_tiers,
            max_retries: config.max_cas_retries,
            global,
        })
    }

    /// Total buckets across all limited tiers: the store never holds more entries than this.
    pub(crate) fn bucket_count(&self) -> u32 {
        self.buckets_per_tier * self.limited_tiers
    }

    /// The bucket of (tier, client), taken from the client's keyed id: one hash per request
    /// for both. Each limited tier has its own range of buckets, so the same position in every
    /// range loses nothing, and the id is unpredictable without the key.
    pub(crate) fn slot(&self, tier_ordinal: u32, client_id: u128) -> Slot {
        let (low, high) = (client_id as u64, (client_id >> 64) as u64);
        let bucket = (low % u64::from(self.buckets_per_tier)) as u32;
        Slot { index: tier_ordinal * self.buckets_per_tier + bucket, fingerprint: high.max(1) }
    }

    /// A keyed hash of the client alone, for stores keyed by client rather than by bucket (the
    /// fleet's Redis): the same client gives the same id on every host with the same key, and
    /// the id tells nothing about the address without the key.
    pub(crate) fn client_id(&self, client: &ClientKey) -> u128 {
        let mut hasher = self.hasher();
        let (client, client_len) = client.to_bytes();
        // A domain byte, so an id never equals a [`Limiter::keyed_id`], in the same write as the
        // client (one write costs less than two, and SipHash reads one stream either way).
        let mut bytes = [0u8; 18];
        bytes[0] = 0xff;
        bytes[1..].copy_from_slice(&client);
        hasher.write(bytes.get(..1 + client_len).unwrap_or_default());
        hasher.finish128().as_u128()
    }

    pub(crate) fn keyed_id(&self, bytes: &[u8]) -> u128 {
        let mut hasher = self.hasher();
        // Another domain byte: an id of bytes never equals a client id or a slot hash.
        hasher.write(&[0xfe]);
        hasher.write(bytes);
        hasher.finish128().as_u128()
    }

    pub(crate) fn acquire<S: BucketStore + ?Sized>(&self, store: &S, slot: Slot, gcra: &Gcra, now: u64) -> Acquire {
        for _ in 0..=self.max_retries {
            let loaded = match store.load(slot.index) {
                Ok(loaded) => loaded,
                Err(err) => return Acquire::StoreFailed(err),
            };
            let mut bucket = Bucket::decode(loaded.bytes.as_deref());
            let admission = bucket.admit(slot.fingerprint, gcra, now);
            if !admission.changed {
                return Acquire::Denied(admission.verdict);
            }
            match store.compare_and_swap(slot.index, loaded.version, &bucket.encode()) {
                Ok(Swap::Written) => return Acquire::Allowed(admission.verdict),
                Ok(Swap::Conflict) => continue,
                Err(err) => return Acquire::StoreFailed(err),
            }
        }
        Acquire::Contended
    }
}

impl Limiter {
    /// Uses the host's `key` unless the configuration named one.
    pub(crate) fn set_host_key(&mut self, key: HashKey) {
        if !self.key_configured {
            self.key = Some(key);
        }
    }

    fn hasher(&self) -> SipHasher13 {
        let HashKey(k0, k1) = self.key.unwrap_or(UNSET_KEY);
        SipHasher13::new_with_keys(k0, k1)
    }
}

#[cfg(test)]
mod tests {
    use super::store::{Loaded, MemoryStore, Version};
    use super::*;
    use crate::rate::Rate;
    use std::cell::Cell;

    fn limiter(capacity: u32, retries: u8) -> Limiter {
        let config =
            LimiterConfig { capacity_per_tier: capacity, max_cas_retries: retries, ..LimiterConfig::default() };
        Limiter::compile(&config, 2).unwrap()
    }

    /// The id of a client is the keyed hash of the domain byte then the client's bytes: the
    /// fleet's stores keep it, so it must not change with how the bytes are fed.
    #[test]
    fn a_client_id_is_the_hash_of_the_domain_byte_then_the_client() {
        let limiter = limiter(64, 8);
        for client in [ClientKey::V4([203, 0, 113, 9]), ClientKey::V6([7; 16]), ClientKey::Unknown] {
            let mut hasher = limiter.hasher();
            let (bytes, len) = client.to_bytes();
            hasher.write(&[0xff]);
            hasher.write(&bytes[..len]);
            assert_eq!(limiter.client_id(&client), hasher.finish128().as_u128(), "{client}");
        }
    }

    #[test]
    fn slots_stay_inside_their_tier_range() {
        let limiter = limiter(64, 8);
        assert_eq!(limiter.bucket_count(), 32);
        for i in 0..500u32 {
            let client = ClientKey::V4(i.to_be_bytes());
            let a = limiter.slot(0, limiter.client_id(&client));
            let b = limiter.slot(1, limiter.client_id(&client));
            assert!(a.index < 16 && (16..32).contains(&b.index));
            assert_ne!(a.fingerprint, 0);
        }
    }

    #[test]
    fn the_hash_key_moves_slots() {
        let default = limiter(1 << 20, 8);
        let keyed = Limiter::compile(
            &LimiterConfig {
                hash_key: Some("00112233445566778899aabbccddeeff".into()),
                capacity_per_tier: 1 << 20,
                ..LimiterConfig::default()
            },
            2,
        )
        .unwrap();
        let client = ClientKey::V4([192, 0, 2, 1]);
        assert_ne!(default.slot(0, default.client_id(&client)), keyed.slot(0, keyed.client_id(&client)));
        let bad = LimiterConfig { hash_key: Some("xyz".into()), ..LimiterConfig::default() };
        assert_eq!(Limiter::compile(&bad, 1).unwrap_err().path, "limiter.hash_key");
    }

    /// A store that loses the first `conflicts` races, like a busy Envoy with many workers.
    struct Contended {
        inner: MemoryStore,
        conflicts: Cell<u32>,
    }

    impl BucketStore for Contended {
        fn load(&self, index: u32) -> Result<Loaded, StoreError> {
            self.inner.load(index)
        }
        fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> Result<Swap, StoreError> {
            if self.conflicts.get() > 0 {
                self.conflicts.set(self.conflicts.get() - 1);
                return Ok(Swap::Conflict);
            }
            self.inner.compare_and_swap(index, expected, bytes)
        }
    }

    #[test]
    fn cas_retries_are_bounded_with_a_defined_outcome() {
        let limiter = limiter(64, 3);
        let gcra = Gcra::new(Rate::new(5, 60).unwrap());
        let slot = limiter.slot(0, limiter.client_id(&ClientKey::Unknown));
        let store = Contended { inner: MemoryStore::new(), conflicts: Cell::new(3) };
        assert!(matches!(limiter.acquire(&store, slot, &gcra, 1), Acquire::Allowed(_)), "won on the last retry");
        store.conflicts.set(4);
        assert_eq!(limiter.acquire(&store, slot, &gcra, 1), Acquire::Contended);
    }

    #[test]
    fn store_failures_are_reported_not_hidden() {
        struct Broken;
        impl BucketStore for Broken {
            fn load(&self, _: u32) -> Result<Loaded, StoreError> {
                Err(StoreError("down".into()))
            }
            fn compare_and_swap(&self, _: u32, _: Version, _: &[u8]) -> Result<Swap, StoreError> {
                Err(StoreError("down".into()))
            }
        }
        let limiter = limiter(64, 3);
        let gcra = Gcra::new(Rate::new(5, 60).unwrap());
        let slot = limiter.slot(0, limiter.client_id(&ClientKey::Unknown));
        assert!(matches!(limiter.acquire(&Broken, slot, &gcra, 1), Acquire::StoreFailed(_)));
    }
}
