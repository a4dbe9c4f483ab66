//! Directory handles: every file-store call is made relative to an open directory, one path
//! component at a time, never following a symlink. A process racing to swap a directory or a
//! file for a symlink can make a call fail, never make it act outside the handle's directory.
//!
//! Directories below an output root must be real directories owned by keyprov's effective
//! user; they get explicit modes, whatever the umask.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::StoreError;

mod listing;
pub use listing::{Entry, EntryType, Listing, OpenFile};

/// Numeric owner and group to give created entries (`None`: leave as created).
pub type Owner = (Option<Uid>, Option<Gid>);

/// Mode of a state or output root that keyprov has to create itself.
const ROOT_MODE: u32 = 0o755;

/// Most bytes read from any one stored file (a version's files are a few KiB).
pub const MAX_READ_BYTES: u64 = 1 << 20;

/// Most bytes read from one of keyprov's own files that grow with the number of keys (the
/// records under `<stateDir>/ledger/`, a config JWK Set and its members): about 200 bytes a
/// key at most, so several hundred thousand keys. Read with [`MAX_READ_BYTES`] instead, a
/// file of 10,000 keys was refused, so ignored and written again whole by every reconcile.
pub const MAX_GROWING_BYTES: u64 = 64 << 20;

fn io_error(action: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

fn errno_error(action: &'static str, path: &Path, errno: Errno) -> StoreError {
    io_error(action, path, errno.into())
}

/// The error for an entry that is a symlink (or not what it must be) where keyprov writes.
fn not_followed(path: &Path, what: &str) -> StoreError {
    StoreError::Unsafe {
        path: path.display().to_string(),
        message: format!(
            "is {what}; keyprov never follows a symlink or writes through a foreign entry in its \
             directories. Move it away (or fix the manifest) and run again"
        ),
    }
}

/// An open directory and the path it was opened at (for messages only: never re-resolved).
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
    /// The owner's uid, when it was read as the directory was opened (its owner check needs no
    /// second `fstat`).
    uid: Option<u32>,
    /// Whether a listing moved the descriptor's offset (the next listing rewinds first).
    listed: std::sync::atomic::AtomicBool,
}

impl AsFd for DirHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Flags of every open of a directory below a root.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// One path component, refused when it is not a plain name.
fn plain_name<'a>(component: Component<'a>, whole: &Path) -> Result<&'a OsStr, StoreError> {
    match component {
        Component::Normal(name) => Ok(name),
        _ => Err(StoreError::Unsafe {
            path: whole.display().to_string(),
            message: "is not a plain relative path below its output root".into(),
        }),
    }
}

