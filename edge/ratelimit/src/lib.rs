//! `portcullis-ratelimit`: one rate limit across a fleet of Envoys and origins.
//!
//! - [`proto`]: the messages of Envoy's rate-limit service API v3 (always built; the Envoy
//!   filter uses them without the rest).
//! - [`descriptor`]: a Portcullis limit check as a descriptor, and a service's answer as a
//!   verdict.
//! - `store` (feature `redis`): the GCRA step in Redis, one Lua script on Redis' clock, shared by
//!   this service and by origins given a Redis URL.
//! - `service`, `metrics`, `settings` (feature `server`): the gRPC service.

// Without features (as the Envoy filter builds it: the messages and the descriptor only) the
// crate is `no_std`, so the filter links no std.
#![cfg_attr(not(feature = "redis"), no_std)]

extern crate alloc;

pub mod descriptor;
pub mod proto;

#[cfg(feature = "redis")]
pub mod store;

#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;

/// The generated server and client of `envoy.service.ratelimit.v3.RateLimitService`.
#[cfg(feature = "server")]
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod rls {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.RateLimitService.rs"));
}
