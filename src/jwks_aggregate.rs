//! The config's JWK Set aggregates (`jwks: [{path, selector: {labels}}]`): one `jwks.json` for
//! one issuer, merging the next, current and previous public keys of every key whose labels
//! match, taken from their file outputs. Written through directory handles (no symlink
//! followed below its root, directories created 0755, the old file read only when it is a
//! regular file of bounded size), atomically, and only when it changes; never while a manifest
//! is invalid, a selected key failed, or no key is selected: a key left out would stop
//! verifying.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::manifest::{KeyPair, Output};
use crate::spec::KeyPairSpec;
use crate::store::dir::DirHandle;

/// Mode of the set and of the directories made for it: verifiers run as other users.
const MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// One aggregate of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksAggregate {
    /// The stateDir or outputRoot that holds the set.
    pub root: PathBuf,
    /// The set's path below `root` (plain names, the last ending in `.json`).
    pub relative: PathBuf,
    /// Keys whose labels include all of these are in the set.
    pub labels: BTreeMap<String, String>,
    /// URL path at which the daemon serves the set (`serve`), if any.
    pub serve: Option<String>,
}

impl JwksAggregate {
    /// Resolves a configured `path` (relative to `state_dir`, or absolute inside it or an
    /// output root) and refuses what could clobber keyprov's own files: `..`, a name not
    /// ending in `.json`, `<stateDir>/keys/…`, `<stateDir>/retry/…` and `<stateDir>/ledger/…`.
    pub fn resolve(
        text: &str,
        state_dir: &Path,
        output_roots: &[PathBuf],
        labels: BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let path = Path::new(text);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            state_dir.join(path)
        };
        let refuse = |why: &str| Err(format!("{text:?} {why}"));
        if path.components().any(|c| c == Component::ParentDir) {
            return refuse("must not contain `..`");
        }
        if !text.ends_with(".json") || text.ends_with("/.json") {
            return refuse("must name a file ending in .json");
        }
        let Some((root, relative)) = std::iter::once(state_dir)
            .chain(output_roots.iter().map(PathBuf::as_path))
            .filter_map(|root| Some((root, absolute.strip_prefix(root).ok()?)))
            .max_by_key(|(root, _)| root.as_os_str().len())
        else {
            return refuse("must be inside stateDir or an outputRoot");
        };
        if root == state_dir
            && relative.components().next().is_some_and(|c| {
                ["keys", "retry", crate::ledger::LEDGER_DIR]
                    .contains(&c.as_os_str().to_str().unwrap_or(""))
            })
        {
            return refuse(
                "must not be inside stateDir's keys/, retry/ or ledger/ (keyprov's own)",
            );
        }
        Ok(JwksAggregate {
            root: root.to_path_buf(),
            relative: relative.to_path_buf(),
            labels,
            serve: None,
        })
    }

    /// The set's absolute path.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    /// Whether `key` belongs in this set.
    pub fn selects(&self, key: &KeyPair) -> bool {
        self.labels
            .iter()
            .all(|(name, value)| key.labels.get(name) == Some(value))
    }
}

/// The set's contents for the selected `keys` (sorted by name, each key's keys next first).
fn contents(aggregate: &JwksAggregate, selected: &[&KeyPair]) -> Result<Vec<u8>, String> {
    let mut jwks = Vec::new();
    for key in selected {
        if key.spec == KeyPairSpec::Sm2 {
            tracing::warn!(key = %key.name, path = %aggregate.path().display(),
                "SM2 keys have no JWK form: left out of the JWK Set");
            continue;
        }
        let Some(output) = key.outputs.iter().find_map(|o| match o {
            Output::File(file) => Some(file),
            Output::SecretsManager(_) => None,
        }) else {
            tracing::warn!(key = %key.name, path = %aggregate.path().display(),
                "the key has no file output: left out of the JWK Set");
            continue;
        };
        let mut linked = crate::store::file::linked_jwks(output)
            .map_err(|e| format!("key {:?}: {e}", key.name))?;
        jwks.append(&mut linked);
    }
    Ok(crate::public_formats::jwks(&jwks))
}

