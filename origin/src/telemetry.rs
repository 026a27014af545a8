//! Structured JSON logs. Request spans carry the method, the path (never the query), the
//! status and the request id; headers and bodies — tokens, passwords — are never logged.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests starting several servers) is not an error worth failing for.
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(true).try_init();
}
