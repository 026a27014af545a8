//! The Portcullis origin API server.