impl DirHandle {
    /// Opens a root (the state directory or an output root), creating it (mode 0755) when
    /// missing. The root itself is trusted configuration: it may be reached through symlinks.
    pub fn open_root(path: &Path, create: bool) -> Result<Option<Self>, StoreError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(DirHandle {
                fd,
                path: path.to_path_buf(),
                uid: None,
                listed: Default::default(),
            })),
            Err(Errno::ENOENT) if create => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(ROOT_MODE)
                    .create(path)
                    .map_err(|e| io_error("cannot create", path, e))?;
                Self::open_root(path, false)
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(errno_error("cannot open", path, errno)),
        }
    }

    /// The path this handle was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn child_path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the directory `name`, which must be a real directory owned by keyprov's
    /// effective user. `None` when it does not exist.
    pub fn open_dir(&self, name: &str) -> Result<Option<DirHandle>, StoreError> {
        self.open_dir_os(OsStr::new(name))
    }

    /// [`DirHandle::open_dir`] for a name that may not be UTF-8.
    pub fn open_dir_os(&self, name: &OsStr) -> Result<Option<DirHandle>, StoreError> {
        let path = self.path.join(name);
        let fd = match nix::fcntl::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(not_followed(&path, "a symlink")),
            Err(Errno::ENOTDIR) => return Err(not_followed(&path, "not a directory")),
            Err(errno) => return Err(errno_error("cannot open", &path, errno)),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| errno_error("cannot stat", &path, e))?;
        let dir = DirHandle {
            fd,
            path,
            uid: Some(stat.st_uid),
            listed: Default::default(),
        };
        // Only keyprov (or root, who could do anything anyway) may own a directory it walks.
        dir.check_owner(true)?;
        Ok(Some(dir))
    }

    /// Refuses this directory unless keyprov's effective user owns it (a key directory).
    pub fn check_owned_by_us(&self) -> Result<(), StoreError> {
        self.check_owner(false)
    }

    /// Refuses this directory unless keyprov's effective user (or, with `or_root`, root)
    /// owns it.
    ///
    /// A directory opened below a root had its owner read through its descriptor as it was
    /// opened: an open directory's owner changes only by `chown`, which only root may do to a
    /// directory keyprov's user owns, so that reading stands.
    fn check_owner(&self, or_root: bool) -> Result<(), StoreError> {
        let uid = match self.uid {
            Some(uid) => uid,
            None => {
                nix::sys::stat::fstat(&self.fd)
                    .map_err(|e| errno_error("cannot stat", &self.path, e))?
                    .st_uid
            }
        };
        let euid = effective_uid();
        if uid == euid || (or_root && uid == 0) {
            return Ok(());
        }
        Err(StoreError::Unsafe {
            path: self.path.display().to_string(),
            message: format!(
                "is owned by uid {uid}, not by keyprov (uid {euid}); refusing to write into it"
            ),
        })
    }

    /// Creates the directory `name` with exactly `mode` (and `owner`); `Ok(false)` when
    /// something of that name exists already.
    pub fn create_dir(&self, name: &str, mode: u32, owner: Owner) -> Result<bool, StoreError> {
        self.create_dir_os(OsStr::new(name), mode, owner)
    }

    fn create_dir_os(&self, name: &OsStr, mode: u32, owner: Owner) -> Result<bool, StoreError> {
        let path = self.path.join(name);
        match nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(false),
            Err(errno) => return Err(errno_error("cannot create", &path, errno)),
        }
        // Created 0700 and only then widened: the umask never decides a mode.
        let created = self
            .open_dir_os(name)?
            .ok_or_else(|| errno_error("cannot open", &path, Errno::ENOENT))?;
        created.set_mode_and_owner(mode, owner)?;
        Ok(true)
    }

    /// Walks `relative` (plain names only) from this directory, creating missing directories
    /// when `create` is set: the last one with the given mode and owner, those on the way
    /// 0755 and keyprov's own. `None` when a component is missing and not created.
    pub fn walk(
        &self,
        relative: &Path,
        create: Option<(u32, Owner)>,
    ) -> Result<Option<DirHandle>, StoreError> {
        let mut components = relative.components().peekable();
        if components.peek().is_none() {
            return Err(StoreError::Unsafe {
                path: relative.display().to_string(),
                message: "is the output root itself".into(),
            });
        }
        let mut current: Option<DirHandle> = None;
        while let Some(component) = components.next() {
            let name = plain_name(component, relative)?;
            let parent = current.as_ref().unwrap_or(self);
            let last = components.peek().is_none();
            let next = match parent.open_dir_os(name)? {
                Some(dir) => dir,
                None => match create {
                    Some((mode, owner)) => {
                        let (mode, owner) = if last {
                            (mode, owner)
                        } else {
                            (ROOT_MODE, (None, None))
                        };
                        parent.create_dir_os(name, mode, owner)?;
                        parent.open_dir_os(name)?.ok_or_else(|| {
                            errno_error("cannot open", &parent.path.join(name), Errno::ENOENT)
                        })?
                    }
                    None => return Ok(None),
                },
            };
            current = Some(next);
        }
        Ok(current)
    }

    /// Sets this directory's mode and owner.
    pub fn set_mode_and_owner(&self, mode: u32, owner: Owner) -> Result<(), StoreError> {
        nix::sys::stat::fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| errno_error("cannot chmod", &self.path, e))?;
        fchown(&self.fd, &self.path, owner)
    }

    /// Creates the file `name` (never opening an existing entry), with exactly `mode` and
    /// `owner`, holding `bytes`. The file is returned for flushing.
    pub fn create_file(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<File, StoreError> {
        let path = self.path.join(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| errno_error("cannot create", &path, e))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| errno_error("cannot chmod", &path, e))?;
        fchown(&fd, &path, owner)?;
        let mut file = File::from(fd);
        file.write_all(bytes)
            .map_err(|e| io_error("cannot write", &path, e))?;
        Ok(file)
    }

    /// Replaces the entry `name` with a regular file holding `bytes`, atomically: written
    /// under a temporary name (`.tmp-<name>-<pid>`, created exclusively), given `mode` and
    /// `owner`, fsynced, renamed over `name` (whatever is there, a symlink or FIFO included,
    /// is replaced, never opened). The temporary file is removed when a step fails. The
    /// directory itself is the caller's to flush.
    pub fn replace_file(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<(), StoreError> {
        let tmp = format!(".tmp-{name}-{}", std::process::id());
        self.remove_file(&tmp)?;
        let file = match self.create_file(&tmp, bytes, mode, owner) {
            Ok(file) => file,
            Err(err) => {
                // A full disk fails the write after the file was created: no temporary stays.
                let _ = self.remove_file(&tmp);
                return Err(err);
            }
        };
        let renamed = file
            .sync_all()
            .map_err(|e| io_error("cannot fsync", &self.path.join(&tmp), e))
            .and_then(|()| self.rename(&tmp, name));
        if renamed.is_err() {
            let _ = self.remove_file(&tmp);
        }
        renamed
    }

    /// Opens the regular file `name` for reading, without following a symlink or blocking on
    /// a FIFO.
    fn open_regular(&self, name: &str) -> Result<(File, FileStat), StoreError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(not_followed(&path, "a symlink")),
            Err(errno) => return Err(errno_error("cannot open", &path, errno)),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| errno_error("cannot stat", &path, e))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(not_followed(&path, "not a regular file"));
        }
        Ok((File::from(fd), stat))
    }

    /// Reads the regular file `name` (at most [`MAX_READ_BYTES`]).
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.read_file_at_most(name, MAX_READ_BYTES)
    }

    /// Reads the regular file `name`, refused when larger than `max` bytes (keyprov's own
    /// records grow with the number of keys: see `ledger`).
    pub fn read_file_at_most(&self, name: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let (file, stat) = self.open_regular(name)?;
        listing::read_bounded(file, &stat, &self.path.join(name), max)
    }

    /// Sets the mode and owner of the regular file `name` through its own descriptor.
    pub fn set_file_mode_and_owner(
        &self,
        name: &str,
        mode: u32,
        owner: Owner,
    ) -> Result<(), StoreError> {
        let path = self.path.join(name);
        let (file, _) = self.open_regular(name)?;
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(|e| errno_error("cannot chmod", &path, e))?;
        fchown(&file, &path, owner)
    }

    /// Sets the times of the entry `name` itself (a symlink is not followed) to now.
    pub fn touch(&self, name: &str) -> Result<(), StoreError> {
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        nix::sys::stat::utimensat(
            &self.fd,
            name,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| errno_error("cannot set the times of", &self.path.join(name), e))
    }

    /// `lstat` of `name`; `None` when it does not exist or cannot be read.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> Option<FileStat> {
        nix::sys::stat::fstatat(&self.fd, name.as_ref(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    /// True when `name` is a real directory (not a symlink to one).
    pub fn is_dir(&self, name: impl AsRef<OsStr>) -> bool {
        self.stat(name)
            .is_some_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
    }

    /// The target of the symlink `name`; `None` when there is no entry of that name.
    pub fn read_link(&self, name: &str) -> Result<Option<PathBuf>, StoreError> {
        match nix::fcntl::readlinkat(&self.fd, name) {
            Ok(target) => Ok(Some(PathBuf::from(target))),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::EINVAL) => Err(not_followed(&self.path.join(name), "not a symlink")),
            Err(errno) => Err(errno_error(
                "cannot read link",
                &self.path.join(name),
                errno,
            )),
        }
    }

    /// Creates the symlink `name` pointing at `target`.
    pub fn symlink(&self, target: &str, name: &str) -> Result<(), StoreError> {
        nix::unistd::symlinkat(target, &self.fd, name)
            .map_err(|e| errno_error("cannot create link", &self.path.join(name), e))
    }

    /// Renames `from` to `to` in this directory, replacing `to` (for links).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: &str) -> Result<(), StoreError> {
        nix::fcntl::renameat(&self.fd, from.as_ref(), &self.fd, to)
            .map_err(|e| errno_error("cannot rename into", &self.path.join(to), e))
    }

    /// Renames `from` to `to` in this directory; fails with `Ok(false)` when `to` exists.
    pub fn rename_no_replace(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        match nix::fcntl::renameat2(&self.fd, from, &self.fd, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(errno) => Err(errno_error(
                "cannot rename into",
                &self.path.join(to),
                errno,
            )),
        }
    }

    /// Removes the non-directory entry `name`; missing is fine.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> Result<(), StoreError> {
        let name = name.as_ref();
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno_error("cannot remove", &self.path.join(name), errno)),
        }
    }

    /// Removes `name` and, when it is a real directory, everything below it, without
    /// following any symlink; missing is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> Result<(), StoreError> {
        let name = name.as_ref();
        if !self.is_dir(name) {
            return self.remove_file(name);
        }
        let Some(dir) = self.open_dir_os(name)? else {
            return Ok(());
        };
        for child in dir.names()? {
            dir.remove_tree(&child)?;
        }
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno_error("cannot remove", &self.path.join(name), errno)),
        }
    }

    /// A second descriptor of this directory, for flushing it later.
    pub fn file(&self) -> Result<File, StoreError> {
        self.fd
            .try_clone()
            .map(File::from)
            .map_err(|e| io_error("cannot duplicate", &self.path, e))
    }

    /// fsyncs the directory, making renames and creations in it durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        nix::unistd::fsync(&self.fd).map_err(|e| errno_error("cannot fsync", &self.path, e))
    }
}

