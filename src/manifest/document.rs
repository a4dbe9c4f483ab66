//! The manifest as written in YAML (`apiVersion: keyprov/v1`, `kind: KeyPair`): serde and JSON
//! Schema model, before validation. Values that need checking with positions stay strings here.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// One YAML document of a manifest file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "keyprov KeyPair manifest")]
pub struct Document {
    /// Always `keyprov/v1`.
    pub api_version: String,
    /// Always `KeyPair`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The desired key pair.
    pub spec: Spec,
}

/// `metadata` of a manifest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters, unique across all manifests.
    pub name: String,
    /// Copied to Secrets Manager tags.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec` of a manifest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521,
    /// ECC_SECG_P256K1, ECC_NIST_EDWARDS25519 or SM2.
    pub key_pair_spec: String,
    /// Symmetric KMS key: key id, key ARN, alias name or alias ARN.
    pub kms_key_id: String,
    /// Encryption context bound to the private key ciphertext.
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    /// KMS grant tokens.
    #[serde(default)]
    pub grant_tokens: Vec<String>,
    /// Also write the plaintext private key (files 0600, never logged).
    #[serde(default)]
    pub include_plaintext: bool,
    /// Rotation schedule; absent means never rotate.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// Where the pair is stored; at least one.
    pub outputs: Vec<Output>,
    /// Commands run when a new generation becomes current (or is published).
    #[serde(default)]
    pub on_rotate: Vec<Hook>,
}

/// `spec.rotation`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rotation {
    /// Rotation period, e.g. `90d`.
    pub every: Option<String>,
    /// Publish each new generation this long before it becomes current, e.g. `7d`.
    pub publish_ahead: Option<String>,
    /// Previous versions kept after a rotation (default 1).
    pub keep: Option<u32>,
}

/// One entry of `spec.outputs`: exactly one of `file` or `secretsManager`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Output {
    /// A directory of versions.
    pub file: Option<FileOutput>,
    /// An AWS Secrets Manager secret.
    pub secrets_manager: Option<SecretsManagerOutput>,
}

/// `outputs[].file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileOutput {
    /// Default `<stateDir>/keys/<name>`; relative paths are under stateDir.
    pub dir: Option<String>,
    /// `pem` (default) or `der`.
    pub format: Option<String>,
    /// Octal mode of public.* and private.enc, default "0640".
    pub mode: Option<String>,
    /// Owning user.
    pub owner: Option<String>,
    /// Owning group.
    pub group: Option<String>,
}

/// `outputs[].secretsManager`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsManagerOutput {
    /// Secret name or ARN.
    pub secret_id: String,
    /// KMS key that encrypts the secret itself.
    pub kms_key_id: Option<String>,
    /// Tags of the secret.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One entry of `spec.onRotate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    /// Program and arguments, no shell; the program must be in the config's `hooks.allowed`.
    pub command: Vec<String>,
    /// `activate` (default) and/or `publish`.
    pub on: Option<Vec<String>>,
    /// Time limit, default 60s.
    pub timeout: Option<String>,
}
