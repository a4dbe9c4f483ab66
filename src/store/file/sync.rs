//! Durability of a batch: the files and directories written, flushed together before the
//! next step (fsync each, or one `syncfs(2)` per filesystem for a batch of keys).

use std::collections::HashSet;
use std::fs::File;

use super::*;

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
