//! `portcullis-proxy-abi`: the proxy-wasm ABI 0.2.1 as the Portcullis filter (and the
//! benchmark's host-call floor) use it — the guest's callbacks and the host calls.
//!
//! Why not the proxy-wasm SDK: its header-map calls turn every name and value into its own
//! `String`/`Vec` and serialise them back, and its property call builds two vectors for a
//! constant path (together more than half of the filter's Wasm instructions per request); its
//! dispatcher keeps every kind of context in hash maps of boxed trait objects, and its calls and
//! dispatcher panic on any status or context id they did not expect, where a panic kills the VM
//! and every request on it. No crate offers borrowed views of the ABI's buffers or a dispatcher
//! that cannot panic, so this crate is both: the callbacks in [`context`], the host calls in
//! [`calls`], the serialised header map in [`map`].

#![allow(unsafe_code)]

pub mod calls;
pub mod context;
pub mod heap;
pub mod map;
pub mod types;

pub use calls::*;
pub use context::{HttpContext, RootContext, set_root_context};
pub use map::{Block, MapWriter, Pairs, pairs};

/// Inside the VM only: natively linked (tests, coverage) the host's allocator serves.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static HEAP: heap::SizeClasses = heap::SizeClasses::new();
pub use types::{Action, BufferType, LogLevel, MapType, MetricType, Status};
