//! The API under `/api/v1`: one module per resource, each over [`crate::store`] and
//! [`crate::domain`], none importing another.

pub mod auth;
pub mod health;
pub mod jobs;
pub mod videos;
