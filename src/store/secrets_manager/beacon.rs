//! The change beacon: one small secret per scope, `keyprov/beacon/<scope>`, whose *tags* say
//! which secrets writers changed recently ([`bumps`]); it holds no value, so a bump creates no
//! secret version (Secrets Manager's versions quota and its advice against updating a secret
//! more than once every 10 minutes do not apply; `TagResource`/`UntagResource` share a quota
//! of 50/s). Each writer's pass that wrote keys' secrets appends the short digests of their
//! names (48 bits of SHA-256) to the highest bump tag `keyprov:bump:<seq>`, or opens the next
//! one when it is full (27 digests; a pass that wrote more opens one saying "list", with the
//! digest of those digests, so that two such tags put under one key differ). A sweep
//! describes the beacon first (`DescribeSecret`, one request, consistent). When it shows
//! nothing this host has not seen, the listing remembered under
//! `<stateDir>/ledger/secret-listing-*.json` stands in for a listing; otherwise only this
//! host's secrets whose digests are new are described (`DescribeSecret`) and patched into that
//! listing, and values are read only where their version ids are new to this host. The scope is
//! listed (`ListSecrets`) when there is a gap (a tag this host may not have read whole was
//! removed: it is too far behind), a tag says "list", the beacon is absent where it was
//! present, unreadable, holds malformed bump tags or another value than before (an older
//! keyprov bumped it), or `reconcile.fullSweepEvery` (jittered) passed since the last listing.
//!
//! Writers append through the tags' own primitive: `TagResource` merges keys, and a key written
//! again takes the new value. A writer describes the beacon, puts its tag (appended to the
//! highest, removing the lowest tags first to stay within 46 bump tags, 48 tags in all: AWS
//! allows 50), and describes it again: when another writer overwrote the same tag meanwhile, or
//! its tag is more than [`bumps::MARGIN`] below the highest, it puts its digests again on top
//! (a few times at most). It looks once more a second later: a writer that described the
//! beacon before this tag and tags the same key after the read-back replaces the value without
//! these digests (tags have no compare-and-set), and a writer slower than that second loses its
//! bump to the next full listing of the others. So two writers bumping at once both land; with
//! three or more within a request or two of each other, a chain of stale overwrites can still
//! lose one (a simulation of constant contention by four writers: 39 digests missed in 5,112
//! bumps; a wave is about 0.3 bumps a second fleet-wide), noticed at the next full listing.
//! Bumps are coalesced: one per pass, at its end.
//!
//! Why this is safe (a beacon is a hint, never a source of truth about keys):
//! - Writes are named after they happen: a pass bumps at its end, after every write it names,
//!   and a sweep reads the beacon before it describes or lists. So a bump a reader sees names
//!   writes that `DescribeSecret` (consistent) already shows.
//! - What is read is still proven: a described or listed secret goes through the same checks
//!   as before (keyprov's own, the scope's; versions read whole, bound to their generation,
//!   forged or replayed ones refused); a key that calls for work is described again directly.
//!   The beacon only decides which secrets are looked at in this sweep; a digest names no
//!   secret, it only matches this host's own keys' secrets (a collision costs a description).
//! - Gaps are detected: writers remove only the lowest tags, so a reader sees no gap only while
//!   the highest tag it saw and one it saw more than [`bumps::MARGIN`] below that (or the first
//!   tag ever) are still there; anything removed since lay below any tag a writer could still
//!   land its digests in (see [`bumps::Bumps::since`]).
//! - A listing may lag behind writes by seconds: after a listing, the secrets named in tags
//!   appended to within [`RECENT`] are described as well; when such a tag says "list", the next
//!   full listing comes [`RECENT`] later instead of `fullSweepEvery` later.
//! - A forged, rolled-back, moved, deleted or unreadable beacon: malformed bump tags, the
//!   highest tag seen removed, another ARN or value, or a new "list" tag mean a listing (and a
//!   writer removes the malformed tags). A beacon scheduled for deletion takes no tag and its
//!   name cannot be created again: a writer restores it (`RestoreSecret`) before it bumps. A
//!   forged removal or rewrite that drops a change can delay noticing it until the next full
//!   listing, at most `fullSweepEvery` later; anything a forged tag names only costs a
//!   description of this host's own keys' secrets. The same bound
//!   holds for a writer whose bump failed (one WARN) or that died between its tag and its read
//!   back, and for any change made outside keyprov (no bump names it).
//! - Rolling upgrade: older keyprovs bumped by putting a value (a log `keyprov-beacon/2`, or
//!   `{"changedAt","by"}` before it). This keyprov never writes a value; it reads the version
//!   holding `AWSCURRENT` from the description, so an older writer's bump (a new version) makes
//!   every new host list once. An older host does not see tag bumps: it notices a new writer's
//!   changes at its next full listing; and a beacon a new writer created holds no value, which
//!   an older reader takes as no beacon and an older writer fails to bump (one WARN).

