//! Prune that a redeploy, a rolling deploy, another host, another installation or a wrong clock
//! cannot trigger.
//!
//! An orphan is pruned only once it has been seen orphaned *continuously*, reconcile after
//! reconcile, for `reconcile.pruneAfter` (default 24h): the first and the last sighting of each
//! orphan are recorded in `<stateDir>/ledger/prune.json` (durable, atomic, one entry per current
//! orphan); a gap between two sightings longer than `pruneAfter`, or a sighting earlier than the
//! previous one (a clock that was wrong), starts the wait again; with `provider: aws` a sighting
//! counts only in a run whose clock agrees with AWS's. An orphan whose key comes back loses its
//! entry. A secret is pruned only when this host knows it managed it: the same ledger records
//! the ARN of every secret that was a key's output while its manifest existed (and the key's
//! secret was written or proven in that run); a secret that merely carries keyprov's tags
//! (which anyone with `TagResource` can set) is listed, never pruned. What a prune sets aside
//! comes back when its key does (see [`crate::prune_restore`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ledger::Ledger;
use crate::manifest::{KeyPair, Output};
use crate::orphans::{self, Orphan};
use crate::schedule::{add, format_time, parse_time};
use crate::store::SecretsManagerStore;
use crate::store::secrets_manager::ManagedSecret;

pub use crate::prune_restore::{Restore, restorable, restore};

/// Secrets set aside by this host's prunes that are remembered for a restore (the oldest go
/// first beyond this).
const MAX_SET_ASIDE: usize = 10_000;
/// Secrets remembered as managed here (the oldest go first beyond this: at worst one of them
/// is then not pruned).
const MAX_MANAGED: usize = 10_000;

/// What the prune ledger holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `kind:location` of each orphan -> when it was first seen orphaned (RFC 3339).
    #[serde(default)]
    pub orphans: BTreeMap<String, String>,
    /// `kind:location` of each orphan -> when it was last seen orphaned (RFC 3339; a record
    /// written before last sightings were kept counts its first sighting as the last).
    #[serde(default)]
    pub last_seen: BTreeMap<String, String>,
    /// Secrets this host scheduled for deletion, while they can still be restored.
    #[serde(default)]
    pub set_aside: Vec<SetAsideSecret>,
    /// Secrets this host managed: the output of a key whose manifest existed, written or
    /// proven in a reconcile. Only these are ever pruned. Oldest first.
    #[serde(default)]
    pub managed: Vec<ManagedHere>,
}

impl Record {
    /// Whether this host managed `secret` as the output of its key (by ARN: a secret deleted
    /// and created again under the same name is another secret).
    pub fn manages(&self, secret: &ManagedSecret) -> bool {
        self.managed
            .iter()
            .any(|m| m.arn == secret.arn && m.key == secret.key_name)
    }
}

/// A secret this host managed as a key's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedHere {
    /// The secret id the manifest named.
    pub name: String,
    /// Secret ARN.
    pub arn: String,
    /// The key pair it holds.
    pub key: String,
    /// The manifest's `kmsKeyId` (the KMS key its pairs are made under).
    pub kms_key_id: String,
}

/// A secret a prune scheduled for deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetAsideSecret {
    /// Secret name.
    pub name: String,
    /// Secret ARN.
    pub arn: String,
    /// The key pair it holds.
    pub key: String,
    /// When AWS deletes it for good (RFC 3339): the entry is useless afterwards.
    pub collected_after: String,
}

/// `prune: true` with a secret output but no `reconcile.scope` written in the configuration:
/// every installation in an AWS account would then share the scope `default`, and one could
/// prune another's secrets. A configuration error (nothing is changed until it is fixed).
pub fn scope_problem(config: &Config, keys: &[KeyPair]) -> Option<crate::manifest::Diagnostic> {
    if !config.reconcile.prune || config.reconcile.scope_explicit {
        return None;
    }
    let key = keys.iter().find(|k| {
        k.outputs
            .iter()
            .any(|o| matches!(o, Output::SecretsManager(_)))
    })?;
    Some(crate::manifest::Diagnostic {
        file: crate::manifest::display_path(&config.path),
        line: 0,
        column: 0,
        field: "reconcile.scope".into(),
        message: format!(
            "must be set when reconcile.prune is true and a key has a secretsManager output \
             (key {:?}): secrets are pruned by scope, and every installation that leaves it \
             unset shares the scope \"default\", so one would prune another's secrets in the \
             same AWS account. Name this installation, e.g. scope: prod-eu-1 (every host of one \
             fleet uses the same)",
            key.name
        ),
    })
}

