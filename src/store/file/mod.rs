//! The file store: a directory per key with `vNNNN/` version directories and relative
//! `current`, `previous` and `next` symlinks.
//!
//! A version is written whole under a temporary name and made durable, renamed into place
//! (never over an existing version) and made durable, and only then linked; links are replaced
//! with rename. Removing a version renames it aside first. Every call goes through directory
//! handles ([`DirHandle`]): nothing is ever followed through a symlink. A reader following
//! `current/` sees the old pair or the new pair, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;
use nix::unistd::{Gid, Group, Uid, User};

use super::dir::{DirHandle, Owner};
mod commit;
mod leftovers;
mod listed;
mod observe;
mod private;
mod prune;
mod public;
mod repair;
mod store;
mod sync;

pub use super::{RepairInput, VersionParts};
use super::{StoreError, StoredVersion, VersionMeta, public_key_pem, public_key_sha256};
use crate::key_material::PrivateKey;
use crate::manifest::{FileOutput, Format};
use crate::observed::{Damage, ObservedOutput};
use crate::plan::Link;
use commit::version_files;
pub use commit::{NewVersion, commit_versions};
pub use leftovers::Leftovers;

pub use observe::{observe, observe_in};
pub use prune::prune;
pub use repair::{missing_plaintext, repair};
pub use store::FileStore;
pub use sync::SyncSet;

const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const NEXT: &str = "next";
const META: &str = "meta.json";
const CIPHERTEXT: &str = "private.enc";
const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";
/// Mode of the plaintext private key, whatever the manifest says.
pub const PLAINTEXT_MODE: u32 = 0o600;

/// Directory name of a generation: `v0003`.
pub fn version_name(generation: u32) -> String {
    format!("v{generation:04}")
}

/// The generation of a `vNNNN` directory name.
pub fn parse_version_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    (digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn public_name(format: Format) -> String {
    format!("public.{}", format.extension())
}

fn private_name(format: Format) -> String {
    format!("private.{}", format.extension())
}

fn other_format(format: Format) -> Format {
    match format {
        Format::Pem => Format::Der,
        Format::Der => Format::Pem,
    }
}

/// Directories get execute where files get read, so a group that may read the keys may
/// also traverse to them.
fn dir_mode(mode: u32) -> u32 {
    0o700 | (mode & 0o044) | ((mode & 0o044) >> 2)
}

/// A temporary name in a key directory, unique to this process.
fn temporary_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}-{}", std::process::id())
}

/// What directories get of an output's `owner`/`group`: the group only. Directories stay
/// keyprov's own, so no other user can ever plant an entry in them.
fn dir_owner(owner: Owner) -> Owner {
    (None, owner.1)
}

/// Numeric owner and group of an output, resolved from names or numbers.
fn ownership(output: &FileOutput) -> Result<Owner, StoreError> {
    let uid = match &output.owner {
        None => None,
        Some(owner) => Some(match owner.parse::<u32>() {
            Ok(id) => Uid::from_raw(id),
            Err(_) => {
                User::from_name(owner)
                    .map_err(|e| StoreError::Config(format!("cannot look up user {owner:?}: {e}")))?
                    .ok_or_else(|| {
                        StoreError::Config(format!("user {owner:?} does not exist on this host"))
                    })?
                    .uid
            }
        }),
    };
    let gid = match &output.group {
        None => None,
        Some(group) => Some(match group.parse::<u32>() {
            Ok(id) => Gid::from_raw(id),
            Err(_) => {
                Group::from_name(group)
                    .map_err(|e| {
                        StoreError::Config(format!("cannot look up group {group:?}: {e}"))
                    })?
                    .ok_or_else(|| {
                        StoreError::Config(format!("group {group:?} does not exist on this host"))
                    })?
                    .gid
            }
        }),
    };
    Ok((uid, gid))
}

/// The relative path of an output's key directory below its root.
fn relative_dir(output: &FileOutput) -> Result<&Path, StoreError> {
    output
        .dir
        .strip_prefix(&output.root)
        .map_err(|_| StoreError::Unsafe {
            path: output.dir.display().to_string(),
            message: format!("is not inside its output root {}", output.root.display()),
        })
}

/// Opens the key directory of `output` below its root; `None` when it does not exist.
/// The directories holding key directories (`<stateDir>/keys`, an output root's `dir`
/// parents), opened from their root and owner-checked once per pass of observation, by root
/// and relative path: 10,000 keys opened `<stateDir>` and `keys` 10,000 times. Held as handles,
/// as a key directory is: a parent swapped for a symlink meanwhile is never followed.
#[derive(Debug, Default)]
pub struct Parents(std::sync::Mutex<HashMap<(PathBuf, PathBuf), Arc<DirHandle>>>);

