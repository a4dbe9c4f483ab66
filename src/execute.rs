//! The executor: runs each key's actions, keys in parallel (bounded), provider calls paced by
//! one shared rate limit, new versions written in batches by one writer ([`GroupCommit`]).
//! A failing key never stops the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::group_commit::{Committer, GroupCommit};
use crate::hooks::{self, HookEvent};
use crate::manifest::{FileOutput, KeyPair, Output};
use crate::plan::{Action, KeyPlan, Link};
use crate::provider::{DecryptRequest, GenerateRequest, PrivateKey, Provider};
use crate::store::{StoredVersion, VersionMeta, file};

/// How hard the executor may push, and what hooks may see.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Provider requests in flight at once.
    pub concurrency: usize,
    /// Provider requests per second across all keys.
    pub max_requests_per_second: f64,
    /// Names of keyprov's environment variables that hooks also see (config `hooks.env`).
    pub hooks_env: Arc<[String]>,
}

/// What happened to one key.
#[derive(Debug)]
pub struct KeyOutcome {
    /// Key name.
    pub name: String,
    /// `Err` with a message naming the key and what to do.
    pub result: Result<(), String>,
}

/// Counters of one execution.
#[derive(Debug, Default)]
pub struct Stats {
    /// Provider calls made (generate and decrypt).
    pub provider_calls: AtomicUsize,
}

/// Runs the plans; returns one outcome per planned key.
pub async fn execute<P: Provider>(
    provider: Arc<P>,
    keys: &[KeyPair],
    plans: Vec<KeyPlan>,
    now: SystemTime,
    limits: Limits,
    stats: Arc<Stats>,
) -> Vec<KeyOutcome> {
    let by_name: HashMap<&str, &KeyPair> = keys.iter().map(|k| (k.name.as_str(), k)).collect();
    // Only provider requests are bounded here: new versions queue for the one writer, so keys
    // waiting on the disk never leave the provider idle.
    let requests = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let group_commit = GroupCommit::start();
    let limiter = Arc::new(rate_limiter(limits.max_requests_per_second));
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    for plan in plans {
        let Some(key) = by_name.get(plan.name.as_str()) else {
            continue;
        };
        let key = (*key).clone();
        let (provider, requests, committer, limiter, stats, hooks_env) = (
            provider.clone(),
            requests.clone(),
            group_commit.committer(),
            limiter.clone(),
            stats.clone(),
            limits.hooks_env.clone(),
        );
        let task_name = key.name.clone();
        let handle = tasks.spawn(async move {
            let ctx = KeyContext {
                key: &key,
                provider: &*provider,
                requests: &requests,
                committer: &committer,
                limiter: &limiter,
                stats: &stats,
                hooks_env: &hooks_env,
                now,
            };
            let result = ctx.run(&plan.actions).await;
            match &result {
                Ok(()) => {
                    tracing::info!(key = %key.name, actions = plan.actions.len(), "reconciled")
                }
                Err(err) => tracing::error!(key = %key.name, "{err}"),
            }
            KeyOutcome {
                name: key.name,
                result,
            }
        });
        names.insert(handle.id(), task_name);
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((id, outcome)) => {
                names.remove(&id);
                outcomes.push(outcome);
            }
            Err(err) => {
                // A panic is a bug, and the key it hit failed: never counted as success.
                let name = names.remove(&err.id()).unwrap_or_default();
                tracing::error!(key = %name, "the reconcile of this key panicked: {err}");
                outcomes.push(KeyOutcome {
                    result: Err(format!(
                        "key {name:?}: internal error (the task panicked: {err}); nothing after \
                         the failing step was done. Please report this bug"
                    )),
                    name,
                });
            }
        }
    }
    group_commit.finish().await;
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    outcomes
}

