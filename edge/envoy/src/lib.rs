//! Portcullis as a proxy-wasm HTTP filter for Envoy.
//!
//! This crate only translates between the proxy-wasm host and `portcullis-core`;
//! every decision is made by the core.