/// The prune ledger of `config`'s installation.
pub(crate) fn ledger(config: &Config) -> Ledger {
    Ledger::new(&config.state_dir, "prune")
}

/// The prune ledger of this installation (read-only).
pub fn load(config: &Config) -> Record {
    ledger(config).load()
}

/// An orphan and when it may be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The orphan.
    pub orphan: Orphan,
    /// When it was first seen orphaned (now when it is seen for the first time).
    pub since: SystemTime,
    /// `since + pruneAfter`: it is pruned by the first reconcile from then on.
    pub after: SystemTime,
    /// The last sighting to record (see [`SIGHTING_GRAIN`]).
    pub last_seen: SystemTime,
    /// Whether this host managed it (always, for a key directory under stateDir; for a secret,
    /// see [`Record::manages`]): one that was never managed here is never pruned.
    pub managed_here: bool,
}

impl Pending {
    /// Whether a reconcile at `now` prunes it.
    pub fn due(&self, now: SystemTime) -> bool {
        self.managed_here && now >= self.after
    }

    /// When a reconcile prunes it, with `reconcile.prune` (`prune`); never when this host did
    /// not manage it.
    pub fn prunes_at(&self, prune: bool) -> Option<SystemTime> {
        (prune && self.managed_here).then_some(self.after)
    }

    /// Its line in `keyprov plan`: pruned by a run at `now`, or when, or never.
    pub fn line(&self, now: SystemTime, prune_after: Duration) -> String {
        let since = humantime::format_rfc3339_seconds(self.since);
        let after = humantime::format_duration(prune_after);
        if !self.managed_here {
            format!(
                "orphan {}: not pruned: never managed here (this host never recorded it as the \
                 output of a key whose manifest existed; it may only carry keyprov's tags). \
                 Delete it by hand if it is yours",
                self.orphan
            )
        } else if self.due(now) {
            format!(
                "orphan {}: prune (seen orphaned since {since}, longer than \
                 reconcile.pruneAfter {after})",
                self.orphan
            )
        } else {
            format!(
                "orphan {}: pruned after {} (seen orphaned since {since}; \
                 reconcile.pruneAfter {after})",
                self.orphan,
                humantime::format_rfc3339_seconds(self.after)
            )
        }
    }
}

/// When each of `orphans` may be pruned, from the sightings in `record` (see
/// [`continuous_since`]), and whether this host managed it.
pub fn schedule(
    orphans: Vec<Orphan>,
    record: &Record,
    now: SystemTime,
    prune_after: Duration,
) -> Vec<Pending> {
    orphans
        .into_iter()
        .map(|orphan| {
            let (since, last_seen) = sightings(record, &orphan.to_string(), now, prune_after);
            let managed_here = match &orphan {
                Orphan::File { .. } => true,
                Orphan::Secret(secret) => record.manages(secret),
            };
            Pending {
                orphan,
                since,
                after: add(since, prune_after),
                last_seen,
                managed_here,
            }
        })
        .collect()
}

/// A sighting less than `pruneAfter / SIGHTING_GRAIN` after the recorded last one is not
/// recorded: the ledger is not rewritten by every reconcile (a daemon's resync every few
/// minutes), at the price of a gap counted up to that much too long (so a wait restarts early,
/// never late).
pub const SIGHTING_GRAIN: u32 = 8;

/// Orphan `id`, seen again at `now`: since when it has been seen orphaned without a break (its
/// first sighting when the sightings are continuous, else `now`), and the last sighting to
/// record. A gap longer than `prune_after` since the last sighting (nobody looked: it may have
/// come back meanwhile), or a sighting earlier than the previous one (a clock that was wrong
/// then, or is now), starts the wait again: a first sighting stamped by a clock far behind
/// cannot make an orphan due at once.
fn sightings(
    record: &Record,
    id: &str,
    now: SystemTime,
    prune_after: Duration,
) -> (SystemTime, SystemTime) {
    let parse = |map: &BTreeMap<String, String>| map.get(id).and_then(|t| parse_time(t).ok());
    let Some(since) = parse(&record.orphans) else {
        return (now, now);
    };
    let last = parse(&record.last_seen).unwrap_or(since);
    match now.duration_since(last) {
        Ok(gap) if since <= last && gap <= prune_after => {
            let recorded = if gap < prune_after / SIGHTING_GRAIN {
                last
            } else {
                now
            };
            (since, recorded)
        }
        _ => (now, now),
    }
}

