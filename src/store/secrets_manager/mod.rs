//! [`Store`] for `secretsManager` outputs: one secret per key pair, one secret version per
//! generation (see [`layout`] and DESIGN.md "Secrets Manager layout").
//!
//! Every version is written with the request token of its generation, so a retry or another
//! host writing the same generation never makes a second version: the loser of a race gets
//! [`StoreError::Taken`] and adopts the winner's pair. Links are staging labels: `AWSCURRENT`,
//! `AWSPREVIOUS`, `AWSPENDING` (a staged generation), and `keyprov-vNNNN` on every kept
//! version, so Secrets Manager never deprecates it; pruning removes that label.

mod errors;
pub use errors::NO_CREDENTIALS;
pub mod layout;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use tokio::sync::OnceCell;

use self::errors::{Failure, explain};
use self::layout::{CURRENT, MANAGED_TAG, NAME_TAG, PENDING, PREVIOUS, SCOPE_TAG};
use super::{RepairInput, Store, StoreError, StoredVersion, VersionParts};
use crate::config::AwsSettings;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::{Damage, ObservedOutput};
use crate::plan::Link;

/// Paces every AWS request of a reconcile (shared with the KMS provider).
pub type Limiter = governor::DefaultDirectRateLimiter;

/// Secrets Manager through aws-sdk-secretsmanager; the client is built on first use, so a
/// run without secrets never builds it.
pub struct SecretsManagerStore {
    settings: AwsSettings,
    scope: String,
    limiter: Arc<Limiter>,
    client: OnceCell<Client>,
    /// Secrets this reconcile has seen to be keyprov's (so a write need not describe again).
    managed: Mutex<HashMap<String, bool>>,
}

/// A secret keyprov manages, as `ListSecrets` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedSecret {
    /// Secret name.
    pub name: String,
    /// Secret ARN.
    pub arn: String,
    /// The key pair it holds (`keyprov:name`).
    pub key_name: String,
}

/// What `DescribeSecret` says about a secret, in keyprov's terms.
struct Described {
    tags: BTreeMap<String, String>,
    kms_key_id: Option<String>,
    /// VersionId -> staging labels.
    stages: HashMap<String, Vec<String>>,
}

impl Described {
    fn holder(&self, label: &str) -> Option<&str> {
        self.stages
            .iter()
            .find(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(id, _)| id.as_str())
    }

    fn labels_of(&self, version_id: &str) -> &[String] {
        self.stages.get(version_id).map_or(&[], Vec::as_slice)
    }

    fn generation_of(&self, version_id: &str) -> Option<u32> {
        self.labels_of(version_id)
            .iter()
            .find_map(|l| layout::parse_generation_label(l))
    }

    fn generations(&self) -> Vec<u32> {
        let mut generations: Vec<u32> = self
            .stages
            .keys()
            .filter_map(|id| self.generation_of(id))
            .collect();
        generations.sort_unstable();
        generations.dedup();
        generations
    }
}

impl SecretsManagerStore {
    /// A store with these settings, its requests paced by `limiter`; the secrets it creates
    /// carry `scope` (config `reconcile.scope`).
    pub fn new(settings: AwsSettings, scope: String, limiter: Arc<Limiter>) -> Self {
        SecretsManagerStore {
            settings,
            scope,
            limiter,
            client: OnceCell::new(),
            managed: Mutex::new(HashMap::new()),
        }
    }

    /// The client, once the rate limit allows another request.
    async fn client(&self) -> &Client {
        let client = self
            .client
            .get_or_init(|| crate::aws_sdk::secrets_manager_client(&self.settings))
            .await;
        self.limiter.until_ready().await;
        client
    }

    /// Describes the secret; `None` when it does not exist. Fails when it is not keyprov's
    /// secret of `key` or is scheduled for deletion.
    async fn describe(&self, key: &str, secret: &str) -> Result<Option<Described>, StoreError> {
        let found = self
            .client()
            .await
            .describe_secret()
            .secret_id(secret)
            .send()
            .await;
        let output = match found {
            Ok(output) => output,
            Err(err) => {
                let failure = explain(&err, secret, "DescribeSecret");
                return match failure {
                    Failure::NotFound => Ok(None),
                    other => Err(other.into_error()),
                };
            }
        };
        let described = check_ours(&self.scope, key, secret, &output)?;
        self.managed
            .lock()
            .expect("never poisoned")
            .insert(secret.to_string(), true);
        Ok(Some(described))
    }

    /// Describes a secret that must exist.
    async fn describe_existing(&self, key: &str, secret: &str) -> Result<Described, StoreError> {
        self.describe(key, secret).await?.ok_or_else(|| {
            StoreError::Config(format!(
                "secret {secret} does not exist (deleted meanwhile?)"
            ))
        })
    }

