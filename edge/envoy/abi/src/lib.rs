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
//!
//! Inside the VM the crate is `no_std`: std's panic, I/O and formatting machinery were 34 KiB of
//! the filter's 240. It brings what std brought: the global allocator ([`heap`], over
//! wasi-libc's `malloc`) and a panic handler that logs where the panic happened to Envoy (the VM
//! then traps, and Envoy fails its requests as it would on std's abort). Natively linked (tests,
//! coverage) it uses std's.

#![allow(unsafe_code)]
#![no_std]

extern crate alloc;
#[cfg(not(target_family = "wasm"))]
extern crate std;

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

#[cfg(all(target_family = "wasm", not(target_os = "wasi")))]
compile_error!("proxy-wasm modules build for wasm32-wasip1: the VM's heap is wasi-libc's malloc");

// wasi-libc (rustc's self-contained copy for the target), as std linked it: `memcmp`, which `==`
// on byte slices calls (`compiler_builtins` leaves it to the libc on WASI targets), and the
// `malloc` under the VM's heap.
#[cfg(all(target_os = "wasi", not(test)))]
#[link(name = "c")]
unsafe extern "C" {}

/// Logs the panic's place (and its message when it is a literal: formatting others would link
/// `core::fmt` back in) to Envoy, then traps; `panic = "abort"` has no unwinding to do.
#[cfg(all(target_family = "wasm", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = itoa::Buffer::new();
    let (file, line) = info.location().map_or(("?", "?"), |at| (at.file(), line.format(at.line())));
    let message = info.message().as_str().unwrap_or("");
    calls::log_parts(LogLevel::Critical, &["panicked at ", file, ":", line, ": ", message]);
    core::arch::wasm32::unreachable()
}
