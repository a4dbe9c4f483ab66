//! Getting back what a prune set aside, when its key comes back: a key directory renamed aside
//! (`.orphaned-<name>-<time>`) is renamed back, a secret scheduled for deletion (by this host's
//! prune or another fleet host's) is restored — the same pair, no new generation.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::Config;
use crate::manifest::{KeyPair, Output};
use crate::orphans;
use crate::prune_ledger::{Record, ledger};
use crate::schedule::parse_time;
use crate::store::dir::DirHandle;
use crate::store::{SecretsManagerStore, file};

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
    let mut parents = Parents::default();
    for key in keys {
        for output in &key.outputs {
            match output {
                Output::File(f) => {
                    if let Some(aside) = parents.set_aside_dir(&f.dir, &key.name) {
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

/// The parent directories of key directories, each listed once per call of [`restorable`]:
/// one listing per key made finding N missing keys cost N listings of up to N entries. Writers
/// of a stateDir hold its lock, so nothing keyprov makes appears meanwhile.
#[derive(Default)]
struct Parents {
    listed: HashMap<PathBuf, Option<Listing>>,
}

/// One parent directory: its entries, and the copies set aside in it by the key directory
/// name they were set aside from (`.orphaned-<name>-<time>`).
struct Listing {
    dir: DirHandle,
    names: HashSet<OsString>,
    aside: HashMap<String, Vec<(u64, String)>>,
}

impl Listing {
    fn of(parent: &Path) -> Option<Listing> {
        let dir = DirHandle::open_root(parent, false).ok()??;
        let names: HashSet<OsString> = dir.names().ok()?.into_iter().collect();
        let mut aside: HashMap<String, Vec<(u64, String)>> = HashMap::new();
        for entry in names.iter().filter_map(|n| n.to_str()) {
            let Some((name, stamp)) = entry
                .strip_prefix(orphans::ORPHANED_PREFIX)
                .and_then(|rest| rest.rsplit_once('-'))
            else {
                continue;
            };
            if let Ok(stamp) = stamp.parse::<u64>() {
                aside
                    .entry(name.to_string())
                    .or_default()
                    .push((stamp, entry.to_string()));
            }
        }
        Some(Listing { dir, names, aside })
    }
}

impl Parents {
    /// The newest `.orphaned-<name>-<time>` beside the missing key directory `dir` whose
    /// `current` version belongs to key `key`.
    fn set_aside_dir(&mut self, dir: &Path, key: &str) -> Option<String> {
        let (parent, name) = (dir.parent()?, dir.file_name()?.to_str()?);
        let listing = self
            .listed
            .entry(parent.to_path_buf())
            .or_insert_with(|| Listing::of(parent))
            .as_ref()?;
        if listing.names.contains(OsStr::new(name)) {
            return None;
        }
        let mut candidates = listing.aside.get(name)?.clone();
        candidates.sort();
        let parent = &listing.dir;
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

    #[test]
    fn each_parent_is_listed_once_per_pass() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("present")).unwrap();
        // Not a copy of a key directory (no `current`): never restored.
        std::fs::create_dir(root.path().join(".orphaned-gone-100")).unwrap();
        let mut parents = Parents::default();
        assert_eq!(
            parents.set_aside_dir(&root.path().join("present"), "present"),
            None
        );
        assert_eq!(
            parents.set_aside_dir(&root.path().join("gone"), "gone"),
            None
        );
        let listing = parents.listed[root.path()].as_ref().unwrap();
        assert_eq!(
            listing.aside["gone"],
            [(100, ".orphaned-gone-100".to_string())]
        );
        // Listed once: what appears later in the same pass is not looked at.
        std::fs::remove_dir(root.path().join("present")).unwrap();
        assert_eq!(
            parents.set_aside_dir(&root.path().join("present"), "present"),
            None
        );
        assert_eq!(parents.listed.len(), 1);
    }
}
