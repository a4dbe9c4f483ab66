//! Cheap sweeps: a key's secret is checked from its version ids, not read.
//!
//! One `ListSecrets` page (100 secrets of this scope, tags and `SecretVersionsToStages`
//! included) stands in for a `DescribeSecret` per key. What a version holds is read once per
//! host: Secrets Manager versions are immutable and keyprov's version id is the request token
//! of its generation, so (secret ARN, version id) names one content forever; what it held is
//! cached in `<stateDir>/ledger/secret-versions-*.json`. A sweep reads values only for versions
//! this host has not seen yet (`BatchGetSecretValue`, 20 secrets a call, for the version that
//! holds `AWSCURRENT`; anything else is read by version id as before).
//!
//! A listing may lag behind writes, so it never decides an action: a key whose listed state
//! calls for work, or falls due soon, is observed again with `DescribeSecret`
//! ([`crate::store::Stores::observe_all`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::SecretsManagerStore;
use super::beacon::Plan;
use super::layout::{self, CURRENT, PENDING};
use super::versions::Described;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::{ObservedOutput, ObservedVersion};
use crate::store::StoreError;

/// Name of the cache under `<stateDir>/ledger/`: `secret-versions-0.json` to `-f.json`, one
/// shard per ARN hash (a ledger file is read up to 1 MiB).
const RECORD: &str = "secret-versions";
/// Shards of the cache.
const SHARDS: usize = 16;
/// Secrets a `BatchGetSecretValue` call reads (the API's maximum with a list of ids).
const BATCH: usize = 20;
/// Most secrets one sweep lists; beyond, keys are observed directly.
const MAX_LISTED: usize = 20_000;
/// Most secrets cached in memory (a converged secret needs one version: its current one).
const MAX_CACHED: usize = 30_000;
/// Largest shard written (a ledger file is read up to 1 MiB; a version takes about 500 bytes,
/// so about 28,000 keys are swept without reading after a restart).
const MAX_BYTES: usize = 900_000;
/// Most version values kept in memory for one process (see [`Cache::value`]).
const MAX_VALUES: usize = 1024;
/// A key whose next event is this close is observed directly: the decision to act is made on
/// fresh state, never on a listing that may lag.
pub const DUE_MARGIN: Duration = Duration::from_secs(60);
/// In the daemon, a key whose rotation is held until this host's turn is observed directly by
/// a pass that starts this close to that turn (it may reach it); earlier passes take it from the
/// listing, and the wake at the turn looks at it directly.
pub const TURN_MARGIN: Duration = Duration::from_secs(5);

/// What each secret held per version, by secret ARN (a secret deleted and created again under
/// the same name has another ARN, so nothing carries over to it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    secrets: BTreeMap<String, CachedSecret>,
}

/// The versions of one secret this host read whole and checked.
#[derive(Debug, Serialize, Deserialize)]
struct CachedSecret {
    /// The key pair it holds (version ids are only meaningful for it).
    key: String,
    /// Version id -> what it holds.
    #[serde(with = "compact")]
    versions: BTreeMap<String, ObservedVersion>,
}

/// A cached version on disk as one short line (a JSON array in a string): half the size of
/// the pretty-printed struct.
mod compact {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::observed::ObservedVersion;

    type Packed = (
        u32,
        String,
        u64,
        u32,
        u64,
        u32,
        String,
        String,
        String,
        bool,
    );

    fn pack(v: &ObservedVersion) -> Option<String> {
        let created = v.created_at.duration_since(UNIX_EPOCH).ok()?;
        let activates = v.activates_at.duration_since(UNIX_EPOCH).ok()?;
        let packed: Packed = (
            v.generation,
            v.spec_fingerprint.clone(),
            created.as_secs(),
            created.subsec_nanos(),
            activates.as_secs(),
            activates.subsec_nanos(),
            v.public_key_sha256.clone(),
            v.key_pair_spec.clone(),
            v.kms_key_arn.clone(),
            v.bound,
        );
        serde_json::to_string(&packed).ok()
    }

    fn unpack(text: &str) -> Option<ObservedVersion> {
        let (generation, fingerprint, cs, cn, a_s, an, sha, spec, kms, bound): Packed =
            serde_json::from_str(text).ok()?;
        let at = |secs, nanos| UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
        Some(ObservedVersion {
            generation,
            spec_fingerprint: fingerprint,
            created_at: at(cs, cn)?,
            activates_at: at(a_s, an)?,
            public_key_sha256: sha,
            key_pair_spec: spec,
            kms_key_arn: kms,
            bound,
        })
    }