/// Replaces the set with `bytes` below its root ([`DirHandle::replace_file`]): directories
/// on the way created 0755 and never followed through a symlink, leftovers of earlier crashes
/// removed. Nothing is written when it holds `bytes`.
fn write(aggregate: &JwksAggregate, bytes: &[u8]) -> Result<bool, String> {
    let fail = |e: crate::store::StoreError| e.to_string();
    let root = DirHandle::open_root(&aggregate.root, true)
        .map_err(fail)?
        .ok_or("the root vanished")?;
    let name = aggregate
        .relative
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("names no file")?;
    let parent = aggregate.relative.parent().unwrap_or(Path::new(""));
    let dir = if parent.as_os_str().is_empty() {
        root
    } else {
        root.walk(parent, Some((DIR_MODE, (None, None))))
            .map_err(fail)?
            .ok_or("its directory vanished")?
    };
    let prefix = format!(".tmp-{name}-");
    for leftover in dir.names().map_err(fail)? {
        if leftover.to_string_lossy().starts_with(&prefix) {
            let _ = dir.remove_file(&leftover);
        }
    }
    if dir.read_file(name).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    dir.replace_file(name, bytes, MODE, (None, None))
        .map_err(fail)?;
    dir.sync().map_err(fail)?;
    Ok(true)
}

/// The set as written (for serving it): `None` when it does not exist yet. Read through
/// directory handles like [`write`], a regular file of bounded size only.
pub fn read(aggregate: &JwksAggregate) -> Result<Option<Vec<u8>>, String> {
    let fail = |e: crate::store::StoreError| e.to_string();
    let Some(root) = DirHandle::open_root(&aggregate.root, false).map_err(fail)? else {
        return Ok(None);
    };
    let name = aggregate
        .relative
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("names no file")?;
    let parent = aggregate.relative.parent().unwrap_or(Path::new(""));
    let dir = if parent.as_os_str().is_empty() {
        root
    } else {
        match root.walk(parent, None).map_err(fail)? {
            Some(dir) => dir,
            None => return Ok(None),
        }
    };
    if dir.stat(name).is_none() {
        return Ok(None);
    }
    dir.read_file(name).map(Some).map_err(fail)
}

/// Brings every aggregate up to date with `keys` (all valid keys of the manifests); `failed`
/// names the keys that failed in this reconcile. Returns the failures, by path.
pub fn update_all(
    aggregates: &[JwksAggregate],
    keys: &[KeyPair],
    failed: &HashSet<&str>,
) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    for aggregate in aggregates {
        let path = aggregate.path().display().to_string();
        let selected: Vec<&KeyPair> = keys.iter().filter(|k| aggregate.selects(k)).collect();
        if selected.is_empty() {
            tracing::warn!(path = %path, labels = ?aggregate.labels,
                "the JWK Set's selector matches no key: left as it is");
            continue;
        }
        if let Some(key) = selected.iter().find(|k| failed.contains(k.name.as_str())) {
            tracing::warn!(path = %path, key = %key.name,
                "JWK Set not updated: a key of it failed in this run, and leaving its keys out \
                 would stop them verifying");
            continue;
        }
        let inside_a_key = keys.iter().find_map(|key| {
            key.outputs.iter().find_map(|o| match o {
                Output::File(file) if aggregate.path().starts_with(&file.dir) => {
                    Some(key.name.clone())
                }
                _ => None,
            })
        });
        let result = match inside_a_key {
            Some(name) => Err(format!(
                "is inside the key directory of {name:?}, which only keyprov's versions and \
                 links may hold: choose another path"
            )),
            None => contents(aggregate, &selected),
        }
        .and_then(|bytes| write(aggregate, &bytes));
        match result {
            Ok(true) => tracing::info!(path = %path, "JWK Set updated"),
            Ok(false) => {}
            Err(err) => {
                let message = format!("JWK Set {path}: {err}");
                tracing::error!("{message}");
                failures.push((format!("jwks:{path}"), message));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_clobber_keyprov_s_own_files_are_refused() {
        let state = Path::new("/var/lib/keyprov");
        let roots = [PathBuf::from("/etc/ssl/keyprov")];
        let resolve = |text: &str| JwksAggregate::resolve(text, state, &roots, BTreeMap::new());
        let ok = resolve("issuer/jwks.json").unwrap();
        assert_eq!(ok.root, state);
        assert_eq!(ok.relative, Path::new("issuer/jwks.json"));
        let abs = resolve("/etc/ssl/keyprov/pay/jwks.json").unwrap();
        assert_eq!(abs.root, roots[0]);
        for bad in [
            "local-kms.keyring",
            ".lock",
            "keys/alpha/jwks.json",
            "retry/alpha.json",
            "../x.json",
            "a/../../x.json",
            "/tmp/x.json",
            "/var/lib/keyprov",
            "issuer/",
            "issuer/.json",
        ] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }
}
