//! The config's JWK Set aggregates (`jwks: [{path, selector: {labels}}]`): one `jwks.json` for
//! one issuer, merging the next, current and previous public keys of every key whose labels
//! match, taken from their file outputs. Written through directory handles (no symlink
//! followed below its root, directories created 0755, the old file read only when it is a
//! regular file of bounded size), atomically, and only when it changes; never frozen wholesale:
//! a key that cannot be read now (invalid manifest, failed, waiting to retry) keeps the entries
//! it last had, the others move on. The pass updates it twice: after publishing (it takes
//! every new generation before any `current` moves to it) and after activating (it drops
//! what left every link), always before any `activate` hook of a key it selects.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::FileStat;

use crate::fingerprints::{Fingerprints, Stamp, Stamper};
use crate::jwks_members::Members;
use crate::manifest::{KeyPair, Output};
use crate::observed::LinkedJwks;
use crate::spec::KeyPairSpec;
use crate::store::dir::{DirHandle, MAX_GROWING_BYTES};

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
        if root == state_dir && relative == Path::new(crate::jwks_members::FILE) {
            return refuse("names keyprov's own record of the sets' members");
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

/// Opens the directory of the set below its root, and returns it with the set's name:
/// directories on the way created 0755 and never followed through a symlink, leftovers of
/// earlier crashes removed.
fn open_dir(aggregate: &JwksAggregate) -> Result<(DirHandle, &str), String> {
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
    Ok((dir, name))
}

/// Replaces the set `name` in `dir` with `bytes` ([`DirHandle::replace_file`]). Nothing is
/// written when it holds `bytes`. Returns whether it was written.
fn write(dir: &DirHandle, name: &str, bytes: &[u8]) -> Result<bool, String> {
    let fail = |e: crate::store::StoreError| e.to_string();
    if dir
        .read_file_at_most(name, MAX_GROWING_BYTES)
        .is_ok_and(|old| old == bytes)
    {
        return Ok(false);
    }
    dir.replace_file(name, bytes, MODE, (None, None))
        .map_err(fail)?;
    dir.sync().map_err(fail)?;
    Ok(true)
}

/// The kind of a config JWK Set's stamp.
const SET_STAMP: &str = "set";

/// The stamp of a set (`stat` its own) holding the entries of `members` (each key's name and
/// the stamp of what its links' JWKs are made from), with the record of the sets' members as
/// `members_stat` says; `None` when a member's links could not be stamped.
fn set_stamp<'o>(
    aggregate: &JwksAggregate,
    members: &[Member<'_>],
    observed: &dyn Fn(&str, usize) -> Option<&'o LinkedJwks>,
    members_stat: Option<&FileStat>,
    stat: Option<&FileStat>,
) -> Option<Stamp> {
    let mut stamper = Stamper::new(SET_STAMP, &aggregate.path());
    for member in members {
        let linked = observed(&member.key.name, member.index)?.stamp.as_ref()?;
        stamper.input(member.key.name.as_bytes()).stamp(linked);
    }
    stamper.file_or_none(members_stat).file(stat);
    stamper.finish()
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
    dir.read_file_at_most(name, MAX_GROWING_BYTES)
        .map(Some)
        .map_err(fail)
}

/// The keys whose entries stay as they were: their links cannot be trusted now.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// Keys that failed in this reconcile or wait for their retry.
    pub failed: &'a HashSet<&'a str>,
    /// Keys of invalid manifests.
    pub frozen: &'a BTreeSet<String>,
    /// Whether any manifest is invalid (a file too broken to name its keys may define some).
    pub invalid: bool,
}

/// What [`update_all`] did.
#[derive(Debug, Default)]
pub struct Updated {
    /// Failures, by `jwks:<path>`.
    pub failures: Vec<(String, String)>,
    /// Keys selected by a set that could not be written: their `activate` hooks must wait.
    pub unpublished: HashSet<String>,
}

