//! Repairing a secret in place (tags, KMS key, labels) and pruning old versions.

use super::SecretsManagerStore;
use super::describe::same_kms_key;
use super::errors::explain;
use super::layout::{self, CURRENT};
use super::{wanted, wanted_tags};
use crate::manifest::{KeyPair, SecretsManagerOutput};
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
            let tagged = self
                .client()
                .await
                .tag_resource()
                .secret_id(secret)
                .set_tags(Some(wanted_tags(&self.scope, key, output)))
                .send()
                .await;
            self.forget_description(secret);
            tagged.map_err(|err| explain(&err, secret, "TagResource").into_error())?;
        }
        if let Some(wanted_key) = &output.kms_key_id
            && !same_kms_key(described.kms_key_id.as_deref(), wanted_key)
        {
            let updated = self
                .client()
                .await
                .update_secret()
                .secret_id(secret)
                .kms_key_id(wanted_key)
                .send()
                .await;
            self.forget_description(secret);
            updated.map_err(|err| explain(&err, secret, "UpdateSecret").into_error())?;
        }
        self.repair_labels(&key.name, secret, input.previous).await
    }

    /// [`crate::store::Store::prune`] of a secret output: every label comes off the pruned
    /// versions (their own last), so Secrets Manager deprecates them. The current generation
    /// (the newest that was current, wherever `AWSCURRENT` is) is never pruned.
    pub(super) async fn prune_versions(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generations: &[u32],
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let described = self.describe_existing(&key.name, secret).await?;
        for &generation in generations {
            let own = layout::generation_label(generation);
            let id = layout::version_id(&key.name, generation);
            let labels = described.labels_of(&id);
            if labels.iter().any(|l| l == CURRENT) || described.current() == Some(generation) {
                return Err(StoreError::Corrupt {
                    path: format!("secret {secret}"),
                    message: format!("refusing to prune the current generation {generation}"),
                });
            }
            let mut doomed: Vec<&String> = labels.iter().filter(|l| **l != own).collect();
            doomed.extend(labels.iter().filter(|l| **l == own));
            for label in doomed {
                self.remove_label(&key.name, secret, label, &id).await?;
            }
            // Its label where a hand put it.
            for holder in described.holders(&own) {
                if holder != id {
                    self.remove_label(&key.name, secret, &own, holder).await?;
                }
            }
        }
        Ok(())
    }
}
