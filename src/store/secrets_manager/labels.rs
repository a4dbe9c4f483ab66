//! Staging labels: moving and removing them, settling them after `AWSCURRENT` moved, and
//! recording when a generation became current.

use aws_sdk_secretsmanager::types::Tag;

use super::SecretsManagerStore;
use super::errors::explain;
use super::layout::{self, PENDING, PREVIOUS};
use crate::store::StoreError;

impl SecretsManagerStore {
    /// After `AWSCURRENT` moved to `generation` from `old` (its version id and generation):
    /// `old` keeps its own label and holds `AWSPREVIOUS` (Secrets Manager moves that label, but
    /// emulators differ in what else they take off), and an `AWSPENDING` at or below
    /// `generation` goes.
    pub(super) async fn settle(
        &self,
        key: &str,
        secret: &str,
        generation: u32,
        old: Option<(String, Option<u32>)>,
    ) -> Result<(), StoreError> {
        let after = self.describe_existing(key, secret).await?;
        if let Some((old, old_generation)) = old {
            if let Some(old_generation) = old_generation
                && !after
                    .labels_of(&old)
                    .contains(&layout::generation_label(old_generation))
            {
                let label = layout::generation_label(old_generation);
                self.set_label(key, secret, &label, Some(&old)).await?;
            }
            if after.holder(PREVIOUS) != Some(old.as_str()) {
                self.set_label(key, secret, PREVIOUS, Some(&old)).await?;
            }
        }
        if let Some(pending) = after.holder(PENDING)
            && after.generation_of(pending).is_none_or(|g| g <= generation)
        {
            self.set_label(key, secret, PENDING, None).await?;
        }
        Ok(())
    }

    /// Tags the secret with when `generation` became current ([`layout::ACTIVATED_TAG`]).
    pub(super) async fn record_activation(
        &self,
        secret: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        let tag = Tag::builder()
            .key(layout::ACTIVATED_TAG)
            .value(layout::activated_tag(generation, crate::clock::now()))
            .build();
        self.client()
            .await
            .tag_resource()
            .secret_id(secret)
            .tags(tag)
            .send()
            .await
            .map_err(|err| explain(&err, secret, "TagResource").into_error())?;
        Ok(())
    }

    /// Moves `label` onto `version_id` (from whichever version holds it), or removes it from its
    /// holder with `None`. Another host may move the same label at the same moment: a failed
    /// move is re-described and succeeds when the label is already where it should be.
    pub(super) async fn set_label(
        &self,
        key: &str,
        secret: &str,
        label: &str,
        version_id: Option<&str>,
    ) -> Result<(), StoreError> {
        for attempt in 0..3 {
            let described = self.describe_existing(key, secret).await?;
            let holder = described.holder(label).map(str::to_string);
            if holder.as_deref() == version_id {
                return Ok(());
            }
            let moved = self
                .client()
                .await
                .update_secret_version_stage()
                .secret_id(secret)
                .version_stage(label)
                .set_move_to_version_id(version_id.map(str::to_string))
                .set_remove_from_version_id(holder)
                .send()
                .await;
            match moved {
                Ok(_) => return Ok(()),
                Err(err) if attempt < 2 => {
                    tracing::debug!(
                        secret,
                        label,
                        "label move raced: {}",
                        explain(&err, secret, "UpdateSecretVersionStage")
                    );
                }
                Err(err) => {
                    return Err(explain(&err, secret, "UpdateSecretVersionStage").into_error());
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}