impl Parents {
    /// The directory `parent` below `root`, opened the first time it is asked for; `None`
    /// when a component is missing (not remembered: it may be made during the pass).
    fn open(&self, root: &Path, parent: &Path) -> Result<Option<Arc<DirHandle>>, StoreError> {
        let key = (root.to_path_buf(), parent.to_path_buf());
        if let Some(dir) = self.lock().get(&key) {
            return Ok(Some(Arc::clone(dir)));
        }
        let Some(root_dir) = DirHandle::open_root(root, false)? else {
            return Ok(None);
        };
        let Some(dir) = root_dir.walk(parent, None)? else {
            return Ok(None);
        };
        let dir = Arc::new(dir);
        self.lock().insert(key, Arc::clone(&dir));
        Ok(Some(dir))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, PathBuf), Arc<DirHandle>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`open_key_dir`] through `parents`: the key directory opened from its parent's handle,
/// with the same checks (a real directory, not a symlink, owned by keyprov's user).
fn open_key_dir_in(
    output: &FileOutput,
    parents: Option<&Parents>,
) -> Result<Option<DirHandle>, StoreError> {
    let relative = relative_dir(output)?;
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            std::path::Component::Normal(name) => names.push(name),
            // Refused by the walk, with its message.
            _ => return open_key_dir(output),
        }
    }
    let (Some(parents), Some((name, parent))) = (parents, names.split_last()) else {
        return open_key_dir(output);
    };
    if parent.is_empty() {
        return open_key_dir(output);
    }
    let parent: PathBuf = parent.iter().collect();
    let Some(parent) = parents.open(&output.root, &parent)? else {
        return Ok(None);
    };
    let dir = parent.open_dir_os(name)?;
    if let Some(dir) = &dir {
        dir.check_owned_by_us()?;
    }
    Ok(dir)
}

fn open_key_dir(output: &FileOutput) -> Result<Option<DirHandle>, StoreError> {
    let Some(root) = DirHandle::open_root(&output.root, false)? else {
        return Ok(None);
    };
    let dir = root.walk(relative_dir(output)?, None)?;
    if let Some(dir) = &dir {
        dir.check_owned_by_us()?;
    }
    Ok(dir)
}

/// The generation a link points at; `None` when there is no link of that name.
fn read_link_generation(dir: &DirHandle, link: &str) -> Result<Option<u32>, StoreError> {
    let Some(target) = dir.read_link(link)? else {
        return Ok(None);
    };
    target
        .to_str()
        .and_then(parse_version_name)
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt {
            path: dir.child_path(link).display().to_string(),
            message: format!("points at {}, not at a version directory", target.display()),
        })
}

fn parse_meta(bytes: &[u8], path: &Path, generation: u32) -> Result<VersionMeta, StoreError> {
    let meta: VersionMeta = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if meta.generation != generation {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            message: format!(
                "records generation {}, expected {generation}",
                meta.generation
            ),
        });
    }
    Ok(meta)
}

/// Opens the version directory of `generation`; an error when it is missing.
fn open_version(dir: &DirHandle, generation: u32) -> Result<DirHandle, StoreError> {
    let name = version_name(generation);
    dir.open_dir(&name)?.ok_or_else(|| StoreError::Corrupt {
        path: dir.child_path(&name).display().to_string(),
        message: "is missing".into(),
    })
}

fn read_version_meta(version: &DirHandle, generation: u32) -> Result<VersionMeta, StoreError> {
    let bytes = version.read_file(META)?;
    parse_meta(&bytes, &version.child_path(META), generation)
}

/// Reads the meta.json of `generation` in the key directory `dir`.
pub fn read_meta(dir: &Path, generation: u32) -> Result<VersionMeta, StoreError> {
    let key_dir = DirHandle::open_root(dir, false)?.ok_or_else(|| StoreError::Corrupt {
        path: dir.display().to_string(),
        message: "does not exist".into(),
    })?;
    read_version_meta(&open_version(&key_dir, generation)?, generation)
}

fn encode_public(format: Format, der: &[u8]) -> Vec<u8> {
    match format {
        Format::Pem => public_key_pem(der).into_bytes(),
        Format::Der => der.to_vec(),
    }
}

fn encode_private(format: Format, key: &PrivateKey) -> zeroize::Zeroizing<Vec<u8>> {
    match format {
        Format::Pem => zeroize::Zeroizing::new(key.to_pem().as_bytes().to_vec()),
        Format::Der => zeroize::Zeroizing::new(key.der().to_vec()),
    }
}

