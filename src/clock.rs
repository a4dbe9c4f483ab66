//! The wall clock, with a test-only override.
//!
//! Integration tests drive rotation through time by setting `KEYPROV_TEST_NOW` to an RFC 3339
//! time; nothing else reads it. A warning is logged whenever it is in effect.

use std::time::SystemTime;

/// Environment variable that overrides the clock (tests only).
pub const TEST_NOW_ENV: &str = "KEYPROV_TEST_NOW";

/// The current time, or `KEYPROV_TEST_NOW` when set.
pub fn now() -> SystemTime {
    match std::env::var(TEST_NOW_ENV) {
        Ok(text) => match crate::schedule::parse_time(&text) {
            Ok(time) => {
                tracing::warn!(%text, "clock overridden by {TEST_NOW_ENV} (tests only)");
                time
            }
            Err(err) => {
                tracing::warn!(%err, "ignoring {TEST_NOW_ENV}");
                SystemTime::now()
            }
        },
        Err(_) => SystemTime::now(),
    }
}

/// [`now`] without its warning: for code that reads the clock on every AWS response.
pub fn now_unlogged() -> SystemTime {
    std::env::var(TEST_NOW_ENV)
        .ok()
        .and_then(|text| crate::schedule::parse_time(&text).ok())
        .unwrap_or_else(SystemTime::now)
}
