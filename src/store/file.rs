//! The file store: a directory per key with `vNNNN/` version directories and relative
//! `current`, `previous` and `next` symlinks.
//!
//! A version is written whole under a temporary name (files and directory fsynced), renamed into
//! place, and only then linked; links are replaced with rename. A reader following `current/`
//! sees the old pair or the new pair, never a mix.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fstatat};
use nix::unistd::{Gid, Group, Uid, User};

use super::{StoreError, StoredVersion, VersionMeta, public_key_pem};
use crate::manifest::{FileOutput, Format};
use crate::observed::ObservedOutput;
use crate::plan::Link;
use crate::provider::PrivateKey;

const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const NEXT: &str = "next";
const META: &str = "meta.json";
const CIPHERTEXT: &str = "private.enc";
const TMP_PREFIX: &str = ".tmp-";
/// Mode of the plaintext private key, whatever the manifest says.
pub const PLAINTEXT_MODE: u32 = 0o600;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// fsyncs a file, or a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Files and directories whose latest changes must reach the disk before the next step.
///
/// By default each path is fsynced. [`SyncSet::whole_filesystems`] makes the flush one
/// `syncfs(2)` per filesystem instead: one flush for a whole batch of keys rather than several
/// per key — the difference between a few flushes and several thousand when a fleet is
/// provisioned at once — at the price of also flushing other writers' pending data on that
/// filesystem. (Since Linux 5.8, `syncfs` reports writeback errors as `fsync` does.)
#[derive(Debug, Default)]
pub struct SyncSet {
    paths: Vec<PathBuf>,
    whole_filesystems: bool,
}

impl SyncSet {
    /// An empty set flushed with `syncfs(2)`, once per filesystem.
    pub fn whole_filesystems() -> Self {
        SyncSet {
            paths: Vec::new(),
            whole_filesystems: true,
        }
    }

    /// Adds a path to sync at the next flush.
    pub fn add(&mut self, path: impl Into<PathBuf>) {
        self.paths.push(path.into());
    }

    /// Adds every path of `other`.
    pub fn extend(&mut self, other: SyncSet) {
        self.paths.extend(other.paths);
    }

    /// Makes every added path durable, then forgets them.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut paths = std::mem::take(&mut self.paths);
        paths.sort_unstable();
        paths.dedup();
        if !self.whole_filesystems {
            for path in &paths {
                sync_dir(path).map_err(io_err("cannot fsync", path))?;
            }
            return Ok(());
        }
        let mut synced = HashSet::new();
        for path in &paths {
            let device = fs::symlink_metadata(path)
                .map_err(io_err("cannot stat", path))?
                .dev();
            if synced.insert(device) {
                let file = fs::File::open(path).map_err(io_err("cannot open", path))?;
                nix::unistd::syncfs(&file)
                    .map_err(|errno| io_err("cannot sync the filesystem of", path)(errno.into()))?;
            }
        }
        Ok(())
    }
}

/// Directory name of a generation: `v0003`.
pub fn version_name(generation: u32) -> String {
    format!("v{generation:04}")
}

fn parse_version_name(name: &str) -> Option<u32> {
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

/// Directories get execute where files get read, so a group that may read the keys may
/// also traverse to them.
fn dir_mode(mode: u32) -> u32 {
    0o700 | (mode & 0o044) | ((mode & 0o044) >> 2)
}

/// Numeric owner and group of an output, resolved from names or numbers.
fn ownership(output: &FileOutput) -> Result<(Option<Uid>, Option<Gid>), StoreError> {
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

fn chown(path: &Path, owner: (Option<Uid>, Option<Gid>)) -> Result<(), StoreError> {
    if owner.0.is_none() && owner.1.is_none() {
        return Ok(());
    }
    nix::unistd::chown(path, owner.0, owner.1).map_err(|e| StoreError::Io {
        action: "cannot chown",
        path: path.display().to_string(),
        source: e.into(),
    })
}

fn read_link_generation(dir: &Path, link: &str) -> Result<Option<u32>, StoreError> {
    link_generation(&dir.join(link), fs::read_link(dir.join(link)))
}

/// The generation a version link points at, from the result of reading the link.
fn link_generation(path: &Path, target: io::Result<PathBuf>) -> Result<Option<u32>, StoreError> {
    match target {
        Ok(target) => target
            .to_str()
            .and_then(parse_version_name)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.display().to_string(),
                message: format!("points at {}, not at a version directory", target.display()),
            }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_err("cannot read link", path)(err)),
    }
}

