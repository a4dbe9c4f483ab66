//! The raw configuration document: the serde structs `keyprov.yaml` deserializes into, before
//! any value is checked, and the JSON Schema derived from them.

use serde::Deserialize;

use super::{LogFormat, ProviderKind, RetryMode};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConfigDoc {
    pub(super) manifests: Vec<String>,
    pub(super) state_dir: String,
    #[serde(default)]
    pub(super) output_roots: Vec<String>,
    #[serde(default)]
    pub(super) hooks: HooksDoc,
    #[serde(default)]
    pub(super) provider: ProviderKind,
    #[serde(default)]
    pub(super) local: LocalDoc,
    #[serde(default)]
    pub(super) aws: AwsDoc,
    #[serde(default)]
    pub(super) reconcile: ReconcileDoc,
    #[serde(default)]
    pub(super) log: LogDoc,
    #[serde(default)]
    pub(super) metrics: MetricsDoc,
    #[serde(default)]
    pub(super) jwks: Vec<JwksDoc>,
    #[serde(default)]
    pub(super) fleet: crate::fleet::FleetDoc,
}

/// `jwks[]`: one JWK Set merging the keys of several manifests, for one issuer.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct JwksDoc {
    /// Where the set is written: relative to stateDir, or absolute inside stateDir or an
    /// outputRoot.
    pub(super) path: String,
    /// Which keys: those whose labels include all of these (no labels: every key).
    #[serde(default)]
    pub(super) selector: SelectorDoc,
    /// URL path at which the daemon serves the set over HTTP (on `metrics.listen`).
    pub(super) serve: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SelectorDoc {
    #[serde(default)]
    pub(super) labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MetricsDoc {
    /// `host:port` of the Prometheus endpoint (`/metrics`); absent: no endpoint.
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HooksDoc {
    #[serde(default)]
    pub(super) allowed: Vec<String>,
    #[serde(default)]
    pub(super) env: Vec<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalDoc {
    pub(super) keyring: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AwsDoc {
    pub(super) region: Option<String>,
    pub(super) profile: Option<String>,
    pub(super) endpoint_url: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) attempt_timeout: Option<String>,
    pub(super) operation_timeout: Option<String>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_mode: Option<RetryMode>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ReconcileDoc {
    pub(super) prune: Option<bool>,
    pub(super) scope: Option<String>,
    pub(super) prune_recovery_window_days: Option<i64>,
    pub(super) prune_after: Option<String>,
    pub(super) clock_tolerance: Option<String>,
    pub(super) concurrency: Option<usize>,
    pub(super) max_requests_per_second: Option<f64>,
    pub(super) resync_every: Option<String>,
    pub(super) full_sweep_every: Option<String>,
    pub(super) debounce: Option<String>,
    pub(super) retry_backoff: Option<String>,
    pub(super) retry_backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LogDoc {
    #[serde(default)]
    pub(super) format: LogFormat,
    pub(super) level: Option<String>,
}

/// The JSON Schema of the configuration file (its fields, for the manual's test).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ConfigDoc)).expect("the schema serializes")
}
