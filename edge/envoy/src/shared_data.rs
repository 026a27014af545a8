//! Rate-limit buckets in proxy-wasm shared data: process-wide, so every Envoy worker VM sees the
//! same counts, and compare-and-swap makes concurrent updates exact.

use portcullis_core::{BUCKET_BYTES, BucketStore, Loaded, StoreError, Swap, Version};
use portcullis_proxy_abi::Status;

use portcullis_proxy_abi as abi;

/// Stateless: shared data is addressed through free host calls.
pub struct SharedDataStore;

/// `portcullis/<index>`, built on the stack: it runs twice per limited request, and a heap
/// string (let alone `format!`) costs several times more inside the VM.
struct Key {
    bytes: [u8; PREFIX.len() + 10],
    len: usize,
}

impl Key {
    fn new(index: u32) -> Self {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(index).as_bytes();
        let mut bytes = [0; PREFIX.len() + 10];
        let len = PREFIX.len() + digits.len();
        if let Some((prefix, rest)) = bytes.get_mut(..len).map(|key| key.split_at_mut(PREFIX.len())) {
            prefix.copy_from_slice(PREFIX.as_bytes());
            rest.copy_from_slice(digits);
        }
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

fn key(index: u32) -> Key {
    Key::new(index)
}

const PREFIX: &str = "portcullis/";

impl SharedDataStore {
    /// Creates every bucket the policy can address, before the VM serves requests.
    ///
    /// Envoy treats a CAS of 0 as "write unconditionally", so the first write to a missing key
    /// could clobber a concurrent one. Creating all keys up front means every request-time write
    /// carries a real CAS. Envoy never frees shared-data keys, so a fixed key space is also what
    /// bounds memory: `bucket_count` keys of `BUCKET_BYTES` each.
    pub fn prepare(bucket_count: u32) -> Result<(), Status> {
        let empty = [0u8; BUCKET_BYTES];
        for index in 0..bucket_count {
            let key = key(index);
            if abi::get_shared_data(key.as_bytes())?.0.is_none() {
                abi::set_shared_data(key.as_bytes(), &empty, 0)?;
            }
        }
        Ok(())
    }
}

impl BucketStore for SharedDataStore {
    fn load(&self, index: u32) -> Result<Loaded, StoreError> {
        let (bytes, cas) =
            abi::get_shared_data(key(index).as_bytes()).map_err(|s| StoreError(["get: ", s.name()].concat()))?;
        Ok(Loaded { bytes, version: Version(cas) })
    }

    fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> Result<Swap, StoreError> {
        // A key prepared at start always has a non-zero CAS; 0 would mean an unconditional write.
        if expected.0 == 0 {
            return Err(StoreError(["bucket ", itoa::Buffer::new().format(index), " was never prepared"].concat()));
        }
        match abi::set_shared_data(key(index).as_bytes(), bytes, expected.0) {
            Ok(()) => Ok(Swap::Written),
            Err(Status::CasMismatch) => Ok(Swap::Conflict),
            Err(status) => Err(StoreError(["set: ", status.name()].concat())),
        }
    }
}