/// keyprov's effective user id, asked once: every directory walked is checked against it (a
/// system call per check added up over many keys), and keyprov never changes it.
fn effective_uid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| nix::unistd::geteuid().as_raw())
}

fn fchown(fd: impl AsFd, path: &Path, owner: Owner) -> Result<(), StoreError> {
    if owner.0.is_none() && owner.1.is_none() {
        return Ok(());
    }
    nix::unistd::fchown(fd, owner.0, owner.1).map_err(|e| errno_error("cannot chown", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_creates_with_exact_modes_and_refuses_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let handle = DirHandle::open_root(root.path(), false).unwrap().unwrap();
        let old = nix::sys::stat::umask(Mode::empty());
        let made = handle
            .walk(Path::new("a/b"), Some((0o750, (None, None))))
            .unwrap()
            .unwrap();
        nix::sys::stat::umask(old);
        let mode = |dir: &str| {
            let permissions = std::fs::metadata(root.path().join(dir))
                .unwrap()
                .permissions();
            std::os::unix::fs::PermissionsExt::mode(&permissions) & 0o7777
        };
        assert_eq!(mode("a"), 0o755, "a directory on the way");
        assert_eq!(mode("a/b"), 0o750, "the directory walked to");
        made.create_file("f", b"x", 0o640, (None, None)).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let err = handle
            .walk(Path::new("link/c"), Some((0o750, (None, None))))
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(handle.walk(Path::new("../x"), None).is_err());
    }

    #[test]
    fn remove_tree_never_follows_links_out() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let tree = root.path().join("t");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("sub/out")).unwrap();
        let handle = DirHandle::open_root(root.path(), false).unwrap().unwrap();
        handle.remove_tree("t").unwrap();
        assert!(!tree.exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn reads_refuse_symlinks_and_fifos() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(outside.path().join("secret"), private).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("l")).unwrap();
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let handle = DirHandle::open_root(root.path(), false).unwrap().unwrap();
        assert!(handle.read_file("l").is_err());
        assert!(
            handle
                .set_file_mode_and_owner("l", 0o644, (None, None))
                .is_err()
        );
        assert!(handle.read_file("fifo").is_err());
        let mode = std::fs::metadata(outside.path().join("secret"))
            .unwrap()
            .permissions();
        assert_ne!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
    }
}