/// The prunes a reconcile at `now` would make or wait for (`keyprov plan`): nothing when
/// prune is off or some manifest did not load. Reads, never writes.
pub async fn planned(
    config: &Config,
    secrets: &SecretsManagerStore,
    keys: &[KeyPair],
    frozen: &BTreeSet<String>,
    invalid: bool,
    now: SystemTime,
) -> Result<Vec<Pending>, String> {
    if !config.reconcile.prune || invalid || !frozen.is_empty() {
        return Ok(Vec::new());
    }
    let mut orphans = orphans::find(config, keys, frozen, secrets)
        .await
        .map_err(|err| format!("cannot list orphans: {err}"))?;
    orphans.retain(|o| o.prunable(config));
    let record: Record = ledger(config).load();
    Ok(schedule(
        orphans,
        &record,
        now,
        config.reconcile.prune_after,
    ))
}

/// `reconcile.prune`: records every orphan's sighting, prunes those seen orphaned continuously
/// for `reconcile.pruneAfter` that this host managed, and forgets the keys that came back.
/// Nothing happens in a run in which a manifest failed to load (its keys could look like
/// orphans); with `provider: aws`, no sighting is recorded and nothing is pruned unless this
/// host's clock agrees with AWS's. Returns the failures, by orphan.
pub async fn prune_orphans(
    config: &Config,
    secrets: &SecretsManagerStore,
    keys: &[KeyPair],
    frozen: &BTreeSet<String>,
    invalid: bool,
    now: SystemTime,
) -> Vec<(String, String)> {
    if invalid || !frozen.is_empty() {
        tracing::warn!(
            "reconcile.prune skipped: a manifest failed to load, so its keys could look like orphans; fix it first"
        );
        return Vec::new();
    }
    let orphans = match orphans::find(config, keys, frozen, secrets).await {
        Ok(mut orphans) => {
            orphans.retain(|o| o.prunable(config));
            orphans
        }
        Err(err) => {
            tracing::error!("cannot list orphans: {err}");
            return vec![("orphans".into(), format!("cannot list orphans: {err}"))];
        }
    };
    // With provider: aws, AWS's clock is the reference (as for generating); the local
    // provider has none.
    if !orphans.is_empty()
        && let Some(refusal) = clock_refusal(config, keys).await
    {
        tracing::warn!("reconcile.prune held back: {refusal}");
        return Vec::new();
    }
    let ledger = ledger(config);
    let mut record: Record = ledger.load();
    let pending = schedule(orphans, &record, now, config.reconcile.prune_after);
    let mut due: Vec<Orphan> = Vec::new();
    for p in &pending {
        if !p.managed_here {
            tracing::warn!(orphan = %p.orphan, "{}", p.line(now, config.reconcile.prune_after));
        } else if p.due(now) {
            due.push(p.orphan.clone());
        } else {
            tracing::info!(
                orphan = %p.orphan,
                "orphan {}: pruned after {} (seen orphaned since {}; reconcile.pruneAfter)",
                p.orphan,
                format_time(p.after),
                format_time(p.since)
            );
        }
    }
    let mut failures = Vec::new();
    let mut pruned = BTreeSet::new();
    let collected_after = add(
        now,
        Duration::from_secs(config.reconcile.prune_recovery_window_days.max(0) as u64 * 86_400),
    );
    for (orphan, result) in orphans::prune(config, &due, secrets, now).await {
        match result {
            Ok(()) => {
                tracing::info!(%orphan, "pruned an orphan (no manifest has defined its key for reconcile.pruneAfter)");
                if let Orphan::Secret(secret) = &orphan {
                    record.managed.retain(|m| m.arn != secret.arn);
                    record.set_aside.push(SetAsideSecret {
                        name: secret.name.clone(),
                        arn: secret.arn.clone(),
                        key: secret.key_name.clone(),
                        collected_after: format_time(collected_after),
                    });
                }
                pruned.insert(orphan.to_string());
            }
            Err(err) => {
                tracing::error!(%orphan, "cannot prune orphan {orphan}: {err}");
                failures.push((
                    orphan.to_string(),
                    format!("cannot prune orphan {orphan}: {err}"),
                ));
            }
        }
    }
    let before = record.clone();
    let sighted: Vec<&Pending> = pending
        .iter()
        .filter(|p| p.managed_here && !pruned.contains(&p.orphan.to_string()))
        .collect();
    record.orphans = sighted
        .iter()
        .map(|p| (p.orphan.to_string(), format_time(p.since)))
        .collect();
    record.last_seen = sighted
        .iter()
        .map(|p| (p.orphan.to_string(), format_time(p.last_seen)))
        .collect();
    forget_collected(&mut record, now);
    if record != before
        && let Err(err) = ledger.save(&record)
    {
        tracing::error!("{err}");
        failures.push(("orphans".into(), err));
    }
    failures
}

