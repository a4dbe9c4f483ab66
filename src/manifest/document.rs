//! The manifest as written in YAML (`apiVersion: keyprov/v1`, `kind: KeyPair`): serde and JSON
//! Schema model, before validation. Values that need checking with positions stay strings here.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use schemars::r#gen::SchemaGenerator;
use schemars::schema::{InstanceType, Metadata as SchemaMetadata, Schema, SchemaObject};
use serde::Deserialize;

/// A string schema allowing only `values`, described by `description`.
fn one_of(values: &[&str], description: &str) -> Schema {
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        enum_values: Some(values.iter().map(|v| serde_json::json!(v)).collect()),
        metadata: Some(Box::new(SchemaMetadata {
            description: Some(description.into()),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

fn api_version_schema(_: &mut SchemaGenerator) -> Schema {
    one_of(&[super::validate::API_VERSION], "Always `keyprov/v1`.")
}

fn kind_schema(_: &mut SchemaGenerator) -> Schema {
    one_of(&[super::validate::KIND], "Always `KeyPair`.")
}

fn key_pair_spec_schema(_: &mut SchemaGenerator) -> Schema {
    let specs: Vec<&str> = crate::spec::KeyPairSpec::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    one_of(&specs, "The key pair's type.")
}

/// `schema` that also allows null (an optional field left empty).
fn or_null(schema: Schema) -> Schema {
    let Schema::Object(mut object) = schema else {
        return schema;
    };
    if let Some(values) = &mut object.enum_values {
        values.push(serde_json::Value::Null);
    }
    if let Some(schemars::schema::SingleOrVec::Single(kind)) = object.instance_type.take() {
        object.instance_type = Some(vec![*kind, InstanceType::Null].into());
    }
    object.into()
}

fn format_schema(_: &mut SchemaGenerator) -> Schema {
    or_null(one_of(&["pem", "der"], "`pem` (default) or `der`."))
}

/// A nullable array schema whose items are one of `values`.
fn array_of(values: &[&str], item: &str, description: &str) -> Schema {
    let array = SchemaObject {
        instance_type: Some(InstanceType::Array.into()),
        array: Some(Box::new(schemars::schema::ArrayValidation {
            items: Some(one_of(values, item).into()),
            ..Default::default()
        })),
        metadata: Some(Box::new(SchemaMetadata {
            description: Some(description.into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    or_null(array.into())
}

fn public_formats_schema(_: &mut SchemaGenerator) -> Schema {
    array_of(
        &["jwk", "openssh"],
        "A public key format.",
        "Public key files beside PEM/DER: `jwk` (public.jwk, and jwks.json beside `current`), \
         `openssh` (public.pub).",
    )
}

fn private_formats_schema(_: &mut SchemaGenerator) -> Schema {
    array_of(
        &["openssh"],
        "A private key format.",
        "Plaintext private key files beside private.pem/der (needs includePlaintext: true): \
         `openssh` (private.ssh, the OpenSSH private key format, 0600).",
    )
}

fn hook_events_schema(_: &mut SchemaGenerator) -> Schema {
    array_of(
        &["activate", "publish"],
        "A hook event.",
        "`activate` (default) and/or `publish`.",
    )
}

/// One YAML document of a manifest file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "keyprov KeyPair manifest")]
pub struct Document {
    /// Always `keyprov/v1`.
    #[schemars(schema_with = "api_version_schema")]
    pub api_version: String,
    /// Always `KeyPair`.
    #[schemars(schema_with = "kind_schema")]
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
    #[schemars(schema_with = "key_pair_spec_schema")]
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
    #[serde(default)]
    #[schemars(schema_with = "format_schema")]
    pub format: Option<String>,
    /// Octal mode of public.* and private.enc, default "0640".
    pub mode: Option<String>,
    /// Extra public key formats: `jwk`, `openssh`.
    #[serde(default)]
    #[schemars(schema_with = "public_formats_schema")]
    pub public_formats: Option<Vec<String>>,
    /// Extra plaintext private key formats (with includePlaintext): `openssh`.
    #[serde(default)]
    #[schemars(schema_with = "private_formats_schema")]
    pub private_formats: Option<Vec<String>>,
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
    #[serde(default)]
    #[schemars(schema_with = "hook_events_schema")]
    pub on: Option<Vec<String>>,
    /// Time limit, default 60s.
    pub timeout: Option<String>,
}
