//! Observing a secret: its generations, links and drift from the manifest, and the linked
//! versions read and checked.

use super::SecretsManagerStore;
use super::describe::{Described, same_kms_key};
use super::errors::explain;
use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use super::wanted;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::{Damage, ObservedOutput, ObservedVersion};
use crate::store::StoreError;

impl SecretsManagerStore {
    /// [`crate::store::Store::observe`] of a secret output.
    pub(super) async fn observe_secret(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<ObservedOutput, StoreError> {
        let secret = &output.secret_id;
        let mut observed = ObservedOutput {
            prunable: true,
            ..ObservedOutput::default()
        };
        let Some(described) = self.describe(&key.name, secret).await? else {
            self.managed
                .lock()
                .expect("never poisoned")
                .insert(secret.clone(), false);
            return Ok(observed);
        };
        observed.versions = described.generations();
        observed.previous = described
            .holder(PREVIOUS)
            .and_then(|id| described.generation_of(id));
        if let Some(id) = described.holder(CURRENT) {
            observed.current = self
                .observe_version(key, secret, &described, id, &mut observed)
                .await?;
            // Activated before its planned time (`rotate --now`): the next rotation counts
            // from the recorded activation.
            if let Some(current) = &mut observed.current
                && let Some((generation, at)) = described
                    .tags
                    .get(layout::ACTIVATED_TAG)
                    .and_then(|v| layout::parse_activated_tag(v))
                && generation == current.generation
                && at < current.activates_at
                && at >= current.created_at
            {
                current.activates_at = at;
            }
            if let Some(current) = &observed.current
                && !observed.versions.contains(&current.generation)
            {
                observed.drift.push(format!(
                    "secret {secret}: the current version lacks its label {}",
                    layout::generation_label(current.generation)
                ));
            }
        }
        if let Some(id) = described.holder(PENDING) {
            observed.next = self
                .observe_version(key, secret, &described, id, &mut observed)
                .await?;
        }
        for (name, value) in wanted(&self.scope, key, output) {
            match described.tags.get(&name) {
                Some(have) if *have == value => {}
                _ => observed
                    .drift
                    .push(format!("secret {secret}: tag {name} should be {value:?}")),
            }
        }
        if let Some(wanted_key) = &output.kms_key_id
            && !same_kms_key(described.kms_key_id.as_deref(), wanted_key)
        {
            observed
                .drift
                .push(format!("secret {secret}: kmsKeyId should be {wanted_key}"));
        }
        Ok(observed)
    }

    /// Reads the version `version_id` holds as one linked version of the observation.
    pub(super) async fn observe_version(
        &self,
        key: &KeyPair,
        secret: &str,
        described: &Described,
        version_id: &str,
        observed: &mut ObservedOutput,
    ) -> Result<Option<ObservedVersion>, StoreError> {
        let value = self
            .client()
            .await
            .get_secret_value()
            .secret_id(secret)
            .version_id(version_id)
            .send()
            .await
            .map_err(|err| explain(&err, secret, "GetSecretValue").into_error())?;
        let text = value.secret_string().unwrap_or_default();
        let generation = described.generation_of(version_id).or_else(|| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("generation")?.as_u64())
                .and_then(|g| u32::try_from(g).ok())
        });
        let Some(generation) = generation else {
            return Err(StoreError::Corrupt {
                path: secret.to_string(),
                message: format!(
                    "version {version_id} holds a label keyprov uses but is not keyprov's \
                     (no generation): the secret was written outside keyprov"
                ),
            });
        };
        if layout::version_id(&key.name, generation) != version_id {
            observed.damaged.push(Damage {
                generation,
                problems: vec![format!(
                    "{secret}: version {version_id} was not written by keyprov for generation {generation}"
                )],
            });
            return Ok(None);
        }
        let checked = layout::parse(text, secret, generation)
            .and_then(|parts| layout::whole(parts, &key.name, secret));
        match checked {
            Ok(version) => Ok(Some(version.meta.observed().map_err(|message| {
                StoreError::Corrupt {
                    path: secret.to_string(),
                    message,
                }
            })?)),
            Err(err) => {
                observed.damaged.push(Damage {
                    generation,
                    problems: vec![err.to_string()],
                });
                Ok(None)
            }
        }
    }
}