mod bumps;
pub(super) mod covered;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use serde::{Deserialize, Serialize};

use self::bumps::{Bumps, Since};
use super::SecretsManagerStore;
use super::describe::tag_map;
use super::errors::{Failure, explain, found};
use super::layout::{CURRENT, SCOPE_TAG};
use super::sweep::Listing;
use crate::daemon::pace;
use crate::manifest::{KeyPair, Output};

/// Name of a scope's beacon: `keyprov/beacon/<scope>`.
pub fn name(scope: &str) -> String {
    format!("keyprov/beacon/{scope}")
}

/// Tag marking the beacon (it carries the scope tag too, never `keyprov:managed`: it is no
/// key's secret and never an orphan).
pub const BEACON_TAG: &str = "keyprov:beacon";
/// `reconcile.fullSweepEvery` when unset.
pub const DEFAULT_FULL_SWEEP: Duration = Duration::from_secs(30 * 60);
/// What this host saw at its last look: `<stateDir>/ledger/sweep-beacon.json`.
const HEADER: &str = "sweep-beacon";
/// Format of that header (older headers are not used: one listing).
const HEADER_FORMAT: u32 = 3;
/// The remembered listing: `secret-listing-0.json` to `-f.json`, one shard per ARN hash.
const LISTED: &str = "secret-listing";
/// How far back, by the bumps' times, a listing may lag behind writes: `ListSecrets` lags by
/// seconds; this leaves room for the writer's clock too (it stamps by AWS's clock as it last
/// read it).
pub(super) const RECENT: Duration = Duration::from_secs(120);
/// Most secrets a sweep describes from the log; beyond, it lists (100 descriptions cost about
/// one listing page's share of its quota).
const MAX_DESCRIBED: usize = 300;
/// Times a writer tries to append before giving up (another writer won each time).
const MAX_TRIES: usize = 8;
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
    /// A writer's short SHA-256 of `fleet.hostId` (the beacon's tags do not carry it: writers
    /// share tags); `None`: a consumer, which never bumps.
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
        let by = crate::fleet::host_digest(host_id);
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
    /// The secrets written since the last bump (as the manifests name them).
    wrote: Mutex<BTreeSet<String>>,
    /// The beacon holds malformed bump tags (garbage, forged): a writer removes them.
    rewrite: AtomicBool,
    /// The listing of this process's sweep and its header, written by
    /// [`SecretsManagerStore::save_listing`] when the pass ends (read-only commands such as
    /// `status` never write it).
    pending: Mutex<Option<(Vec<Shard>, Header)>>,
    /// This pass's `DescribeSecret` answers, patched into the remembered listing at its end
    /// ([`covered`]).
    described: Mutex<covered::Kept>,
}

/// What this host saw at its last look at the beacon, and when it must list again.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Header {
    /// [`HEADER_FORMAT`] (anything else is not used).
    format: u32,
    scope: String,
    /// The beacon's ARN (`None`: there was no beacon).
    arn: Option<String>,
    /// The version of its value holding `AWSCURRENT` (`None`: no value): an older keyprov's
    /// bump changes it.
    value: Option<String>,
    /// The digests seen under each bump tag.
    seen: bumps::Seen,
    /// Written in every shard of the remembered listing (a shard of another listing is not it).
    stamp: String,
    /// Unix seconds after which the next sweep lists whatever the beacon says.
    list_after: u64,
    /// Unix seconds of the last listing (a shorter `fullSweepEvery` applies at once).
    listed_at: u64,
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
    /// When this entry was described (`DescribeSecret` sent, Unix seconds by AWS's clock);
    /// `None`: listed ([`covered`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    described_at: Option<u64>,
}

/// The beacon as `DescribeSecret` shows it.
pub(super) struct Described {
    /// Its ARN.
    arn: String,
    /// The version of its value holding `AWSCURRENT` (`None`: no value).
    value: Option<String>,
    /// Its bump tags.
    bumps: Bumps,
    /// Scheduled for deletion (by anyone with `DeleteSecret`): it takes no tag until restored,
    /// and its name cannot be created again before the recovery window ends.
    deleted: bool,
}

