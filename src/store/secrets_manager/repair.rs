//! Repairing a secret in place (tags, KMS key, labels) and pruning old versions.

use super::SecretsManagerStore;
use super::describe::same_kms_key;
use super::errors::explain;
use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use super::{wanted, wanted_tags};
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::ObservedOutput;
use crate::store::{RepairInput, StoreError};

impl SecretsManagerStore {
    /// [`crate::store::Store::repair`] of a secret output.
    pub(super) async fn repair_secret(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        input: &RepairInput<'_>,
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        if let Some(damaged) = input.intact.first() {
            return Err(StoreError::Corrupt {
                path: format!("secret {secret}"),
                message: format!(
                    "generation {} is damaged and secret versions cannot be rewritten: replace \
                     the pair with `keyprov rotate {} --now`",
                    damaged.meta.generation, key.name
                ),
            });
        }
        let described = self.describe_existing(&key.name, secret).await?;
        let wanted = wanted(&self.scope, key, output);
        if wanted.iter().any(|(k, v)| described.tags.get(k) != Some(v)) {
            self.client()
                .await
                .tag_resource()
                .secret_id(secret)
                .set_tags(Some(wanted_tags(&self.scope, key, output)))
                .send()
                .await
                .map_err(|err| explain(&err, secret, "TagResource").into_error())?;
        }
        if let Some(wanted_key) = &output.kms_key_id
            && !same_kms_key(described.kms_key_id.as_deref(), wanted_key)
        {
            self.client()
                .await
                .update_secret()
                .secret_id(secret)
                .kms_key_id(wanted_key)
                .send()
                .await
                .map_err(|err| explain(&err, secret, "UpdateSecret").into_error())?;
        }
        // The current version's own label, when it was lost.
        if let Some(id) = described.holder(CURRENT).map(str::to_string)
            && described.generation_of(&id).is_none()
        {
            let mut scratch = ObservedOutput::default();
            if let Some(current) = self
                .observe_version(key, secret, &described, &id, &mut scratch)
                .await?
            {
                let label = layout::generation_label(current.generation);
                self.set_label(&key.name, secret, &label, Some(&id)).await?;
            }
        }
        let previous = input.previous.map(|g| layout::version_id(&key.name, g));
        self.set_label(&key.name, secret, PREVIOUS, previous.as_deref())
            .await
    }

    /// [`crate::store::Store::prune`] of a secret output.
    pub(super) async fn prune_versions(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generations: &[u32],
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let described = self.describe_existing(&key.name, secret).await?;
        for &generation in generations {
            let id = layout::version_id(&key.name, generation);
            let labels = described.labels_of(&id);
            if labels.iter().any(|l| l == CURRENT) {
                return Err(StoreError::Corrupt {
                    path: format!("secret {secret}"),
                    message: format!("refusing to prune the current generation {generation}"),
                });
            }
            for label in [PREVIOUS, PENDING] {
                if labels.iter().any(|l| l == label) {
                    self.set_label(&key.name, secret, label, None).await?;
                }
            }
            let own = layout::generation_label(generation);
            if let Some(holder) = described.holder(&own) {
                let holder = holder.to_string();
                self.client()
                    .await
                    .update_secret_version_stage()
                    .secret_id(secret)
                    .version_stage(&own)
                    .remove_from_version_id(holder)
                    .send()
                    .await
                    .map_err(|err| {
                        explain(&err, secret, "UpdateSecretVersionStage").into_error()
                    })?;
            }
        }
        Ok(())
    }
}
