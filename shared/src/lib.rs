//! `portcullis-core`: the Portcullis policy engine.
//!
//! Pure decisions, no I/O, no clock, no host types. A host (the Envoy filter, the Cloudflare
//! Worker, the origin server) translates its request into a [`Request`], calls
//! [`Policy::decide`] with the current time and its [`BucketStore`], and either sends the
//! [`LocalResponse`] or forwards the request and later applies [`Policy::response_edits`].
//!
//! Where the rate-limit state is behind an asynchronous call (a Durable Object, the fleet's
//! rate-limit service), the same decision is made in two phases: [`Policy::begin`] gives the
//! decision or a [`LimitCheck`] of plain data, the host runs the GCRA step where the state
//! lives, and [`Policy::finish`] turns its [`Acquire`] into the decision.
//!
//! ```
//! use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};
//!
//! let policy = Policy::from_json(br#"{"https_redirect": {"https_port": 8443}}"#).unwrap();
//! let store = MemoryStore::new();
//! let headers: Vec<(&str, &str)> = Vec::new();
//! let request = Request {
//!     method: b"GET",
//!     scheme: Scheme::Http,
//!     authority: Some(b"localhost:8080"),
//!     path: Some(b"/api/v1/videos?page=2"),
//!     peer: Peer::Socket("203.0.113.9:41000"),
//!     headers: &headers,
//! };
//! let Decision::Respond(reply) = policy.decide(&request, 1_700_000_000_000_000_000, &store) else {
//!     panic!("plain HTTP is redirected");
//! };
//! assert_eq!(reply.status, 301);
//! assert_eq!(reply.header("location"), Some("https://localhost:8443/api/v1/videos?page=2"));
//! ```
//!
//! The crate is `no_std` (with `alloc`) so that the Envoy filter links no std; the `std` feature
//! (on by default) makes [`MemoryStore`] safe to share between threads.

#![no_std]

extern crate alloc;
// `#[macro_use]` for `format!`, `vec!` and friends in the std-only modules and the tests; the
// rest of the crate imports them from `alloc`, which the `no_std` build holds it to.
#[cfg(any(feature = "std", test))]
#[macro_use]
extern crate std;

mod bytes;
mod client;
pub mod config;
mod decision;
mod headers;
mod host;
mod json;
pub mod limiter;
pub mod path;
mod policy;
pub mod rate;
mod request;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod observatory;

pub use bytes::same_bytes;
pub use client::ClientKey;
pub use config::{ConfigError, PolicyConfig};
pub use decision::{
    Decision, Forward, LocalResponse, Outcome, RateLimitHeaders, RateLimitHeadersIter, ReplyBase, ReplyHeaders,
    ReplyHeadersIter, ResponseEdits, ResponsePlan,
};
pub use headers::{HeaderSet, HeaderSink, SEED_HEADERS, STRICT_HEADERS};
pub use limiter::gcra::{Gcra, Verdict};
pub use limiter::store::{BucketStore, Loaded, MemoryStore, StoreError, Swap, Version};
pub use limiter::table::BUCKET_BYTES;
pub use limiter::{Acquire, HashKey, Slot};
pub use policy::{Begin, LimitCheck, Limited, Policy};
pub use request::{Peer, PeerSource, Request, RequestHeaders, Scheme};