/// Brings every aggregate up to date with `keys` (all valid keys of the manifests). A held
/// key keeps the entries it last had (remembered in [`crate::jwks_members`]), plus what its
/// links hold when they can be read; every other selected key's entries are its next,
/// current and previous. A key that no valid manifest defines keeps its entries while any
/// manifest is invalid (it may be one of them), and leaves once all are valid.
///
/// `observed(key, output)` gives the JWKs that key's file output (by index) links to when this
/// pass observed them and nothing changed them since (see
/// [`crate::observed::ObservedOutput::linked_jwks`]); other keys' versions are read. With
/// `fingerprints`, when no key is held, a set whose stamp (its stat, the record of members'
/// stat, and the stamps of what each member's JWKs are made from) is the one recorded is
/// neither made nor read; one found right is recorded.
pub fn update_all<'o>(
    aggregates: &[JwksAggregate],
    keys: &[KeyPair],
    held: Held<'_>,
    state_dir: &Path,
    observed: &dyn Fn(&str, usize) -> Option<&'o LinkedJwks>,
    fingerprints: Option<&Fingerprints>,
) -> Updated {
    let mut updated = Updated::default();
    // Taken before the members are read (a change after it shows in a later stat).
    let members_stat = fingerprints.and_then(|_| crate::jwks_members::stat(state_dir));
    let nothing_held = held.failed.is_empty() && held.frozen.is_empty() && !held.invalid;
    // Read at first need when the sets' stamps may vouch for them (then none is needed).
    let mut members =
        (fingerprints.is_none() || !nothing_held).then(|| load_members(state_dir, &mut updated));
    let mut any_vouched = false;
    // Whether the members changed (an insert that differs), so that the file is written only then.
    let mut members_changed = false;
    for aggregate in aggregates {
        let path = aggregate.path().display().to_string();
        let selected: Vec<&KeyPair> = keys.iter().filter(|k| aggregate.selects(k)).collect();
        if selected.is_empty() {
            tracing::warn!(path = %path, labels = ?aggregate.labels,
                "the JWK Set's selector matches no key: left as it is");
            continue;
        }
        let set_path = aggregate.path();
        let inside_a_key = keys.iter().find_map(|key| {
            key.outputs.iter().find_map(|o| match o {
                Output::File(file) if set_path.starts_with(&file.dir) => Some(key.name.clone()),
                _ => None,
            })
        });
        let mut stamp = None;
        let result = match inside_a_key {
            Some(name) => Err(format!(
                "is inside the key directory of {name:?}, which only keyprov's versions and \
                 links may hold: choose another path"
            )),
            None => open_dir(aggregate).and_then(|(dir, name)| {
                let members_of = members_of(aggregate, &selected);
                // The set's stamp now (taken before the set is read).
                let stamp_now = || {
                    set_stamp(
                        aggregate,
                        &members_of,
                        observed,
                        members_stat.as_ref(),
                        dir.stat(name).as_ref(),
                    )
                };
                stamp = fingerprints
                    .filter(|_| nothing_held)
                    .and_then(|_| stamp_now());
                if let (Some(f), Some(stamp)) = (fingerprints, &stamp)
                    && f.vouches(stamp)
                {
                    return Ok((false, None));
                }
                // Not vouched for: its pages written out, then stamped again before it is
                // read (see `settle`).
                if stamp.is_some() {
                    stamp = crate::fingerprints::settle(&dir, name)
                        .then(stamp_now)
                        .flatten();
                }
                let members = members.get_or_insert_with(|| load_members(state_dir, &mut updated));
                let next = next_entries(
                    aggregate,
                    &members_of,
                    keys,
                    held,
                    members.get(&path),
                    observed,
                );
                for problem in &next.problems {
                    let message = format!("JWK Set {path}: {problem}");
                    tracing::error!("{message}");
                    updated.failures.push((format!("jwks:{path}"), message));
                }
                write(&dir, name, &bytes_of(&next.by_key)).map(|changed| (changed, Some(next)))
            }),
        };
        match result {
            Ok((_, None)) => any_vouched = true,
            Ok((changed, Some(next))) => {
                if changed {
                    tracing::info!(path = %path, "JWK Set updated");
                }
                let right = !changed && next.problems.is_empty();
                let kids = next
                    .by_key
                    .into_iter()
                    .map(|(name, entries)| (name, entries.iter().filter_map(kid).collect()))
                    .collect();
                let members = members.get_or_insert_with(Members::new);
                let same = members.get(&path) == Some(&kids);
                if !same {
                    members.insert(path, kids);
                    members_changed = true;
                }
                if let Some(f) = fingerprints {
                    match &stamp {
                        Some(stamp) if right && same => f.record(stamp),
                        _ => f.forget(SET_STAMP, &aggregate.path()),
                    }
                }
            }
            Err(err) => {
                let message = format!("JWK Set {path}: {err}");
                tracing::error!("{message}");
                updated.failures.push((format!("jwks:{path}"), message));
                updated
                    .unpublished
                    .extend(selected.iter().map(|k| k.name.clone()));
            }
        }
    }
    if members.is_none() && !any_vouched {
        // As without fingerprints: an unreadable record is reported.
        load_members(state_dir, &mut updated);
    }
    if members_changed
        && let Some(members) = &members
        && let Err(err) = crate::jwks_members::save(state_dir, members)
    {
        let message = format!(
            "cannot record which keys the JWK Sets hold in {}: {err}",
            state_dir.join(crate::jwks_members::FILE).display()
        );
        tracing::error!("{message}");
        updated.failures.push(("jwks:members".into(), message));
    }
    updated
}

