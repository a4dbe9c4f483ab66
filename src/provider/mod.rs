//! Providers generate data key pairs and decrypt private key ciphertexts: AWS KMS in
//! production, an embedded local keyring otherwise. Both produce the same outputs: a DER
//! SubjectPublicKeyInfo public key, an opaque private key ciphertext, and optionally the DER
//! PKCS#8 private key.

pub mod aws;
mod error;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;

pub use crate::key_material::{GeneratedPair, PrivateKey};
pub use error::ProviderError;

use crate::spec::KeyPairSpec;

/// What to generate: the KMS `GenerateDataKeyPair` request.
#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    /// Key pair name, for error messages.
    pub name: &'a str,
    /// Key pair spec.
    pub spec: KeyPairSpec,
    /// Symmetric KMS key that encrypts the private key.
    pub kms_key_id: &'a str,
    /// Encryption context bound to the ciphertext.
    pub encryption_context: &'a BTreeMap<String, String>,
    /// KMS grant tokens.
    pub grant_tokens: &'a [String],
    /// Also return the plaintext private key.
    pub include_plaintext: bool,
}

/// What to decrypt: the KMS `Decrypt` request.
#[derive(Debug, Clone)]
pub struct DecryptRequest<'a> {
    /// Key pair name, for error messages.
    pub name: &'a str,
    /// The private key ciphertext.
    pub ciphertext: &'a [u8],
    /// The KMS key the ciphertext must be under (`KeyId` on Decrypt; a ciphertext of another
    /// key fails): the manifest's kmsKeyId when proving a version (see [`crate::binding`]).
    pub kms_key_arn: &'a str,
    /// Encryption context to decrypt with (the manifest's plus the reserved entries).
    pub encryption_context: &'a BTreeMap<String, String>,
    /// Grant tokens of the manifest.
    pub grant_tokens: &'a [String],
}

/// Generates data key pairs and decrypts their private keys.
pub trait Provider: Send + Sync + 'static {
    /// Short name for logs: `local` or `aws`.
    fn name(&self) -> &'static str;

    /// Generates a pair (KMS `GenerateDataKeyPair[WithoutPlaintext]`).
    fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> impl Future<Output = Result<GeneratedPair, ProviderError>> + Send;

    /// Decrypts a private key ciphertext (KMS `Decrypt`) into DER PKCS#8.
    fn decrypt(
        &self,
        request: &DecryptRequest<'_>,
    ) -> impl Future<Output = Result<PrivateKey, ProviderError>> + Send;

    /// The answer to `request` this provider already holds, given without asking KMS (a
    /// pass's cache); `None` by default.
    fn remembered(&self, _request: &DecryptRequest<'_>) -> Option<PrivateKey> {
        None
    }
}

/// The provider the configuration names.
pub enum AnyProvider {
    /// Embedded local keyring.
    Local(local::LocalProvider),
    /// AWS KMS.
    Aws(aws::AwsProvider),
}

impl AnyProvider {
    /// Builds the configured provider; nothing is contacted or read until the first call.
    pub fn from_config(config: &crate::config::Config) -> Self {
        // A reloaded configuration may name another scope.
        crate::binding::set_scope(&config.reconcile.scope);
        match config.provider {
            crate::config::ProviderKind::Local => {
                AnyProvider::Local(local::LocalProvider::new(config.keyring.clone()))
            }
            crate::config::ProviderKind::Aws => {
                crate::aws_clock::set_tolerance(config.reconcile.clock_tolerance);
                AnyProvider::Aws(aws::AwsProvider::new(config.aws.clone()))
            }
        }
    }

    /// Prepares what the first call needs when that can be done without the network
    /// (see [`aws::AwsProvider::warm_up`]); the local provider needs nothing.
    pub async fn warm_up(&self) {
        if let AnyProvider::Aws(aws) = self {
            aws.warm_up().await;
        }
    }
}

impl Provider for AnyProvider {
    fn name(&self) -> &'static str {
        match self {
            AnyProvider::Local(p) => p.name(),
            AnyProvider::Aws(p) => p.name(),
        }
    }

    async fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.generate(request).await,
            // A pair made while this host's clock and AWS's disagree (the Date of the very
            // response that made it) is dropped unused: its times would be wrong.
            AnyProvider::Aws(p) => {
                p.generate(request)
                    .await
                    .and_then(|pair| match crate::aws_clock::refusal() {
                        None => Ok(pair),
                        Some(message) => Err(ProviderError::Kms {
                            code: CLOCK_SKEW.into(),
                            message,
                            transient: true,
                        }),
                    })
            }
        }
    }

    async fn decrypt(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.decrypt(request).await,
            AnyProvider::Aws(p) => p.decrypt(request).await,
        }
    }
}

/// The code of the error a pair generated under a skewed clock is dropped with.
pub const CLOCK_SKEW: &str = "ClockSkew";

/// Canonical text of an encryption context: JSON with sorted keys.
pub fn canonical_context(context: &BTreeMap<String, String>) -> String {
    serde_json::to_string(context).unwrap_or_default()
}
