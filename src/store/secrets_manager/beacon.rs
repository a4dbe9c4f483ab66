//! The change beacon: one small secret per scope, `keyprov/beacon/<scope>`, that every writer
//! bumps (`PutSecretValue`) once per pass after it wrote a key's secret. A sweep describes it
//! first (one request): when it is what this host saw at its last complete listing, and that
//! listing is younger than `reconcile.fullSweepEvery` (jittered), the listing is skipped and the
//! remembered one (under `<stateDir>/ledger/secret-listing-*.json`) stands in for it.
//!
//! Safety rests on the order of effects: a writer bumps after its writes, a sweep describes the
//! beacon before it lists. A beacon value is trusted only once two listings in a row saw it (the
//! second one is at least a sweep interval later than the change, so a listing that lagged behind
//! the write is listed again). A forged or moved beacon can only cause a listing; a beacon that
//! cannot be read (no permission, an outage) means listing every sweep, with one WARN.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use serde::{Deserialize, Serialize};

use super::SecretsManagerStore;
use super::errors::{Failure, explain};
use super::layout::{CURRENT, SCOPE_TAG};
use super::sweep::Listing;

/// Name of a scope's beacon: `keyprov/beacon/<scope>`.
pub fn name(scope: &str) -> String {
    format!("keyprov/beacon/{scope}")
}

/// Tag marking the beacon (it carries the scope tag too, never `keyprov:managed`: it is no
/// key's secret and never an orphan).
pub const BEACON_TAG: &str = "keyprov:beacon";
/// `reconcile.fullSweepEvery` when unset.
pub const DEFAULT_FULL_SWEEP: Duration = Duration::from_secs(30 * 60);
/// Share of `fullSweepEvery` a full listing may come early by (hosts do not list in step).
const JITTER: f64 = 0.1;
/// What this host saw at its last complete listing: `<stateDir>/ledger/sweep-beacon.json`.
const HEADER: &str = "sweep-beacon";
/// The remembered listing: `secret-listing-0.json` to `-f.json`, one shard per ARN hash.
const LISTED: &str = "secret-listing";
/// How long after a beacon's change a listing surely shows the writes before it (by AWS's
/// clock: the beacon's `LastChangedDate` against the `Date` of AWS's latest response).
/// `ListSecrets` lags by seconds; a younger change is trusted only once a second listing saw it.
const LISTING_LAG: Duration = Duration::from_secs(60);
/// Shards of the remembered listing.
const SHARDS: usize = 16;
/// Largest shard written (a ledger file is read up to 1 MiB); secrets past it are left out
/// and, when a key needs them, described directly.
const MAX_BYTES: usize = 900_000;

/// One WARN per process when the beacon cannot be read, one when it cannot be written.
static WARNED_READ: AtomicBool = AtomicBool::new(false);
static WARNED_WRITE: AtomicBool = AtomicBool::new(false);

/// How this host uses the beacon.
#[derive(Debug, Clone)]
pub struct BeaconSettings {
    /// Longest time between two complete listings (`reconcile.fullSweepEvery`).
    pub full_sweep_every: Duration,
    /// What the beacon says wrote it (a hash of `fleet.hostId`); `None`: a consumer, which
    /// never writes it.
    pub by: Option<String>,
}

impl BeaconSettings {
    /// The settings `config` asks for (`reconcile.fullSweepEvery`, `fleet`).
    pub fn of(config: &crate::config::Config) -> Self {
        Self::new(
            config.reconcile.full_sweep_every,
            &config.fleet.host_id(),
            config.fleet.role == crate::fleet::Role::Consumer,
        )
    }

    /// The settings of a host: `by` is a short SHA-256 of `host_id` (the id itself is never
    /// written anywhere), and nothing when the host is a consumer.
    pub fn new(full_sweep_every: Duration, host_id: &str, consumer: bool) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, host_id.as_bytes());
        let by: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        BeaconSettings {
            full_sweep_every,
            by: (!consumer).then_some(by),
        }
    }
}

/// The beacon of one store: off until [`SecretsManagerStore::enable_beacon`].
#[derive(Default)]
pub(super) struct Beacon {
    settings: Option<BeaconSettings>,
    /// A key's secret was written since the last bump.
    wrote: AtomicBool,
    /// The listing of this process's sweep and its header, written by
    /// [`SecretsManagerStore::save_listing`] when the pass ends (read-only commands such as
    /// `status` never write it).
    pending: std::sync::Mutex<Option<(Vec<Shard>, Header)>>,
}