/// The remembered members of the sets ([`crate::jwks_members::load`]); an unreadable record
/// is reported in `updated` and read as empty.
fn load_members(state_dir: &Path, updated: &mut Updated) -> Members {
    crate::jwks_members::load(state_dir).unwrap_or_else(|err| {
        let message = format!(
            "cannot read which keys the JWK Sets hold ({err}): every entry no readable key \
             accounts for is kept while a key is held"
        );
        tracing::error!("{message}");
        updated.failures.push(("jwks:members".into(), message));
        Members::new()
    })
}

/// A key whose entries a set takes: the key, and its file output (by index) they come from.
struct Member<'k> {
    key: &'k KeyPair,
    index: usize,
    output: &'k crate::manifest::FileOutput,
}

/// The selected keys that can have entries in the set (logged: those that cannot).
fn members_of<'k>(aggregate: &JwksAggregate, selected: &[&'k KeyPair]) -> Vec<Member<'k>> {
    let mut members = Vec::with_capacity(selected.len());
    for key in selected {
        if key.spec == KeyPairSpec::Sm2 {
            tracing::warn!(key = %key.name, path = %aggregate.path().display(),
                "SM2 keys have no JWK form: left out of the JWK Set");
            continue;
        }
        let Some((index, output)) = key.outputs.iter().enumerate().find_map(|(i, o)| match o {
            Output::File(file) => Some((i, file)),
            Output::SecretsManager(_) => None,
        }) else {
            tracing::warn!(key = %key.name, path = %aggregate.path().display(),
                "the key has no file output: left out of the JWK Set");
            continue;
        };
        members.push(Member { key, index, output });
    }
    members
}

/// An entry's kid.
fn kid(entry: &serde_json::Value) -> Option<String> {
    entry.get("kid")?.as_str().map(str::to_string)
}

/// The entries of the set as written, by kid; empty when it is missing or unreadable.
fn old_entries(aggregate: &JwksAggregate) -> BTreeMap<String, serde_json::Value> {
    let parsed = read(aggregate).and_then(|bytes| match bytes {
        None => Ok(serde_json::Value::Null),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    });
    let set = parsed.unwrap_or_else(|err| {
        tracing::warn!(path = %aggregate.path().display(),
            "the JWK Set as written cannot be read ({err}): rebuilt from the keys' links");
        serde_json::Value::Null
    });
    set.get("keys")
        .and_then(|keys| keys.as_array())
        .into_iter()
        .flatten()
        .filter_map(|entry| Some((kid(entry)?, entry.clone())))
        .collect()
}

