//! Provider failures, each with what to do about it.

use std::path::PathBuf;

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider cannot make this spec (SM2 on the local provider, or KMS outside China).
    #[error("{message}")]
    Unsupported {
        /// Explanation and what to do.
        message: String,
    },
    /// Decryption failed: wrong encryption context or wrong key.
    #[error(
        "decryption of {name:?} failed: the encryption context {context} or the KMS key {kms_key} does not match what the pair was made with"
    )]
    DecryptMismatch {
        /// Key pair name.
        name: String,
        /// Canonical encryption context used.
        context: String,
        /// KMS key used.
        kms_key: String,
        /// KMS said the ciphertext was made under another KMS key (`IncorrectKeyException`),
        /// not that the context is wrong.
        other_key: bool,
    },
    /// A KMS error, explained.
    #[error("{message}")]
    Kms {
        /// Stable short name, e.g. `DisabledException`.
        code: String,
        /// What happened and what to do.
        message: String,
        /// Retries were exhausted (throttling, 5xx, transport).
        transient: bool,
    },
    /// The local keyring could not be read or written.
    #[error("keyring {}: {message}", path.display())]
    Keyring {
        /// Keyring file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A cryptographic primitive failed (should not happen).
    #[error("{0}")]
    Crypto(String),
}

impl ProviderError {
    /// Stable short label for logs and metrics.
    pub fn label(&self) -> &str {
        match self {
            ProviderError::Unsupported { .. } => "unsupported",
            ProviderError::DecryptMismatch { .. } => "decrypt_mismatch",
            ProviderError::Kms { code, .. } => code,
            ProviderError::Keyring { .. } => "keyring",
            ProviderError::Crypto(_) => "crypto",
        }
    }
}