fn decode_public(format: Format, bytes: &[u8], path: &Path) -> Result<Vec<u8>, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    match format {
        Format::Der if bytes.is_empty() => Err(corrupt("is empty".into())),
        Format::Der => Ok(bytes.to_vec()),
        Format::Pem => match pem::parse(bytes) {
            Ok(p) if p.tag() == "PUBLIC KEY" => Ok(p.into_contents()),
            Ok(p) => Err(corrupt(format!("holds a {:?}, not a PUBLIC KEY", p.tag()))),
            Err(e) => Err(corrupt(format!("is not a PEM public key ({e})"))),
        },
    }
}

fn existing_key_dir(output: &FileOutput) -> Result<DirHandle, StoreError> {
    open_key_dir(output)?.ok_or_else(|| StoreError::Corrupt {
        path: output.dir.display().to_string(),
        message: "does not exist".into(),
    })
}

/// True when the output holds a version directory of `generation`.
pub fn has_version(output: &FileOutput, generation: u32) -> Result<bool, StoreError> {
    Ok(open_key_dir(output)?.is_some_and(|dir| dir.is_dir(version_name(generation))))
}

/// Reads a whole version back, for copying it to another output or decrypting it.
pub fn read_version(output: &FileOutput, generation: u32) -> Result<StoredVersion, StoreError> {
    let parts = read_parts(output, generation)?;
    let meta = parts.meta?;
    let public_key_der = parts.public_key_der?;
    if public_key_sha256(&public_key_der) != meta.public_key_sha256 {
        return Err(StoreError::Corrupt {
            path: version_dir(output, generation).display().to_string(),
            message: "its public key does not match publicKeySha256 of meta.json".into(),
        });
    }
    let private_key_ciphertext = parts.private_key_ciphertext?;
    if !meta.ciphertext_matches(&private_key_ciphertext) {
        return Err(StoreError::Corrupt {
            path: version_dir(output, generation)
                .join(CIPHERTEXT)
                .display()
                .to_string(),
            message: "is empty or does not match privateKeyCiphertextSha256 of meta.json".into(),
        });
    }
    Ok(StoredVersion {
        meta,
        public_key_der,
        private_key_ciphertext,
        private_key: None,
    })
}

/// Reads the files of `generation` each on its own; fails only when the version directory
/// cannot be opened.
pub fn read_parts(output: &FileOutput, generation: u32) -> Result<VersionParts, StoreError> {
    let dir = existing_key_dir(output)?;
    let version = open_version(&dir, generation)?;
    Ok(VersionParts {
        meta: read_version_meta(&version, generation),
        // The format may have changed since this version was written.
        public_key_der: public::read_public_der(&version, output.format),
        private_key_ciphertext: version.read_file(CIPHERTEXT),
    })
}

