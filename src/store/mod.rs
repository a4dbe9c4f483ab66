//! Stores hold the versions of a key pair: a directory per key (`file`), or a Secrets Manager
//! secret (`secrets_manager`). Both record each version's [`VersionMeta`].

pub mod dir;
pub mod file;
pub mod secrets_manager;
mod stores;

pub use file::FileStore;
pub use secrets_manager::SecretsManagerStore;
pub use stores::Stores;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::key_material::{GeneratedPair, PrivateKey};
use crate::manifest::{API_VERSION, KeyPair};
use crate::observed::{ObservedOutput, ObservedVersion};
use crate::plan::Link;
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
            encryption_context: crate::binding::context(
                &key.encryption_context,
                &key.name,
                generation,
            ),
            grant_tokens: key.grant_tokens.clone(),
            spec_fingerprint: key.spec_fingerprint(),
            created_at: format_time(created_at),
            activates_at: format_time(activates_at),
            public_key_sha256: public_key_sha256(&pair.public_key_der),
            private_key_ciphertext_sha256: Some(public_key_sha256(&pair.private_key_ciphertext)),
        }
    }

    /// Whether `ciphertext` is this version's private key ciphertext (by its recorded hash;
    /// any non-empty ciphertext for versions written before the hash was recorded).
    pub fn ciphertext_matches(&self, ciphertext: &[u8]) -> bool {
        !ciphertext.is_empty()
            && self
                .private_key_ciphertext_sha256
                .as_ref()
                .is_none_or(|h| *h == public_key_sha256(ciphertext))
    }

    /// The planner's view of this version.
    pub fn observed(&self) -> Result<ObservedVersion, String> {
        Ok(ObservedVersion {
            generation: self.generation,
            spec_fingerprint: self.spec_fingerprint.clone(),
            created_at: parse_time(&self.created_at)?,
            activates_at: parse_time(&self.activates_at)?,
            public_key_sha256: self.public_key_sha256.clone(),
            key_pair_spec: self.key_pair_spec.clone(),
            kms_key_arn: self.kms_key_arn.clone(),
            bound: crate::binding::is_bound(self),
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
    /// Another writer (another host) already stored a different pair as this generation
    /// under the same request token: nothing was written; the caller adopts the stored one.
    #[error(
        "{location}: generation {generation} was already stored by another writer with a different key pair"
    )]
    Taken {
        /// Secret (or path) concerned.
        location: String,
        /// The generation concerned.
        generation: u32,
    },
    /// One failure shared by several writes (e.g. a failed flush of a whole batch).
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

/// The files of one stored version, each read on its own: a version damaged in one file in
/// one output and in another file in another output can still be put together whole.
#[derive(Debug)]
pub struct VersionParts {
    /// meta.json.
    pub meta: Result<VersionMeta, StoreError>,
    /// The public key (either format), as DER.
    pub public_key_der: Result<Vec<u8>, StoreError>,
    /// private.enc.
    pub private_key_ciphertext: Result<Vec<u8>, StoreError>,
}

/// What a repair is given: the settings to apply and what to rewrite.
#[derive(Debug, Default)]
pub struct RepairInput<'a> {
    /// Whether the plaintext private key belongs in every kept version.
    pub include_plaintext: bool,
    /// Decrypted keys for versions that lack their plaintext (see [`Store::missing_plaintext`]).
    pub plaintext: HashMap<u32, PrivateKey>,
    /// Intact copies (from another output) of damaged versions, rewritten file by file.
    pub intact: Vec<&'a StoredVersion>,
    /// What `previous` must point at.
    pub previous: Option<u32>,
}

/// The verbs every kind of output has. The executor and the commands drive outputs only
/// through [`Stores`], which hands each output to the implementation of its kind; a new kind
/// of output is one new module implementing this trait plus one arm in [`Stores`].
///
/// Every method names the key (for its name, `includePlaintext` and labels) and the output's
/// manifest settings. Generations are those of [`VersionMeta::generation`].
pub trait Store: Send + Sync {
    /// The manifest's settings of one output of this kind.
    type Output: Send + Sync;

    /// What the output holds for `key`: links, versions present, drift from the manifest,
    /// damaged linked versions. An output that does not exist yet is empty, not an error.
    fn observe(
        &self,
        key: &KeyPair,
        output: &Self::Output,
    ) -> impl Future<Output = Result<ObservedOutput, StoreError>> + Send;

    /// Whether a complete `generation` is present.
    fn has_version(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        generation: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads `generation` whole, checked against its meta (public key and ciphertext hashes);
    /// the plaintext private key is not read.
    fn read_version(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        generation: u32,
    ) -> impl Future<Output = Result<StoredVersion, StoreError>> + Send;

    /// Whatever parts of `generation` can be read, each on its own, so that a version can be
    /// put together from the intact parts of several outputs.
    fn read_parts(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        generation: u32,
    ) -> impl Future<Output = Result<VersionParts, StoreError>> + Send;

    /// Writes `version` to each of `outputs` durably and gives it `link` there, each output
    /// all or nothing. A generation once stored is never replaced: a different pair already
    /// stored as this generation is [`StoreError::Taken`]; the same pair is a no-op.
    fn write_version(
        &self,
        key: &KeyPair,
        outputs: &[&Self::Output],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Points `link` at the present `generation`. For [`Link::Current`] `previous` follows to
    /// the version that was current, and a `next` at or below it goes. Idempotent.
    fn link(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        generation: u32,
        link: Link,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Generations of kept versions that lack the plaintext private key (only asked with
    /// `includePlaintext`).
    fn missing_plaintext(
        &self,
        key: &KeyPair,
        output: &Self::Output,
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;

    /// Repairs the output in place as [`RepairInput`] says (drift, damaged linked versions
    /// rewritten from intact copies, the previous link).
    fn repair(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        input: &RepairInput<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes `generations` (never the current one). Idempotent.
    fn prune(
        &self,
        key: &KeyPair,
        output: &Self::Output,
        generations: &[u32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