/// With `provider: aws`: why no orphan may be sighted or pruned now, when this host's clock
/// and AWS's (a reading of the last minute: the orphan listing made one when secrets are used,
/// else one DescribeKey is made for it) differ by more than `reconcile.clockTolerance`, or when
/// AWS's clock could not be read at all. `None` with the local provider (it has no clock to
/// compare with).
async fn clock_refusal(config: &Config, keys: &[KeyPair]) -> Option<String> {
    if config.provider != crate::config::ProviderKind::Aws {
        return None;
    }
    if crate::aws_clock::fresh_reading().is_none() {
        // Any answer carries a Date, a refusal or "not found" included.
        let probe = keys
            .first()
            .map_or("alias/keyprov", |k| k.kms_key_id.as_str());
        crate::provider::aws::AwsProvider::new(config.aws.clone())
            .probe_clock(probe)
            .await;
    }
    let Some(reading) = crate::aws_clock::fresh_reading() else {
        return Some(
            "AWS's clock could not be read (no response carried a Date), so no orphan is seen \
             or pruned in this run"
                .into(),
        );
    };
    (reading.skew() > config.reconcile.clock_tolerance).then(|| {
        format!(
            "this host's clock says {} but AWS said {}; no orphan is seen or pruned while they \
             differ by more than reconcile.clockTolerance",
            format_time(reading.local),
            format_time(reading.aws)
        )
    })
}

/// Records the secret outputs of `keys` as managed here: each secret this reconcile described
/// as keyprov's secret of its key (the store remembers their ARNs), for every key that neither
/// failed nor waited out a backoff in it (so its secret was written or proven). Written only
/// when something is new.
pub fn record_managed(
    config: &Config,
    secrets: &SecretsManagerStore,
    keys: &[KeyPair],
    failed: &[(String, String)],
    waiting: &BTreeSet<String>,
) {
    let mut found = Vec::new();
    for key in keys {
        if waiting.contains(&key.name) || failed.iter().any(|(name, _)| *name == key.name) {
            continue;
        }
        for output in &key.outputs {
            if let Output::SecretsManager(s) = output
                && let Some(arn) = secrets.described_arn(&s.secret_id)
            {
                found.push(ManagedHere {
                    name: s.secret_id.clone(),
                    arn,
                    key: key.name.clone(),
                    kms_key_id: key.kms_key_id.clone(),
                });
            }
        }
    }
    if found.is_empty() {
        return;
    }
    let ledger = ledger(config);
    let mut record: Record = ledger.load();
    let before = record.managed.clone();
    for entry in found {
        if !record.managed.contains(&entry) {
            record.managed.retain(|m| m.arn != entry.arn);
            record.managed.push(entry);
        }
    }
    let excess = record.managed.len().saturating_sub(MAX_MANAGED);
    record.managed.drain(..excess);
    if record.managed != before
        && let Err(err) = ledger.save(&record)
    {
        tracing::error!("{err}");
    }
}

