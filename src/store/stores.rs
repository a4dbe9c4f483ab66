//! [`Stores`]: every kind of store of one reconcile, and the one place that hands each output
//! of a key to the store of its kind.

use std::sync::Arc;

use futures_util::StreamExt;

use super::{
    FileStore, RepairInput, SecretsManagerStore, Store, StoreError, StoredVersion, VersionParts,
    secrets_manager::{Limiter, Listing, settled},
};
use crate::config::AwsSettings;
use crate::manifest::{KeyPair, Output};
use crate::observed::{Observed, ObservedOutput};
use crate::plan::Link;

/// Secrets Manager observations in flight at once.
const OBSERVE_CONCURRENCY: usize = 32;

/// The stores of one reconcile. [`Stores::finish`] waits for writes handed to a batch writer.
pub struct Stores {
    files: FileStore,
    secrets: SecretsManagerStore,
    limiter: Arc<Limiter>,
    /// In the daemon: this host's turns at scheduled rotations (see [`Stores::with_turns`]).
    turns: Option<Turns>,
    /// Stat fingerprints of derived public files (see [`Stores::with_fingerprints`]).
    fingerprints: Option<Arc<crate::fingerprints::Fingerprints>>,
}

/// What tells this host's turn at a key's scheduled rotation.
struct Turns {
    fleet: crate::fleet::FleetSettings,
    host: String,
    consumer: bool,
}

impl Stores {
    /// The stores, with AWS `settings` for Secrets Manager (its client is built on first use)
    /// and `limiter` pacing its requests.
    pub fn new(settings: AwsSettings, scope: String, limiter: Arc<Limiter>) -> Self {
        Stores {
            files: FileStore::start(),
            secrets: SecretsManagerStore::new(settings, scope, limiter.clone()),
            limiter,
            turns: None,
            fingerprints: None,
        }
    }

    /// Checks derived public files (`public.jwk`, `public.pub`, `jwks.json`, config JWK
    /// Sets) by a stat against the fingerprints kept under `state_dir` (read when it does
    /// not match), recording those read and found right; written at [`Stores::finish`]. For
    /// the passes that hold the stateDir lock.
    pub fn with_fingerprints(mut self, state_dir: &std::path::Path) -> Self {
        self.fingerprints = Some(Arc::new(crate::fingerprints::Fingerprints::new(state_dir)));
        self
    }

    /// The fingerprints of derived public files, when this pass keeps them.
    pub fn fingerprints(&self) -> Option<&crate::fingerprints::Fingerprints> {
        self.fingerprints.as_deref()
    }

    /// For the daemon's passes, which hold a scheduled generation until this host's turn
    /// (its fleet offset; a consumer's after the window): a sweep takes a key near or past its
    /// due time from the listing while that turn is more than `DUE_MARGIN` (60 s) away (see
    /// [`settled`]); the pass at the turn observes it directly.
    pub fn with_turns(mut self, fleet: &crate::fleet::FleetSettings) -> Self {
        self.turns = Some(Turns {
            host: fleet.host_id(),
            consumer: fleet.role == crate::fleet::Role::Consumer,
            fleet: fleet.clone(),
        });
        self
    }

    /// Checks secrets from their version ids ([`SecretsManagerStore::sweep`]), keeping what
    /// was read under `state_dir`.
    pub fn with_sweep(mut self, state_dir: &std::path::Path) -> Self {
        self.secrets.enable_sweep(state_dir);
        self
    }

    /// Skips a sweep's listing while the scope's change beacon is unchanged; a writer bumps it
    /// at [`Stores::finish`] after writing a secret (see [`SecretsManagerStore::bump_beacon`]).
    pub fn with_beacon(mut self, settings: super::secrets_manager::BeaconSettings) -> Self {
        self.secrets.enable_beacon(settings);
        self
    }

    /// The Secrets Manager store (for orphan listing and pruning).
    pub fn secrets(&self) -> &SecretsManagerStore {
        &self.secrets
    }