/// What this host saw at its last complete listing.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    scope: String,
    /// The beacon then (`None`: unreadable).
    token: Option<String>,
    /// The listing before that one saw the same beacon.
    trusted: bool,
    /// Written in every shard of that listing (a shard of another listing is not this one).
    stamp: String,
    /// Unix seconds after which the next sweep lists whatever the beacon says.
    list_after: u64,
}

/// A shard of the remembered listing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Shard {
    stamp: String,
    secrets: BTreeMap<String, Listed>,
}

/// One listed secret, as much as a sweep uses of it.
#[derive(Debug, Serialize, Deserialize)]
struct Listed {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms: Option<String>,
    tags: BTreeMap<String, String>,
    stages: BTreeMap<String, Vec<String>>,
}

/// The beacon as one sweep saw it before listing: its token, or `None` when it could not be
/// read (or beacons are off), and how long ago it changed by AWS's clock (when known).
pub(super) struct Seen(Option<String>, Option<Duration>);

impl SecretsManagerStore {
    /// Turns the change beacon on (with sweeps: see [`Self::enable_sweep`]).
    pub fn enable_beacon(&mut self, settings: BeaconSettings) {
        self.beacon.settings = Some(settings);
    }

    /// Notes that a key's secret was written: the pass bumps the beacon at its end.
    pub(super) fn note_write(&self) {
        self.beacon.wrote.store(true, Ordering::Relaxed);
    }

    /// Bumps the beacon when this store wrote a key's secret since the last bump (a writer's
    /// pass calls it once, at its end): `PutSecretValue` of `{changedAt, by}`, creating the
    /// beacon when it is missing. A failure is one WARN per process, never a failed pass:
    /// other hosts then notice the change at their next full listing.
    pub async fn bump_beacon(&self) {
        let Some(by) = self.beacon.settings.as_ref().and_then(|s| s.by.clone()) else {
            return;
        };
        if !self.beacon.wrote.swap(false, Ordering::Relaxed) {
            return;
        }
        let name = name(&self.scope);
        let changed_at = aws_smithy_types::DateTime::from(SystemTime::now())
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        let body = serde_json::json!({"changedAt": changed_at, "by": by}).to_string();
        let result = match self.put_beacon(&name, &body).await {
            Err(Failure::NotFound) => match self.create_beacon(&name, &body).await {
                // Another host created it meanwhile: this change still needs its own bump.
                Err(Failure::Exists) => self.put_beacon(&name, &body).await,
                other => other,
            },
            other => other,
        };
        match result {
            Ok(()) => tracing::debug!("sweep: bumped beacon {name}"),
            Err(err) if !WARNED_WRITE.swap(true, Ordering::Relaxed) => tracing::warn!(
                "cannot bump the change beacon {name} ({err}): other hosts notice this host's \
                 writes at their next full listing (reconcile.fullSweepEvery)"
            ),
            Err(err) => tracing::debug!("sweep: cannot bump beacon {name}: {err}"),
        }
    }

