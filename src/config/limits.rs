//! The configuration's defaults and accepted ranges: the numbers a reader of `keyprov.yaml`
//! looks up, in one place.

use std::time::Duration;

/// Default configuration path when neither `--config` nor `$KEYPROV_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/keyprov/keyprov.yaml";
/// Configuration files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Accepted `reconcile.concurrency`.
pub const CONCURRENCY: std::ops::RangeInclusive<usize> = 1..=1024;
/// Accepted `reconcile.maxRequestsPerSecond`.
pub const REQUESTS_PER_SECOND: std::ops::RangeInclusive<f64> = 0.01..=100_000.0;
/// `reconcile.maxRequestsPerSecond` with `provider: aws` when unset (none with `local`).
pub const DEFAULT_AWS_REQUESTS_PER_SECOND: f64 = 20.0;
/// Accepted `aws.maxAttempts`.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
/// Longest `aws.connectTimeout`, `aws.attemptTimeout`, `aws.operationTimeout` and
/// `reconcile.debounce`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// `reconcile.resyncEvery` when unset: what another host changed reaches this one within it.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(120);
/// Longest `reconcile.resyncEvery`.
pub const MAX_RESYNC: Duration = Duration::from_secs(30 * 86_400);
/// Longest `reconcile.pruneAfter`.
pub const MAX_PRUNE_AFTER: Duration = Duration::from_secs(366 * 86_400);
/// `reconcile.pruneAfter` when unset: an orphan is pruned after a day seen orphaned.
pub const DEFAULT_PRUNE_AFTER: Duration = Duration::from_secs(86_400);
/// Longest `reconcile.clockTolerance`.
pub const MAX_CLOCK_TOLERANCE: Duration = Duration::from_secs(86_400);
/// Environment variables hooks may never be given through `hooks.env`: keyprov's own.
pub const RESERVED_ENV_PREFIX: &str = "KEYPROV_";
