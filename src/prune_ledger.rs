//! Prune that a redeploy, a rolling deploy or another host cannot trigger.
//!
//! An orphan is pruned only once it has been seen orphaned, reconcile after reconcile, for
//! `reconcile.pruneAfter` (default 24h): the first sighting of each orphan is recorded in
//! `<stateDir>/ledger/prune.json` (durable, atomic, one entry per current orphan); an orphan
//! whose key comes back loses its entry. What a prune sets aside comes back when its key does:
//! a key directory renamed aside (`.orphaned-<name>-<time>`) is renamed back, a secret
//! scheduled for deletion is restored — the same pair, no new generation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ledger::Ledger;
use crate::manifest::{KeyPair, Output};
use crate::orphans::{self, Orphan};
use crate::schedule::{add, format_time, parse_time};
use crate::store::dir::DirHandle;
use crate::store::{SecretsManagerStore, file};

/// Secrets set aside by this host's prunes that are remembered for a restore (the oldest go
/// first beyond this).
const MAX_SET_ASIDE: usize = 10_000;

/// What the prune ledger holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `kind:location` of each orphan -> when it was first seen orphaned (RFC 3339).
    #[serde(default)]
    pub orphans: BTreeMap<String, String>,
    /// Secrets this host scheduled for deletion, while they can still be restored.
    #[serde(default)]
    pub set_aside: Vec<SetAsideSecret>,
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

fn ledger(config: &Config) -> Ledger {
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
}