    async fn put_beacon(&self, name: &str, body: &str) -> Result<(), Failure> {
        self.client()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "PutSecretValue"))
    }

    async fn create_beacon(&self, name: &str, body: &str) -> Result<(), Failure> {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        self.client()
            .await
            .create_secret()
            .name(name)
            .description(format!(
                "keyprov change beacon of scope {}: bumped after a host writes a key's secret \
                 so that other hosts list the scope again; holds no key",
                self.scope
            ))
            .secret_string(body)
            .tags(tag(SCOPE_TAG, &self.scope))
            .tags(tag(BEACON_TAG, "true"))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "CreateSecret"))
    }

    /// Describes the beacon (one request) when beacons are on. A missing beacon is a value
    /// like any other (a writer creates it with its first write); one that cannot be read is
    /// `None`, with one WARN per process.
    pub(super) async fn read_beacon(&self) -> Seen {
        if self.beacon.settings.is_none() || !self.sweep.enabled() {
            return Seen(None, None);
        }
        let name = name(&self.scope);
        let described = self
            .client()
            .await
            .describe_secret()
            .secret_id(&name)
            .send()
            .await;
        match described {
            Ok(output) => Seen(Some(token(&output)), age(&output)),
            Err(err) => match explain(&err, &name, "DescribeSecret") {
                Failure::NotFound => Seen(Some("absent".into()), None),
                other => {
                    if WARNED_READ.swap(true, Ordering::Relaxed) {
                        tracing::debug!("sweep: cannot read beacon {name}: {other}");
                    } else {
                        tracing::warn!(
                            "cannot read the change beacon {name} ({other}): every sweep lists \
                             the scope's secrets"
                        );
                    }
                    Seen(None, None)
                }
            },
        }
    }

    /// The listing remembered from the last complete one, when the beacon is unchanged since,
    /// trusted, and the last listing is younger than `fullSweepEvery` (jittered).
    pub(super) fn remembered(&self, seen: &Seen) -> Option<Listing> {
        let token = seen.0.as_ref()?;
        let dir = self.sweep.state_dir()?;
        let header: Header = header_ledger(dir).load();
        if header.scope != self.scope
            || header.token.as_ref() != Some(token)
            || !header.trusted
            || unix_now() >= header.list_after
            || header.stamp.is_empty()
        {
            return None;
        }
        let mut listing = Listing::default();
        for index in 0..SHARDS {
            let shard: Shard = shard_ledger(dir, index).load();
            if shard.stamp != header.stamp {
                return None;
            }
            for (arn, listed) in shard.secrets {
                listing.insert(described(&arn, listed));
            }
        }
        Some(listing)
    }

    /// Writes the listing [`Self::remember_listing`] kept, shards first and the header that
    /// names them last (a failure to write only costs a listing next time).
    pub(super) fn save_listing(&self) {
        let Some(dir) = self.sweep.state_dir() else {
            return;
        };
        let pending = self.beacon.pending.lock().expect("never poisoned").take();
        let Some((shards, header)) = pending else {
            return;
        };
        for (index, shard) in shards.iter().enumerate() {
            if let Err(err) = shard_ledger(dir, index).save(shard) {
                tracing::warn!("{err}");
                return;
            }
        }
        if let Err(err) = header_ledger(dir).save(&header) {
            tracing::warn!("{err}");
        }
    }

    /// Keeps a complete listing and the beacon seen right before it, for
    /// [`Self::save_listing`].
    pub(super) fn remember_listing(&self, listing: &Listing, seen: Seen) {
        let (Some(settings), Some(dir)) = (&self.beacon.settings, self.sweep.state_dir()) else {
            return;
        };
        let previous: Header = header_ledger(dir).load();
        let same = previous.scope == self.scope && previous.token == seen.0;
        let trusted = trusted(seen.0.is_some(), same, seen.1);
        let stamp = uuid::Uuid::new_v4().to_string();
        let mut shards: Vec<Shard> = (0..SHARDS)
            .map(|_| Shard {
                stamp: stamp.clone(),
                secrets: BTreeMap::new(),
            })
            .collect();
        for (arn, entry) in listing.entries() {
            if entry.deleted_date().is_none() {
                shards[super::sweep::shard_of(arn)]
                    .secrets
                    .insert(arn.clone(), listed(entry));
            }
        }
        for shard in &mut shards {
            while serde_json::to_vec_pretty(&*shard).map_or(0, |b| b.len()) > MAX_BYTES {
                let keep = shard.secrets.len() * 9 / 10;
                let dropped: Vec<String> = shard.secrets.keys().skip(keep).cloned().collect();
                for arn in dropped {
                    shard.secrets.remove(&arn);
                }
            }
        }
        let every = settings.full_sweep_every;
        let every = every.saturating_sub(every.mul_f64(random() * JITTER));
        let header = Header {
            scope: self.scope.clone(),
            token: seen.0,
            trusted,
            stamp,
            list_after: unix_now().saturating_add(every.as_secs()),
        };
        *self.beacon.pending.lock().expect("never poisoned") = Some((shards, header));
    }
}

/// Whether a listing taken after seeing the beacon can stand in for the next ones: the beacon
/// was readable, and either the listing before saw the same value (so this one came at least a
/// sweep after the change) or the change is older than [`LISTING_LAG`].
fn trusted(readable: bool, same_as_before: bool, age: Option<Duration>) -> bool {
    readable && (same_as_before || age.is_some_and(|age| age >= LISTING_LAG))
}