/// A set's next entries, per key.
struct Next {
    by_key: BTreeMap<String, Vec<serde_json::Value>>,
    /// Keys whose links could not be read (their last entries are kept).
    problems: Vec<String>,
}

/// The entries of `aggregate` now: see [`update_all`]. `remembered` is what each key put in
/// it last; without it (first run with this file) a held key keeps every entry of the set as
/// written that no readable key accounts for.
fn next_entries<'o>(
    aggregate: &JwksAggregate,
    members: &[Member<'_>],
    keys: &[KeyPair],
    held: Held<'_>,
    remembered: Option<&BTreeMap<String, Vec<String>>>,
    observed: &dyn Fn(&str, usize) -> Option<&'o LinkedJwks>,
) -> Next {
    // The set as written is parsed only for a held key's last entries: a pass that holds no
    // key (a no-op) builds the set from the links alone (`write` still compares the bytes).
    let old = std::cell::OnceCell::new();
    let old = || old.get_or_init(|| old_entries(aggregate));
    let mut next = Next {
        by_key: BTreeMap::new(),
        problems: Vec::new(),
    };
    let mut to_keep = Vec::new();
    for &Member { key, index, output } in members {
        if held.failed.contains(key.name.as_str()) {
            // Its links may be half-moved: what they hold is added, nothing it had is lost.
            let linked = crate::store::file::linked_jwks(output);
            to_keep.push((key.name.clone(), linked.unwrap_or_default()));
            continue;
        }
        let linked = match observed(&key.name, index) {
            Some(linked) => crate::store::file::jwks_of_linked(output, linked),
            None => crate::store::file::linked_jwks(output),
        };
        match linked {
            Ok(linked) => {
                next.by_key.insert(key.name.clone(), linked);
            }
            Err(err) => {
                next.problems.push(format!(
                    "key {:?}: {err}; its last entries are kept",
                    key.name
                ));
                to_keep.push((key.name.clone(), Vec::new()));
            }
        }
    }
    let defined: HashSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let undefined_held =
        |name: &str| !defined.contains(name) && (held.invalid || held.frozen.contains(name));
    match remembered {
        Some(remembered) => to_keep.extend(
            remembered
                .keys()
                .filter(|name| undefined_held(name))
                .map(|name| (name.clone(), Vec::new())),
        ),
        None => to_keep.extend(
            held.frozen
                .iter()
                .filter(|name| undefined_held(name))
                .map(|name| (name.clone(), Vec::new())),
        ),
    }
    let accounted: HashSet<String> = next.by_key.values().flatten().filter_map(kid).collect();
    for (name, mut entries) in to_keep {
        let last: Vec<serde_json::Value> = match remembered {
            Some(remembered) => remembered
                .get(&name)
                .into_iter()
                .flatten()
                .filter_map(|k| old().get(k).cloned())
                .collect(),
            None => old()
                .iter()
                .filter(|(k, _)| !accounted.contains(*k))
                .map(|(_, entry)| entry.clone())
                .collect(),
        };
        for entry in last {
            if !entries.iter().any(|e| kid(e) == kid(&entry)) {
                entries.push(entry);
            }
        }
        next.by_key.insert(name, entries);
    }
    next
}

/// The set's bytes: the keys by name, each key's entries in order, every kid once.
fn bytes_of(by_key: &BTreeMap<String, Vec<serde_json::Value>>) -> Vec<u8> {
    let mut seen = HashSet::new();
    let entries: Vec<&serde_json::Value> = by_key
        .values()
        .flatten()
        .filter(|entry| {
            entry
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .is_none_or(|k| seen.insert(k))
        })
        .collect();
    crate::public_formats::jwks(&entries)
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
            ".jwks-members.json",
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
