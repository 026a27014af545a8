//! The Portcullis origin API server: the seed's endpoints behind the edge, over TLS, backed by a
//! hardened PostgreSQL.

pub mod auth;
pub mod configuration;
pub mod db;
pub mod domain;
pub mod edge;
pub mod error;
pub mod executor;
pub mod extract;
pub mod media;
pub mod openapi;
pub mod patterns;
pub mod routes;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
