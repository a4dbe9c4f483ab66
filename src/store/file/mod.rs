//! The file store: a directory per key with `vNNNN/` version directories and relative
//! `current`, `previous` and `next` symlinks.
//!
//! A version is written whole under a temporary name and made durable, renamed into place
//! (never over an existing version) and made durable, and only then linked; links are replaced
//! with rename. Removing a version renames it aside first. Every call goes through directory
//! handles ([`DirHandle`]): nothing is ever followed through a symlink. A reader following
//! `current/` sees the old pair or the new pair, never a mix.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;
use nix::unistd::{Gid, Group, Uid, User};

use super::dir::{DirHandle, Owner};
mod observe;
mod private;
mod prune;
mod public;
mod repair;
mod store;

pub use super::{RepairInput, VersionParts};
use super::{StoreError, StoredVersion, VersionMeta, public_key_pem, public_key_sha256};
use crate::key_material::PrivateKey;
use crate::manifest::{FileOutput, Format};
use crate::observed::{Damage, ObservedOutput};
use crate::plan::Link;
pub use observe::observe;
pub use prune::prune;
pub use repair::{missing_plaintext, repair};
pub use store::FileStore;

const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const NEXT: &str = "next";
const META: &str = "meta.json";
const CIPHERTEXT: &str = "private.enc";
const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";
/// Mode of the plaintext private key, whatever the manifest says.
pub const PLAINTEXT_MODE: u32 = 0o600;

/// Files and directories whose latest changes must reach the disk before the next step, held
/// open (never re-resolved by path).
///
/// By default each one is fsynced. [`SyncSet::whole_filesystems`] makes the flush one
/// `syncfs(2)` per filesystem instead: one flush for a whole batch of keys rather than several
/// per key, at the price of also flushing other writers' pending data on that filesystem.
/// (Since Linux 5.8, `syncfs` reports writeback errors as `fsync` does.)
#[derive(Debug, Default)]
pub struct SyncSet {
    files: Vec<File>,
    devices: HashSet<u64>,
    whole_filesystems: bool,
}

impl SyncSet {
    /// An empty set flushed with `syncfs(2)`, once per filesystem.
    pub fn whole_filesystems() -> Self {
        SyncSet {
            whole_filesystems: true,
            ..Default::default()
        }
    }

    /// Adds an open file or directory to flush at the next [`SyncSet::flush`].
    pub fn add(&mut self, file: File) -> Result<(), StoreError> {
        if self.whole_filesystems {
            let device = nix::sys::stat::fstat(&file)
                .map_err(|e| StoreError::Io {
                    action: "cannot stat",
                    path: "a file to flush".into(),
                    source: e.into(),
                })?
                .st_dev;
            if !self.devices.insert(device) {
                return Ok(());
            }
        }
        self.files.push(file);
        Ok(())
    }

    /// Adds a directory to flush.
    pub fn add_dir(&mut self, dir: &DirHandle) -> Result<(), StoreError> {
        self.add(dir.file()?)
    }

    /// Adds everything of `other`.
    pub fn extend(&mut self, other: SyncSet) {
        for file in other.files {
            // Whole-filesystem sets dedupe by device; errors only lose a dedupe.
            if self.whole_filesystems {
                let _ = self.add(file);
            } else {
                self.files.push(file);
            }
        }
    }

    /// Makes everything added durable, then forgets it.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let files = std::mem::take(&mut self.files);
        self.devices.clear();
        for file in &files {
            let result = if self.whole_filesystems {
                nix::unistd::syncfs(file).map_err(std::io::Error::from)
            } else {
                file.sync_all()
            };
            result.map_err(|source| StoreError::Io {
                action: "cannot flush",
                path: "the versions just written".into(),
                source,
            })?;
        }
        Ok(())
    }
}

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

/// A key directory being created: built under a temporary name in its parent, and given its
/// own name only once its first version is linked, so that a key directory never exists
/// without `current` (a crash before leaves only a temporary directory, removed next time).
#[derive(Debug)]
struct NewKeyDir {
    parent: DirHandle,
    tmp: String,
    name: std::ffi::OsString,
}

/// Prefix of a key directory under construction: `.tmp-new-<pid>-<name>`.
const NEW_DIR_PREFIX: &str = ".tmp-new-";

