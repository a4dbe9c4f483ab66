//! The label sets of keyprov's series.

use prometheus_client::encoding::EncodeLabelSet;

/// `{key}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyLabel {
    pub(super) key: String,
}

/// `keyprov_key_info` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyInfoLabels {
    pub(super) key: String,
    pub(super) key_spec: String,
    pub(super) kms_key: String,
    pub(super) generation: String,
    pub(super) state: &'static str,
}

/// `{key, state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyStateLabels {
    pub(super) key: String,
    pub(super) state: &'static str,
}

/// `{key, reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyReasonLabels {
    pub(super) key: String,
    pub(super) reason: &'static str,
}

/// `{provider, operation, code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) provider: &'static str,
    pub(super) operation: &'static str,
    pub(super) code: String,
}

/// `{provider, operation}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OperationLabels {
    pub(super) provider: &'static str,
    pub(super) operation: &'static str,
}

/// `{key, event, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HookLabels {
    pub(super) key: String,
    pub(super) event: &'static str,
    pub(super) result: &'static str,
}

/// `{file}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FileLabel {
    pub(super) file: String,
}

/// `{version, revision}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: &'static str,
    pub(super) revision: &'static str,
}

/// `{pass}`: `full` or `partial` (the daemon's due wake).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PassLabel {
    pub(super) pass: &'static str,
}
