//! Orphans: outputs keyprov made for keys that no manifest defines any more. `status` lists
//! them; with `reconcile.prune: true` a reconcile in which every manifest loaded removes those
//! seen orphaned for `reconcile.pruneAfter` (see `prune_ledger`): key directories moved aside,
//! secrets scheduled for deletion with a recovery window. Nothing keyprov did not make is
//! ever listed or touched.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::Config;
use crate::manifest::{KeyPair, Output};
use crate::store::dir::DirHandle;
use crate::store::secrets_manager::ManagedSecret;
use crate::store::{SecretsManagerStore, StoreError, file};

/// Prefix of a key directory moved aside by a prune.
pub const ORPHANED_PREFIX: &str = ".orphaned-";

/// One orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphan {
    /// A key directory under `<stateDir>/keys` with a `current` link keyprov made.
    File {
        /// The directory.
        dir: PathBuf,
    },
    /// A secret tagged `keyprov:managed=true`.
    Secret(ManagedSecret),
}

impl Orphan {
    /// `file` or `secretsManager`.
    pub fn kind(&self) -> &'static str {
        match self {
            Orphan::File { .. } => "file",
            Orphan::Secret(_) => "secretsManager",
        }
    }

    /// The directory or secret name.
    pub fn location(&self) -> String {
        match self {
            Orphan::File { dir } => dir.display().to_string(),
            Orphan::Secret(secret) => secret.name.clone(),
        }
    }
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind(), self.location())
    }
}

/// The orphans of this installation. Key directories are looked for under
/// `<stateDir>/keys`; secrets only when some manifest has a secretsManager output (so a
/// files-only installation never needs AWS credentials for this). `frozen` are the names of
/// keys whose manifest did not load: they are never orphans.
pub async fn find(
    config: &Config,
    keys: &[KeyPair],
    frozen: &BTreeSet<String>,
    secrets: &SecretsManagerStore,
) -> Result<Vec<Orphan>, StoreError> {
    let mut orphans: Vec<Orphan> = file_orphans(config, keys, frozen)
        .into_iter()
        .map(|dir| Orphan::File { dir })
        .collect();
    let uses_secrets = keys
        .iter()
        .flat_map(|k| &k.outputs)
        .any(|o| matches!(o, Output::SecretsManager(_)));
    if uses_secrets {
        let claimed: BTreeSet<&str> = keys
            .iter()
            .flat_map(|k| &k.outputs)
            .filter_map(|o| match o {
                Output::SecretsManager(s) => Some(s.secret_id.as_str()),
                Output::File(_) => None,
            })
            .collect();
        let names: BTreeSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        for secret in secrets.list_managed().await? {
            // A secret a manifest names, or of a key that still exists (valid or frozen), is
            // not an orphan.
            let in_use = claimed.contains(secret.name.as_str())
                || claimed.contains(secret.arn.as_str())
                || names.contains(secret.key_name.as_str())
                || frozen.contains(&secret.key_name);
            if !in_use {
                orphans.push(Orphan::Secret(secret));
            }
        }
    }
    Ok(orphans)
}

/// Key directories under `<stateDir>/keys` that no valid or frozen manifest claims and that
/// keyprov made (a `current` symlink to a `vNNNN` directory).
fn file_orphans(config: &Config, keys: &[KeyPair], frozen: &BTreeSet<String>) -> Vec<PathBuf> {
    let claimed: BTreeSet<PathBuf> = keys
        .iter()
        .flat_map(|k| k.outputs.iter())
        .filter_map(|o| match o {
            Output::File(f) => Some(f.dir.clone()),
            Output::SecretsManager(_) => None,
        })
        .collect();
    let Ok(Some(root)) = DirHandle::open_root(&config.state_dir.join("keys"), false) else {
        return Vec::new();
    };
    let Ok(names) = root.names() else {
        return Vec::new();
    };
    let mut orphans: Vec<PathBuf> = names
        .iter()
        .filter_map(|name| name.to_str())
        .filter(|name| !name.starts_with('.') && !frozen.contains(*name))
        .filter(|name| !claimed.contains(&root.child_path(name)))
        .filter(|name| {
            root.open_dir(name).ok().flatten().is_some_and(|dir| {
                dir.read_link("current")
                    .ok()
                    .flatten()
                    .is_some_and(|target| {
                        target
                            .to_str()
                            .is_some_and(|t| dir.is_dir(t) && file::parse_version_name(t).is_some())
                    })
            })
        })
        .map(|name| root.child_path(name))
        .collect();
    orphans.sort();
    orphans
}

/// Removes `orphans`: key directories renamed aside (`.orphaned-<name>-<unix time of now>`,
/// durable, never deleted), secrets scheduled for deletion after
/// `reconcile.pruneRecoveryWindowDays`. Returns one result per orphan.
pub async fn prune(
    config: &Config,
    orphans: &[Orphan],
    secrets: &SecretsManagerStore,
    now: std::time::SystemTime,
) -> Vec<(Orphan, Result<(), String>)> {
    let mut results = Vec::new();
    let stamp = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for orphan in orphans {
        let result = match orphan {
            Orphan::File { dir } => move_aside(dir, stamp).map_err(|e| e.to_string()),
            Orphan::Secret(secret) => secrets
                .schedule_deletion(secret, config.reconcile.prune_recovery_window_days)
                .await
                .map_err(|e| e.to_string()),
        };
        results.push((orphan.clone(), result));
    }
    results
}

/// Renames a key directory aside within its parent, durably; no symlink is followed.
fn move_aside(dir: &std::path::Path, stamp: u64) -> Result<(), StoreError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(StoreError::Config(format!(
            "{}: not a key directory",
            dir.display()
        )));
    };
    let Some(parent) = DirHandle::open_root(parent, false)? else {
        return Ok(());
    };
    let aside = format!("{ORPHANED_PREFIX}{name}-{stamp}");
    if !parent.rename_no_replace(name, &aside)? {
        return Err(StoreError::Conflict {
            path: parent.child_path(&aside).display().to_string(),
            message: "already exists; nothing was moved".into(),
        });
    }
    parent.sync()
}
