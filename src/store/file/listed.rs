//! A directory as one listing saw it: whether a name is there and what it is, without an
//! `lstat` per name, and a file listed as regular opened once for both its `fstat` and its
//! contents. What the listing cannot vouch for is looked at with `lstat`, as before.

use nix::sys::stat::FileStat;

use crate::store::StoreError;
use crate::store::dir::{DirHandle, EntryType, Listing, MAX_READ_BYTES, OpenFile};

/// A directory as one listing saw it.
pub(super) struct Listed<'a> {
    /// The directory.
    pub(super) dir: &'a DirHandle,
    /// `None` when it could not be listed: each name is then looked up.
    pub(super) listing: Option<Listing>,
}

impl<'a> Listed<'a> {
    /// Lists `dir`; one that cannot be listed has its names looked up one by one.
    pub(super) fn list(dir: &'a DirHandle) -> Self {
        Listed {
            dir,
            listing: dir.entries().ok(),
        }
    }

    /// Whether there is an entry `name`, as `lstat` would say.
    pub(super) fn has(&self, name: &str) -> bool {
        match &self.listing {
            Some(listing) => listing.contains(name),
            None => self.dir.stat(name).is_some(),
        }
    }

    /// What `lstat` of `name` says (`None`: there is none), and the file opened when it is a
    /// regular file. Only an entry listed as a regular file is opened (opening a device or a
    /// FIFO is never wanted); its `fstat` is then its `lstat`, the open not following symlinks.
    pub(super) fn open(&self, name: &str) -> (Option<FileStat>, Option<OpenFile>) {
        let kind = match &self.listing {
            Some(listing) => match listing.get(name) {
                None => return (None, None),
                Some(kind) => kind,
            },
            None => EntryType::Unknown,
        };
        if kind == EntryType::Regular {
            match self.dir.open_entry(name) {
                Ok(Some(file)) => return (Some(file.stat), Some(file)),
                Ok(None) => return (None, None),
                // Replaced since the listing (by a symlink, say): judged as it is now.
                Err(_) => {}
            }
        }
        (self.dir.stat(name), None)
    }

    /// Reads `name` with its mode (`None` when `lstat` fails), in one open when the listing
    /// says it is a regular file.
    pub(super) fn read_with_mode(&self, name: &str) -> Result<(Vec<u8>, Option<u32>), StoreError> {
        self.read_with_stat(name)
            .map(|(bytes, stat)| (bytes, stat.map(|s| s.st_mode & 0o7777)))
    }

    /// Reads `name` with its stat taken *before* the read (`fstat` of the descriptor read
    /// when the listing says it is a regular file, else `lstat`; `None` when that fails).
    pub(super) fn read_with_stat(
        &self,
        name: &str,
    ) -> Result<(Vec<u8>, Option<FileStat>), StoreError> {
        match self.listing.as_ref().map(|l| l.get(name)) {
            Some(None) => Err(StoreError::Io {
                action: "cannot open",
                path: self.dir.child_path(name).display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
            Some(Some(EntryType::Regular)) => {
                let file = self.dir.open_entry(name)?.ok_or_else(|| StoreError::Io {
                    action: "cannot open",
                    path: self.dir.child_path(name).display().to_string(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
                let stat = file.stat;
                Ok((file.read(MAX_READ_BYTES)?, Some(stat)))
            }
            _ => {
                let stat = self.dir.stat(name);
                let bytes = self.dir.read_file(name)?;
                Ok((bytes, stat))
            }
        }
    }
}
