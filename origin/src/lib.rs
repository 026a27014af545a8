//! The Portcullis origin API server: the seed's endpoints behind the edge, over TLS, backed by a
//! hardened PostgreSQL.

pub mod db;
pub mod secrets;
