//! Where buckets live. Envoy shared data, a Durable Object and an in-process map implement
//! [`BucketStore`]; the algorithm never knows which.

use std::collections::HashMap;
use std::sync::Mutex;

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

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rate-limit store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Buckets addressed by index, with compare-and-swap writes.
pub trait BucketStore {
    fn load(&self, index: u32) -> Result<Loaded, StoreError>;
    /// Writes `bytes` only if the bucket is still at `expected`.
    fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> Result<Swap, StoreError>;
}

const SHARDS: usize = 16;

/// One lock's worth of buckets: index → (version, bytes).
type Shard = HashMap<u32, (u32, Vec<u8>)>;

/// An in-process store for native hosts and tests. Memory is bounded by the policy's bucket
/// count because indices are.
#[derive(Debug, Default)]
pub struct MemoryStore {
    shards: [Mutex<Shard>; SHARDS],
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, index: u32) -> Result<std::sync::MutexGuard<'_, Shard>, StoreError> {
        self.shards[index as usize % SHARDS]
            .lock()
            .map_err(|_| StoreError("a thread panicked while holding the lock".into()))
    }

    /// Buckets written so far.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
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
