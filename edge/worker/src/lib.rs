//! Portcullis as a Cloudflare Worker.
//!
//! This crate only translates between workers-rs and `portcullis-core`;
//! every decision is made by the core.