/// Generations of the version directories present.
fn versions_present(dir: &DirHandle) -> Result<Vec<u32>, StoreError> {
    let mut versions: Vec<u32> = dir
        .names()?
        .iter()
        .filter_map(|name| parse_version_name(&name.to_string_lossy()))
        .filter(|&g| dir.is_dir(version_name(g)))
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Points `name` at `generation` (or removes it), atomically.
fn set_link(dir: &DirHandle, name: &str, generation: Option<u32>) -> Result<(), StoreError> {
    match generation {
        Some(generation) => {
            let tmp = temporary_name(TMP_PREFIX, name);
            dir.remove_file(&tmp)?;
            dir.symlink(&version_name(generation), &tmp)?;
            dir.rename(&tmp, name)
        }
        None => dir.remove_file(name),
    }
}

/// Points `link` at `generation`, durably. For `current`: `current` moves, then `previous` to
/// the version that was current (so it only ever names a version that was in use); a `next`
/// at or below it goes.
pub fn link(output: &FileOutput, generation: u32, link: Link) -> Result<(), StoreError> {
    let dir = existing_key_dir(output)?;
    let mut sync = SyncSet::default();
    move_links(&dir, output, generation, link, &mut sync)?;
    sync.flush()
}

/// [`link`] without the flush: adds the key directory (and a rewritten `jwks.json`) to `sync`.
fn move_links(
    dir: &DirHandle,
    output: &FileOutput,
    generation: u32,
    link: Link,
    sync: &mut SyncSet,
) -> Result<(), StoreError> {
    match link {
        Link::Current => {
            let old = read_link_generation(dir, CURRENT)?;
            if old != Some(generation) {
                public::trust_before_current(dir, output, generation, sync)?;
            }
            if let Some(old) = old.filter(|&old| old < generation) {
                drop_superseded(dir, old, generation)?;
            }
            // `current` first: a crash in between leaves `previous` below it, and the next
            // run finds the version that was current between the two (see `plan::garbage`).
            // A published `next` becomes `current` by renaming the link: `next` goes in the
            // same step, so a crash never leaves `next` at `current`'s generation.
            // Its time becomes the activation's: the observation reads an early activation
            // (`rotate --now`) from it (see `observe`).
            if read_link_generation(dir, NEXT)? == Some(generation) {
                dir.rename(NEXT, CURRENT)?;
                dir.touch(CURRENT)?;
            } else {
                set_link(dir, CURRENT, Some(generation))?;
            }
            if let Some(old) = old.filter(|&old| old < generation) {
                set_link(dir, PREVIOUS, Some(old))?;
            }
            if read_link_generation(dir, NEXT)?.is_some_and(|n| n <= generation) {
                set_link(dir, NEXT, None)?;
            }
        }
        Link::Next => set_link(dir, NEXT, Some(generation))?,
        Link::Previous => {
            set_link(dir, PREVIOUS, Some(generation))?;
            // A `next` at or below it was replaced by a newer generation before it was used.
            if read_link_generation(dir, NEXT)?.is_some_and(|n| n <= generation) {
                set_link(dir, NEXT, None)?;
            }
        }
    }
    public::write_jwks(dir, output, sync)?;
    sync.add_dir(dir)
}

/// Removes the versions strictly between `old` (current) and `generation` (about to become
/// current): published as `next` and replaced by a newer generation, never in use. Done
/// before `current` moves, while they are still above it (garbage to the next run): left in
/// place they would sit between `previous` and `current`, where only a version that was
/// current is found after a crash, and be taken for `previous`.
fn drop_superseded(dir: &DirHandle, old: u32, generation: u32) -> Result<(), StoreError> {
    let next = read_link_generation(dir, NEXT)?;
    if next.is_some_and(|n| old < n && n < generation) {
        set_link(dir, NEXT, None)?;
    }
    let previous = read_link_generation(dir, PREVIOUS)?;
    let mut trash = Vec::new();
    for superseded in versions_present(dir)?
        .into_iter()
        .filter(|&v| old < v && v < generation && Some(v) != previous)
    {
        // Renamed aside durably first (as `prune` does): never half deleted under its name.
        let name = version_name(superseded);
        let aside = temporary_name(TRASH_PREFIX, &name);
        dir.remove_tree(&aside)?;
        dir.rename(&name, &aside)?;
        trash.push(aside);
    }
    if trash.is_empty() {
        return Ok(());
    }
    dir.sync()?;
    trash.iter().try_for_each(|aside| dir.remove_tree(aside))
}

/// The JWKs of the versions `next`, `current` and `previous` of `output` point at (next
/// first), whatever its `publicFormats`: for the config's JWK Set aggregates. Empty when the
/// key directory does not exist yet.
pub fn linked_jwks(output: &FileOutput) -> Result<Vec<serde_json::Value>, StoreError> {
    match open_key_dir(output)? {
        Some(dir) => public::linked_jwks(&dir, output.format),
        None => Ok(Vec::new()),
    }
}

/// The JWKs of `linked`, as observation found `output`'s links: those it made, or made now
/// from the public keys it verified, and from the versions' files for the others (as
/// [`linked_jwks`] would).
pub fn jwks_of_linked(
    output: &FileOutput,
    linked: &crate::observed::LinkedJwks,
) -> Result<Vec<serde_json::Value>, StoreError> {
    if let Some(keys) = &linked.keys {
        return Ok(keys.clone());
    }
    let Some(dir) = open_key_dir(output)? else {
        return Ok(Vec::new());
    };
    let known: Vec<public::Verified> = linked
        .verified
        .iter()
        .map(|(generation, der)| public::Verified {
            generation: *generation,
            der: der.clone(),
            jwk: None,
        })
        .collect();
    public::jwks_of(&dir, output.format, linked.links, &known)
}

/// The directory of a version, for messages and status.
pub fn version_dir(output: &FileOutput, generation: u32) -> PathBuf {
    output.dir.join(version_name(generation))
}

/// The generation `current` points at, if any.
pub fn current_generation(output: &FileOutput) -> Result<Option<u32>, StoreError> {
    linked_generation(output, Link::Current)
}

/// The generation `link` points at, if any.
pub fn linked_generation(output: &FileOutput, link: Link) -> Result<Option<u32>, StoreError> {
    let name = match link {
        Link::Current => CURRENT,
        Link::Next => NEXT,
        Link::Previous => PREVIOUS,
    };
    match open_key_dir(output)? {
        Some(dir) => read_link_generation(&dir, name),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