    pub fn serialize<S: Serializer>(
        versions: &BTreeMap<String, ObservedVersion>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let packed: BTreeMap<&String, String> = versions
            .iter()
            .filter_map(|(id, v)| Some((id, pack(v)?)))
            .collect();
        packed.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, ObservedVersion>, D::Error> {
        let packed = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(packed
            .into_iter()
            .filter_map(|(id, text)| Some((id, unpack(&text)?)))
            .collect())
    }

    /// A version packed and unpacked again (tests).
    #[cfg(test)]
    pub fn round_trip(v: &ObservedVersion) -> Option<ObservedVersion> {
        unpack(&pack(v)?)
    }
}

/// The cache of version contents, loaded on first use and saved by [`Cache::save`].
#[derive(Default)]
pub(super) struct Cache {
    /// Where it persists; `None`: in memory only (and no sweep).
    state_dir: Option<PathBuf>,
    record: Mutex<Option<Record>>,
    dirty: AtomicBool,
    /// Values this process read of versions the beacon named, by (secret ARN, version id):
    /// the copy into files and its proof take them from here instead of reading them again
    /// (a version id names one content forever). Only for this process; wiped when dropped.
    values: Mutex<HashMap<(String, String), Zeroizing<String>>>,
}

impl Cache {
    /// A cache persisted under `state_dir`.
    pub(super) fn persisted(state_dir: &Path) -> Self {
        Cache {
            state_dir: Some(state_dir.to_path_buf()),
            ..Cache::default()
        }
    }

    /// Whether sweeps are on (a stateDir to keep what was read).
    pub(super) fn enabled(&self) -> bool {
        self.state_dir.is_some()
    }

    /// Where the cache persists.
    pub(super) fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        let mut guard = self.record.lock().expect("never poisoned");
        let record = guard.get_or_insert_with(|| {
            let mut record = Record::default();
            if let Some(dir) = &self.state_dir {
                for shard in 0..SHARDS {
                    let part: Record = shard_ledger(dir, shard).load();
                    record.secrets.extend(part.secrets);
                }
            }
            record
        });
        f(record)
    }

    /// What `version_id` of the described secret holds, when this host read it before.
    pub(super) fn cached(
        &self,
        described: &Described,
        key: &str,
        version_id: &str,
    ) -> Option<ObservedVersion> {
        let arn = described.arn.as_deref()?;
        self.with(|record| {
            let secret = record.secrets.get(arn).filter(|s| s.key == key)?;
            secret.versions.get(version_id).cloned()
        })
    }

