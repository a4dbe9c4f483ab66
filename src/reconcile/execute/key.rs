//! One key's work in a pass: its actions run in order by a [`KeyContext`]; the action that
//! makes a generation current stops at publishing it ([`KeyContext::publish`]) and the rest
//! waits for the pass to activate it ([`KeyContext::activate`]).

use std::sync::Arc;
use std::time::SystemTime;

use super::Activation;
use crate::hooks::{self, HookEvent};
use crate::manifest::KeyPair;
use crate::metrics::{FailureReason, Metrics};
use crate::plan::{Action, Link};
use crate::provider::{DecryptRequest, GenerateRequest, PrivateKey, Provider};
use crate::retry::Journal;
use crate::store::{StoreError, StoredVersion, Stores, VersionMeta};

/// What one key's task works with.
pub(super) struct KeyContext<'a, P: Provider> {
    pub(super) key: &'a KeyPair,
    /// The provider, paced and counted ([`super::paced`]).
    pub(super) provider: &'a P,
    pub(super) stores: &'a Stores,
    pub(super) journal: &'a Journal,
    pub(super) metrics: &'a Metrics,
    pub(super) now: SystemTime,
    /// Why the key failed, when a provider call or a proof said so.
    pub(super) failure: std::sync::Mutex<Option<FailureReason>>,
}

