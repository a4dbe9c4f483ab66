//! Stores hold the versions of a key pair: a directory per key (`file`), or a Secrets Manager
//! secret (`secrets_manager`). Both record each version's [`VersionMeta`].

pub mod dir;
pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::manifest::{API_VERSION, KeyPair};
use crate::observed::ObservedVersion;
use crate::provider::{GeneratedPair, PrivateKey};
use crate::schedule::{format_time, parse_time};

/// What a version records about itself (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionMeta {
    /// Always `keyprov/v1`.
    pub api_version: String,
    /// Key pair name.
    pub name: String,
    /// Generation number.
    pub generation: u32,
    /// KMS key pair spec.
    pub key_pair_spec: String,
    /// ARN of the KMS key that encrypted the private key.
    pub kms_key_arn: String,
    /// Encryption context the ciphertext is bound to.
    pub encryption_context: BTreeMap<String, String>,
    /// Grant tokens used.
    pub grant_tokens: Vec<String>,
    /// Fingerprint of keyPairSpec, kmsKeyId and encryptionContext of the manifest.
    pub spec_fingerprint: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time it became (or becomes) current.
    pub activates_at: String,
    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub public_key_sha256: String,
    /// Lowercase hex SHA-256 of the private key ciphertext, so that a damaged `private.enc`
    /// is seen without a Decrypt call (absent in versions written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_ciphertext_sha256: Option<String>,
}

impl VersionMeta {
    /// The meta of a newly generated pair.
    pub fn new(
        key: &KeyPair,
        generation: u32,
        pair: &GeneratedPair,
        created_at: SystemTime,
        activates_at: SystemTime,
    ) -> Self {
        VersionMeta {
            api_version: API_VERSION.into(),
            name: key.name.clone(),
            generation,
            key_pair_spec: key.spec.as_str().into(),
            kms_key_arn: pair.kms_key_arn.clone(),
            encryption_context: key.encryption_context.clone(),
            grant_tokens: key.grant_tokens.clone(),
            spec_fingerprint: key.spec_fingerprint(),
            created_at: format_time(created_at),
            activates_at: format_time(activates_at),
            public_key_sha256: public_key_sha256(&pair.public_key_der),
            private_key_ciphertext_sha256: Some(public_key_sha256(&pair.private_key_ciphertext)),
        }
    }

    /// The planner's view of this version.
    pub fn observed(&self) -> Result<ObservedVersion, String> {
        Ok(ObservedVersion {
            generation: self.generation,
            spec_fingerprint: self.spec_fingerprint.clone(),
            created_at: parse_time(&self.created_at)?,
            activates_at: parse_time(&self.activates_at)?,
        })
    }
}

/// Lowercase hex SHA-256 of some bytes (a DER public key, a ciphertext).
pub fn public_key_sha256(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// One whole version: what a store writes and reads back.
pub struct StoredVersion {
    /// Its meta.
    pub meta: VersionMeta,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// KMS (or local) ciphertext of the private key.
    pub private_key_ciphertext: Vec<u8>,
    /// Plaintext private key, when the manifest asks for it.
    pub private_key: Option<PrivateKey>,
}

impl fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredVersion")
            .field("meta", &self.meta)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

/// Public key as PEM (`PUBLIC KEY`).
pub fn public_key_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A store failure, with the path or secret concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot write".
        action: &'static str,
        /// Path concerned.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored data is not what keyprov writes.
    #[error("{path}: {message}")]
    Corrupt {
        /// Path concerned.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An entry keyprov will not write through: a symlink, a foreign owner, not a directory.
    #[error("{path} {message}")]
    Unsafe {
        /// Path concerned.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Another writer got there first; nothing was replaced.
    #[error("{path} {message}")]
    Conflict {
        /// Path concerned.
        path: String,
        /// What happened.
        message: String,
    },
    /// The store is not usable as configured.
    #[error("{0}")]
    Config(String),
    /// One failure shared by several writes (e.g. a failed flush of a whole batch).
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

/// Observes every output of `key`, in manifest order.
pub fn observe_key(key: &KeyPair) -> Result<Vec<crate::observed::ObservedOutput>, String> {
    key.outputs
        .iter()
        .map(|output| match output {
            crate::manifest::Output::File(file) => {
                file::observe(file, key.include_plaintext).map_err(|e| e.to_string())
            }
            crate::manifest::Output::SecretsManager(secret) => Err(format!(
                "secretsManager output {}: not supported by this build yet",
                secret.secret_id
            )),
        })
        .collect()
}

/// Observes every key, spread over the machine's cores (a no-op reconcile of a large fleet
/// is dominated by these reads).
pub fn observe_all(keys: &[KeyPair]) -> crate::observed::Observed {
    crate::parallel::map(keys, |key| (key.name.clone(), observe_key(key)))
        .into_iter()
        .collect()
}