impl Pending {
    /// Whether a reconcile at `now` prunes it.
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.after
    }

    /// Its line in `keyprov plan`: pruned by a run at `now`, or when.
    pub fn line(&self, now: SystemTime, prune_after: Duration) -> String {
        let since = humantime::format_rfc3339_seconds(self.since);
        let after = humantime::format_duration(prune_after);
        if self.due(now) {
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

/// When each of `orphans` may be pruned, from the first sightings in `record`. A first
/// sighting recorded ahead of `now` (by a clock that was wrong then) counts from now.
pub fn schedule(
    orphans: Vec<Orphan>,
    record: &Record,
    now: SystemTime,
    prune_after: Duration,
) -> Vec<Pending> {
    orphans
        .into_iter()
        .map(|orphan| {
            let since = record
                .orphans
                .get(&orphan.to_string())
                .and_then(|text| parse_time(text).ok())
                .filter(|since| *since <= now)
                .unwrap_or(now);
            Pending {
                orphan,
                since,
                after: add(since, prune_after),
            }
        })
        .collect()
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

/// `reconcile.prune`: records every orphan's first sighting, prunes those seen orphaned for
/// `reconcile.pruneAfter`, and forgets the keys that came back. Nothing happens in a run in
/// which a manifest failed to load (its keys could look like orphans), nor while this host's
/// clock and AWS's disagree. Returns the failures, by orphan.
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
    let ledger = ledger(config);
    let mut record: Record = ledger.load();
    let pending = schedule(orphans, &record, now, config.reconcile.prune_after);
    let mut due: Vec<Orphan> = Vec::new();
    for p in &pending {
        if p.due(now) {
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
    // With provider: aws, AWS's clock is the reference (as for generating); the local
    // provider has none.
    let skew = crate::aws_clock::reading()
        .filter(|r| r.skew() > config.reconcile.clock_tolerance)
        .filter(|_| config.provider == crate::config::ProviderKind::Aws);
    if let (Some(reading), false) = (skew, due.is_empty()) {
        tracing::warn!(
            "reconcile.prune held back: this host's clock says {} but AWS said {}; nothing is \
             pruned while they differ by more than reconcile.clockTolerance",
            format_time(reading.local),
            format_time(reading.aws)
        );
        due.clear();
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
    record.orphans = pending
        .iter()
        .filter(|p| !pruned.contains(&p.orphan.to_string()))
        .map(|p| (p.orphan.to_string(), format_time(p.since)))
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

/// Drops the set-aside secrets AWS has deleted for good, and the oldest beyond the bound.
fn forget_collected(record: &mut Record, now: SystemTime) {
    record
        .set_aside
        .retain(|s| parse_time(&s.collected_after).is_ok_and(|at| at > now));
    let excess = record.set_aside.len().saturating_sub(MAX_SET_ASIDE);
    record.set_aside.drain(..excess);
}

/// Something a prune set aside that a desired key can get back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Rename `aside` (in the parent of `dir`) back to `dir`.
    File {
        /// Key name.
        key: String,
        /// The key directory the manifest names (absent now).
        dir: PathBuf,
        /// The name it was renamed aside to.
        aside: String,
    },
    /// Cancel the scheduled deletion of a secret.
    Secret {
        /// Key name.
        key: String,
        /// The secret's name or ARN.
        secret: String,
    },
}

impl std::fmt::Display for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restore::File { dir, aside, .. } => write!(
                f,
                "restore {} from {aside}, set aside by a prune (same pair, no new generation)",
                dir.display()
            ),
            Restore::Secret { secret, .. } => write!(
                f,
                "restore secret {secret} scheduled for deletion by a prune (same pair, no new \
                 generation)"
            ),
        }
    }
}

impl Restore {
    /// The key that gets it back.
    pub fn key(&self) -> &str {
        match self {
            Restore::File { key, .. } | Restore::Secret { key, .. } => key,
        }
    }
}

/// Part of the message with which observing a secret scheduled for deletion fails (see
/// `store::secrets_manager`): another host's prune, or an operator, deleted it.
const SCHEDULED_FOR_DELETION: &str = "is scheduled for deletion";

/// What the desired `keys` can get back: for a missing key directory, the newest copy a
/// prune renamed aside whose current version is that key's; for a secret output, a secret
/// this host's prune scheduled for deletion, or one whose observation failed (`failed`, by key)
/// because it is scheduled for deletion (another host's prune). Reads, never writes.
pub fn restorable(
    config: &Config,
    keys: &[KeyPair],
    failed: &[(String, String)],
    now: SystemTime,
) -> Vec<Restore> {
    let mut found = Vec::new();
    let record: Record = ledger(config).load();
    for key in keys {
        for output in &key.outputs {
            match output {
                Output::File(f) => {
                    if let Some(aside) = set_aside_dir(&f.dir, &key.name) {
                        found.push(Restore::File {
                            key: key.name.clone(),
                            dir: f.dir.clone(),
                            aside,
                        });
                    }
                }
                Output::SecretsManager(s) => {
                    let pruned_here = record.set_aside.iter().rev().find(|p| {
                        p.key == key.name
                            && (p.name == s.secret_id || p.arn == s.secret_id)
                            && parse_time(&p.collected_after).is_ok_and(|at| at > now)
                    });
                    let deleted_elsewhere = failed.iter().any(|(name, message)| {
                        name == &key.name
                            && message
                                .contains(&format!("{} {SCHEDULED_FOR_DELETION}", s.secret_id))
                    });
                    let secret = match pruned_here {
                        Some(p) => Some(p.arn.clone()),
                        None => deleted_elsewhere.then(|| s.secret_id.clone()),
                    };
                    if let Some(secret) = secret {
                        found.push(Restore::Secret {
                            key: key.name.clone(),
                            secret,
                        });
                    }
                }
            }
        }
    }
    found
}

/// The newest `.orphaned-<name>-<time>` beside the missing key directory `dir` whose
/// `current` version belongs to key `key`.
fn set_aside_dir(dir: &std::path::Path, key: &str) -> Option<String> {
    let (parent, name) = (dir.parent()?, dir.file_name()?.to_str()?);
    let parent = DirHandle::open_root(parent, false).ok()??;
    if parent.stat(name).is_some() {
        return None;
    }
    let prefix = format!("{}{name}-", orphans::ORPHANED_PREFIX);
    let mut candidates: Vec<(u64, String)> = parent
        .names()
        .ok()?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter_map(|n| Some((n.strip_prefix(&prefix)?.parse::<u64>().ok()?, n)))
        .collect();
    candidates.sort();
    candidates.into_iter().rev().map(|(_, n)| n).find(|aside| {
        let Ok(Some(copy)) = parent.open_dir(aside) else {
            return false;
        };
        let current = copy.read_link("current").ok().flatten();
        let generation = current
            .as_deref()
            .and_then(|t| t.to_str())
            .and_then(file::parse_version_name);
        generation.is_some_and(|g| {
            file::read_meta(&parent.child_path(aside), g).is_ok_and(|meta| meta.name == key)
        })
    })
}

/// Gets back what `restores` name. Returns the failures, by key.
pub async fn restore(
    config: &Config,
    secrets: &SecretsManagerStore,
    restores: &[Restore],
) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    let mut restored_secrets = BTreeSet::new();
    for restore in restores {
        let result = match restore {
            Restore::File { dir, aside, .. } => rename_back(dir, aside),
            Restore::Secret { key, secret } => secrets
                .restore_pruned(key, secret)
                .await
                .map(|_| {
                    restored_secrets.insert(secret.clone());
                })
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => tracing::info!(key = %restore.key(), "{restore}"),
            Err(err) => {
                let message = format!("key {:?}: cannot {restore}: {err}", restore.key());
                tracing::error!(key = %restore.key(), "{message}");
                failures.push((restore.key().to_string(), message));
            }
        }
    }
    if !restored_secrets.is_empty() {
        let ledger = ledger(config);
        let mut record: Record = ledger.load();
        record
            .set_aside
            .retain(|s| !restored_secrets.contains(&s.arn) && !restored_secrets.contains(&s.name));
        if let Err(err) = ledger.save(&record) {
            tracing::error!("{err}");
        }
    }
    failures
}

/// Renames a set-aside key directory back into place (never over an existing one), durably.
fn rename_back(dir: &std::path::Path, aside: &str) -> Result<(), String> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(format!("{}: not a key directory", dir.display()));
    };
    let parent = DirHandle::open_root(parent, false)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is missing", parent.display()))?;
    if !parent
        .rename_no_replace(aside, name)
        .map_err(|e| e.to_string())?
    {
        return Err(format!("{} exists already", dir.display()));
    }
    parent.sync().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn collected_secrets_are_forgotten() {
        let t0 = parse_time("2026-12-01T00:00:00Z").unwrap();
        let secret = |collected: SystemTime| SetAsideSecret {
            name: "s".into(),
            arn: "arn".into(),
            key: "k".into(),
            collected_after: format_time(collected),
        };
        let mut record = Record {
            orphans: BTreeMap::new(),
            set_aside: vec![secret(t0 - HOUR), secret(t0 + HOUR)],
        };
        forget_collected(&mut record, t0);
        assert_eq!(record.set_aside, vec![secret(t0 + HOUR)]);
    }
}
