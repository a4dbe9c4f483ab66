//! The change beacon: one small secret per scope, `keyprov/beacon/<scope>`, whose value is a
//! bounded log of recent changes ([`log`]): each writer's pass that wrote keys' secrets appends
//! one bump naming every secret it wrote, numbered in sequence. A sweep reads the value first
//! (`GetSecretValue`, one request). When the sequence number this host saw last is the latest,
//! the listing remembered under `<stateDir>/ledger/secret-listing-*.json` stands in for a
//! listing; when it is still in the log, only the secrets named since are described
//! (`DescribeSecret`, consistent) and patched into that listing, and values are read only where
//! their version ids are new to this host. The scope is listed (`ListSecrets`) only when the
//! log has a gap (this host is too far behind, or the log was started afresh), the beacon is
//! absent where it was present, unreadable, of the old format or forged-looking, or
//! `reconcile.fullSweepEvery` (jittered) passed since the last listing.
//!
//! Writers append by compare-and-set through the secret's own atomic primitive:
//! `PutSecretValue` with `ClientRequestToken` = UUIDv5(beacon name, epoch, seq + 1) (see
//! [`log::Log::token`]). Two writers that read the same sequence number put under the same
//! token with different values: Secrets Manager accepts one and refuses the other
//! (`ResourceExistsException`), which reads again and appends on top, a few times at most;
//! the value is read back, so a backend whose token check is not atomic loses nothing either.
//! Bumps are coalesced: one per pass, at its end.
//!
//! Why this is safe (a beacon is a hint, never a source of truth about keys):
//! - Writes are named after they happen: a pass bumps at its end, after every write it names,
//!   and a sweep reads the beacon before it describes or lists. So a bump a reader sees names
//!   writes that `DescribeSecret` (consistent) already shows.
//! - What is read is still proven: a described or listed secret goes through the same checks
//!   as before (keyprov's own, the scope's; versions read whole, bound to their generation,
//!   forged or replayed ones refused); a key that calls for work is described again directly.
//!   The beacon only decides which secrets are looked at in this sweep.
//! - A listing may lag behind writes by seconds: after a listing, the secrets named by bumps
//!   younger than [`RECENT`] are described as well.
//! - A forged, rolled-back, moved, deleted or unreadable beacon: a value that does not parse,
//!   whose version id is not its own token, another epoch or ARN, or a sequence number lower
//!   than this host saw, means a listing (and a writer writes a fresh log). A forged value
//!   that parses and omits a change can delay noticing it until the next full listing, at most
//!   `fullSweepEvery` later; anything it names only costs a description (only secrets of this
//!   host's own keys are described). The same bound holds for a writer whose bump failed
//!   (one WARN), and for any change made outside keyprov (no bump names it).
//! - Old-format beacons (`{"changedAt","by"}`, before this log) read as "list", and the next
//!   pass of a writer replaces them with a log (rolling upgrade: old writers bumping the old
//!   way only cause listings).

mod log;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use serde::{Deserialize, Serialize};

use self::log::{Log, Since};
use super::SecretsManagerStore;
use super::describe::tag_map;
use super::errors::{Failure, explain};
use super::layout::SCOPE_TAG;
use super::sweep::Listing;
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
/// Share of `fullSweepEvery` a full listing may come early by (hosts do not list in step).
const JITTER: f64 = 0.1;
/// What this host saw at its last look: `<stateDir>/ledger/sweep-beacon.json`.
const HEADER: &str = "sweep-beacon";
/// Format of that header (older headers are not used: one listing).
const HEADER_FORMAT: u32 = 2;
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
    /// The beacon holds no log (old format, garbage, forged-looking): a writer writes one.
    rewrite: AtomicBool,
    /// The listing of this process's sweep and its header, written by
    /// [`SecretsManagerStore::save_listing`] when the pass ends (read-only commands such as
    /// `status` never write it).
    pending: Mutex<Option<(Vec<Shard>, Header)>>,
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
    /// Its log's epoch and latest sequence number.
    epoch: String,
    seq: u64,
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
}

/// The beacon as one sweep read it, before describing or listing anything.
pub(super) enum Seen {
    /// Beacons are off.
    Off,
    /// No log to go by: unreadable (no permission, an outage), old format, garbage or
    /// forged-looking. The sweep lists.
    Unusable,
    /// There is no beacon (no writer wrote since the scope began, or it was deleted).
    Absent,
    /// A log, under the beacon `arn`.
    Log { arn: String, log: Log },
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

