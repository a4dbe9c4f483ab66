//! Writing a version: the secret created when missing, the value put under the
//! generation's request token and read back, the links given.

use std::sync::Arc;

use super::SecretsManagerStore;
use super::errors::{Failure, explain};
use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use super::versions::Described;
use super::wanted_tags;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::plan::Link;
use crate::store::{StoreError, StoredVersion, VersionParts};

impl SecretsManagerStore {
    /// Creates the secret without a value (tags, KMS key, description), or accepts one a racing
    /// host just created when it is keyprov's.
    pub(super) async fn create(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let created = self
            .client()
            .await
            .create_secret()
            .name(secret)
            .description(format!(
                "Managed by keyprov: key pair {}. Written by keyprov only.",
                key.name
            ))
            .set_kms_key_id(output.kms_key_id.clone())
            .set_tags(Some(wanted_tags(&self.scope, key, output)))
            .send()
            .await;
        self.forget_description(secret);
        match created {
            Ok(created) => {
                self.remember_arn(secret, created.arn());
                tracing::info!(key = %key.name, secret, "created the secret");
                Ok(())
            }
            Err(err) => match explain(&err, secret, "CreateSecret") {
                Failure::Exists => self.describe_existing(&key.name, secret).await.map(|_| ()),
                other => Err(other.into_error()),
            },
        }
    }

