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

use crate::hooks::{self, HookEvent};
use crate::manifest::KeyPair;
use crate::metrics::FailureReason;
use crate::plan::{Action, KeyPlan, Link};
use crate::provider::{DecryptRequest, GenerateRequest, PrivateKey, Provider};
use crate::retry::Journal;
use crate::store::{RepairInput, StoreError, StoredVersion, Stores, VersionMeta, VersionParts};

/// How hard the executor may push.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Provider requests in flight at once.
    pub concurrency: usize,
    /// Provider requests per second across all keys.
    pub max_requests_per_second: f64,
}

/// Where the executor keeps account: call counters, and the retry records of the keys.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// Counters of this execution.
    pub stats: Arc<Stats>,
    /// Retry records; hooks are recorded here before their event happens.
    pub journal: Arc<Journal>,
}

/// What happened to one key.
#[derive(Debug)]
pub struct KeyOutcome {
    /// Key name.
    pub name: String,
    /// `Err` with a message naming the key and what to do, and why, for metrics.
    pub result: Result<(), (String, FailureReason)>,
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
    stores: Arc<Stores>,
    keys: &[KeyPair],
    plans: Vec<KeyPlan>,
    now: SystemTime,
    limits: Limits,
    ledger: Ledger,
) -> Vec<KeyOutcome> {
    let Ledger { stats, journal } = ledger;
    let by_name: HashMap<&str, &KeyPair> = keys.iter().map(|k| (k.name.as_str(), k)).collect();
    // Only provider requests are bounded here: new versions queue for the one writer, so keys
    // waiting on the disk never leave the provider idle.
    let requests = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let limiter = stores.limiter().clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    for plan in plans {
        let Some(key) = by_name.get(plan.name.as_str()) else {
            continue;
        };
        let key = (*key).clone();
        let (provider, requests, stores, limiter, stats, journal) = (
            provider.clone(),
            requests.clone(),
            stores.clone(),
            limiter.clone(),
            stats.clone(),
            journal.clone(),
        );
        let task_name = key.name.clone();
        let handle = tasks.spawn(async move {
            let ctx = KeyContext {
                key: &key,
                provider: &*provider,
                requests: &requests,
                stores: &stores,
                limiter: &limiter,
                stats: &stats,
                journal: &journal,
                now,
                failure: std::sync::Mutex::new(None),
            };
            let result = ctx.run(&plan.actions).await.map_err(|err| {
                // Failures not from the provider are the outputs' (stores, retry records).
                let reason = ctx.failure.lock().ok().and_then(|mut f| f.take());
                (err, reason.unwrap_or(FailureReason::OutputWriteFailed))
            });
            match &result {
                Ok(()) => {
                    tracing::info!(key = %key.name, actions = plan.actions.len(), "reconciled")
                }
                Err((err, _)) => tracing::error!(key = %key.name, "{err}"),
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
                    result: Err((
                        format!(
                            "key {name:?}: internal error (the task panicked: {err}); nothing \
                             after the failing step was done. Please report this bug"
                        ),
                        FailureReason::Other,
                    )),
                    name,
                });
            }
        }
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    outcomes
}

/// A whole version of key `name` from the intact files of several outputs, if they add up to
/// one.
fn assemble(name: &str, parts: &[VersionParts]) -> Option<StoredVersion> {
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
        .find(|c| meta.ciphertext_matches(c))?;
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
    stores: &'a Stores,
    limiter: &'a DefaultDirectRateLimiter,
    stats: &'a Stats,
    journal: &'a Journal,
    now: SystemTime,
    /// Why the key failed, when a provider call or a proof said so.
    failure: std::sync::Mutex<Option<FailureReason>>,
}

