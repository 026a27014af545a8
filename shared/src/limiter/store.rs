//! Where buckets live. Envoy shared data, a Durable Object and an in-process map implement
//! [`BucketStore`]; the algorithm never knows which.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// A CAS token. `Version(0)` means the bucket has never been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version(pub u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub bytes: Option<Vec<u8>>,
    pub version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    Written,
    /// Someone wrote the bucket since it was loaded; load again.
    Conflict,
}

/// The store failed for a reason of its own (not contention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "rate-limit store: {}", self.0)
    }
}

impl core::error::Error for StoreError {}

/// Buckets addressed by index, with compare-and-swap writes.
pub trait BucketStore {
    fn load(&self, index: u32) -> Result<Loaded, StoreError>;
    /// Writes `bytes` only if the bucket is still at `expected`.
    fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> Result<Swap, StoreError>;
}

const SHARDS: usize = 16;

/// One lock's worth of buckets: index → (version, bytes).
type Shard = BTreeMap<u32, (u32, Vec<u8>)>;

/// A shard's lock: a mutex with std; without it (a proxy-wasm VM runs one thread) a `RefCell`,
/// which makes the store `!Sync`, so it cannot be shared where a mutex would be needed.
#[cfg(feature = "std")]
type Lock<T> = std::sync::Mutex<T>;
#[cfg(not(feature = "std"))]
type Lock<T> = core::cell::RefCell<T>;

/// An in-process store for native hosts, tests and a VM's own buckets. Memory is bounded by
/// the policy's bucket count because indices are.
#[derive(Debug, Default)]
pub struct MemoryStore {
    shards: [Lock<Shard>; SHARDS],
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(feature = "std")]
    fn shard(&self, index: u32) -> Result<std::sync::MutexGuard<'_, Shard>, StoreError> {
        self.shards[index as usize % SHARDS]
            .lock()
            .map_err(|_| StoreError("a thread panicked while holding the lock".into()))
    }

    #[cfg(not(feature = "std"))]
    fn shard(&self, index: u32) -> Result<core::cell::RefMut<'_, Shard>, StoreError> {
        self.shards[index as usize % SHARDS]
            .try_borrow_mut()
            .map_err(|_| StoreError("the store is already in use".into()))
    }

    /// Buckets written so far.
    pub fn len(&self) -> usize {
        (0..SHARDS as u32).map(|index| self.shard(index).map_or(0, |shard| shard.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BucketStore for MemoryStore {
    fn load(&self, index: u32) -> Result<Loaded, StoreError> {
        Ok(match self.shard(index)?.get(&index) {
            Some((version, bytes)) => Loaded { bytes: Some(bytes.clone()), version: Version(*version) },
            None => Loaded { bytes: None, version: Version(0) },
        })
    }

    fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> Result<Swap, StoreError> {
        let mut shard = self.shard(index)?;
        let current = shard.get(&index).map_or(0, |(version, _)| *version);
        if current != expected.0 {
            return Ok(Swap::Conflict);
        }
        shard.insert(index, (current.wrapping_add(1).max(1), bytes.to_vec()));
        Ok(Swap::Written)
    }
}