    /// The rate limit every AWS request of this reconcile waits for (KMS and Secrets Manager).
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Waits until every write handed to a batch writer is done (when this is the last
    /// handle; otherwise the writer stops when the last one goes).
    pub async fn finish(self: Arc<Self>) {
        // The bump first, then what this sweep read and saw of the beacon.
        self.secrets.bump_beacon().await;
        self.secrets.save_sweep();
        if let Some(fingerprints) = &self.fingerprints {
            fingerprints.save();
        }
        if let Ok(stores) = Arc::try_unwrap(self) {
            stores.files.finish().await;
        }
    }

    /// Observes every output of `key`, in manifest order.
    pub async fn observe_key(&self, key: &KeyPair) -> Result<Vec<ObservedOutput>, String> {
        let mut observed = Vec::with_capacity(key.outputs.len());
        for output in &key.outputs {
            let one = match output {
                Output::File(file) => self.files.observe(key, file).await,
                Output::SecretsManager(secret) => self.secrets.observe(key, secret).await,
            };
            observed.push(one.map_err(|e| e.to_string())?);
        }
        Ok(observed)
    }

    /// Observes every key: file outputs on all cores, secrets concurrently (bounded).
    pub async fn observe_all(&self, keys: &[KeyPair]) -> Observed {
        let parents = crate::store::file::Parents::default();
        let fingerprints = self.fingerprints();
        let files: Vec<Result<Vec<Option<ObservedOutput>>, String>> =
            crate::parallel::map(keys, |key| {
                key.outputs
                    .iter()
                    .map(|output| match output {
                        Output::File(file) => {
                            FileStore::observe_in(key, file, &parents, fingerprints)
                                .map(Some)
                                .map_err(|e| e.to_string())
                        }
                        Output::SecretsManager(_) => Ok(None),
                    })
                    .collect()
            });
        let listing = self.sweep(keys).await;
        let listing = listing.as_ref();
        let now = crate::clock::now_unlogged();
        futures_util::stream::iter(keys.iter().zip(files))
            .map(|(key, files)| async move {
                (
                    key.name.clone(),
                    self.add_secrets(key, files, listing, now).await,
                )
            })
            .buffer_unordered(OBSERVE_CONCURRENCY)
            .collect()
            .await
    }

    /// A listing of this scope's secrets, when sweeps are on and more than one key has a
    /// secret (one key is cheaper to describe than a scope to list).
    async fn sweep(&self, keys: &[KeyPair]) -> Option<Listing> {
        let with_secrets = keys
            .iter()
            .filter(|k| {
                k.outputs
                    .iter()
                    .any(|o| matches!(o, Output::SecretsManager(_)))
            })
            .count();
        if !self.secrets.sweeps() || with_secrets < 2 {
            return None;
        }
        match self.secrets.sweep(keys).await {
            Ok(listing) => Some(listing),
            Err(err) => {
                tracing::debug!("sweep: {err}; describing every secret");
                None
            }
        }
    }

    /// Fills the secret slots of one key's observation: from the sweep's listing when the key
    /// is settled there, else directly.
    async fn add_secrets(
        &self,
        key: &KeyPair,
        files: Result<Vec<Option<ObservedOutput>>, String>,
        listing: Option<&Listing>,
        now: std::time::SystemTime,
    ) -> Result<Vec<ObservedOutput>, String> {
        let mut slots = files?;
        if let Some(listing) = listing
            && let Some(outputs) = self.listed(key, &slots, listing, now).await
        {
            return Ok(outputs);
        }
        for (slot, output) in slots.iter_mut().zip(&key.outputs) {
            if let Output::SecretsManager(secret) = output {
                let observed = self.secrets.observe(key, secret).await;
                *slot = Some(observed.map_err(|e| e.to_string())?);
            }
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// The key's outputs with its secrets as `listing` shows them, when every secret is listed
    /// and seen and the key is [`settled`] on that view.
    async fn listed(
        &self,
        key: &KeyPair,
        files: &[Option<ObservedOutput>],
        listing: &Listing,
        now: std::time::SystemTime,
    ) -> Option<Vec<ObservedOutput>> {
        let mut outputs = Vec::with_capacity(files.len());
        for (slot, output) in files.iter().zip(&key.outputs) {
            outputs.push(match (slot, output) {
                (Some(file), _) => file.clone(),
                (None, Output::SecretsManager(secret)) => {
                    self.secrets.observe_listed(key, secret, listing).await?
                }
                (None, Output::File(_)) => return None,
            });
        }
        // A secret described in this sweep (the change beacon named it) is fresh state: the
        // key is decided on it without describing it again.
        let fresh = key.outputs.iter().all(|o| match o {
            Output::SecretsManager(secret) => listing.is_fresh(&secret.secret_id),
            Output::File(_) => true,
        });
        let turn = self
            .turns
            .as_ref()
            .and_then(|t| crate::fleet::offset::turn(&t.fleet, &t.host, t.consumer, key, &outputs));
        (fresh || settled(key, &outputs, now, turn)).then_some(outputs)
    }

    /// Whether output `index` of `key` holds a complete `generation`.
    pub async fn has_version(
        &self,
        key: &KeyPair,
        index: usize,
        generation: u32,
    ) -> Result<bool, StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.has_version(key, o, generation).await,
            Output::SecretsManager(o) => self.secrets.has_version(key, o, generation).await,
        }
    }

    /// [`Store::read_version`] of output `index`.
    pub async fn read_version(
        &self,
        key: &KeyPair,
        index: usize,
        generation: u32,
    ) -> Result<StoredVersion, StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.read_version(key, o, generation).await,
            Output::SecretsManager(o) => self.secrets.read_version(key, o, generation).await,
        }
    }

    /// [`Store::read_parts`] of output `index`.
    pub async fn read_parts(
        &self,
        key: &KeyPair,
        index: usize,
        generation: u32,
    ) -> Result<VersionParts, StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.read_parts(key, o, generation).await,
            Output::SecretsManager(o) => self.secrets.read_parts(key, o, generation).await,
        }
    }

    /// Writes `version` to outputs `indices` of `key` and links it there. Secrets go first:
    /// a secret is shared by every host, so it decides which pair a generation holds. When
    /// one already holds another pair as this generation, nothing else is written and
    /// [`StoreError::Taken`] comes back with that output's index, for the caller to adopt it.
    /// A secret's `AWSCURRENT` moves last: the version is only published there (its own
    /// label) until every file output holds it and links it, so signers reading the secret
    /// never use a pair the files (and their jwks.json) could not take, on a full disk say.
    pub async fn write_version(
        &self,
        key: &KeyPair,
        indices: &[usize],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), (Option<usize>, StoreError)> {
        let files: Vec<_> = indices
            .iter()
            .filter_map(|&i| match &key.outputs[i] {
                Output::File(file) => Some(file),
                Output::SecretsManager(_) => None,
            })
            .collect();
        let defer = link == Link::Current && !files.is_empty();
        let mut activate = Vec::new();
        for &index in indices {
            if let Output::SecretsManager(secret) = &key.outputs[index] {
                let written = if defer {
                    self.secrets
                        .publish_version(key, secret, version.clone())
                        .await
                } else {
                    (self.secrets)
                        .write_version(key, &[secret], version.clone(), link)
                        .await
                        .map(|()| true)
                };
                if !written.map_err(|e| (Some(index), e))? {
                    activate.push((index, secret));
                }
            }
        }
        let generation = version.meta.generation;
        self.files
            .write_version(key, &files, version, link)
            .await
            .map_err(|e| (None, e))?;
        for (index, secret) in activate {
            self.secrets
                .link(key, secret, generation, link)
                .await
                .map_err(|e| (Some(index), e))?;
        }
        Ok(())
    }

    /// Publishes `version` on outputs `indices` without letting a signer use it yet: with
    /// [`Link::Next`] (or [`Link::Previous`], never signed with again) as
    /// [`Stores::write_version`]; with [`Link::Current`] the files link it as
    /// `next` (so their `jwks.json` and every JWK Set built from their links trust it) and the
    /// secrets hold it under its own label only, for the pass to move `current`/AWSCURRENT
    /// ([`Stores::link`]) once every verifier set holds it. Without a file output there is no
    /// set to publish to: the secrets take `AWSCURRENT` at once.
    pub async fn publish_version(
        &self,
        key: &KeyPair,
        indices: &[usize],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), (Option<usize>, StoreError)> {
        let files = indices
            .iter()
            .any(|&i| matches!(key.outputs[i], Output::File(_)));
        if link != Link::Current || !files {
            return self.write_version(key, indices, version, link).await;
        }
        for &index in indices {
            if let Output::SecretsManager(secret) = &key.outputs[index] {
                (self.secrets)
                    .publish_version(key, secret, version.clone())
                    .await
                    .map_err(|e| (Some(index), e))?;
            }
        }
        let files: Vec<_> = indices
            .iter()
            .filter_map(|&i| match &key.outputs[i] {
                Output::File(file) => Some(file),
                Output::SecretsManager(_) => None,
            })
            .collect();
        self.files
            .write_version(key, &files, version, Link::Next)
            .await
            .map_err(|e| (None, e))
    }

    /// [`Store::link`] of output `index`.
    pub async fn link(
        &self,
        key: &KeyPair,
        index: usize,
        generation: u32,
        link: Link,
    ) -> Result<(), StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.link(key, o, generation, link).await,
            Output::SecretsManager(o) => self.secrets.link(key, o, generation, link).await,
        }
    }

    /// [`Store::missing_plaintext`] of output `index`.
    pub async fn missing_plaintext(
        &self,
        key: &KeyPair,
        index: usize,
    ) -> Result<Vec<u32>, StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.missing_plaintext(key, o).await,
            Output::SecretsManager(o) => self.secrets.missing_plaintext(key, o).await,
        }
    }

    /// [`Store::repair`] of output `index`.
    pub async fn repair(
        &self,
        key: &KeyPair,
        index: usize,
        input: &RepairInput<'_>,
    ) -> Result<(), StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.repair(key, o, input).await,
            Output::SecretsManager(o) => self.secrets.repair(key, o, input).await,
        }
    }

    /// [`Store::prune`] of output `index`.
    pub async fn prune(
        &self,
        key: &KeyPair,
        index: usize,
        generations: &[u32],
    ) -> Result<(), StoreError> {
        match &key.outputs[index] {
            Output::File(o) => self.files.prune(key, o, generations).await,
            Output::SecretsManager(o) => self.secrets.prune(key, o, generations).await,
        }
    }
}