impl<P: Provider> KeyContext<'_, P> {
    /// Remembers why the key is failing (the first reason given wins).
    fn failing(&self, reason: FailureReason) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
    }

    /// Every output index of the key.
    fn all_outputs(&self) -> Vec<usize> {
        (0..self.key.outputs.len()).collect()
    }

    /// `indices` with the secrets after the files: links move in this order, so a secret's
    /// `AWSCURRENT` (what signers on every host read) never moves before a file output (and
    /// its jwks.json) that failed to take the generation.
    fn secrets_last(&self, indices: &[usize]) -> Vec<usize> {
        let mut ordered = indices.to_vec();
        ordered.sort_by_key(|&i| self.is_secret(i));
        ordered
    }

    /// A store failure as this key's error.
    fn fail(&self, err: impl std::fmt::Display) -> String {
        format!("key {:?}: {err}", self.key.name)
    }

    /// The outputs among `indices` that lack `generation`.
    async fn lacking(&self, indices: &[usize], generation: u32) -> Vec<usize> {
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
    async fn expect_hooks(&self, event: HookEvent, generation: u32) -> Result<(), String> {
        if !hooks::listens(self.key, event) {
            return Ok(());
        }
        self.journal
            .update(&self.key.name, |r| r.add_hook(event, generation, self.now))
            .await
            .map_err(|e| self.fail(format!("{e}; nothing was changed")))
    }

    async fn run(&self, actions: &[Action]) -> Result<(), String> {
        let name = &self.key.name;
        for action in actions {
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
                    crate::metrics::global().generation(name, *reason);
                }
                Action::Activate { generation } => {
                    self.expect_hooks(HookEvent::Activate, *generation).await?;
                    let all = self.all_outputs();
                    let lacking = self.lacking(&all, *generation).await;
                    self.prove_held(&all, &lacking, *generation).await?;
                    self.copy(*generation, &lacking, Link::Current).await?;
                    for i in self.secrets_last(&all) {
                        self.link(i, *generation, Link::Current).await?;
                    }
                    tracing::info!(key = %name, generation, "activated staged generation");
                }
                Action::Copy {
                    generation,
                    outputs,
                    link,
                } => {
                    let lacking = self.lacking(outputs, *generation).await;
                    self.prove_held(outputs, &lacking, *generation).await?;
                    self.copy(*generation, &lacking, *link).await?;
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
                    tracing::info!(key = %name, output, reasons = %reasons.join("; "), "repairing");
                    self.repair(*output, *previous, damaged, reasons).await?;
                }
                Action::Prune {
                    output,
                    generations,
                } => {
                    tracing::info!(key = %name, output, ?generations, "pruning");
                    self.stores
                        .prune(self.key, *output, generations)
                        .await
                        .map_err(|e| self.fail(e))?;
                }
            }
        }
        crate::progress::beat();
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
            .map_err(|e| {
                self.failing(FailureReason::of_provider(&e));
                format!("key {:?}: {e}", self.key.name)
            })
    }

    async fn link(&self, index: usize, generation: u32, link: Link) -> Result<(), String> {
        self.stores
            .link(self.key, index, generation, link)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Writes a newly generated version to every output and links it. When a secret already
    /// holds another pair as this generation (another host won the race to rotate), that pair
    /// is adopted: read back, decrypted when the plaintext is wanted, written everywhere; the
    /// new pair is dropped unseen.
    async fn write_or_adopt(&self, version: StoredVersion, link: Link) -> Result<(), String> {
        let all = self.all_outputs();
        let generation = version.meta.generation;
        match self
            .stores
            .write_version(self.key, &all, Arc::new(version), link)
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
                        .write_version(self.key, &all, Arc::new(adopted), link)
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
                for i in self.secrets_last(&all) {
                    self.link(i, generation, link).await?;
                }
                Ok(())
            }
            Err((_, err)) => Err(self.fail(err)),
        }
    }

    /// Whether output `index` is a secret: shared with other hosts and writable by anyone
    /// with `secretsmanager:PutSecretValue`, so what it holds is proven before it is copied.
    fn is_secret(&self, index: usize) -> bool {
        matches!(
            self.key.outputs[index],
            crate::manifest::Output::SecretsManager(_)
        )
    }

    /// Proves a version read from a secret (see [`crate::binding::prove`]): only a pair that
    /// decrypts with the manifest's KMS key and context bound to this name and `generation`,
    /// and whose private key is the one of its public key, is believed. A version forged by
    /// someone who can write the secret, or a retired pair replayed as a new generation, is
    /// refused, naming `origin`. Keeps the plaintext when the key includes it.
    async fn prove(
        &self,
        mut version: StoredVersion,
        generation: u32,
        origin: &str,
    ) -> Result<StoredVersion, String> {
        let proof = {
            let _slot = self.provider_slot().await;
            crate::binding::prove(
                self.provider,
                self.key,
                &version,
                generation,
                crate::binding::Unbound::Refuse,
            )
            .await
        };
        let private = proof.map_err(|err| {
            self.failing(
                err.provider_error()
                    .map_or(FailureReason::InvalidCiphertext, FailureReason::of_provider),
            );
            format!(
                "key {name:?}: {origin} is not believed: {err}. Nothing was copied from it; \
                 if keyprov did not write it, remove it from the secret (or move its labels \
                 back), or replace the pair with `keyprov rotate {name} --now`",
                name = self.key.name
            )
        })?;
        if self.key.include_plaintext {
            version.private_key = Some(private);
        }
        Ok(version)
    }

    /// Proves `generation` in every secret among `outputs` that already holds it (not in
    /// `lacking`) before a label moves onto it there: a staged or unlinked version in a secret
    /// may have been put by anyone who can write the secret, under keyprov's request token.
    async fn prove_held(
        &self,
        outputs: &[usize],
        lacking: &[usize],
        generation: u32,
    ) -> Result<(), String> {
        for &i in outputs {
            if !self.is_secret(i) || lacking.contains(&i) {
                continue;
            }
            let version = self
                .stores
                .read_version(self.key, i, generation)
                .await
                .map_err(|e| self.fail(e))?;
            if self.held_locally(&version, generation).await {
                continue;
            }
            let origin = crate::binding::origin(self.key, i, generation);
            self.prove(version, generation, &origin).await?;
        }
        Ok(())
    }

    /// Whether a file output (keyprov's own local state) holds `generation` with the very
    /// pair `version` holds: then the secret's copy is the one this host wrote or proved when
    /// it copied it, and needs no Decrypt.
    async fn held_locally(&self, version: &StoredVersion, generation: u32) -> bool {
        for i in self.all_outputs() {
            if self.is_secret(i) {
                continue;
            }
            if let Ok(local) = self.stores.read_version(self.key, i, generation).await
                && local.meta.public_key_sha256 == version.meta.public_key_sha256
                && local.private_key_ciphertext == version.private_key_ciphertext
            {
                return true;
            }
        }
        false
    }

    /// Reads `generation` whole from the first output (other than `except`) holding an
    /// intact copy of it; failing that, puts it together from the intact files of every
    /// output (each checked against a meta.json that shares the generation's public key hash).
    async fn read_intact(
        &self,
        generation: u32,
        except: Option<usize>,
    ) -> Result<StoredVersion, String> {
        let name = &self.key.name;
        let mut problems = Vec::new();
        let mut parts = Vec::new();
        for i in self.all_outputs() {
            if !self
                .stores
                .has_version(self.key, i, generation)
                .await
                .unwrap_or(false)
            {
                continue;
            }
            if Some(i) != except {
                match self.stores.read_version(self.key, i, generation).await {
                    Ok(version) if self.is_secret(i) => {
                        let origin = crate::binding::origin(self.key, i, generation);
                        return self.prove(version, generation, &origin).await;
                    }
                    Ok(version) => return Ok(version),
                    Err(err) => problems.push(err.to_string()),
                }
            }
            if let Ok(found) = self.stores.read_parts(self.key, i, generation).await {
                parts.push(found);
            }
        }
        if let Some(version) = assemble(name, &parts) {
            if let Some(i) = (0..self.key.outputs.len()).find(|&i| self.is_secret(i)) {
                let origin = crate::binding::origin(self.key, i, generation);
                return self.prove(version, generation, &origin).await;
            }
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
        let mut version = self.read_intact(generation, None).await?;
        if self.key.include_plaintext && version.private_key.is_none() {
            let key = self
                .decrypt(&version.meta, &version.private_key_ciphertext)
                .await?;
            version.private_key = Some(key);
        }
        self.stores
            .write_version(self.key, targets, Arc::new(version), link)
            .await
            .map_err(|(_, e)| self.fail(e))
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
        let output = &self.key.outputs[index];
        let mut intact = Vec::with_capacity(damaged.len());
        for &generation in damaged {
            let mut version = self
                .read_intact(generation, Some(index))
                .await
                .map_err(|err| {
                    format!(
                        "{err}. Generation {generation} in {} is damaged ({}) and nothing was \
                         changed: restore it from a backup, or replace the pair with \
                         `keyprov rotate {name} --now`",
                        output.location(),
                        reasons.join("; ")
                    )
                })?;
            if self.key.include_plaintext && version.private_key.is_none() {
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                version.private_key = Some(key);
            }
            intact.push(version);
        }
        let mut input = RepairInput {
            include_plaintext: self.key.include_plaintext,
            plaintext: HashMap::new(),
            intact: intact.iter().collect(),
            previous,
        };
        if self.key.include_plaintext {
            let missing = self
                .stores
                .missing_plaintext(self.key, index)
                .await
                .map_err(|e| self.fail(e))?;
            for generation in missing {
                if damaged.contains(&generation) {
                    continue;
                }
                let version = self
                    .stores
                    .read_version(self.key, index, generation)
                    .await
                    .map_err(|e| self.fail(e))?;
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                input.plaintext.insert(generation, key);
            }
        }
        self.stores
            .repair(self.key, index, &input)
            .await
            .map_err(|e| self.fail(e))
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
            check_hooks_allowed: true,
        };
        let loaded = crate::manifest::load_bytes(Path::new("m.yaml"), manifest.as_bytes(), &ctx);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        let limiter = Arc::new(rate_limiter(100.0));
        let config = crate::config::Config::from_bytes(
            Path::new("c.yaml"),
            b"manifests: [m]\nstateDir: /tmp/s\n",
        )
        .unwrap();
        let stores = Arc::new(Stores::new(config.aws, "default".into(), limiter));
        let observed = stores.observe_all(&loaded.keys).await;
        let now = SystemTime::now();
        let plans = crate::plan::plan(&loaded.keys, &observed, now, None);
        let limits = Limits {
            concurrency: 2,
            max_requests_per_second: 100.0,
        };
        let ledger = Ledger {
            stats: Arc::default(),
            journal: Arc::new(crate::retry::Journal::load(crate::retry::RetryStore::new(
                state.path(),
            ))),
        };
        let outcomes = execute(
            Arc::new(PanickingProvider),
            stores,
            &loaded.keys,
            plans,
            now,
            limits,
            ledger,
        )
        .await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].name, "boom");
        let (err, reason) = outcomes[0].result.as_ref().unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        assert_eq!(*reason, FailureReason::Other);
    }
}