/// Opens the key directory of `output`, or starts a new one (see [`NewKeyDir`]), creating the
/// root and the directories on the way when missing.
fn open_or_start_key_dir(
    output: &FileOutput,
    owner: Owner,
) -> Result<(DirHandle, Option<NewKeyDir>), StoreError> {
    let root = DirHandle::open_root(&output.root, true)?.ok_or_else(|| StoreError::Corrupt {
        path: output.root.display().to_string(),
        message: "vanished while it was being created".into(),
    })?;
    let relative = relative_dir(output)?;
    let (Some(name), Some(parent_path)) = (relative.file_name(), relative.parent()) else {
        return Err(StoreError::Unsafe {
            path: output.dir.display().to_string(),
            message: "is not a directory below its output root".into(),
        });
    };
    let parent = if parent_path.as_os_str().is_empty() {
        root
    } else {
        root.walk(parent_path, Some((0o755, (None, None))))?
            .ok_or_else(|| StoreError::Corrupt {
                path: output.dir.display().to_string(),
                message: "vanished while it was being created".into(),
            })?
    };
    if let Some(dir) = parent.open_dir_os(name)? {
        dir.check_owned_by_us()?;
        return Ok((dir, None));
    }
    // Leftovers of this process id are ours to reuse; others' are collected here too.
    let suffix = format!("-{}", name.to_string_lossy());
    for leftover in parent.names()? {
        let text = leftover.to_string_lossy();
        if text.starts_with(NEW_DIR_PREFIX) && text.ends_with(&suffix) {
            let pid = &text[NEW_DIR_PREFIX.len()..text.len() - suffix.len()];
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                parent.remove_tree(&leftover)?;
            }
        }
    }
    let tmp = format!("{NEW_DIR_PREFIX}{}{suffix}", std::process::id());
    parent.create_dir(&tmp, dir_mode(output.mode), dir_owner(owner))?;
    let dir = parent.open_dir(&tmp)?.ok_or_else(|| StoreError::Corrupt {
        path: parent.child_path(&tmp).display().to_string(),
        message: "vanished while it was being created".into(),
    })?;
    let new = NewKeyDir {
        parent,
        tmp,
        name: name.to_os_string(),
    };
    Ok((dir, Some(new)))
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

/// A file of a version: name, contents (wiped when dropped) and mode.
type VersionFile = (String, zeroize::Zeroizing<Vec<u8>>, u32);

/// The files of a version for `output`, encoded, with their modes.
fn version_files(
    output: &FileOutput,
    version: &StoredVersion,
) -> Result<Vec<VersionFile>, StoreError> {
    let meta = serde_json::to_vec_pretty(&version.meta).expect("meta serializes");
    let mut files = vec![
        (
            public_name(output.format),
            encode_public(output.format, &version.public_key_der).into(),
            output.mode,
        ),
        (
            CIPHERTEXT.to_string(),
            version.private_key_ciphertext.clone().into(),
            output.mode,
        ),
        (META.to_string(), meta.into(), output.mode),
    ];
    for (name, bytes) in public::format_files(output, &version.meta, &version.public_key_der)? {
        files.push((name.to_string(), bytes.into(), output.mode));
    }
    if let Some(key) = &version.private_key {
        files.push((
            private_name(output.format),
            encode_private(output.format, key),
            PLAINTEXT_MODE,
        ));
        let derived = private::format_files(output, &version.meta, &version.public_key_der, key)?;
        for (name, bytes) in derived {
            files.push((name.to_string(), bytes, PLAINTEXT_MODE));
        }
    }
    Ok(files)
}

/// A version written in full under a temporary name in its key directory: not visible yet.
/// It holds the key directory's handle until it is linked.
#[derive(Debug)]
struct StagedVersion {
    dir: DirHandle,
    tmp: String,
    name: String,
    /// Set when the key directory itself is new: it is revealed after the first link.
    new_dir: Option<NewKeyDir>,
}

impl StagedVersion {
    /// Renames it to its `vNNNN` name, never over an existing version.
    fn publish(&self) -> Result<(), StoreError> {
        if self.dir.rename_no_replace(&self.tmp, &self.name)? {
            return Ok(());
        }
        let _ = self.dir.remove_tree(&self.tmp);
        Err(StoreError::Conflict {
            path: self.dir.child_path(&self.name).display().to_string(),
            message: "already exists: another writer made this generation; nothing was \
                      replaced (run again to reconcile from what is there)"
                .into(),
        })
    }

    /// Gives a new key directory its own name (never over an existing one); returns its
    /// parent, to be flushed. Nothing to do for an existing key directory.
    fn reveal(&self) -> Result<Option<&DirHandle>, StoreError> {
        let Some(new) = &self.new_dir else {
            return Ok(None);
        };
        let name = new.name.to_string_lossy();
        if new.parent.rename_no_replace(&new.tmp, &name)? {
            return Ok(Some(&new.parent));
        }
        let _ = new.parent.remove_tree(&new.tmp);
        Err(StoreError::Conflict {
            path: new.parent.child_path(&new.name).display().to_string(),
            message: "appeared while keyprov was creating it: another writer? Nothing was \
                      replaced (run again to reconcile from what is there)"
                .into(),
        })
    }

