//! [`Store`] for `secretsManager` outputs (placeholder until the client lands).

use std::sync::Arc;

use super::{RepairInput, Store, StoreError, StoredVersion, VersionParts};
use crate::config::AwsSettings;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::ObservedOutput;
use crate::plan::Link;

/// Paces every Secrets Manager request (shared with the KMS provider).
pub type Limiter = governor::DefaultDirectRateLimiter;

/// Secrets Manager through aws-sdk-secretsmanager; the client is built on first use.
pub struct SecretsManagerStore {
    _settings: AwsSettings,
    _limiter: Arc<Limiter>,
}

impl SecretsManagerStore {
    /// A store with these settings, its requests paced by `limiter`.
    pub fn new(settings: AwsSettings, limiter: Arc<Limiter>) -> Self {
        SecretsManagerStore {
            _settings: settings,
            _limiter: limiter,
        }
    }
}

fn unsupported(output: &SecretsManagerOutput) -> StoreError {
    StoreError::Config(format!(
        "secretsManager output {}: not supported by this build yet",
        output.secret_id
    ))
}

impl Store for SecretsManagerStore {
    type Output = SecretsManagerOutput;

    async fn observe(
        &self,
        _: &KeyPair,
        output: &Self::Output,
    ) -> Result<ObservedOutput, StoreError> {
        Err(unsupported(output))
    }

    async fn has_version(
        &self,
        _: &KeyPair,
        output: &Self::Output,
        _: u32,
    ) -> Result<bool, StoreError> {
        Err(unsupported(output))
    }

    async fn read_version(
        &self,
        _: &KeyPair,
        output: &Self::Output,
        _: u32,
    ) -> Result<StoredVersion, StoreError> {
        Err(unsupported(output))
    }

    async fn read_parts(
        &self,
        _: &KeyPair,
        output: &Self::Output,
        _: u32,
    ) -> Result<VersionParts, StoreError> {
        Err(unsupported(output))
    }

    async fn write_version(
        &self,
        _: &KeyPair,
        outputs: &[&Self::Output],
        _: Arc<StoredVersion>,
        _: Link,
    ) -> Result<(), StoreError> {
        match outputs.first() {
            Some(output) => Err(unsupported(output)),
            None => Ok(()),
        }
    }

    async fn link(
        &self,
        _: &KeyPair,
        output: &Self::Output,
        _: u32,
        _: Link,
    ) -> Result<(), StoreError> {
        Err(unsupported(output))
    }

    async fn missing_plaintext(
        &self,
        _: &KeyPair,
        output: &Self::Output,
    ) -> Result<Vec<u32>, StoreError> {
        Err(unsupported(output))
    }

    async fn repair(
        &self,
        _: &KeyPair,
        output: &Self::Output,
        _: &RepairInput<'_>,
    ) -> Result<(), StoreError> {
        Err(unsupported(output))
    }

    async fn prune(&self, _: &KeyPair, output: &Self::Output, _: &[u32]) -> Result<(), StoreError> {
        Err(unsupported(output))
    }
}