/// Drops the set-aside secrets AWS has deleted for good, and the oldest beyond the bound.
fn forget_collected(record: &mut Record, now: SystemTime) {
    record
        .set_aside
        .retain(|s| parse_time(&s.collected_after).is_ok_and(|at| at > now));
    let excess = record.set_aside.len().saturating_sub(MAX_SET_ASIDE);
    record.set_aside.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const HOUR: Duration = Duration::from_secs(3600);

    fn orphan(name: &str) -> Orphan {
        Orphan::File {
            dir: PathBuf::from(format!("/s/keys/{name}")),
        }
    }

    #[test]
    fn an_orphan_is_due_only_after_prune_after_from_its_first_sighting() {
        let t0 = parse_time("2026-12-01T00:00:00Z").unwrap();
        let mut record = Record::default();
        let first = schedule(vec![orphan("a")], &record, t0, 24 * HOUR);
        assert_eq!(first[0].since, t0);
        assert!(!first[0].due(t0));
        record
            .orphans
            .insert(orphan("a").to_string(), format_time(t0));
        for gone in [
            Duration::from_secs(1),
            Duration::from_secs(60),
            HOUR,
            23 * HOUR,
        ] {
            let later = schedule(vec![orphan("a")], &record, t0 + gone, 24 * HOUR);
            assert!(!later[0].due(t0 + gone), "{gone:?}");
        }
        let later = schedule(vec![orphan("a")], &record, t0 + 24 * HOUR, 24 * HOUR);
        assert!(later[0].due(t0 + 24 * HOUR));
        // A first sighting stamped by a clock far ahead counts from now.
        record
            .orphans
            .insert(orphan("a").to_string(), "2036-12-01T00:00:00Z".into());
        let later = schedule(vec![orphan("a")], &record, t0, 24 * HOUR);
        assert_eq!(later[0].since, t0);
    }

    #[test]
    fn an_orphan_must_be_seen_continuously_and_a_clock_behind_restarts_its_wait() {
        let t0 = parse_time("2026-12-01T00:00:00Z").unwrap();
        let seen = |since: SystemTime, last: SystemTime| {
            let mut record = Record::default();
            let id = orphan("a").to_string();
            record.orphans.insert(id.clone(), format_time(since));
            record.last_seen.insert(id, format_time(last));
            record
        };
        let at = |record: &Record, now| schedule(vec![orphan("a")], record, now, 24 * HOUR);
        // Sightings an hour apart for a day: due.
        let record = seen(t0, t0 + 23 * HOUR);
        assert!(at(&record, t0 + 24 * HOUR)[0].due(t0 + 24 * HOUR));
        // A gap longer than pruneAfter since the last sighting: the wait starts again.
        let record = seen(t0, t0 + HOUR);
        let later = t0 + HOUR + 25 * HOUR;
        assert_eq!(at(&record, later)[0].since, later);
        assert!(!at(&record, later)[0].due(later));
        // First (and last) sighting stamped ten years behind: not due at once.
        let behind = t0 - 3650 * 24 * HOUR;
        let record = seen(behind, behind);
        assert_eq!(at(&record, t0)[0].since, t0);
        // A sighting earlier than the previous one (the clock went back): starts again.
        let record = seen(t0, t0 + 2 * HOUR);
        assert_eq!(at(&record, t0 + HOUR)[0].since, t0 + HOUR);
        // A sighting soon after the recorded last one is not recorded (no rewrite per run).
        let record = seen(t0, t0 + HOUR);
        assert_eq!(at(&record, t0 + 2 * HOUR)[0].last_seen, t0 + HOUR);
        assert_eq!(at(&record, t0 + 5 * HOUR)[0].last_seen, t0 + 5 * HOUR);
        // A record from before last sightings were kept: the first counts as the last.
        let mut record = Record::default();
        record
            .orphans
            .insert(orphan("a").to_string(), format_time(t0));
        assert_eq!(at(&record, t0 + 23 * HOUR)[0].since, t0);
        assert_eq!(at(&record, t0 + 25 * HOUR)[0].since, t0 + 25 * HOUR);
    }

    #[test]
    fn only_a_secret_managed_here_is_pruned() {
        let t0 = parse_time("2026-12-01T00:00:00Z").unwrap();
        let secret = |arn: &str, key: &str| {
            Orphan::Secret(ManagedSecret {
                name: "s".into(),
                arn: arn.into(),
                key_name: key.into(),
            })
        };
        let mut record = Record::default();
        record.managed.push(ManagedHere {
            name: "s".into(),
            arn: "arn:1".into(),
            key: "k".into(),
            kms_key_id: "alias/k".into(),
        });
        for (orphan, managed) in [
            (secret("arn:1", "k"), true),
            // The same name created again (another ARN), or tagged for another key: not ours.
            (secret("arn:2", "k"), false),
            (secret("arn:1", "other"), false),
            (orphan("dir"), true),
        ] {
            record.orphans.insert(orphan.to_string(), format_time(t0));
            let p = &schedule(vec![orphan.clone()], &record, t0 + 24 * HOUR, 24 * HOUR)[0];
            assert_eq!(p.managed_here, managed, "{orphan}");
            assert_eq!(p.due(t0 + 24 * HOUR), managed, "{orphan}");
            if !managed {
                assert!(p.line(t0, HOUR).contains("not pruned: never managed here"));
            }
        }
    }

    #[test]
    fn collected_secrets_are_forgotten() {
        let t0 = parse_time("2026-12-01T00:00:00Z").unwrap();
        let secret = |collected: SystemTime| SetAsideSecret {
            name: "s".into(),
            arn: "arn".into(),
            key: "k".into(),
            collected_after: format_time(collected),
        };
        let mut record = Record {
            set_aside: vec![secret(t0 - HOUR), secret(t0 + HOUR)],
            ..Record::default()
        };
        forget_collected(&mut record, t0);
        assert_eq!(record.set_aside, vec![secret(t0 + HOUR)]);
    }
}