/// The beacon as one sweep read it, before describing or listing anything.
pub(super) enum Seen {
    /// Beacons are off.
    Off,
    /// Nothing to go by: unreadable (no permission, an outage). The sweep lists.
    Unusable,
    /// There is no beacon (no writer wrote since the scope began, or it was deleted).
    Absent,
    /// The bump tags of the beacon `arn`, whose value's current version is `value`.
    Tags {
        arn: String,
        value: Option<String>,
        bumps: Bumps,
    },
}

/// What a sweep does, given the beacon and what this host saw last.
pub(super) enum Plan {
    /// Nothing changed: the remembered listing stands.
    Remembered(Listing),
    /// The remembered listing, once the named secrets (this host's) are described again.
    Describe {
        listing: Listing,
        named: BTreeSet<String>,
        /// When the last listing was, and when the next is due (kept).
        listed: (u64, u64),
    },
    /// List the scope.
    List,
}

impl SecretsManagerStore {
    /// Turns the change beacon on (with sweeps: see [`Self::enable_sweep`]).
    pub fn enable_beacon(&mut self, settings: BeaconSettings) {
        self.beacon.settings = Some(settings);
    }

    /// Notes that `secret` (a key's secret) was written: the pass names it in its bump.
    pub(super) fn note_write(&self, secret: &str) {
        self.beacon
            .wrote
            .lock()
            .expect("never poisoned")
            .insert(secret.to_string());
    }