    /// Removes it (best effort: a leftover is cleaned up by the next repair or creation).
    fn discard(self) {
        match &self.new_dir {
            Some(new) => {
                let _ = new.parent.remove_tree(&new.tmp);
            }
            None => {
                let _ = self.dir.remove_tree(&self.tmp);
            }
        }
    }
}

/// Writes `version` under a temporary name in the output's key directory, creating that
/// directory if needed; adds to `sync` what must be durable before it is published.
fn stage_version(
    output: &FileOutput,
    version: &StoredVersion,
    sync: &mut SyncSet,
) -> Result<StagedVersion, StoreError> {
    let owner = ownership(output)?;
    let (dir, new_dir) = open_or_start_key_dir(output, owner)?;
    let name = version_name(version.meta.generation);
    if dir.stat(&name).is_some() {
        return Err(StoreError::Conflict {
            path: dir.child_path(&name).display().to_string(),
            message: "already exists: another writer made this generation; nothing was \
                      replaced (run again to reconcile from what is there)"
                .into(),
        });
    }
    let tmp = temporary_name(TMP_PREFIX, &name);
    dir.remove_tree(&tmp)?;
    dir.create_dir(&tmp, dir_mode(output.mode), dir_owner(owner))?;
    let staged = StagedVersion {
        dir,
        tmp,
        name,
        new_dir,
    };
    let mut written = SyncSet::default();
    let result = (|| {
        let tmp_dir = staged
            .dir
            .open_dir(&staged.tmp)?
            .ok_or_else(|| StoreError::Corrupt {
                path: staged.dir.child_path(&staged.tmp).display().to_string(),
                message: "vanished while it was being written".into(),
            })?;
        for (name, bytes, mode) in version_files(output, version)? {
            written.add(tmp_dir.create_file(&name, &bytes, mode, owner)?)?;
        }
        written.add_dir(&tmp_dir)
    })();
    match result {
        Ok(()) => {
            sync.extend(written);
            Ok(staged)
        }
        Err(err) => {
            staged.discard();
            Err(err)
        }
    }
}

/// One key's new version: written to each of its file outputs, then given `link`.
#[derive(Debug)]
pub struct NewVersion<'a> {
    /// The file outputs it goes to.
    pub outputs: Vec<&'a FileOutput>,
    /// The version.
    pub version: &'a StoredVersion,
    /// The link it gets once written.
    pub link: Link,
}

