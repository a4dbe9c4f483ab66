//! The metrics keyprov exposes, as alerts and dashboards may use them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric keyprov exposes: name as scraped (counters with `_total`; a histogram by
/// its base name, scraped as `_bucket`/`_sum`/`_count`), kind, and labels.
///
/// tests/metrics.rs checks it against what a running daemon exposes (every family seen, with
/// exactly these labels); tests/monitoring.rs checks every alert and panel against it.
use Kind::{Counter, Gauge, Histogram};

pub const KEYPROV_METRICS: &[(&str, Kind, &[&str])] = &[
    (
        "keyprov_key_info",
        Gauge,
        &["key", "key_spec", "kms_key", "generation", "state"],
    ),
    ("keyprov_key_ready", Gauge, &["key"]),
    (
        "keyprov_key_created_timestamp_seconds",
        Gauge,
        &["key", "state"],
    ),
    (
        "keyprov_key_rotation_due_timestamp_seconds",
        Gauge,
        &["key"],
    ),
    (
        "keyprov_key_next_activation_timestamp_seconds",
        Gauge,
        &["key"],
    ),
    (
        "keyprov_last_successful_reconcile_timestamp_seconds",
        Gauge,
        &["key"],
    ),
    ("keyprov_reconcile_duration_seconds", Histogram, &[]),
    ("keyprov_reconciles_total", Counter, &["pass"]),
    ("keyprov_generations_total", Counter, &["key", "reason"]),
    ("keyprov_failures_total", Counter, &["key", "reason"]),
    (
        "keyprov_provider_requests_total",
        Counter,
        &["provider", "operation", "code"],
    ),
    (
        "keyprov_provider_request_duration_seconds",
        Histogram,
        &["provider", "operation"],
    ),
    (
        "keyprov_hook_runs_total",
        Counter,
        &["key", "event", "result"],
    ),
    ("keyprov_manifest_valid", Gauge, &["file"]),
    ("keyprov_build_info", Gauge, &["version", "revision"]),
];
