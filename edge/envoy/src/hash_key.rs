//! One random hash key per Envoy process, for a policy that names no `limiter.hash_key`.
//!
//! Every worker's VM must hash clients alike, or one client would live in several buckets of
//! the shared table. The key is kept in shared data, which lives as long as the process: the
//! first VM to configure writes its random key there and every VM uses what it finds.
//!
//! Envoy's shared data has no atomic "create if absent" (a write to a missing key ignores the
//! CAS), so two VMs configuring at the same instant can both write; each reads back what is
//! stored, and every tick re-reads it ([`current`]), so a VM that lost that race adopts the
//! winner's key within one tick of starting.

use alloc::borrow::ToOwned;
use alloc::string::String;

use portcullis_core::HashKey;
use portcullis_proxy_abi::Status;

use portcullis_proxy_abi as abi;

const KEY: &[u8] = b"portcullis.hash_key";

/// The process's key: the stored one, else `fresh` stored first.
pub fn shared(fresh: impl FnOnce() -> Result<[u8; 16], String>) -> Result<HashKey, String> {
    if let Some(key) = current().map_err(|s| ["reading shared data: ", s.name()].concat())? {
        return Ok(key);
    }
    let bytes = fresh()?;
    abi::set_shared_data(KEY, &bytes, 0).map_err(|s| ["writing shared data: ", s.name()].concat())?;
    current()
        .map_err(|s| ["reading shared data: ", s.name()].concat())?
        .ok_or_else(|| "the key written to shared data is gone".to_owned())
}

/// The key in shared data, if any VM stored one.
pub fn current() -> Result<Option<HashKey>, Status> {
    let (bytes, _) = abi::get_shared_data(KEY)?;
    Ok(bytes.and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok()).map(HashKey::from_bytes))
}

/// 16 bytes from the host's entropy (WASI `random_get`, which Envoy implements).
pub fn random() -> Result<[u8; 16], String> {
    let mut bytes = [0; 16];
    getrandom::fill(&mut bytes).map_err(|err| match err.raw_os_error() {
        Some(code) => ["random_get failed with WASI error ", itoa::Buffer::new().format(code)].concat(),
        None => "random_get failed (getrandom gave no WASI error code)".to_owned(),
    })?;
    Ok(bytes)
}
