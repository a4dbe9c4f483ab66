//! Writing new versions: each staged whole under a temporary name (in a key directory that
//! is itself new until its first link), then published, then linked, with the flushes of a
//! whole batch of keys grouped (see [`commit_versions`]).

use std::sync::Arc;

use super::leftovers::NEW_DIR_PREFIX;
use super::*;

/// A key directory being created: built under a temporary name in its parent, and given its
/// own name only once its first version is linked, so that a key directory never exists
/// without `current` (a crash before leaves only a temporary directory, removed next time).
#[derive(Debug)]
pub(super) struct NewKeyDir {
    parent: DirHandle,
    tmp: String,
    name: std::ffi::OsString,
}

/// Opens the key directory of `output`, or starts a new one (see [`NewKeyDir`]), creating the
/// root and the directories on the way when missing.
pub(super) fn open_or_start_key_dir(
    output: &FileOutput,
    owner: Owner,
    leftovers: &mut Leftovers,
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
    // Others' leftovers are collected (one listing of the parent per pass); this process's
    // own, from an earlier attempt, by name.
    leftovers.collect(&parent, name)?;
    let tmp = format!(
        "{NEW_DIR_PREFIX}{}-{}",
        std::process::id(),
        name.to_string_lossy()
    );
    parent.remove_tree(&tmp)?;
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

/// A file of a version: name, contents (wiped when dropped) and mode.
pub(super) type VersionFile = (String, zeroize::Zeroizing<Vec<u8>>, u32);

/// The files of a version for `output`, encoded, with their modes.
pub(super) fn version_files(
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
    leftovers: &mut Leftovers,
) -> Result<StagedVersion, StoreError> {
    let owner = ownership(output)?;
    let (dir, new_dir) = open_or_start_key_dir(output, owner, leftovers)?;
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
pub fn commit_versions(
    batch: &[NewVersion<'_>],
    leftovers: &mut Leftovers,
) -> Vec<Result<(), StoreError>> {
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
                match stage_version(output, item.version, &mut written, leftovers) {
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