    /// The beacon as `DescribeSecret` (one request) shows it; `None` when it does not exist.
    pub(super) async fn describe_beacon(&self, name: &str) -> Result<Option<Described>, Failure> {
        let described = self
            .client()
            .await
            .describe_secret()
            .secret_id(name)
            .send()
            .await;
        let Some(out) = found(described, name, "DescribeSecret")? else {
            return Ok(None);
        };
        let value = out.version_ids_to_stages().and_then(|stages| {
            stages
                .iter()
                .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
                .map(|(id, _)| id.clone())
        });
        let bumps = Bumps::from_tags(
            out.tags()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value()?))),
        );
        Ok(Some(Described {
            arn: out.arn().unwrap_or_default().to_string(),
            value,
            bumps,
            deleted: out.deleted_date().is_some(),
        }))
    }

    /// Describes the beacon (one request) when beacons and sweeps are on. One that cannot be
    /// read is [`Seen::Unusable`], with one WARN per process; malformed bump tags mean a
    /// listing ([`bumps::Bumps::since`]), and a writer removes them at the end of its pass.
    pub(super) async fn read_beacon(&self) -> Seen {
        if self.beacon.settings.is_none() || !self.sweep.enabled() {
            return Seen::Off;
        }
        let name = name(&self.scope);
        match self.describe_beacon(&name).await {
            Ok(None) => Seen::Absent,
            Ok(Some(Described {
                arn, value, bumps, ..
            })) => {
                if !bumps.malformed.is_empty() {
                    // A gap for the sweep (it lists); the well-formed tags are still what this
                    // host saw, so once a writer removed these the next sweep is one request.
                    tracing::debug!(
                        "sweep: beacon {name} holds malformed bump tags {:?}: listing",
                        bumps.malformed
                    );
                    self.beacon.rewrite.store(true, Ordering::Relaxed);
                }
                Seen::Tags { arn, value, bumps }
            }
            Err(err) => {
                if WARNED_READ.swap(true, Ordering::Relaxed) {
                    tracing::debug!("sweep: cannot describe beacon {name}: {err}");
                } else {
                    tracing::warn!(
                        "cannot describe the change beacon {name} ({err}): every sweep lists the \
                         scope's secrets"
                    );
                }
                Seen::Unusable
            }
        }
    }

    /// What this sweep does, from the beacon and what this host saw last (see the module's
    /// documentation).
    pub(super) fn plan_sweep(&self, seen: &Seen, keys: &[KeyPair]) -> Plan {
        let Some(dir) = self.sweep.state_dir() else {
            return Plan::List;
        };
        if matches!(seen, Seen::Off | Seen::Unusable) {
            return Plan::List;
        }
        let header: Header = header_ledger(dir).load();
        if header.format != HEADER_FORMAT
            || header.scope != self.scope
            || header.stamp.is_empty()
            || self
                .beacon
                .settings
                .as_ref()
                .is_none_or(|s| listing_due(&header, unix_now(), s.full_sweep_every))
        {
            return Plan::List;
        }
        let since = match (seen, &header.arn) {
            (Seen::Absent, None) => Since::Nothing,
            (Seen::Tags { arn, value, bumps }, Some(had))
                if had == arn && *value == header.value =>
            {
                bumps.since(&header.seen)
            }
            // Appeared, moved, or an older keyprov put a value: list.
            _ => Since::Gap,
        };
        let named = match &since {
            Since::Nothing => BTreeSet::new(),
            Since::Named(named) => named.clone(),
            Since::Gap => return Plan::List,
        };
        let Some(listing) = self.remembered(dir, &header) else {
            return Plan::List;
        };
        if matches!(since, Since::Nothing) {
            return Plan::Remembered(listing);
        }
        // Even when none is this host's: the header moves on with the tags.
        let mut named = ours(keys, &listing, &named);
        if let Seen::Tags { bumps, .. } = seen {
            let before = named.len();
            named.retain(|secret| !covered::covered(&listing, bumps, secret));
            if named.len() < before {
                tracing::debug!(
                    "sweep: {} of the secrets the change beacon names were described after                      their bumps; not describing them again",
                    before - named.len()
                );
            }
        }
        if named.len() > MAX_DESCRIBED {
            return Plan::List;
        }
        Plan::Describe {
            listing,
            named,
            listed: (header.listed_at, header.list_after),
        }
    }

    /// The secrets of `keys` that bump tags appended to within [`RECENT`] name (a listing may
    /// not show them yet).
    pub(super) fn recent(
        &self,
        seen: &Seen,
        keys: &[KeyPair],
        listing: &Listing,
    ) -> BTreeSet<String> {
        let Seen::Tags { bumps, .. } = seen else {
            return BTreeSet::new();
        };
        let now = aws_now();
        let named = bumps.named_since(
            now.saturating_sub(RECENT.as_secs()),
            now.saturating_add(RECENT.as_secs()),
        );
        ours(keys, listing, &named)
    }

    /// Describes each of `secrets` (`DescribeSecret`, consistent) and puts what it says into
    /// `listing`; one that is gone, not of this scope, or cannot be described is taken out
    /// (its key is then observed directly, which reports any error).
    pub(super) async fn describe_into(&self, listing: &mut Listing, secrets: &BTreeSet<String>) {
        for secret in secrets {
            let sent = std::time::Instant::now();
            let described = self
                .client()
                .await
                .describe_secret()
                .secret_id(secret)
                .send()
                .await;
            listing.remove(secret);
            match described {
                Ok(out) if tag_map(out.tags()).get(SCOPE_TAG) == Some(&self.scope) => {
                    if let (Some(at), Some(arn)) = (covered::sent_at(sent), out.arn()) {
                        listing.set_described_at(arn, at);
                    }
                    listing.insert_fresh(out);
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(
                    "sweep: {}",
                    explain(&err, secret, "DescribeSecret").into_error()
                ),
            }
        }
    }

    /// The listing remembered from the last complete one (as patched since).
    fn remembered(&self, dir: &Path, header: &Header) -> Option<Listing> {
        let mut listing = Listing::default();
        for index in 0..SHARDS {
            let shard: Shard = shard_ledger(dir, index).load();
            if shard.stamp != header.stamp {
                return None;
            }
            for (arn, listed) in shard.secrets {
                if let Some(at) = listed.described_at {
                    listing.set_described_at(&arn, at);
                }
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
        let kept = self.take_described();
        let pending = self.beacon.pending.lock().expect("never poisoned").take();
        let Some((mut shards, header)) = pending else {
            covered::patch_saved(dir, &self.scope, &kept);
            return;
        };
        covered::patch(&mut shards, &kept);
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

    /// Keeps a complete listing (listed, or remembered and patched) and the beacon seen right
    /// before it, for [`Self::save_listing`]; `kept` (when the last listing was, when the next
    /// is due) is kept from the last listing when
    /// this one was patched, else set anew (jittered).
    pub(super) fn remember_listing(
        &self,
        listing: &Listing,
        seen: &Seen,
        kept: Option<(u64, u64)>,
    ) {
        let Some(settings) = &self.beacon.settings else {
            return;
        };
        let (arn, value, seen_tags) = match seen {
            Seen::Tags { arn, value, bumps } => (Some(arn.clone()), value.clone(), bumps.seen()),
            Seen::Absent | Seen::Unusable => (None, None, bumps::Seen::new()),
            Seen::Off => return,
        };
        // A listing taken within RECENT of a pass too large to name its secrets may not show
        // all of them yet: the next listing comes once that window has passed.
        let now = aws_now();
        let lagging = matches!(seen, Seen::Tags { bumps, .. }
        if kept.is_none()
            && bumps.recent_list(
                now.saturating_sub(RECENT.as_secs()),
                now.saturating_add(RECENT.as_secs()),
            ));
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
                    .insert(arn.clone(), listed(entry, listing.described_at_arn(arn)));
            }
        }
        for shard in &mut shards {
            trim(shard);
        }
        let (listed_at, list_after) = kept.unwrap_or_else(|| {
            // Hosts do not list in step: up to 10 % early, as the daemon's resyncs.
            let every = pace::jittered(settings.full_sweep_every, pace::random());
            (unix_now(), unix_now().saturating_add(every.as_secs()))
        });
        let list_after = if lagging {
            list_after.min(unix_now().saturating_add(RECENT.as_secs()))
        } else {
            list_after
        };
        let header = Header {
            format: if matches!(seen, Seen::Unusable) {
                0
            } else {
                HEADER_FORMAT
            },
            scope: self.scope.clone(),
            arn,
            value,
            seen: seen_tags,
            stamp,
            list_after,
            listed_at,
        };
        *self.beacon.pending.lock().expect("never poisoned") = Some((shards, header));
    }
}

/// Whether the next sweep lists, by the times in `header` and the local clock at `now`: the
/// jittered time has come, `fullSweepEvery` passed since the last listing, or the last listing
/// is dated ahead of `now` (the clock was set back: otherwise no listing until it caught up).
fn listing_due(header: &Header, now: u64, full_sweep_every: Duration) -> bool {
    now >= header.list_after
        || now >= header.listed_at.saturating_add(full_sweep_every.as_secs())
        || header.listed_at > now
}

/// The secret ids of `keys`' secret outputs whose digest `named` holds: the digest of the id
/// as this host's manifest gives it, or of the name or ARN the listing gives (a writer names a
/// secret as its manifest does: by name or by ARN).
fn ours(keys: &[KeyPair], listing: &Listing, named: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .flat_map(|k| &k.outputs)
        .filter_map(|o| match o {
            Output::SecretsManager(s) => Some(&s.secret_id),
            Output::File(_) => None,
        })
        .filter(|id| {
            [Some(id.as_str()), listing.name_of(id), listing.arn_of(id)]
                .into_iter()
                .flatten()
                .any(|n| named.contains(&bumps::digest(n)))
        })
        .cloned()
        .collect()
}

/// Unix seconds by AWS's clock as last read (the `Date` of its latest response, moved on by
/// the local monotonic clock since), else by the local clock.
fn aws_now() -> u64 {
    let now = crate::aws_clock::reading()
        .map(|r| r.aws + r.at.elapsed())
        .unwrap_or_else(SystemTime::now);
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Leaves secrets out of `shard` until it fits [`MAX_BYTES`] (they are described directly
/// when a key needs them).
fn trim(shard: &mut Shard) {
    while serde_json::to_vec_pretty(&*shard).map_or(0, |b| b.len()) > MAX_BYTES {
        let keep = shard.secrets.len() * 9 / 10;
        let dropped: Vec<String> = shard.secrets.keys().skip(keep).cloned().collect();
        for arn in dropped {
            shard.secrets.remove(&arn);
        }
    }
}

/// One secret as the remembered listing keeps it (`described_at`: see [`Listed`]).
fn listed(entry: &DescribeSecretOutput, described_at: Option<u64>) -> Listed {
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
        described_at,
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

#[cfg(test)]
mod tests {
    use super::super::layout::CURRENT;
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
        let back = described("arn:s", listed(&entry, None));
        assert_eq!(back.name(), Some("s"));
        assert_eq!(back.kms_key_id(), Some("k"));
        assert_eq!(back.tags(), entry.tags());
        assert_eq!(back.version_ids_to_stages(), entry.version_ids_to_stages());
    }

    #[test]
    fn a_listing_is_due_by_its_times_and_when_the_clock_was_set_back() {
        let every = Duration::from_secs(1800);
        let header = |listed_at, list_after| Header {
            listed_at,
            list_after,
            ..Header::default()
        };
        let t = 1_800_000_000;
        assert!(!listing_due(&header(t, t + 1700), t + 60, every));
        assert!(listing_due(&header(t, t + 1700), t + 1700, every));
        assert!(listing_due(&header(t, t + 9999), t + 1800, every));
        // Listed while the clock was a day ahead: list now, not a day later.
        assert!(listing_due(&header(t + 86_400, t + 88_100), t, every));
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