/// Reads the meta.json of `generation`.
pub fn read_meta(dir: &Path, generation: u32) -> Result<VersionMeta, StoreError> {
    let path = dir.join(version_name(generation)).join(META);
    let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
    parse_meta(&bytes, &path, generation)
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

/// An open key directory. Lookups relative to it walk one or two path components instead of
/// the whole absolute path: a no-op reconcile of a large fleet is dominated by these lookups.
struct KeyDir<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

impl<'a> KeyDir<'a> {
    /// Opens `path`; `None` when it does not exist.
    fn open(path: &'a Path) -> Result<Option<Self>, StoreError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(KeyDir { path, fd })),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(io_err("cannot open", path)(errno.into())),
        }
    }

    /// Names in the directory.
    fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.path).map_err(io_err("cannot list", self.path))? {
            let entry = entry.map_err(io_err("cannot list", self.path))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read_link(&self, link: &str) -> Result<Option<u32>, StoreError> {
        let target = nix::fcntl::readlinkat(&self.fd, link)
            .map(PathBuf::from)
            .map_err(io::Error::from);
        link_generation(&self.path.join(link), target)
    }

    fn stat(&self, relative: &str) -> Option<FileStat> {
        fstatat(&self.fd, relative, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    fn read_meta(&self, generation: u32) -> Result<VersionMeta, StoreError> {
        let relative = format!("{}/{META}", version_name(generation));
        let path = self.path.join(&relative);
        let fd = nix::fcntl::openat(
            &self.fd,
            relative.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("cannot read", &path)(e.into()))?;
        let mut bytes = Vec::with_capacity(2048);
        io::Read::read_to_end(&mut fs::File::from(fd), &mut bytes)
            .map_err(io_err("cannot read", &path))?;
        parse_meta(&bytes, &path, generation)
    }
}

/// Observes what the directory holds. A missing directory is an empty output.
pub fn observe(output: &FileOutput, include_plaintext: bool) -> Result<ObservedOutput, StoreError> {
    let mut observed = ObservedOutput {
        prunable: true,
        ..Default::default()
    };
    let Some(dir) = KeyDir::open(&output.dir)? else {
        return Ok(observed);
    };
    let mut links = Vec::with_capacity(3);
    for name in dir.names()? {
        if let Some(generation) = parse_version_name(&name) {
            observed.versions.push(generation);
        } else if name.starts_with(TMP_PREFIX) {
            observed
                .drift
                .push(format!("leftover {name} from an interrupted write"));
        } else if let Some(link) = [CURRENT, NEXT, PREVIOUS].into_iter().find(|l| *l == name) {
            // Only links that exist are read: a converged key costs few system calls.
            links.push(link);
        }
    }
    observed.versions.sort_unstable();
    let owner = ownership(output).ok();
    for link in [CURRENT, NEXT, PREVIOUS] {
        if !links.contains(&link) {
            continue;
        }
        let Some(generation) = dir.read_link(link)? else {
            continue;
        };
        if !observed.versions.contains(&generation) {
            observed.drift.push(format!(
                "{link} points at missing {}",
                version_name(generation)
            ));
            continue;
        }
        if link == PREVIOUS {
            observed.previous = Some(generation);
            continue;
        }
        let meta = dir.read_meta(generation)?;
        let version = meta.observed().map_err(|message| StoreError::Corrupt {
            path: output
                .dir
                .join(version_name(generation))
                .join(META)
                .display()
                .to_string(),
            message,
        })?;
        check_version_files(
            &dir,
            output,
            generation,
            include_plaintext,
            owner,
            &mut observed.drift,
        );
        if link == CURRENT {
            observed.current = Some(version);
        } else {
            observed.next = Some(version);
        }
    }
    Ok(observed)
}

/// The files a version must hold for `output`, with their modes.
fn expected_files(output: &FileOutput, include_plaintext: bool) -> Vec<(String, u32)> {
    let mut files = vec![
        (public_name(output.format), output.mode),
        (CIPHERTEXT.to_string(), output.mode),
        (META.to_string(), output.mode),
    ];
    if include_plaintext {
        files.push((private_name(output.format), PLAINTEXT_MODE));
    }
    files
}

/// Private key files that must not be there: the other format's, and any plaintext when
/// the manifest does not ask for it (a stale plaintext key is a leak).
fn unwanted_files(output: &FileOutput, include_plaintext: bool) -> Vec<String> {
    [Format::Pem, Format::Der]
        .into_iter()
        .filter(|&format| !include_plaintext || format != output.format)
        .map(private_name)
        .collect()
}

/// Public key files of the other format, removed by repair once the right one is written.
fn other_public_file(output: &FileOutput) -> String {
    public_name(match output.format {
        Format::Pem => Format::Der,
        Format::Der => Format::Pem,
    })
}

fn check_version_files(
    dir: &KeyDir<'_>,
    output: &FileOutput,
    generation: u32,
    include_plaintext: bool,
    owner: Option<(Option<Uid>, Option<Gid>)>,
    drift: &mut Vec<String>,
) {
    let vname = version_name(generation);
    // meta.json was just read, and shares its mode with public.*: a mode change shows there.
    let checked = expected_files(output, include_plaintext)
        .into_iter()
        .filter(|(name, _)| name != META);
    for (name, mode) in checked {
        let Some(stat) = dir.stat(&format!("{vname}/{name}")) else {
            drift.push(format!("{vname}/{name} is missing"));
            continue;
        };
        let actual = stat.st_mode & 0o7777;
        if actual != mode {
            drift.push(format!(
                "{vname}/{name} has mode {actual:04o}, want {mode:04o}"
            ));
        }
        if let Some((uid, gid)) = owner
            && (uid.is_some_and(|u| u.as_raw() != stat.st_uid)
                || gid.is_some_and(|g| g.as_raw() != stat.st_gid))
        {
            drift.push(format!(
                "{vname}/{name} has owner {}:{}",
                stat.st_uid, stat.st_gid
            ));
        }
    }
    for name in unwanted_files(output, include_plaintext) {
        if dir.stat(&format!("{vname}/{name}")).is_some() {
            drift.push(format!("{vname}/{name} should not be there"));
        }
    }
}

/// Creates `path` with exactly `mode` and writes `bytes`.
fn create_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: (Option<Uid>, Option<Gid>),
) -> Result<fs::File, StoreError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot chmod", path))?;
    chown(path, owner)?;
    file.write_all(bytes)
        .map_err(io_err("cannot write", path))?;
    Ok(file)
}

fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: (Option<Uid>, Option<Gid>),
) -> Result<(), StoreError> {
    let file = create_file(path, bytes, mode, owner)?;
    file.sync_all().map_err(io_err("cannot fsync", path))
}

/// Writes one file atomically into an existing directory (temporary name, fsync, rename).
fn replace_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: (Option<Uid>, Option<Gid>),
) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, bytes, mode, owner)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err("cannot rename into", &path))?;
    sync_dir(dir).map_err(io_err("cannot fsync", dir))
}

fn create_dir(path: &Path, mode: u32, owner: (Option<Uid>, Option<Gid>)) -> Result<(), StoreError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(io_err("cannot create", path)(err)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot chmod", path))?;
    chown(path, owner)
}

/// Creates the key directory (and its parents) when it does not exist yet.
fn ensure_key_dir(
    output: &FileOutput,
    owner: (Option<Uid>, Option<Gid>),
) -> Result<(), StoreError> {
    if output.dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = output.dir.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    // The parent is synced when the first link is made (see `move_links`): until then a lost
    // directory only means a key that does not exist yet, which the next run regenerates.
    create_dir(&output.dir, dir_mode(output.mode), owner)
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

/// A version written in full under a temporary name in its key directory: not visible yet.
#[derive(Debug)]
struct StagedVersion {
    tmp: PathBuf,
    target: PathBuf,
}

impl StagedVersion {
    /// Renames it to its `vNNNN` name.
    fn publish(self) -> Result<(), StoreError> {
        fs::rename(&self.tmp, &self.target).map_err(io_err("cannot rename into", &self.target))
    }

    /// Removes it (best effort: a leftover is cleaned up by the next write or repair).
    fn discard(self) {
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Writes `version` under a temporary name in the output's key directory, creating that
/// directory if needed; adds to `sync` what must be durable before it is published.
fn stage_version(
    output: &FileOutput,
    version: &StoredVersion,
    sync: &mut SyncSet,
) -> Result<StagedVersion, StoreError> {
    // Checked again right before writing: a symlink may have appeared since validation.
    crate::manifest::paths::ensure_no_symlink_escape(&output.root, &output.dir)
        .map_err(|e| StoreError::Config(format!("refusing to write: {e}")))?;
    let owner = ownership(output)?;
    ensure_key_dir(output, owner)?;
    let dir = &output.dir;
    let name = version_name(version.meta.generation);
    let target = dir.join(&name);
    if target.exists() {
        // Left by an interrupted run that never linked it: it is rewritten from scratch.
        fs::remove_dir_all(&target).map_err(io_err("cannot remove", &target))?;
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err("cannot remove", &tmp))?;
    }
    create_dir(&tmp, dir_mode(output.mode), owner)?;
    let staged = StagedVersion { tmp, target };
    let mut written = SyncSet::default();
    let result = (|| {
        let meta = serde_json::to_vec_pretty(&version.meta).expect("meta serializes");
        let public = encode_public(output.format, &version.public_key_der);
        let mut files: Vec<(String, zeroize::Zeroizing<Vec<u8>>, u32)> = vec![
            (public_name(output.format), public.into(), output.mode),
            (
                CIPHERTEXT.to_string(),
                version.private_key_ciphertext.clone().into(),
                output.mode,
            ),
            (META.to_string(), meta.into(), output.mode),
        ];
        if let Some(key) = &version.private_key {
            files.push((
                private_name(output.format),
                encode_private(output.format, key),
                PLAINTEXT_MODE,
            ));
        }
        for (name, bytes, mode) in &files {
            let path = staged.tmp.join(name);
            create_file(&path, bytes, *mode, owner)?;
            written.add(path);
        }
        written.add(&staged.tmp);
        Ok(())
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

/// Writes `version` whole as its `vNNNN` directory, durably; links nothing.
pub fn write_version(output: &FileOutput, version: &StoredVersion) -> Result<(), StoreError> {
    let mut sync = SyncSet::default();
    let staged = stage_version(output, version, &mut sync)?;
    if let Err(err) = sync.flush() {
        staged.discard();
        return Err(err);
    }
    staged.publish()?;
    sync.add(&output.dir);
    sync.flush()
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
/// whole batch (`syncfs` when it holds more than one key, see [`SyncSet`]): every version is written under a temporary name and made durable, then renamed
/// into place (durable), then linked (durable). So a link never points at a version that a
/// crash could lose, and a reader never sees a half-written version. One result per item, in
/// order; an item fails alone, but a failed flush fails every item still pending.
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
    for (item, state) in batch.iter().zip(items.iter_mut()) {
        let Ok(staged) = state else { continue };
        let mut published = Ok(());
        for version in std::mem::take(staged) {
            if published.is_ok() {
                published = version.publish();
            } else {
                version.discard();
            }
        }
        match published {
            Ok(()) => item.outputs.iter().for_each(|o| sync.add(&o.dir)),
            Err(err) => *state = Err(err),
        }
    }
    if let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    for (item, state) in batch.iter().zip(items.iter_mut()) {
        if state.is_err() {
            continue;
        }
        let generation = item.version.meta.generation;
        if let Err(err) = item
            .outputs
            .iter()
            .try_for_each(|output| move_links(output, generation, item.link, &mut sync))
        {
            *state = Err(err);
        }
    }
    if let Err(err) = sync.flush() {
        return fail_pending(items, err);
    }
    items.into_iter().map(|state| state.map(|_| ())).collect()
}

/// Fails every item that had not failed yet with `err`.
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

/// Reads a whole version back, for copying it to another output or decrypting it.
pub fn read_version(output: &FileOutput, generation: u32) -> Result<StoredVersion, StoreError> {
    let dir = output.dir.join(version_name(generation));
    let meta = read_meta(&output.dir, generation)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(io_err("cannot read", &path))
    };
    let public_key_der = match read(&public_name(output.format)) {
        Ok(bytes) => decode_public(output.format, &bytes, &dir)?,
        // The format may have changed since this version was written.
        Err(_) => {
            let other = if output.format == Format::Pem {
                Format::Der
            } else {
                Format::Pem
            };
            decode_public(other, &read(&public_name(other))?, &dir)?
        }
    };
    Ok(StoredVersion {
        meta,
        public_key_der,
        private_key_ciphertext: read(CIPHERTEXT)?,
        private_key: None,
    })
}

fn decode_public(format: Format, bytes: &[u8], dir: &Path) -> Result<Vec<u8>, StoreError> {
    match format {
        Format::Der => Ok(bytes.to_vec()),
        Format::Pem => {
            pem::parse(bytes)
                .map(pem::Pem::into_contents)
                .map_err(|e| StoreError::Corrupt {
                    path: dir.join(public_name(format)).display().to_string(),
                    message: e.to_string(),
                })
        }
    }
}

fn set_link(dir: &Path, link: &str, generation: Option<u32>) -> Result<(), StoreError> {
    let path = dir.join(link);
    match generation {
        Some(generation) => {
            let tmp = dir.join(format!("{TMP_PREFIX}{link}-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(version_name(generation), &tmp)
                .map_err(io_err("cannot create link", &tmp))?;
            fs::rename(&tmp, &path).map_err(io_err("cannot replace link", &path))?;
        }
        None => match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_err("cannot remove link", &path)(err)),
        },
    }
    Ok(())
}

fn present_versions(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut versions: Vec<u32> = fs::read_dir(dir)
        .map_err(io_err("cannot list", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_version_name(&e.file_name().to_string_lossy()))
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Points `link` at `generation`, durably. For `current`: `current` moves first, then
/// `previous` to the version below it; a `next` at or below it goes.
pub fn link(output: &FileOutput, generation: u32, link: Link) -> Result<(), StoreError> {
    let mut sync = SyncSet::default();
    move_links(output, generation, link, &mut sync)?;
    sync.flush()
}

/// [`link`] without the flush: adds the key directory to `sync`, and for a key's first link
/// also its parent, which holds the key directory's own entry.
fn move_links(
    output: &FileOutput,
    generation: u32,
    link: Link,
    sync: &mut SyncSet,
) -> Result<(), StoreError> {
    let dir = &output.dir;
    let first = read_link_generation(dir, CURRENT)?.is_none();
    match link {
        Link::Current => {
            set_link(dir, CURRENT, Some(generation))?;
            let previous = present_versions(dir)?
                .into_iter()
                .rev()
                .find(|&v| v < generation);
            set_link(dir, PREVIOUS, previous)?;
            if read_link_generation(dir, NEXT)?.is_some_and(|n| n <= generation) {
                set_link(dir, NEXT, None)?;
            }
        }
        Link::Next => set_link(dir, NEXT, Some(generation))?,
    }
    sync.add(dir);
    if let (true, Some(parent)) = (first, dir.parent()) {
        sync.add(parent);
    }
    Ok(())
}

/// Generations of kept versions (current, next, previous) that lack the plaintext private key.
pub fn missing_plaintext(output: &FileOutput) -> Result<Vec<u32>, StoreError> {
    let mut missing = Vec::new();
    for link in [CURRENT, NEXT, PREVIOUS] {
        if let Some(generation) = read_link_generation(&output.dir, link)? {
            let path = output
                .dir
                .join(version_name(generation))
                .join(private_name(output.format));
            if !path.exists() && !missing.contains(&generation) {
                missing.push(generation);
            }
        }
    }
    Ok(missing)
}

/// Repairs an output in place: leftovers removed, modes and owners set, files of the right
/// format and plaintext presence, `previous` pointing at the version below `current`.
/// `plaintext` holds decrypted keys for versions that lack them (see [`missing_plaintext`]).
pub fn repair(
    output: &FileOutput,
    include_plaintext: bool,
    plaintext: &HashMap<u32, PrivateKey>,
) -> Result<(), StoreError> {
    let owner = ownership(output)?;
    let dir = &output.dir;
    for entry in fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
        let entry = entry.map_err(io_err("cannot list", dir))?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let path = entry.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("cannot remove", &path))?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode(output.mode)))
        .map_err(io_err("cannot chmod", dir))?;
    chown(dir, owner)?;
    let versions = present_versions(dir)?;
    for &generation in &versions {
        let vdir = dir.join(version_name(generation));
        let public = vdir.join(public_name(output.format));
        if !public.exists() {
            let stored = read_version(output, generation)?;
            replace_file(
                &vdir,
                &public_name(output.format),
                &encode_public(output.format, &stored.public_key_der),
                output.mode,
                owner,
            )?;
        }
        if include_plaintext {
            let private = vdir.join(private_name(output.format));
            if let (false, Some(key)) = (private.exists(), plaintext.get(&generation)) {
                replace_file(
                    &vdir,
                    &private_name(output.format),
                    &encode_private(output.format, key),
                    PLAINTEXT_MODE,
                    owner,
                )?;
            }
        }
        for name in unwanted_files(output, include_plaintext)
            .into_iter()
            .chain([other_public_file(output)])
        {
            let path = vdir.join(name);
            if path.exists() {
                fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
            }
        }
        fs::set_permissions(&vdir, fs::Permissions::from_mode(dir_mode(output.mode)))
            .map_err(io_err("cannot chmod", &vdir))?;
        chown(&vdir, owner)?;
        for (name, mode) in expected_files(output, include_plaintext) {
            let path = vdir.join(name);
            if path.exists() {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(io_err("cannot chmod", &path))?;
                chown(&path, owner)?;
            }
        }
        sync_dir(&vdir).map_err(io_err("cannot fsync", &vdir))?;
    }
    for link in [CURRENT, NEXT, PREVIOUS] {
        if read_link_generation(dir, link)?.is_some_and(|g| !versions.contains(&g)) {
            set_link(dir, link, None)?;
        }
    }
    if let Some(current) = read_link_generation(dir, CURRENT)? {
        let previous = versions.iter().rev().find(|&&v| v < current).copied();
        if read_link_generation(dir, PREVIOUS)? != previous {
            set_link(dir, PREVIOUS, previous)?;
        }
    }
    sync_dir(dir).map_err(io_err("cannot fsync", dir))
}

/// Removes old versions; links to them go too.
pub fn prune(output: &FileOutput, generations: &[u32]) -> Result<(), StoreError> {
    let dir = &output.dir;
    for link in [PREVIOUS, NEXT] {
        if read_link_generation(dir, link)?.is_some_and(|g| generations.contains(&g)) {
            set_link(dir, link, None)?;
        }
    }
    for &generation in generations {
        if read_link_generation(dir, CURRENT)? == Some(generation) {
            return Err(StoreError::Corrupt {
                path: dir.display().to_string(),
                message: format!("refusing to prune the current generation {generation}"),
            });
        }
        let path = dir.join(version_name(generation));
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("cannot remove", &path)(err)),
        }
    }
    sync_dir(dir).map_err(io_err("cannot fsync", dir))
}

/// The directory of a version, for decrypt and status.
pub fn version_dir(output: &FileOutput, generation: u32) -> PathBuf {
    output.dir.join(version_name(generation))
}

/// The generation `current` points at, if any.
pub fn current_generation(output: &FileOutput) -> Result<Option<u32>, StoreError> {
    read_link_generation(&output.dir, CURRENT)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            },
            public_key_der: der,
            private_key_ciphertext: vec![generation as u8; 16],
            private_key: None,
        }
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
                assert!(err.contains("refusing to write"), "{err}");
                assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
                continue;
            }
            assert!(result.is_ok(), "key {i}: {result:?}");
            assert_eq!(current_generation(output).unwrap(), Some(1));
            let observed = observe(output, false).unwrap();
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
        let observed = observe(&out, false).unwrap();
        assert_eq!(observed.current.map(|v| v.generation), Some(1));
        assert_eq!(observed.next.map(|v| v.generation), Some(2));
        link(&out, 2, Link::Current).unwrap();
        let observed = observe(&out, false).unwrap();
        assert_eq!(observed.current.map(|v| v.generation), Some(2));
        assert_eq!(observed.previous, Some(1));
        assert!(observed.next.is_none());
        assert!(no_leftovers(&out.dir));
    }

    #[test]
    fn an_unlinked_leftover_version_is_rewritten() {
        let root = tempfile::tempdir().unwrap();
        let out = output(root.path(), "k");
        let stale = out.dir.join("v0001");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("public.pem"), "half a key").unwrap();
        write_version(&out, &version("k", 1)).unwrap();
        link(&out, 1, Link::Current).unwrap();
        let stored = read_version(&out, 1).unwrap();
        assert_eq!(stored.public_key_der, version("k", 1).public_key_der);
    }

    #[test]
    fn dir_modes_follow_file_modes() {
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o644), 0o755);
        assert_eq!(dir_mode(0o400), 0o700);
    }
}