/// Writes, publishes and links many keys' new versions together, with three flushes for the
/// whole batch (a fourth when it creates key directories, which appear only once linked) (`syncfs` when it holds more than one key, see [`SyncSet`]): every version is
/// written under a temporary name and made durable, then renamed into place (durable), then
/// linked (durable). So a link never points at a version that a crash could lose, and a
/// reader never sees a half-written version. One result per item, in order; an item fails
/// alone, but a failed flush fails every item still pending.
pub fn commit_versions(batch: &[NewVersion<'_>]) -> Vec<Result<(), StoreError>> {
    let mut sync = if batch.len() > 1 {
        SyncSet::whole_filesystems()
    } else {
        SyncSet::default()
    };
    let mut items: Vec<Result<Vec<StagedVersion>, StoreError>> = batch
        .iter()
        .map(|item| {
            let mut staged = Vec::with_capacity(item.outputs.len());
            let mut written = SyncSet::default();
            for output in &item.outputs {
                match stage_version(output, item.version, &mut written) {
                    Ok(version) => staged.push(version),
                    Err(err) => {
                        staged.into_iter().for_each(StagedVersion::discard);
                        return Err(err);
                    }
                }
            }
            sync.extend(written);
            Ok(staged)
        })
        .collect();
    if let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    for state in items.iter_mut() {
        let Ok(staged) = state else { continue };
        let mut published = Ok(());
        let mut kept = Vec::with_capacity(staged.len());
        for version in std::mem::take(staged) {
            if published.is_ok() {
                published = version.publish();
                kept.push(version);
            } else {
                version.discard();
            }
        }
        match published.and_then(|()| kept.iter().try_for_each(|v| sync.add_dir(&v.dir))) {
            Ok(()) => *staged = kept,
            Err(err) => *state = Err(err),
        }
    }
    if let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    for (item, state) in batch.iter().zip(items.iter_mut()) {
        let Ok(staged) = state else { continue };
        let generation = item.version.meta.generation;
        if let Err(err) = staged
            .iter()
            .zip(&item.outputs)
            .try_for_each(|(v, output)| {
                move_links(&v.dir, output, generation, item.link, &mut sync)
            })
        {
            *state = Err(err);
        }
    }
    if let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    let mut revealed = false;
    for state in items.iter_mut() {
        let Ok(staged) = state else { continue };
        let result = staged.iter().try_for_each(|v| match v.reveal()? {
            Some(parent) => {
                revealed = true;
                sync.add_dir(parent)
            }
            None => Ok(()),
        });
        if let Err(err) = result {
            *state = Err(err);
        }
    }
    if revealed && let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    items.into_iter().map(|state| state.map(|_| ())).collect()
}

/// Fails every item that had not failed yet with `err`. Versions already renamed into place
/// stay: they are unlinked, and the next run removes them.
fn fail_pending(
    items: Vec<Result<Vec<StagedVersion>, StoreError>>,
    err: StoreError,
) -> Vec<Result<(), StoreError>> {
    let err = Arc::new(err);
    items
        .into_iter()
        .map(|state| match state {
            Ok(staged) => {
                staged.into_iter().for_each(StagedVersion::discard);
                Err(StoreError::Shared(err.clone()))
            }
            Err(own) => Err(own),
        })
        .collect()
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
            // `current` first: a crash in between leaves `previous` below it, and the next
            // run finds the version that was current between the two (see `plan::garbage`).
            set_link(dir, CURRENT, Some(generation))?;
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

/// The JWKs of the versions `next`, `current` and `previous` of `output` point at (next
/// first), whatever its `publicFormats`: for the config's JWK Set aggregates. Empty when the
/// key directory does not exist yet.
pub fn linked_jwks(output: &FileOutput) -> Result<Vec<serde_json::Value>, StoreError> {
    match open_key_dir(output)? {
        Some(dir) => public::linked_jwks(&dir, output.format),
        None => Ok(Vec::new()),
    }
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
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn version_names() {
        assert_eq!(version_name(3), "v0003");
        assert_eq!(version_name(12345), "v12345");
        assert_eq!(parse_version_name("v0003"), Some(3));
        assert_eq!(parse_version_name("v12345"), Some(12345));
        assert_eq!(parse_version_name("v03"), None);
        assert_eq!(parse_version_name(".tmp-v0003-1"), None);
    }

    fn output(root: &Path, name: &str) -> FileOutput {
        FileOutput {
            root: root.to_path_buf(),
            dir: root.join(name),
            format: Format::Pem,
            mode: 0o640,
            public_formats: Vec::new(),
            private_formats: Vec::new(),
            owner: None,
            group: None,
        }
    }

    fn version(name: &str, generation: u32) -> StoredVersion {
        let der = format!("public key of {name} {generation}").into_bytes();
        StoredVersion {
            meta: VersionMeta {
                api_version: "keyprov/v1".into(),
                name: name.into(),
                generation,
                key_pair_spec: "ECC_NIST_P256".into(),
                kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/test".into(),
                encryption_context: Default::default(),
                grant_tokens: vec![],
                spec_fingerprint: "f".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                activates_at: "2026-01-01T00:00:00Z".into(),
                public_key_sha256: super::super::public_key_sha256(&der),
                private_key_ciphertext_sha256: Some(super::super::public_key_sha256(
                    &[generation as u8; 16],
                )),
            },
            public_key_der: der,
            private_key_ciphertext: vec![generation as u8; 16],
            private_key: None,
        }
    }

    fn commit(out: &FileOutput, version: &StoredVersion, link: Link) -> Result<(), StoreError> {
        commit_versions(&[NewVersion {
            outputs: vec![out],
            version,
            link,
        }])
        .pop()
        .unwrap()
    }

    fn no_leftovers(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(TMP_PREFIX)
        })
    }

    #[test]
    fn a_batch_is_written_linked_and_fails_only_where_it_must() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        // Several keys: the batch is flushed with syncfs.
        let mut outputs: Vec<FileOutput> = (0..40)
            .map(|i| output(root.path(), &format!("key-{i:02}")))
            .collect();
        outputs[7] = output(root.path(), "escape/key-07");
        let versions: Vec<StoredVersion> = (0..40)
            .map(|i| version(&format!("key-{i:02}"), 1))
            .collect();
        let batch: Vec<NewVersion<'_>> = outputs
            .iter()
            .zip(&versions)
            .map(|(output, version)| NewVersion {
                outputs: vec![output],
                version,
                link: Link::Current,
            })
            .collect();
        let results = commit_versions(&batch);
        assert_eq!(results.len(), 40);
        for (i, (result, output)) in results.iter().zip(&outputs).enumerate() {
            if i == 7 {
                let err = result.as_ref().unwrap_err().to_string();
                assert!(err.contains("symlink"), "{err}");
                assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
                continue;
            }
            assert!(result.is_ok(), "key {i}: {result:?}");
            assert_eq!(current_generation(output).unwrap(), Some(1));
            let observed = observe(output, &format!("key-{i:02}"), false).unwrap();
            assert_eq!(observed.versions, vec![1]);
            assert!(observed.drift.is_empty(), "{:?}", observed.drift);
            let stored = read_version(output, 1).unwrap();
            assert_eq!(stored.public_key_der, versions[i].public_key_der);
            assert_eq!(stored.meta, versions[i].meta);
            let mode = fs::metadata(output.dir.join("v0001/private.enc"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640);
            assert!(no_leftovers(&output.dir));
        }
    }

    #[test]
    fn staged_versions_become_next_then_current() {
        let root = tempfile::tempdir().unwrap();
        let out = output(root.path(), "k");
        let (v1, v2) = (version("k", 1), version("k", 2));
        let commit = |version, link| {
            commit_versions(&[NewVersion {
                outputs: vec![&out],
                version,
                link,
            }])
            .pop()
            .unwrap()
        };
        commit(&v1, Link::Current).unwrap();
        commit(&v2, Link::Next).unwrap();
        let observed = observe(&out, "k", false).unwrap();
        assert_eq!(observed.current.map(|v| v.generation), Some(1));
        assert_eq!(observed.next.map(|v| v.generation), Some(2));
        link(&out, 2, Link::Current).unwrap();
        let observed = observe(&out, "k", false).unwrap();
        assert_eq!(observed.current.map(|v| v.generation), Some(2));
        assert_eq!(observed.previous, Some(1));
        assert!(observed.next.is_none());
        assert!(no_leftovers(&out.dir));
    }

    #[test]
    fn a_version_once_in_place_is_never_replaced() {
        let root = tempfile::tempdir().unwrap();
        let out = output(root.path(), "k");
        commit(&out, &version("k", 1), Link::Current).unwrap();
        let before = fs::read(out.dir.join("v0001/public.pem")).unwrap();
        let mut other = version("k", 1);
        other.public_key_der = b"another writer's key".to_vec();
        let err = commit(&out, &other, Link::Next).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read(out.dir.join("v0001/public.pem")).unwrap(), before);
        assert!(no_leftovers(&out.dir));
    }

    #[test]
    fn observation_reports_damage_of_linked_versions() {
        let root = tempfile::tempdir().unwrap();
        let out = output(root.path(), "k");
        commit(&out, &version("k", 1), Link::Current).unwrap();
        assert!(observe(&out, "k", false).unwrap().damaged.is_empty());
        fs::write(
            out.dir.join("v0001/public.pem"),
            public_key_pem(b"another key"),
        )
        .unwrap();
        let observed = observe(&out, "k", false).unwrap();
        assert_eq!(observed.damaged.len(), 1, "{observed:?}");
        assert!(observed.damaged[0].problems[0].contains("publicKeySha256"));
        fs::write(
            out.dir.join("v0001/public.pem"),
            public_key_pem(b"public key of k 1"),
        )
        .unwrap();
        fs::write(out.dir.join("v0001/private.enc"), b"").unwrap();
        assert_eq!(observe(&out, "k", false).unwrap().damaged.len(), 1);
    }

    #[test]
    fn prune_sets_versions_aside_and_never_follows_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("foreign"), "x").unwrap();
        let out = output(root.path(), "k");
        for g in 1..=3 {
            commit(&out, &version("k", g), Link::Current).unwrap();
        }
        std::os::unix::fs::symlink(outside.path(), out.dir.join("v0001/planted")).unwrap();
        prune(&out, &[1]).unwrap();
        assert!(!out.dir.join("v0001").exists());
        assert!(outside.path().join("foreign").exists());
        assert_eq!(observe(&out, "k", false).unwrap().previous, Some(2));
        assert!(no_leftovers(&out.dir));
    }

    #[test]
    fn a_key_directory_that_is_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("k")).unwrap();
        let out = output(root.path(), "k");
        assert!(observe(&out, "k", false).is_err());
        assert!(commit(&out, &version("k", 1), Link::Current).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn dir_modes_follow_file_modes() {
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o644), 0o755);
        assert_eq!(dir_mode(0o400), 0o700);
    }
}