/// How long ago the beacon changed, by AWS's clock (the `Date` of its latest response, moved
/// on by the local monotonic clock since).
fn age(output: &DescribeSecretOutput) -> Option<Duration> {
    let changed = SystemTime::try_from(*output.last_changed_date()?).ok()?;
    let reading = crate::aws_clock::reading()?;
    let aws_now = reading.aws + reading.at.elapsed();
    // The Date header has whole seconds: one more second of margin.
    aws_now
        .duration_since(changed)
        .ok()?
        .checked_sub(Duration::from_secs(1))
}

/// The beacon's state as one string: the version holding `AWSCURRENT` and when the secret
/// last changed (a label moved back to an old version still changes the date).
fn token(output: &DescribeSecretOutput) -> String {
    let current = output
        .version_ids_to_stages()
        .and_then(|stages| {
            stages
                .iter()
                .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
                .map(|(id, _)| id.clone())
        })
        .unwrap_or_default();
    let changed = output
        .last_changed_date()
        .map(|d| format!("{}.{:09}", d.secs(), d.subsec_nanos()))
        .unwrap_or_default();
    format!("{current}@{changed}")
}

fn listed(entry: &DescribeSecretOutput) -> Listed {
    Listed {
        name: entry.name().unwrap_or_default().to_string(),
        kms: entry.kms_key_id().map(str::to_string),
        tags: entry
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        stages: entry
            .version_ids_to_stages()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

fn described(arn: &str, listed: Listed) -> DescribeSecretOutput {
    let tags = listed
        .tags
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let stages: HashMap<String, Vec<String>> = listed.stages.into_iter().collect();
    DescribeSecretOutput::builder()
        .arn(arn)
        .name(listed.name)
        .set_kms_key_id(listed.kms)
        .set_tags(Some(tags))
        .set_version_ids_to_stages(Some(stages))
        .build()
}

fn header_ledger(state_dir: &Path) -> crate::ledger::Ledger {
    crate::ledger::Ledger::new(state_dir, HEADER)
}

fn shard_ledger(state_dir: &Path, index: usize) -> crate::ledger::Ledger {
    crate::ledger::Ledger::new(state_dir, &format!("{LISTED}-{index:x}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random number in `0.0..1.0`.
fn random() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_secret_comes_back_as_it_was_listed() {
        let entry = DescribeSecretOutput::builder()
            .arn("arn:s")
            .name("s")
            .kms_key_id("k")
            .tags(Tag::builder().key(SCOPE_TAG).value("prod").build())
            .version_ids_to_stages("v1", vec![CURRENT.to_string(), "keyprov-v0001".into()])
            .build();
        let back = described("arn:s", listed(&entry));
        assert_eq!(back.name(), Some("s"));
        assert_eq!(back.kms_key_id(), Some("k"));
        assert_eq!(back.tags(), entry.tags());
        assert_eq!(back.version_ids_to_stages(), entry.version_ids_to_stages());
    }

    #[test]
    fn the_token_changes_with_the_current_version_and_the_date() {
        let at = |id: &str, secs| {
            token(
                &DescribeSecretOutput::builder()
                    .version_ids_to_stages(id, vec![CURRENT.to_string()])
                    .last_changed_date(aws_smithy_types::DateTime::from_secs(secs))
                    .build(),
            )
        };
        assert_eq!(at("a", 1), at("a", 1));
        assert_ne!(at("a", 1), at("b", 1));
        // A label moved back to an old version is a change too.
        assert_ne!(at("a", 1), at("a", 2));
    }

    #[test]
    fn a_listing_is_trusted_after_a_second_look_or_an_old_change_only() {
        assert!(!trusted(true, false, None));
        assert!(!trusted(true, false, Some(Duration::from_secs(5))));
        assert!(trusted(true, false, Some(LISTING_LAG)));
        assert!(trusted(true, true, None));
        // An unreadable beacon never lets a listing be skipped.
        assert!(!trusted(false, true, Some(LISTING_LAG)));
    }

    #[test]
    fn a_consumer_never_writes_and_the_host_id_is_hashed() {
        let writer = BeaconSettings::new(DEFAULT_FULL_SWEEP, "web-17", false);
        let by = writer.by.unwrap();
        assert_eq!(by.len(), 16);
        assert!(!by.contains("web"));
        assert!(
            BeaconSettings::new(DEFAULT_FULL_SWEEP, "web-17", true)
                .by
                .is_none()
        );
    }
}