    /// Remembers what `version_id` of the secret `arn` holds (read whole and checked, or
    /// written by this process and read back).
    pub(super) fn remember(
        &self,
        arn: Option<&str>,
        key: &str,
        version_id: &str,
        version: &ObservedVersion,
    ) {
        let Some(arn) = arn else {
            return;
        };
        self.with(|record| {
            if !record.secrets.contains_key(arn) && record.secrets.len() >= MAX_CACHED {
                return;
            }
            let secret = record
                .secrets
                .entry(arn.to_string())
                .or_insert_with(|| CachedSecret {
                    key: key.to_string(),
                    versions: BTreeMap::new(),
                });
            if secret.key != key {
                *secret = CachedSecret {
                    key: key.to_string(),
                    versions: BTreeMap::new(),
                };
            }
            secret
                .versions
                .insert(version_id.to_string(), version.clone());
        });
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Remembers a version this process wrote as `text` and read back whole (as a read of it
    /// would see it).
    pub(super) fn remember_written(
        &self,
        arn: Option<&str>,
        key: &KeyPair,
        secret: &str,
        text: &str,
        generation: u32,
    ) {
        if let Some(version) = checked(text, secret, &key.name, generation) {
            let id = layout::version_id(&key.name, generation);
            self.remember(arn, &key.name, &id, &version);
        }
    }

    /// Keeps what a version held, for [`Cache::value`] (a bounded number).
    pub(super) fn keep_value(&self, arn: &str, version_id: &str, text: &str) {
        let mut values = self.values.lock().expect("never poisoned");
        if values.len() < MAX_VALUES {
            values.insert(
                (arn.to_string(), version_id.to_string()),
                Zeroizing::new(text.to_string()),
            );
        }
    }

    /// What version `version_id` of the secret `arn` held when this process read it.
    pub(super) fn value(&self, arn: &str, version_id: &str) -> Option<Zeroizing<String>> {
        let values = self.values.lock().expect("never poisoned");
        values
            .get(&(arn.to_string(), version_id.to_string()))
            .cloned()
    }

    /// Forgets secrets a complete listing no longer shows, and versions a sweep will not read
    /// again: those holding neither `AWSCURRENT` nor `AWSPENDING` and older than the version
    /// holding `AWSCURRENT` (a previous generation).
    fn retain(&self, listing: &Listing) {
        let changed = self.with(|record| {
            let before: usize = record.secrets.values().map(|s| s.versions.len()).sum();
            record.secrets.retain(|arn, secret| {
                let Some(listed) = listing.by_arn.get(arn) else {
                    return false;
                };
                let Some(stages) = listed.version_ids_to_stages() else {
                    return false;
                };
                let linked = |id: &str| {
                    stages
                        .get(id)
                        .is_some_and(|labels| labels.iter().any(|l| l == CURRENT || l == PENDING))
                };
                let current = secret
                    .versions
                    .iter()
                    .filter(|(id, _)| {
                        stages
                            .get(*id)
                            .is_some_and(|l| l.iter().any(|l| l == CURRENT))
                    })
                    .map(|(_, v)| v.generation)
                    .max();
                secret.versions.retain(|id, v| {
                    stages.contains_key(id)
                        && (linked(id) || current.is_none_or(|c| v.generation > c))
                });
                !secret.versions.is_empty()
            });
            let after: usize = record.secrets.values().map(|s| s.versions.len()).sum();
            before != after
        });
        if changed {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache when it changed (a failure only costs reads again later).
    pub(super) fn save(&self) {
        let Some(dir) = &self.state_dir else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut guard = self.record.lock().expect("never poisoned");
        let Some(record) = guard.as_mut() else { return };
        let mut shards: Vec<Record> = (0..SHARDS).map(|_| Record::default()).collect();
        for (arn, secret) in std::mem::take(&mut record.secrets) {
            shards[shard_of(&arn)].secrets.insert(arn, secret);
        }
        for (index, shard) in shards.iter_mut().enumerate() {
            // A shard past what a ledger file may hold would be refused whole when read:
            // secrets past the budget are left out instead (read again when swept).
            while serde_json::to_vec_pretty(&*shard).map_or(0, |b| b.len()) > MAX_BYTES {
                let keep = shard.secrets.len() * 9 / 10;
                let dropped: Vec<String> = shard.secrets.keys().skip(keep).cloned().collect();
                for arn in dropped {
                    shard.secrets.remove(&arn);
                }
            }
            if let Err(err) = shard_ledger(dir, index).save(&*shard) {
                tracing::warn!("{err}");
            }
        }
        for shard in shards {
            record.secrets.extend(shard.secrets);
        }
    }
}

/// Shard `index` of the cache.
fn shard_ledger(state_dir: &Path, index: usize) -> crate::ledger::Ledger {
    crate::ledger::Ledger::new(state_dir, &format!("{RECORD}-{index:x}"))
}

/// The shard of a secret (FNV-1a of its ARN: stable across releases and hosts).
pub(super) fn shard_of(arn: &str) -> usize {
    let hash = arn.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % SHARDS as u64) as usize
}

/// The secrets of this scope as one sweep listed them, each as `DescribeSecret` would say.
#[derive(Default)]
pub struct Listing {
    by_arn: HashMap<String, DescribeSecretOutput>,
    /// Secret name -> ARN.
    names: HashMap<String, String>,
    /// ARNs of the entries described (`DescribeSecret`, consistent) in this sweep: as fresh
    /// as a direct observation, so a key whose secrets all are need not be described again.
    fresh: std::collections::HashSet<String>,
    /// ARN -> when its entry was described (Unix seconds by AWS's clock, a lower bound; see
    /// [`super::beacon`]'s covered descriptions): a bump older than that names nothing new.
    described_at: HashMap<String, u64>,
}

impl Listing {
    /// The listed secret a manifest's `secretId` (a name or an ARN) names.
    fn get(&self, secret_id: &str) -> Option<&DescribeSecretOutput> {
        self.by_arn
            .get(secret_id)
            .or_else(|| self.by_arn.get(self.names.get(secret_id)?))
    }

    /// Adds a listed secret.
    pub(super) fn insert(&mut self, entry: DescribeSecretOutput) {
        let (Some(arn), Some(name)) = (entry.arn(), entry.name()) else {
            return;
        };
        self.names.insert(name.to_string(), arn.to_string());
        self.by_arn.insert(arn.to_string(), entry);
    }

    /// Adds a secret this sweep described (see [`Listing::is_fresh`]).
    pub(super) fn insert_fresh(&mut self, entry: DescribeSecretOutput) {
        if let Some(arn) = entry.arn() {
            self.fresh.insert(arn.to_string());
        }
        self.insert(entry);
    }

    /// Notes that the entry of `arn` is a `DescribeSecret` answer sent at `at` (Unix seconds by
    /// AWS's clock, no later than the answer), keeping the latest.
    pub(super) fn set_described_at(&mut self, arn: &str, at: u64) {
        let had = self.described_at.entry(arn.to_string()).or_insert(at);
        *had = (*had).max(at);
    }

    /// When the entry of the secret `secret_id` names was described, if it was (see
    /// [`Listing::set_described_at`]).
    pub(super) fn described_at(&self, secret_id: &str) -> Option<u64> {
        self.described_at.get(self.arn_of(secret_id)?).copied()
    }

    /// When the entry of `arn` was described, if it was.
    pub(super) fn described_at_arn(&self, arn: &str) -> Option<u64> {
        self.described_at.get(arn).copied()
    }

    /// Whether the secret `secret_id` names was described in this sweep, not listed.
    pub fn is_fresh(&self, secret_id: &str) -> bool {
        self.arn_of(secret_id)
            .is_some_and(|arn| self.fresh.contains(arn))
    }

    /// Takes out the listed secret `secret_id` (a name or an ARN) names.
    pub(super) fn remove(&mut self, secret_id: &str) {
        let arn = self.arn_of(secret_id).map(str::to_string);
        if let Some(arn) = arn
            && let Some(entry) = self.by_arn.remove(&arn)
        {
            self.described_at.remove(&arn);
            if let Some(name) = entry.name() {
                self.names.remove(name);
            }
        }
    }

    /// The ARN of the listed secret `secret_id` (a name or an ARN) names.
    pub(super) fn arn_of(&self, secret_id: &str) -> Option<&str> {
        self.get(secret_id)?.arn()
    }

    /// The name of the listed secret `secret_id` (a name or an ARN) names.
    pub(super) fn name_of(&self, secret_id: &str) -> Option<&str> {
        self.get(secret_id)?.name()
    }

    /// Every listed secret by ARN.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&String, &DescribeSecretOutput)> {
        self.by_arn.iter()
    }

    /// How many secrets were listed.
    pub fn len(&self) -> usize {
        self.by_arn.len()
    }

    /// Whether nothing was listed.
    pub fn is_empty(&self) -> bool {
        self.by_arn.is_empty()
    }
}

impl SecretsManagerStore {
    /// Turns sweeps on, with what was read cached under `state_dir`.
    pub fn enable_sweep(&mut self, state_dir: &Path) {
        self.sweep = Cache::persisted(state_dir);
    }

    /// Whether sweeps are on.
    pub fn sweeps(&self) -> bool {
        self.sweep.enabled()
    }

    /// Saves what this reconcile read (see [`Cache::save`]).
    pub fn save_sweep(&self) {
        self.sweep.save();
        self.save_listing();
    }

    /// Lists every secret of this scope (`ListSecrets` filtered by the scope tag, 100 a page),
    /// unless the change beacon says what changed since the last listing (see
    /// [`super::beacon`]: the remembered listing stands in for it, with the secrets named since
    /// described again); then reads what this host has not seen of the versions holding
    /// `AWSCURRENT` of `keys`' secrets (`BatchGetSecretValue`, 20 a call, after a listing;
    /// `GetSecretValue` each after the beacon named a few).
    pub async fn sweep(&self, keys: &[KeyPair]) -> Result<Listing, StoreError> {
        let seen = self.read_beacon().await;
        match self.plan_sweep(&seen, keys) {
            Plan::Remembered(listing) => {
                tracing::debug!("sweep: the change beacon names nothing new; not listing");
                self.read_unseen(keys, &listing, true).await;
                return Ok(listing);
            }
            Plan::Describe {
                mut listing,
                named,
                listed,
            } => {
                tracing::debug!(
                    "sweep: the change beacon names {} of this host's secrets; not listing",
                    named.len()
                );
                self.describe_into(&mut listing, &named).await;
                self.sweep.retain(&listing);
                self.remember_listing(&listing, &seen, Some(listed));
                self.read_unseen(keys, &listing, false).await;
                return Ok(listing);
            }
            Plan::List => {}
        }
        let mut listing = Listing::default();
        let mut token = None;
        loop {
            let page = self.list_scope_page(token).await?;
            for entry in page.secret_list() {
                let (Some(arn), Some(name)) = (entry.arn(), entry.name()) else {
                    continue;
                };
                let described = DescribeSecretOutput::builder()
                    .arn(arn)
                    .name(name)
                    .set_kms_key_id(entry.kms_key_id().map(str::to_string))
                    .set_tags(Some(entry.tags().to_vec()))
                    .set_version_ids_to_stages(entry.secret_versions_to_stages().cloned())
                    .set_deleted_date(entry.deleted_date().cloned())
                    .build();
                listing.names.insert(name.to_string(), arn.to_string());
                listing.by_arn.insert(arn.to_string(), described);
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
            if listing.len() >= MAX_LISTED {
                // Incomplete: keys it misses are observed directly; nothing is forgotten.
                self.read_unseen(keys, &listing, true).await;
                return Ok(listing);
            }
        }
        // A listing may lag behind the latest writes: what the beacon names as written just
        // before is described (consistent).
        let recent = self.recent(&seen, keys, &listing);
        self.describe_into(&mut listing, &recent).await;
        self.sweep.retain(&listing);
        self.remember_listing(&listing, &seen, None);
        self.read_unseen(keys, &listing, true).await;
        Ok(listing)
    }

    /// The secret output as the listing shows it, its versions served from what this host
    /// read before; `None` when it is not listed, not keyprov's, or holds a version this host
    /// has not read (it is then observed directly).
    pub async fn observe_listed(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        listing: &Listing,
    ) -> Option<ObservedOutput> {
        let entry = listing.get(&output.secret_id)?;
        let described = self.accept(&key.name, &output.secret_id, entry).ok()?;
        if listing.is_fresh(&output.secret_id) {
            // Described in this sweep: the pass's later steps need not describe it again.
            self.remember_description(&output.secret_id, entry);
        }
        let current = match described.current() {
            Some(generation) => described.id_of(generation),
            None => described.holder(CURRENT),
        };
        let next = described.next().map(|(id, _)| id);
        let all_seen = [current, next]
            .into_iter()
            .flatten()
            .all(|id| self.sweep.cached(&described, &key.name, id).is_some());
        if !all_seen {
            return None;
        }
        self.observe_described(key, output, Some(described))
            .await
            .ok()
    }
}

/// What a version's SecretString holds, when it is whole and exactly `generation` of `key`
/// (anything else is left to the direct read, which reports it).
fn checked(text: &str, secret: &str, key: &str, generation: u32) -> Option<ObservedVersion> {
    if generation == 0 {
        return None;
    }
    let parts = layout::parse(text, secret, generation).ok()?;
    let version = layout::whole(parts, key, secret).ok()?;
    (version.meta.generation == generation)
        .then(|| version.meta.observed().ok())
        .flatten()
}

/// Whether a key observed from a listing is settled enough to take as it is: nothing to do and
/// nothing due within [`DUE_MARGIN`]. Otherwise it is observed directly before anything is
/// decided.
///
/// `turn`: in the daemon, the key's scheduled rotation and this host's turn at it
/// (`(due, turn)`, [`crate::fleet::offset::turn`]). The daemon holds a scheduled generation
/// until this host's turn ([`crate::fleet::offset::hold_back`]) and observes the key directly
/// then, so near or past the due time the key is settled while that turn is more than
/// [`TURN_MARGIN`] away and nothing but the rotation is to do: the listing decides no action
/// (the held generation waits; its wake is the turn). (Until stop 26 the turn had to be
/// [`DUE_MARGIN`] away: a resync within a minute before a host's turn described every key due.)
pub fn settled(
    key: &KeyPair,
    outputs: &[ObservedOutput],
    now: SystemTime,
    turn: Option<(SystemTime, SystemTime)>,
) -> bool {
    let far = |at: SystemTime| at > now + DUE_MARGIN;
    if crate::plan::unplannable(key, outputs).is_some() {
        return false;
    }
    let plan = crate::plan::plan_key(key, outputs, now, None);
    let next = crate::plan::next_event(key, outputs, now);
    if plan.is_empty() && next.is_none_or(far) {
        return true;
    }
    let Some((due, turn)) = turn else {
        return false;
    };
    let scheduled = |a: &crate::plan::Action| {
        matches!(
            a,
            crate::plan::Action::Generate {
                reason: crate::plan::Reason::RotationDue,
                ..
            }
        )
    };
    turn > now + TURN_MARGIN
        && next.is_none_or(|at| at >= due)
        && plan.iter().all(scheduled)
        && crate::fleet::offset::plan_before_due(key, outputs, due).is_empty()
}

mod read;
#[cfg(test)]
mod tests;