/// A whole version of key `name` from the intact files of several outputs, if they add up to
/// one.
fn assemble(name: &str, parts: &[file::VersionParts]) -> Option<StoredVersion> {
    let meta = parts
        .iter()
        .filter_map(|p| p.meta.as_ref().ok())
        .find(|m| m.name == name)?;
    let agree = |m: &VersionMeta| m.public_key_sha256 == meta.public_key_sha256;
    if parts
        .iter()
        .filter_map(|p| p.meta.as_ref().ok())
        .any(|m| !agree(m))
    {
        return None;
    }
    let public_key_der = parts
        .iter()
        .filter_map(|p| p.public_key_der.as_ref().ok())
        .find(|der| crate::store::public_key_sha256(der) == meta.public_key_sha256)?;
    let private_key_ciphertext = parts
        .iter()
        .filter_map(|p| p.private_key_ciphertext.as_ref().ok())
        .find(|c| file::ciphertext_matches(meta, c))?;
    Some(StoredVersion {
        meta: meta.clone(),
        public_key_der: public_key_der.clone(),
        private_key_ciphertext: private_key_ciphertext.clone(),
        private_key: None,
    })
}

/// A token bucket of one second's worth of requests.
pub fn rate_limiter(per_second: f64) -> DefaultDirectRateLimiter {
    let per_second = per_second.clamp(0.001, 1_000_000.0);
    let burst = NonZeroU32::new(per_second.ceil() as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
        .expect("period is positive")
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

struct KeyContext<'a, P: Provider> {
    key: &'a KeyPair,
    provider: &'a P,
    requests: &'a Semaphore,
    committer: &'a Committer,
    limiter: &'a DefaultDirectRateLimiter,
    stats: &'a Stats,
    hooks_env: &'a [String],
    now: SystemTime,
}

fn file_outputs(key: &KeyPair) -> impl Iterator<Item = (usize, &FileOutput)> {
    key.outputs.iter().enumerate().filter_map(|(i, o)| match o {
        Output::File(file) => Some((i, file)),
        Output::SecretsManager(_) => None,
    })
}

impl<P: Provider> KeyContext<'_, P> {
    fn file(&self, index: usize) -> Result<&FileOutput, String> {
        match &self.key.outputs[index] {
            Output::File(file) => Ok(file),
            other => Err(format!("{other}: not supported by this build yet")),
        }
    }

    async fn run(&self, actions: &[Action]) -> Result<(), String> {
        let name = &self.key.name;
        let mut events = Vec::new();
        for action in actions {
            tracing::debug!(key = %name, %action, "executing");
            match action {
                Action::Generate {
                    generation,
                    activates_at,
                    staged,
                    reason,
                } => {
                    tracing::info!(key = %name, generation, %reason, staged, "generating");
                    let version = self.generate(*generation, *activates_at).await?;
                    let link = if *staged { Link::Next } else { Link::Current };
                    let outputs = file_outputs(self.key).map(|(_, o)| o.clone()).collect();
                    self.committer
                        .commit(outputs, version, link)
                        .await
                        .map_err(|e| format!("key {name:?}: {e}"))?;
                    events.push((
                        if *staged {
                            HookEvent::Publish
                        } else {
                            HookEvent::Activate
                        },
                        *generation,
                    ));
                }
                Action::Activate { generation } => {
                    let lacking: Vec<usize> = file_outputs(self.key)
                        .filter(|(_, o)| !file::has_version(o, *generation).unwrap_or(false))
                        .map(|(i, _)| i)
                        .collect();
                    self.copy(*generation, &lacking, Link::Current).await?;
                    for (_, output) in file_outputs(self.key) {
                        self.link(output, *generation, Link::Current)?;
                    }
                    tracing::info!(key = %name, generation, "activated staged generation");
                    events.push((HookEvent::Activate, *generation));
                }
                Action::Copy {
                    generation,
                    outputs,
                    link,
                } => {
                    let lacking: Vec<usize> = outputs
                        .iter()
                        .copied()
                        .filter(|&i| {
                            self.file(i)
                                .is_ok_and(|o| !file::has_version(o, *generation).unwrap_or(false))
                        })
                        .collect();
                    self.copy(*generation, &lacking, *link).await?;
                    for &i in outputs {
                        self.link(self.file(i)?, *generation, *link)?;
                    }
                }
                Action::Repair {
                    output,
                    reasons,
                    previous,
                    damaged,
                } => {
                    tracing::info!(key = %name, output, reasons = %reasons.join("; "), "repairing");
                    self.repair(*output, *previous, damaged, reasons).await?;
                }
                Action::Prune {
                    output,
                    generations,
                } => {
                    tracing::info!(key = %name, output, ?generations, "pruning");
                    let out = self.file(*output)?;
                    file::prune(out, generations).map_err(|e| format!("key {name:?}: {e}"))?;
                }
            }
        }
        for (event, generation) in events {
            hooks::run(self.key, event, generation, self.hooks_env)
                .await
                .map_err(|e| {
                    format!("key {name:?}: generation {generation} is in place, but {e}")
                })?;
        }
        Ok(())
    }

    /// Waits for a free request slot and the rate limit; counts the call. The slot is held
    /// until the returned permit drops.
    async fn provider_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        let permit = self
            .requests
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.limiter.until_ready().await;
        self.stats.provider_calls.fetch_add(1, Ordering::Relaxed);
        permit
    }

    async fn generate(
        &self,
        generation: u32,
        activates_at: SystemTime,
    ) -> Result<StoredVersion, String> {
        let key = self.key;
        let _slot = self.provider_slot().await;
        let pair = self
            .provider
            .generate(&GenerateRequest {
                name: &key.name,
                spec: key.spec,
                kms_key_id: &key.kms_key_id,
                encryption_context: &key.encryption_context,
                grant_tokens: &key.grant_tokens,
                include_plaintext: key.include_plaintext,
            })
            .await
            .map_err(|e| {
                tracing::debug!(key = %key.name, kind = e.label(), "GenerateDataKeyPair failed");
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

    async fn decrypt(&self, meta: &VersionMeta, ciphertext: &[u8]) -> Result<PrivateKey, String> {
        let _slot = self.provider_slot().await;
        self.provider
            .decrypt(&DecryptRequest {
                name: &self.key.name,
                ciphertext,
                kms_key_arn: &meta.kms_key_arn,
                encryption_context: &meta.encryption_context,
                grant_tokens: &self.key.grant_tokens,
            })
            .await
            .map_err(|e| format!("key {:?}: {e}", self.key.name))
    }

    fn link(&self, output: &FileOutput, generation: u32, link: Link) -> Result<(), String> {
        file::link(output, generation, link).map_err(|e| format!("key {:?}: {e}", self.key.name))
    }

    /// Reads `generation` whole from the first output (other than `except`) holding an
    /// intact copy of it; failing that, puts it together from the intact files of every
    /// output (each checked against a meta.json that shares the generation's public key hash).
    fn read_intact(&self, generation: u32, except: Option<usize>) -> Result<StoredVersion, String> {
        let name = &self.key.name;
        let mut problems = Vec::new();
        let mut parts = Vec::new();
        for (i, output) in file_outputs(self.key) {
            if !file::has_version(output, generation).unwrap_or(false) {
                continue;
            }
            if Some(i) != except {
                match file::read_version(output, generation) {
                    Ok(version) => return Ok(version),
                    Err(err) => problems.push(err.to_string()),
                }
            }
            if let Ok(found) = file::read_parts(output, generation) {
                parts.push(found);
            }
        }
        if let Some(version) = assemble(name, &parts) {
            return Ok(version);
        }
        Err(if problems.is_empty() {
            format!("key {name:?}: no other output holds generation {generation} to copy from")
        } else {
            format!(
                "key {name:?}: no output holds an intact copy of generation {generation} ({})",
                problems.join("; ")
            )
        })
    }

    /// Copies `generation` from an output holding it intact to `targets`, and gives it `link`
    /// there (a new key directory appears only with its link).
    async fn copy(&self, generation: u32, targets: &[usize], link: Link) -> Result<(), String> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut version = self.read_intact(generation, None)?;
        if self.key.include_plaintext {
            let key = self
                .decrypt(&version.meta, &version.private_key_ciphertext)
                .await?;
            version.private_key = Some(key);
        }
        let outputs = targets
            .iter()
            .map(|&target| self.file(target))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = [file::NewVersion {
            outputs,
            version: &version,
            link,
        }];
        file::commit_versions(&batch)
            .pop()
            .expect("one result per item")
            .map_err(|e| format!("key {:?}: {e}", self.key.name))
    }

    /// Repairs output `index`: `damaged` generations are rewritten from an intact copy in
    /// another output; with none, the key fails and nothing is changed.
    async fn repair(
        &self,
        index: usize,
        previous: Option<u32>,
        damaged: &[u32],
        reasons: &[String],
    ) -> Result<(), String> {
        let name = &self.key.name;
        let output = self.file(index)?;
        let mut intact = Vec::with_capacity(damaged.len());
        for &generation in damaged {
            let mut version = self.read_intact(generation, Some(index)).map_err(|err| {
                format!(
                    "{err}. Generation {generation} in {} is damaged ({}) and nothing was \
                     changed: restore its files from a backup, or replace the pair with \
                     `keyprov rotate {name} --now`",
                    output.dir.display(),
                    reasons.join("; ")
                )
            })?;
            if self.key.include_plaintext {
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                version.private_key = Some(key);
            }
            intact.push(version);
        }
        let mut input = file::RepairInput {
            include_plaintext: self.key.include_plaintext,
            plaintext: HashMap::new(),
            intact: intact.iter().collect(),
            previous,
        };
        if self.key.include_plaintext {
            for generation in
                file::missing_plaintext(output).map_err(|e| format!("key {name:?}: {e}"))?
            {
                if damaged.contains(&generation) {
                    continue;
                }
                let version = file::read_version(output, generation)
                    .map_err(|e| format!("key {name:?}: {e}"))?;
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                input.plaintext.insert(generation, key);
            }
        }
        file::repair(output, &input).map_err(|e| format!("key {name:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn rate_limiter_allows_one_second_of_burst_then_paces() {
        let limiter = rate_limiter(5.0);
        for i in 0..5 {
            assert!(limiter.check().is_ok(), "request {i} of the burst");
        }
        assert!(
            limiter.check().is_err(),
            "the sixth request within the same instant waits"
        );
        let slow = rate_limiter(0.5);
        assert!(slow.check().is_ok());
        assert!(
            slow.check().is_err(),
            "below one per second the burst is one"
        );
    }

    /// A provider with a bug: every call panics.
    struct PanickingProvider;

    impl Provider for PanickingProvider {
        fn name(&self) -> &'static str {
            "panicking"
        }

        async fn generate(
            &self,
            _: &GenerateRequest<'_>,
        ) -> Result<crate::provider::GeneratedPair, crate::provider::ProviderError> {
            panic!("a bug in the provider")
        }

        async fn decrypt(
            &self,
            _: &DecryptRequest<'_>,
        ) -> Result<PrivateKey, crate::provider::ProviderError> {
            panic!("a bug in the provider")
        }
    }

    #[tokio::test]
    async fn a_panicking_key_task_is_a_failed_key() {
        let state = tempfile::tempdir().unwrap();
        let manifest = "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: boom}\n\
                        spec: {keyPairSpec: ECC_NIST_P256, kmsKeyId: alias/k, outputs: [{file: {}}]}\n";
        let ctx = crate::manifest::Context {
            state_dir: state.path(),
            output_roots: &[],
            hooks_allowed: &[],
        };
        let loaded = crate::manifest::load_bytes(Path::new("m.yaml"), manifest.as_bytes(), &ctx);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        let observed = crate::store::observe_all(&loaded.keys);
        let now = SystemTime::now();
        let plans = crate::plan::plan(&loaded.keys, &observed, now, None);
        let limits = Limits {
            concurrency: 2,
            max_requests_per_second: 100.0,
            hooks_env: Arc::from(Vec::new()),
        };
        let outcomes = execute(
            Arc::new(PanickingProvider),
            &loaded.keys,
            plans,
            now,
            limits,
            Arc::default(),
        )
        .await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].name, "boom");
        let err = outcomes[0].result.as_ref().unwrap_err();
        assert!(err.contains("panicked"), "{err}");
    }
}