    /// Makes sure the secret exists and is keyprov's; returns how it was before (`None` when
    /// this reconcile saw it absent and created it).
    pub(super) async fn ensure(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<Option<Described>, StoreError> {
        let secret = &output.secret_id;
        let known_absent = self.managed.lock().expect("never poisoned").get(secret) == Some(&false);
        if !known_absent && let Some(described) = self.describe(&key.name, secret).await? {
            return Ok(Some(described));
        }
        self.create(key, output).await?;
        Ok(None)
    }

    /// Whether the version stored under `version`'s token holds `version`'s pair (read back
    /// after a write, always with a request: a backend whose token check is not atomic may
    /// have let another pair in).
    pub(super) async fn holds(
        &self,
        key: &KeyPair,
        secret: &str,
        version: &StoredVersion,
    ) -> Result<bool, StoreError> {
        let (parts, _) = self.fetch(key, secret, version.meta.generation).await?;
        Ok(parts
            .meta
            .is_ok_and(|m| m.public_key_sha256 == version.meta.public_key_sha256))
    }

    /// Reads the SecretString of a version (by id) into its parts: the text this reconcile
    /// already read (a sweep's or an observation's read of it), else [`Self::fetch`].
    pub(super) async fn read(
        &self,
        key: &KeyPair,
        secret: &str,
        generation: u32,
    ) -> Result<(VersionParts, bool), StoreError> {
        let id = layout::version_id(&key.name, generation);
        // Versions are immutable: the same content, still parsed and proven by the caller.
        if let Some(text) = self
            .described_arn(secret)
            .and_then(|arn| self.sweep.value(&arn, &id))
        {
            let plaintext = layout::has_plaintext(&text);
            return Ok((layout::parse(&text, secret, generation)?, plaintext));
        }
        self.fetch(key, secret, generation).await
    }

    /// Reads the SecretString of a version (by id) into its parts with `GetSecretValue`.
    async fn fetch(
        &self,
        key: &KeyPair,
        secret: &str,
        generation: u32,
    ) -> Result<(VersionParts, bool), StoreError> {
        let id = layout::version_id(&key.name, generation);
        let value = self
            .client()
            .await
            .get_secret_value()
            .secret_id(secret)
            .version_id(&id)
            .send()
            .await
            .map_err(|err| explain(&err, secret, "GetSecretValue").into_error())?;
        let text = value.secret_string().unwrap_or_default();
        let plaintext = layout::has_plaintext(text);
        Ok((layout::parse(text, secret, generation)?, plaintext))
    }

    /// Publishes `version` to a secret without activating it: put under its generation's
    /// request token with only its own label and read back; `AWSCURRENT` stays where it is
    /// (the caller moves it with [`crate::store::Store::link`] once every other output holds
    /// the version). Returns whether the version is current already: the first version of a
    /// secret, which Secrets Manager makes current whatever the labels asked for.
    pub async fn publish_version(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        version: Arc<StoredVersion>,
    ) -> Result<bool, StoreError> {
        self.write_versions(key, &[output], version, None).await
    }

    /// [`crate::store::Store::write_version`] of secret outputs. The version is put under its
    /// generation's request token with its own label, read back, given `link` by label moves
    /// (none: only its own label), and read back again. Returns whether the version holds
    /// `AWSCURRENT` (the first version of a new secret always does).
    pub(super) async fn write_versions(
        &self,
        key: &KeyPair,
        outputs: &[&SecretsManagerOutput],
        version: Arc<StoredVersion>,
        link: Option<Link>,
    ) -> Result<bool, StoreError> {
        for output in outputs {
            self.note_write(&output.secret_id);
        }
        let generation = version.meta.generation;
        let text = layout::secret_string(&version)?;
        let mut current = false;
        for output in outputs {
            let secret = &output.secret_id;
            let before = self.ensure(key, output).await?;
            // Only its own label at first: no version holds AWSCURRENT or AWSPENDING before it
            // is whole and read back (and a backend that lets a put replace a version holding
            // AWSPENDING, as LocalStack does, cannot replace it); other hosts see it as a
            // publication in flight. The first version of a secret is current at once (Secrets
            // Manager makes it so anyway, and no label move can place AWSCURRENT on it), also
            // when only published: a new key has no verifier yet to miss it.
            let first = before.as_ref().is_none_or(|d| d.holder(CURRENT).is_none());
            let mut stages = vec![layout::generation_label(generation)];
            if matches!(link, None | Some(Link::Current)) && first {
                stages.push(CURRENT.to_string());
            }
            let put = self
                .client()
                .await
                .put_secret_value()
                .secret_id(secret)
                .client_request_token(layout::version_id(&key.name, generation))
                .secret_string(text.as_str())
                .set_version_stages(Some(stages))
                .send()
                .await;
            self.forget_description(secret);
            match put {
                Ok(_) if !self.holds(key, secret, &version).await? => {
                    // Another writer's pair is stored under this generation's token: a backend
                    // whose token check is not atomic (LocalStack's is not) let both calls
                    // through. The stored one wins, as if the call had been refused.
                    return Err(StoreError::Taken {
                        location: format!("secret {secret}"),
                        generation,
                    });
                }
                // Written now or before (a retry, or a racing host that wrote the same pair):
                // the labels move either way.
                Ok(answer) => {
                    // The first version of a new secret came back holding both its labels:
                    // nothing to move (no older version to settle, AWSCURRENT is evidence
                    // enough), which keeps first provisioning at five calls.
                    let labelled = |l: &str| answer.version_stages().iter().any(|s| s == l);
                    let linked = before.is_none()
                        && labelled(CURRENT)
                        && labelled(&layout::generation_label(generation));
                    match link {
                        _ if linked => current = true,
                        Some(link) => {
                            self.link_generation(key, output, generation, link).await?;
                            current = link == Link::Current;
                        }
                        None if labelled(&layout::generation_label(generation)) => {}
                        None => self.label_own(key, output, generation).await?,
                    }
                    // Read back once more after the label moves: on a backend whose token check
                    // is not atomic, a racing put that passed the check before this one landed
                    // can replace the value a little later. The stored pair wins.
                    if !self.holds(key, secret, &version).await? {
                        return Err(StoreError::Taken {
                            location: format!("secret {secret}"),
                            generation,
                        });
                    }
                    self.written.lock().expect("never poisoned").push(
                        crate::secret_proof::Written {
                            key: key.name.clone(),
                            secret: secret.clone(),
                            generation,
                            public_key_sha256: version.meta.public_key_sha256.clone(),
                        },
                    );
                    self.sweep
                        .remember_written(answer.arn(), key, secret, &text, generation);
                }
                Err(err) => {
                    return Err(match explain(&err, secret, "PutSecretValue") {
                        Failure::Exists => StoreError::Taken {
                            location: format!("secret {secret}"),
                            generation,
                        },
                        other => other.into_error(),
                    });
                }
            }
        }
        Ok(current)
    }

    /// Gives version `generation` its own label when it lacks it (a put that found the version
    /// already stored changes no label).
    async fn label_own(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let id = layout::version_id(&key.name, generation);
        let own = layout::generation_label(generation);
        let described = self.describe_existing(&key.name, secret).await?;
        if described.labels_of(&id).contains(&own) {
            return Ok(());
        }
        self.set_label(&key.name, secret, &own, Some(&id)).await
    }

    /// [`crate::store::Store::link`] of a secret output: the version holds its own label, then
    /// `AWSPENDING`, `AWSPREVIOUS`, or `AWSCURRENT` (with the activation tag, and `AWSPREVIOUS`
    /// settled on the version it left).
    pub(super) async fn link_generation(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
        link: Link,
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let id = layout::version_id(&key.name, generation);
        let own = layout::generation_label(generation);
        let described = self.describe_existing(&key.name, secret).await?;
        if !described.labels_of(&id).contains(&own) {
            self.set_label(&key.name, secret, &own, Some(&id)).await?;
        }
        match link {
            Link::Next => self.set_label(&key.name, secret, PENDING, Some(&id)).await,
            Link::Previous => self.set_label(&key.name, secret, PREVIOUS, Some(&id)).await,
            Link::Current => {
                let old = described
                    .holder(CURRENT)
                    .filter(|old| *old != id)
                    .map(|old| (old.to_string(), described.generation_of(old)));
                self.set_label(&key.name, secret, CURRENT, Some(&id))
                    .await?;
                // As the secret is after the move (the move's own look when nothing moved): a
                // host that finds another's activation done, tag included, adds nothing.
                let after = self.describe_existing(&key.name, secret).await?;
                // Every activation is recorded: the tag is what tells, after AWSCURRENT was
                // moved back by hand, which generation was current.
                if after.activated() != Some(generation) {
                    self.record_activation(secret, generation).await?;
                }
                self.settle(&key.name, secret, generation, old, after).await
            }
        }
    }
}