    /// The beacon's ARN, current version id and value; `None` when it does not exist.
    async fn get_beacon(&self, name: &str) -> Result<Option<(String, String, String)>, Failure> {
        let read = self
            .client()
            .await
            .get_secret_value()
            .secret_id(name)
            .send()
            .await;
        match read {
            Ok(out) => Ok(Some((
                out.arn().unwrap_or_default().to_string(),
                out.version_id().unwrap_or_default().to_string(),
                out.secret_string().unwrap_or_default().to_string(),
            ))),
            Err(err) => match explain(&err, name, "GetSecretValue") {
                Failure::NotFound => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Reads the beacon's value (one request) when beacons and sweeps are on. One that cannot
    /// be read is [`Seen::Unusable`], with one WARN per process; one that holds no log is too,
    /// and a writer writes a log at the end of its pass.
    pub(super) async fn read_beacon(&self) -> Seen {
        if self.beacon.settings.is_none() || !self.sweep.enabled() {
            return Seen::Off;
        }
        let name = name(&self.scope);
        match self.get_beacon(&name).await {
            Ok(None) => Seen::Absent,
            Ok(Some((arn, id, text))) => match usable(&name, &id, &text) {
                Some(log) => Seen::Log { arn, log },
                None => {
                    tracing::debug!("sweep: beacon {name} holds no log (old format?): listing");
                    self.beacon.rewrite.store(true, Ordering::Relaxed);
                    Seen::Unusable
                }
            },
            Err(err) => {
                if WARNED_READ.swap(true, Ordering::Relaxed) {
                    tracing::debug!("sweep: cannot read beacon {name}: {err}");
                } else {
                    tracing::warn!(
                        "cannot read the change beacon {name} ({err}): every sweep lists the \
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
            (Seen::Log { arn, log }, Some(had)) if had == arn => {
                log.since(Some((&header.epoch, header.seq)))
            }
            // The beacon appeared: its log tells everything only if it reaches back to bump 1.
            (Seen::Log { log, .. }, None) => log.since(None),
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
        // Even when none is this host's: the header moves on with the log.
        let named = ours(keys, &listing, &named);
        if named.len() > MAX_DESCRIBED {
            return Plan::List;
        }
        Plan::Describe {
            listing,
            named,
            listed: (header.listed_at, header.list_after),
        }
    }

    /// The secrets of `keys` that bumps younger than [`RECENT`] name (a listing may not show
    /// them yet).
    pub(super) fn recent(
        &self,
        seen: &Seen,
        keys: &[KeyPair],
        listing: &Listing,
    ) -> BTreeSet<String> {
        let Seen::Log { log, .. } = seen else {
            return BTreeSet::new();
        };
        let named = log.written_since(aws_now().saturating_sub(RECENT.as_secs()));
        ours(keys, listing, &named)
    }

    /// Describes each of `secrets` (`DescribeSecret`, consistent) and puts what it says into
    /// `listing`; one that is gone, not of this scope, or cannot be described is taken out
    /// (its key is then observed directly, which reports any error).
    pub(super) async fn describe_into(&self, listing: &mut Listing, secrets: &BTreeSet<String>) {
        for secret in secrets {
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
        let (arn, epoch, seq) = match seen {
            Seen::Log { arn, log } => (Some(arn.clone()), log.epoch.clone(), log.seq),
            Seen::Absent => (None, String::new(), 0),
            // Kept with an unusable header: used only if this pass writes a fresh log.
            Seen::Unusable => (None, String::new(), 0),
            Seen::Off => return,
        };
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
        let (listed_at, list_after) = kept.unwrap_or_else(|| {
            let every = settings.full_sweep_every;
            let every = every.saturating_sub(every.mul_f64(random() * JITTER));
            (unix_now(), unix_now().saturating_add(every.as_secs()))
        });
        let header = Header {
            format: if matches!(seen, Seen::Unusable) {
                0
            } else {
                HEADER_FORMAT
            },
            scope: self.scope.clone(),
            arn,
            epoch,
            seq,
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

/// The log a beacon value holds, when it is one and sits under its own token (anything else
/// was not written by keyprov's protocol: forged-looking).
fn usable(name: &str, version_id: &str, text: &str) -> Option<Log> {
    Log::parse(text).filter(|log| log.token(name) == version_id)
}

/// The secret ids of `keys`' secret outputs that `named` names, by id or by the ARN the
/// listing gives either (a writer may name a secret by its ARN, this host by its name).
fn ours(keys: &[KeyPair], listing: &Listing, named: &BTreeSet<String>) -> BTreeSet<String> {
    let named_arns: BTreeSet<&str> = named.iter().filter_map(|n| listing.arn_of(n)).collect();
    keys.iter()
        .flat_map(|k| &k.outputs)
        .filter_map(|o| match o {
            Output::SecretsManager(s) => Some(&s.secret_id),
            Output::File(_) => None,
        })
        .filter(|id| {
            named.contains(*id) || listing.arn_of(id).is_some_and(|a| named_arns.contains(a))
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
        let back = described("arn:s", listed(&entry));
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
