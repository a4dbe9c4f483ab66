//! Observing a secret: its generations, links and drift from the manifest, and the linked
//! versions read and checked.

use super::SecretsManagerStore;
use super::describe::same_kms_key;
use super::errors::explain;
use super::layout::{self, CURRENT, PREVIOUS};
use super::versions::Described;
use super::wanted;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::{Damage, ObservedOutput, ObservedVersion, RefusedVersion};
use crate::store::StoreError;

/// The refused versions the secret holds, each logged: a version keyprov refused stays where
/// it is (its generation number taken) until someone who can write the secret removes it.
fn refused(described: &Described, secret: &str) -> Vec<RefusedVersion> {
    described
        .refused
        .iter()
        .map(|(id, generation)| {
            tracing::warn!(
                secret,
                version = %id,
                "secret {secret} holds version {id}{}, which keyprov refused (forged, replayed \
                 or not keyprov's): it is not used. Remove it once you know who wrote it",
                generation.map(|g| format!(" (under generation {g}'s request token)")).unwrap_or_default()
            );
            RefusedVersion {
                version_id: id.clone(),
                generation: *generation,
            }
        })
        .collect()
}

impl SecretsManagerStore {
    /// [`crate::store::Store::observe`] of a secret output.
    pub(super) async fn observe_secret(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<ObservedOutput, StoreError> {
        let described = self.describe(&key.name, &output.secret_id).await?;
        self.observe_described(key, output, described).await
    }

    /// [`Self::observe_secret`] from what was already described (or listed by a sweep).
    pub(super) async fn observe_described(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        described: Option<Described>,
    ) -> Result<ObservedOutput, StoreError> {
        let secret = &output.secret_id;
        let mut observed = ObservedOutput {
            prunable: true,
            ..ObservedOutput::default()
        };
        let Some(mut described) = described else {
            self.managed
                .lock()
                .expect("never poisoned")
                .insert(secret.clone(), false);
            return Ok(observed);
        };
        // The current generation is the newest that was current, wherever AWSCURRENT is now
        // (a label moved by hand is drift, repaired); without any evidence, AWSCURRENT's
        // version is read as it is (and refused when keyprov did not write it). A version
        // whose contents are not the generation its id names is no generation at all (a
        // forged or replayed version under keyprov's token): forgotten, and the newest
        // remaining generation that was current is taken instead (a few times at most).
        let mut current_id = None;
        for _ in 0..4 {
            current_id = match described.current() {
                Some(generation) => described.id_of(generation).map(str::to_string),
                None => described
                    .holder(CURRENT)
                    .filter(|id| !described.is_refused(id))
                    .map(str::to_string),
            };
            let Some(id) = &current_id else { break };
            let damage = observed.damaged.len();
            observed.current = self
                .observe_version(key, secret, &described, id, &mut observed)
                .await?;
            if observed.current.is_some()
                || observed.damaged.len() == damage
                || described.generation_of(id).is_none()
            {
                break;
            }
            // Not a damaged generation but a refused version: its problems are the refusal.
            let why = observed
                .damaged
                .drain(damage..)
                .flat_map(|d| d.problems)
                .collect::<Vec<_>>()
                .join("; ");
            self.remember_foreign(&key.name, secret, id, described.generation_of(id), why);
            described.forget(id);
            if let Some(id) = described.without_evidence() {
                self.remember_foreign(
                    &key.name,
                    secret,
                    &id,
                    None,
                    format!("{CURRENT} is on it and it is none of the key's generations"),
                );
            }
        }
        observed.refused = refused(&described, secret);
        observed.versions = described.generations();
        observed.previous = described
            .holder(PREVIOUS)
            .and_then(|id| described.generation_of(id));
        if current_id.is_some() {
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
        }
        if let Some((id, _)) = described.next() {
            observed.next = self
                .observe_version(key, secret, &described, id, &mut observed)
                .await?;
        }
        observed
            .drift
            .extend(described.label_drift(&key.name, secret));
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

    /// Why readers of the secret's `AWSCURRENT` do not get the current generation (the label
    /// was moved outside keyprov), for `keyprov verify`; `None` when they do.
    pub async fn misplaced_current(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<Option<String>, StoreError> {
        let Some(described) = self.describe(&key.name, &output.secret_id).await? else {
            return Ok(None);
        };
        let Some(current) = described.current() else {
            return Ok(None);
        };
        let holders = described.holders(CURRENT);
        Ok(
            (holders != described.id_of(current).into_iter().collect::<Vec<_>>()).then(|| {
                let on: Vec<String> = holders.iter().map(|h| described.describe(h)).collect();
                format!(
                    "{CURRENT} is on {}, not on generation {current}, the newest that was current \
                 (moved outside keyprov; `keyprov run` moves it back)",
                    if on.is_empty() {
                        "no version".to_string()
                    } else {
                        on.join(" and ")
                    }
                )
            }),
        )
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
        if let Some(version) = self.sweep.cached(described, &key.name, version_id) {
            return Ok(Some(version));
        }
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
                .filter(|g| (1..=layout::MAX_GENERATION).contains(g))
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
            Ok(version) => {
                let version = version
                    .meta
                    .observed()
                    .map_err(|message| StoreError::Corrupt {
                        path: secret.to_string(),
                        message,
                    })?;
                self.sweep
                    .remember(described.arn.as_deref(), &key.name, version_id, &version);
                if let Some(arn) = described.arn.as_deref() {
                    // The copy of this version reads it from here (and proves it).
                    self.sweep.keep_value(arn, version_id, text);
                }
                Ok(Some(version))
            }
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