impl<P: Provider> KeyContext<'_, P> {
    /// Remembers why the key is failing (the first reason given wins).
    pub(super) fn failing(&self, reason: FailureReason) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
    }

    /// Every output index of the key.
    pub(super) fn all_outputs(&self) -> Vec<usize> {
        (0..self.key.outputs.len()).collect()
    }

    /// `indices` with the secrets after the files: links move in this order, so a secret's
    /// `AWSCURRENT` (what signers on every host read) never moves before a file output (and
    /// its jwks.json) that failed to take the generation.
    pub(super) fn secrets_last(&self, indices: &[usize]) -> Vec<usize> {
        let mut ordered = indices.to_vec();
        ordered.sort_by_key(|&i| self.is_secret(i));
        ordered
    }

    /// A store failure as this key's error.
    pub(super) fn fail(&self, err: impl std::fmt::Display) -> String {
        format!("key {:?}: {err}", self.key.name)
    }

    /// The outputs among `indices` that lack `generation`.
    pub(super) async fn lacking(&self, indices: &[usize], generation: u32) -> Vec<usize> {
        let mut lacking = Vec::new();
        for &i in indices {
            if !self
                .stores
                .has_version(self.key, i, generation)
                .await
                .unwrap_or(false)
            {
                lacking.push(i);
            }
        }
        lacking
    }

    /// Records, durably, that the hooks of `event` must run for `generation` (before the
    /// event happens, so a crash in between still runs them after a restart).
    pub(super) async fn expect_hooks(
        &self,
        event: HookEvent,
        generation: u32,
    ) -> Result<(), String> {
        if !hooks::listens(self.key, event) {
            return Ok(());
        }
        self.journal
            .update(&self.key.name, |r| r.add_hook(event, generation, self.now))
            .await
            .map_err(|e| self.fail(format!("{e}; nothing was changed")))
    }

    /// The publish step of the key: runs `actions` in order up to the one that makes a
    /// generation current, whose new version is only published (every output holds it,
    /// `current`/AWSCURRENT stay); what is left to do comes back as an [`Activation`].
    pub(super) async fn publish(&self, actions: &[Action]) -> Result<Option<Activation>, String> {
        for (i, action) in actions.iter().enumerate() {
            if let Some((generation, outputs)) = self.step(action).await? {
                crate::progress::beat();
                return Ok(Some(Activation {
                    name: self.key.name.clone(),
                    generation,
                    outputs,
                    copied: matches!(action, Action::Copy { .. }),
                    rest: actions[i + 1..].to_vec(),
                }));
            }
        }
        crate::progress::beat();
        Ok(None)
    }

    /// The activate step of the key, once every JWK Set holds its new generation: `current`
    /// moves on the files, then `AWSCURRENT` on the secrets (last: signers on every host read
    /// it); then the actions planned after it (repairs, prunes) run.
    pub(super) async fn activate(&self, activation: &Activation) -> Result<(), String> {
        let generation = activation.generation;
        for i in self.secrets_last(&activation.outputs) {
            self.link(i, generation, Link::Current).await?;
        }
        if activation.copied {
            tracing::info!(key = %self.key.name, generation, "copied as current");
        } else {
            tracing::info!(key = %self.key.name, generation, "activated");
        }
        for action in &activation.rest {
            // A plan activates one generation at most; another would be linked at once.
            if let Some((generation, outputs)) = self.step(action).await? {
                for i in self.secrets_last(&outputs) {
                    self.link(i, generation, Link::Current).await?;
                }
            }
        }
        crate::progress::beat();
        Ok(())
    }

    /// Runs one action. An action that makes `generation` current only publishes it and
    /// returns it with the outputs whose `current` must move.
    async fn step(&self, action: &Action) -> Result<Option<(u32, Vec<usize>)>, String> {
        let name = &self.key.name;
        crate::progress::beat();
        tracing::debug!(key = %name, %action, "executing");
        match action {
            Action::Generate {
                generation,
                activates_at,
                staged,
                reason,
            } => {
                tracing::info!(key = %name, generation, %reason, staged, "generating");
                let (link, event) = if *staged {
                    (Link::Next, HookEvent::Publish)
                } else {
                    (Link::Current, HookEvent::Activate)
                };
                self.expect_hooks(event, *generation).await?;
                let version = self.generate(*generation, *activates_at).await?;
                self.write_or_adopt(version, link).await?;
                self.metrics.generation(name, *reason);
                if !*staged {
                    return Ok(Some((*generation, self.all_outputs())));
                }
            }
            Action::Activate { generation } => {
                self.expect_hooks(HookEvent::Activate, *generation).await?;
                let all = self.all_outputs();
                let lacking = self.lacking(&all, *generation).await;
                self.prove_held(&all, &lacking, *generation).await?;
                self.copy(*generation, &lacking, Link::Current).await?;
                return Ok(Some((*generation, all)));
            }
            Action::Copy {
                generation,
                outputs,
                link,
            } => {
                // A generation another host made reaches this host's outputs here: its hooks
                // fire as they do where it was made (a follower's service reloads too).
                match link {
                    Link::Current => self.expect_hooks(HookEvent::Activate, *generation).await?,
                    Link::Next => self.expect_hooks(HookEvent::Publish, *generation).await?,
                    Link::Previous => {}
                }
                let lacking = self.lacking(outputs, *generation).await;
                self.prove_held(outputs, &lacking, *generation).await?;
                self.copy(*generation, &lacking, *link).await?;
                if *link == Link::Current {
                    return Ok(Some((*generation, outputs.clone())));
                }
                for i in self.secrets_last(outputs) {
                    self.link(i, *generation, *link).await?;
                }
            }
            Action::Repair {
                output,
                reasons,
                previous,
                damaged,
            } => {
                tracing::info!(key = %name, output = %self.key.outputs[*output],
                    reasons = %reasons.join("; "), "repairing");
                self.repair(*output, *previous, damaged, reasons).await?;
            }
            Action::Prune {
                output,
                generations,
            } => {
                tracing::info!(key = %name, output = %self.key.outputs[*output], ?generations,
                    "pruning");
                self.stores
                    .prune(self.key, *output, generations)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
        }
        Ok(None)
    }

    /// Generates `generation` of the key (a provider call): the version to publish.
    pub(super) async fn generate(
        &self,
        generation: u32,
        activates_at: SystemTime,
    ) -> Result<StoredVersion, String> {
        let key = self.key;
        let context = crate::binding::context(&key.encryption_context, &key.name, generation);
        let pair = self
            .provider
            .generate(&GenerateRequest {
                name: &key.name,
                spec: key.spec,
                kms_key_id: &key.kms_key_id,
                encryption_context: &context,
                grant_tokens: &key.grant_tokens,
                include_plaintext: key.include_plaintext,
            })
            .await
            .map_err(|e| {
                tracing::debug!(key = %key.name, kind = e.label(), "GenerateDataKeyPair failed");
                self.failing(FailureReason::of_provider(&e));
                format!("key {:?}: {e}", key.name)
            })?;
        let meta = VersionMeta::new(key, generation, &pair, self.now, activates_at);
        Ok(StoredVersion {
            meta,
            public_key_der: pair.public_key_der,
            private_key_ciphertext: pair.private_key_ciphertext,
            private_key: if key.include_plaintext {
                pair.private_key
            } else {
                None
            },
        })
    }

    pub(super) async fn decrypt(
        &self,
        meta: &VersionMeta,
        ciphertext: &[u8],
    ) -> Result<PrivateKey, String> {
        self.provider
            .decrypt(&DecryptRequest {
                name: &self.key.name,
                ciphertext,
                kms_key_arn: &meta.kms_key_arn,
                encryption_context: &meta.encryption_context,
                grant_tokens: &self.key.grant_tokens,
            })
            .await
            .map_err(|e| {
                self.failing(FailureReason::of_provider(&e));
                format!("key {:?}: {e}", self.key.name)
            })
    }

    pub(super) async fn link(
        &self,
        index: usize,
        generation: u32,
        link: Link,
    ) -> Result<(), String> {
        self.stores
            .link(self.key, index, generation, link)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Publishes a newly generated version on every output ([`Stores::publish_version`]; a
    /// staged one is linked `next`, a current one waits for the activate step). When a secret already
    /// holds another pair as this generation (another host won the race to rotate), that pair
    /// is adopted: read back, decrypted when the plaintext is wanted, written everywhere; the
    /// new pair is dropped unseen.
    async fn write_or_adopt(&self, version: StoredVersion, link: Link) -> Result<(), String> {
        let all = self.all_outputs();
        let generation = version.meta.generation;
        match self
            .stores
            .publish_version(self.key, &all, Arc::new(version), link)
            .await
        {
            Ok(()) => Ok(()),
            Err((Some(mut winner), StoreError::Taken { mut location, .. })) => {
                // A backend whose request-token check is not atomic (LocalStack) may replace
                // the stored pair once more while this host adopts it: adopt what is stored
                // then, a bounded number of times.
                for attempt in 1.. {
                    tracing::info!(key = %self.key.name, generation, %location,
                        "another writer stored this generation first: adopting its pair");
                    let adopted = self
                        .stores
                        .read_version(self.key, winner, generation)
                        .await
                        .map_err(|e| self.fail(e))?;
                    let origin = crate::binding::origin(self.key, winner, generation);
                    let adopted = self.prove(adopted, generation, &origin).await?;
                    match self
                        .stores
                        .publish_version(self.key, &all, Arc::new(adopted), link)
                        .await
                    {
                        Ok(()) => break,
                        Err((Some(next), StoreError::Taken { location: at, .. }))
                            if attempt < 4 =>
                        {
                            (winner, location) = (next, at);
                        }
                        Err((_, e)) => return Err(self.fail(e)),
                    }
                }
                // `current` moves in the activate step, with every output's.
                if link == Link::Next {
                    for i in self.secrets_last(&all) {
                        self.link(i, generation, link).await?;
                    }
                }
                Ok(())
            }
            Err((_, err)) => Err(self.fail(err)),
        }
    }

    /// Whether output `index` is a secret: shared with other hosts and writable by anyone
    /// with `secretsmanager:PutSecretValue`, so what it holds is proven before it is copied.
    pub(super) fn is_secret(&self, index: usize) -> bool {
        matches!(
            self.key.outputs[index],
            crate::manifest::Output::SecretsManager(_)
        )
    }
}
