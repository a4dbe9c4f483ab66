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

    /// Whether `reconcile.prune` may remove it: a secret (this installation's scope) or a key
    /// directory under stateDir (this installation's own). A key directory elsewhere in an
    /// output root is only listed: another installation may share that root, and its keys
    /// would look orphaned here.
    pub fn prunable(&self, config: &Config) -> bool {
        match self {
            Orphan::File { dir } => dir.starts_with(&config.state_dir),
            Orphan::Secret(_) => true,
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
    let mut dirs: BTreeSet<PathBuf> = file_orphans(config, keys, frozen).into_iter().collect();
    dirs.extend(custom_dir_orphans(config, keys, frozen));
    let mut orphans: Vec<Orphan> = dirs.into_iter().map(|dir| Orphan::File { dir }).collect();
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

/// Deepest directory below stateDir or an output root looked at for key directories with a
/// custom `dir:` (`team/app/signing` is 3).
const MAX_SCAN_DEPTH: usize = 6;
/// Most directories opened per root while looking for them: the scan stays bounded however
/// large an output root is.
const MAX_SCAN_DIRS: usize = 10_000;

/// Key directories below stateDir and the output roots (a custom `dir:`) that keyprov made and
/// no valid or frozen manifest claims: a directory with a `current` symlink to a `vNNNN`
/// directory whose meta.json is keyprov's. Breadth first, bounded by [`MAX_SCAN_DEPTH`] and
/// [`MAX_SCAN_DIRS`]; no symlink is followed, names starting with `.` (set-aside copies) are
/// skipped, and nothing below a key directory is looked at.
fn custom_dir_orphans(
    config: &Config,
    keys: &[KeyPair],
    frozen: &BTreeSet<String>,
) -> Vec<PathBuf> {
    let claimed: BTreeSet<PathBuf> = keys
        .iter()
        .flat_map(|k| k.outputs.iter())
        .filter_map(|o| match o {
            Output::File(f) => Some(f.dir.clone()),
            Output::SecretsManager(_) => None,
        })
        .collect();
    let mut found = Vec::new();
    for root in std::iter::once(&config.state_dir).chain(&config.output_roots) {
        let Ok(Some(handle)) = DirHandle::open_root(root, false) else {
            continue;
        };
        let mut queue = std::collections::VecDeque::from([(handle, 0usize)]);
        let mut opened = 0;
        while let Some((dir, depth)) = queue.pop_front() {
            let Ok(names) = dir.names() else {
                continue;
            };
            for name in names.iter().filter_map(|n| n.to_str()) {
                if name.starts_with('.') || depth + 1 > MAX_SCAN_DEPTH {
                    continue;
                }
                if opened >= MAX_SCAN_DIRS {
                    tracing::warn!(
                        "looking for orphaned key directories: stopped after {MAX_SCAN_DIRS} \
                         directories below {}",
                        root.display()
                    );
                    queue.clear();
                    break;
                }
                // open_dir refuses symlinks and directories owned by another user.
                let Ok(Some(child)) = dir.open_dir(name) else {
                    continue;
                };
                opened += 1;
                match made_for(&child) {
                    Some(key) => {
                        if !claimed.contains(child.path()) && !frozen.contains(&key) {
                            found.push(child.path().to_path_buf());
                        }
                    }
                    None => queue.push_back((child, depth + 1)),
                }
            }
        }
    }
    found
}

/// The key whose directory `dir` is, when keyprov made it: its `current` symlink names a
/// `vNNNN` directory whose meta.json is a keyprov version's.
fn made_for(dir: &DirHandle) -> Option<String> {
    let target = dir.read_link("current").ok()??;
    let target = target.to_str()?;
    let generation = file::parse_version_name(target)?;
    let version = dir.open_dir(target).ok()??;
    let bytes = version.read_file("meta.json").ok()?;
    let meta: crate::store::VersionMeta = serde_json::from_slice(&bytes).ok()?;
    (meta.api_version == crate::manifest::API_VERSION && meta.generation == generation)
        .then_some(meta.name)
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