    /// Creates the secret without a value (tags, KMS key, description), or accepts one a racing
    /// host just created when it is keyprov's.
    async fn create(&self, key: &KeyPair, output: &SecretsManagerOutput) -> Result<(), StoreError> {
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
        match created {
            Ok(_) => {
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
    async fn ensure(
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

    /// After `AWSCURRENT` moved to `generation` from `old` (its version id and generation):
    /// `old` keeps its own label and holds `AWSPREVIOUS` (Secrets Manager moves that label, but
    /// emulators differ in what else they take off), and an `AWSPENDING` at or below
    /// `generation` goes.
    async fn settle(
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

    /// Moves `label` onto `version_id` (from whichever version holds it), or removes it from its
    /// holder with `None`. Another host may move the same label at the same moment: a failed
    /// move is re-described and succeeds when the label is already where it should be.
    /// Tags the secret with when `generation` became current ([`layout::ACTIVATED_TAG`]).
    async fn record_activation(&self, secret: &str, generation: u32) -> Result<(), StoreError> {
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

    async fn set_label(
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

    /// Whether the version stored under `version`'s token holds `version`'s pair (read back
    /// after a write).
    async fn holds(
        &self,
        key: &KeyPair,
        secret: &str,
        version: &StoredVersion,
    ) -> Result<bool, StoreError> {
        let (parts, _) = self.read(key, secret, version.meta.generation).await?;
        Ok(parts
            .meta
            .is_ok_and(|m| m.public_key_sha256 == version.meta.public_key_sha256))
    }

    /// Reads the SecretString of a version (by id) into its parts.
    async fn read(
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

    /// Reads the version `version_id` holds as one linked version of the observation.
    async fn observe_version(
        &self,
        key: &KeyPair,
        secret: &str,
        described: &Described,
        version_id: &str,
        observed: &mut ObservedOutput,
    ) -> Result<Option<crate::observed::ObservedVersion>, StoreError> {
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

    /// Managed secrets (`keyprov:managed=true`) of this store's scope, for orphan listing; at
    /// most 10,000.
    pub async fn list_managed(&self) -> Result<Vec<ManagedSecret>, StoreError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client()
                .await
                .list_secrets()
                .filters(
                    Filter::builder()
                        .key(FilterNameStringType::TagKey)
                        .values(SCOPE_TAG)
                        .build(),
                )
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|err| explain(&err, "(all)", "ListSecrets").into_error())?;
            for secret in page.secret_list() {
                let tags = tag_map(secret.tags());
                if tags.get(MANAGED_TAG).map(String::as_str) == Some("true")
                    && tags.get(SCOPE_TAG) == Some(&self.scope)
                {
                    found.push(ManagedSecret {
                        name: secret.name().unwrap_or_default().to_string(),
                        arn: secret.arn().unwrap_or_default().to_string(),
                        key_name: tags.get(NAME_TAG).cloned().unwrap_or_default(),
                    });
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() || found.len() >= 10_000 {
                return Ok(found);
            }
        }
    }

    /// Schedules the deletion of a managed secret with a recovery window (never forced), after
    /// checking once more that it is keyprov's.
    pub async fn schedule_deletion(
        &self,
        secret: &ManagedSecret,
        recovery_window_days: i64,
    ) -> Result<(), StoreError> {
        if self
            .describe(&secret.key_name, &secret.arn)
            .await?
            .is_none()
        {
            return Ok(());
        }
        self.client()
            .await
            .delete_secret()
            .secret_id(&secret.arn)
            .recovery_window_in_days(recovery_window_days)
            .send()
            .await
            .map_err(|err| explain(&err, &secret.name, "DeleteSecret").into_error())?;
        Ok(())
    }
}

/// Tags as a map.
fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// The tags a key's secret must carry: the manifest's labels, the output's own tags (which win
/// over a label of the same name), and keyprov's (which win over both).
fn wanted(scope: &str, key: &KeyPair, output: &SecretsManagerOutput) -> BTreeMap<String, String> {
    let mut tags = key.labels.clone();
    tags.extend(output.tags.clone());
    tags.insert(SCOPE_TAG.into(), scope.into());
    tags.insert(MANAGED_TAG.into(), "true".into());
    tags.insert(NAME_TAG.into(), key.name.clone());
    tags
}

fn wanted_tags(scope: &str, key: &KeyPair, output: &SecretsManagerOutput) -> Vec<Tag> {
    wanted(scope, key, output)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Refuses a secret keyprov did not create for `key`, or one scheduled for deletion.
fn check_ours(
    scope: &str,
    key: &str,
    secret: &str,
    output: &DescribeSecretOutput,
) -> Result<Described, StoreError> {
    let tags = tag_map(output.tags());
    if tags.get(MANAGED_TAG).map(String::as_str) != Some("true") {
        return Err(StoreError::Unsafe {
            path: format!("secret {secret}"),
            message: format!(
                "exists but was not created by keyprov (no tag {MANAGED_TAG}=true): keyprov never \
                 writes it. Point the output at another secretId, or delete that secret if it \
                 is not in use"
            ),
        });
    }
    if let Some(other) = tags.get(SCOPE_TAG).filter(|s| !s.is_empty() && *s != scope) {
        return Err(StoreError::Unsafe {
            path: format!("secret {secret}"),
            message: format!(
                "belongs to keyprov scope {other:?}, not this installation's {scope:?} \
                 (reconcile.scope): keyprov never writes another installation's secret"
            ),
        });
    }
    match tags.get(NAME_TAG) {
        Some(owner) if owner != key => {
            return Err(StoreError::Unsafe {
                path: format!("secret {secret}"),
                message: format!(
                    "holds key pair {owner:?}, not {key:?}: two keys cannot share a secret"
                ),
            });
        }
        _ => {}
    }
    if output.deleted_date().is_some() {
        return Err(StoreError::Config(format!(
            "secret {secret} is scheduled for deletion: restore it (aws secretsmanager \
             restore-secret --secret-id {secret}) or remove this output from the manifest"
        )));
    }
    let stages: HashMap<String, Vec<String>> = output
        .version_ids_to_stages()
        .map(|map| {
            map.iter()
                .filter(|(_, labels)| !labels.is_empty())
                .take(layout::MAX_VERSIONS)
                .map(|(id, labels)| (id.clone(), labels.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Described {
        tags,
        kms_key_id: output.kms_key_id().map(str::to_string),
        stages,
    })
}

/// Whether the secret's KMS key is the one the manifest names (the API may answer with the
/// key's ARN where the manifest has its id or alias).
fn same_kms_key(actual: Option<&str>, wanted: &str) -> bool {
    actual.is_some_and(|actual| {
        actual == wanted
            || actual.ends_with(&format!("/{wanted}"))
            || actual.ends_with(&format!(":{wanted}"))
    })
}

impl Store for SecretsManagerStore {
    type Output = SecretsManagerOutput;

    async fn observe(
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

    async fn has_version(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<bool, StoreError> {
        let id = layout::version_id(&key.name, generation);
        Ok(self
            .describe(&key.name, &output.secret_id)
            .await?
            .is_some_and(|d| d.stages.contains_key(&id) || d.generations().contains(&generation)))
    }

    async fn read_version(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<StoredVersion, StoreError> {
        let (parts, _) = self.read(key, &output.secret_id, generation).await?;
        layout::whole(parts, &key.name, &output.secret_id)
    }

    async fn read_parts(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<VersionParts, StoreError> {
        Ok(self.read(key, &output.secret_id, generation).await?.0)
    }

    async fn write_version(
        &self,
        key: &KeyPair,
        outputs: &[&SecretsManagerOutput],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), StoreError> {
        let generation = version.meta.generation;
        let text = layout::secret_string(&version)?;
        let label = match link {
            Link::Current => CURRENT,
            Link::Next => PENDING,
        };
        for output in outputs {
            let secret = &output.secret_id;
            // What was current before, to settle the labels after the move.
            let before = self.ensure(key, output).await?;
            let put = self
                .client()
                .await
                .put_secret_value()
                .secret_id(secret)
                .client_request_token(layout::version_id(&key.name, generation))
                .secret_string(text.as_str())
                .version_stages(layout::generation_label(generation))
                .version_stages(label)
                .send()
                .await;
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
                Ok(answer) => {
                    if !answer.version_stages().iter().any(|l| l == label) {
                        // The same pair written before (a retry): the call did nothing, so
                        // the labels may still have to move.
                        self.link(key, output, generation, link).await?;
                    } else if link == Link::Current
                        && let Some(before) = before
                    {
                        let id = layout::version_id(&key.name, generation);
                        let old = before
                            .holder(CURRENT)
                            .filter(|old| *old != id)
                            .map(|old| (old.to_string(), before.generation_of(old)));
                        self.settle(&key.name, secret, generation, old).await?;
                    }
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
        Ok(())
    }

    async fn link(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
        link: Link,
    ) -> Result<(), StoreError> {
        let secret = &output.secret_id;
        let id = layout::version_id(&key.name, generation);
        let described = self.describe_existing(&key.name, secret).await?;
        if !described
            .labels_of(&id)
            .contains(&layout::generation_label(generation))
        {
            self.set_label(
                &key.name,
                secret,
                &layout::generation_label(generation),
                Some(&id),
            )
            .await?;
        }
        match link {
            Link::Next => self.set_label(&key.name, secret, PENDING, Some(&id)).await,
            Link::Current => {
                let old = described
                    .holder(CURRENT)
                    .filter(|old| *old != id)
                    .map(|old| (old.to_string(), described.generation_of(old)));
                self.set_label(&key.name, secret, CURRENT, Some(&id))
                    .await?;
                if old.is_some() || described.holder(CURRENT).is_none() {
                    self.record_activation(secret, generation).await?;
                }
                self.settle(&key.name, secret, generation, old).await
            }
        }
    }

    async fn missing_plaintext(
        &self,
        _: &KeyPair,
        _: &SecretsManagerOutput,
    ) -> Result<Vec<u32>, StoreError> {
        // Secret versions are immutable: an includePlaintext change reaches a secret with its
        // next generation.
        Ok(Vec::new())
    }

    async fn repair(
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

    async fn prune(
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
