//! Listing a directory handle and reading its files with few system calls: a listing is
//! `getdents64` on the handle's own descriptor (no duplicate, no `fdopendir`) and keeps each
//! entry's type as the file system gives it; a file opened once is `fstat`ed and read through
//! that descriptor, in one read when its size is known.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use rustix::fs::FileType;

use super::{DirHandle, StoreError, errno_error, io_error, not_followed};

/// Bytes of directory entries fetched per `getdents64` (glibc's `readdir` uses as many).
const LISTING_BUFFER: usize = 32 << 10;

/// What a listing says an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// A directory (not a symlink to one).
    Dir,
    /// A regular file.
    Regular,
    /// A symlink, FIFO, socket or device.
    Other,
    /// The file system did not say: only `lstat` tells.
    Unknown,
}

/// One entry of a listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its name, as it is (not necessarily UTF-8).
    pub name: OsString,
    /// Its type.
    pub kind: EntryType,
}

/// A directory's entries, `.` and `..` excluded.
#[derive(Debug, Default)]
pub struct Listing(pub Vec<Entry>);

impl Listing {
    /// The type of the entry `name`; `None` when there is no such entry.
    pub fn get(&self, name: impl AsRef<OsStr>) -> Option<EntryType> {
        let name = name.as_ref();
        self.0.iter().find(|e| e.name == name).map(|e| e.kind)
    }

    /// Whether there is an entry `name` (of any type).
    pub fn contains(&self, name: impl AsRef<OsStr>) -> bool {
        self.get(name).is_some()
    }
}

/// A file of a directory, opened for reading, with what `fstat` said of it then.
#[derive(Debug)]
pub struct OpenFile {
    file: File,
    /// The `fstat` of the open file.
    pub stat: FileStat,
    path: PathBuf,
}

impl OpenFile {
    /// Whether it is a regular file.
    pub fn is_regular(&self) -> bool {
        SFlag::from_bits_truncate(self.stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
    }

    /// Reads it to its end, as [`DirHandle::read_file_at_most`] would: refused unless it is a
    /// regular file, or when it holds more than `max` bytes.
    pub fn read(self, max: u64) -> Result<Vec<u8>, StoreError> {
        if !self.is_regular() {
            return Err(not_followed(&self.path, "not a regular file"));
        }
        read_bounded(self.file, &self.stat, &self.path, max)
    }
}

impl std::os::fd::AsFd for OpenFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl DirHandle {
    /// The directory's entries with their types, `.` and `..` excluded.
    pub fn entries(&self) -> Result<Listing, StoreError> {
        let list = |e: rustix::io::Errno| io_error("cannot list", &self.path, e.into());
        // `getdents64` reads on from the descriptor's offset: a second listing starts over.
        if self.listed.swap(true, Ordering::AcqRel) {
            rustix::fs::seek(&self.fd, rustix::fs::SeekFrom::Start(0)).map_err(list)?;
        }
        let mut buffer: Vec<u8> = Vec::with_capacity(LISTING_BUFFER);
        let mut raw = rustix::fs::RawDir::new(&self.fd, buffer.spare_capacity_mut());
        let mut entries = Vec::new();
        while let Some(entry) = raw.next() {
            let entry = entry.map_err(list)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Directory => EntryType::Dir,
                FileType::RegularFile => EntryType::Regular,
                FileType::Unknown => EntryType::Unknown,
                _ => EntryType::Other,
            };
            entries.push(Entry {
                name: OsStr::from_bytes(name).to_os_string(),
                kind,
            });
        }
        Ok(Listing(entries))
    }

    /// Names in the directory, `.` and `..` excluded, as they are (not necessarily UTF-8).
    pub fn names(&self) -> Result<Vec<OsString>, StoreError> {
        Ok(self.entries()?.0.into_iter().map(|e| e.name).collect())
    }

    /// Opens the entry `name` for reading, without following a symlink or blocking on a FIFO,
    /// and `fstat`s it, whatever it is (the caller judges the type); `None` when there is no
    /// entry of that name. One open answers both "what is it" and "what does it hold".
    pub fn open_entry(&self, name: &str) -> Result<Option<OpenFile>, StoreError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(not_followed(&path, "a symlink")),
            Err(errno) => return Err(errno_error("cannot open", &path, errno)),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| errno_error("cannot stat", &path, e))?;
        Ok(Some(OpenFile {
            file: File::from(fd),
            stat,
            path,
        }))
    }
}

/// Reads the regular file `file` (`stat` its `fstat`) to its end, refused when it holds more
/// than `max` bytes. When its size is within `max`, one read of one byte more than the size
/// is made: a read of a regular file returns less than asked only at its end, so getting
/// exactly the size is the whole file and no second read is needed to see the end. Otherwise
/// (it grew, shrank, or is larger than `max`) it is read on to its end, still bounded.
pub(super) fn read_bounded(
    file: File,
    stat: &FileStat,
    path: &Path,
    max: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut file = file.take(max + 1);
    let mut bytes = Vec::new();
    if let Some(size) = u64::try_from(stat.st_size).ok().filter(|&s| s <= max) {
        bytes.resize(size as usize + 1, 0);
        let read = loop {
            match file.read(&mut bytes) {
                Ok(read) => break read,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("cannot read", path, e)),
            }
        };
        bytes.truncate(read);
        if read as u64 == size {
            return Ok(bytes);
        }
    }
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error("cannot read", path, e))?;
    if bytes.len() as u64 > max {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            message: format!("is larger than {max} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, DirHandle) {
        let dir = tempfile::tempdir().unwrap();
        let handle = DirHandle::open_root(dir.path(), false).unwrap().unwrap();
        (dir, handle)
    }

    #[test]
    fn a_listing_gives_types_and_starts_over_each_time() {
        let (dir, handle) = root();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("d"), dir.path().join("l")).unwrap();
        for _ in 0..2 {
            let listing = handle.entries().unwrap();
            assert_eq!(listing.0.len(), 3, "{listing:?}");
            let known =
                |kind: EntryType, want: EntryType| kind == want || kind == EntryType::Unknown;
            assert!(known(listing.get("f").unwrap(), EntryType::Regular));
            assert!(known(listing.get("d").unwrap(), EntryType::Dir));
            assert!(known(listing.get("l").unwrap(), EntryType::Other));
            assert!(!listing.contains("missing"));
        }
        // A large directory takes several `getdents64`.
        for i in 0..3000 {
            std::fs::write(
                dir.path().join(format!("file-with-a-longish-name-{i:05}")),
                "",
            )
            .unwrap();
        }
        assert_eq!(handle.names().unwrap().len(), 3003);
    }

    #[test]
    fn reads_whole_files_and_refuses_larger_ones() {
        let (dir, handle) = root();
        for size in [0usize, 1, 4095, 4096, 4097, 100_000] {
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join("f"), &bytes).unwrap();
            assert_eq!(handle.read_file("f").unwrap(), bytes, "{size}");
            assert_eq!(
                handle
                    .open_entry("f")
                    .unwrap()
                    .unwrap()
                    .read(1 << 20)
                    .unwrap(),
                bytes
            );
            let bound = handle.read_file_at_most("f", size.saturating_sub(1) as u64);
            assert_eq!(bound.is_err(), size > 0, "{size}");
            assert_eq!(handle.read_file_at_most("f", size as u64).unwrap(), bytes);
        }
        assert!(handle.open_entry("missing").unwrap().is_none());
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let opened = handle.open_entry("d").unwrap().unwrap();
        assert!(!opened.is_regular());
        assert!(opened.read(10).is_err());
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("l")).unwrap();
        let err = handle.open_entry("l").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn a_file_that_grew_after_its_stat_is_read_to_its_end() {
        let (dir, handle) = root();
        std::fs::write(dir.path().join("f"), "abc").unwrap();
        let opened = handle.open_entry("f").unwrap().unwrap();
        std::fs::write(dir.path().join("f"), "abcdefgh").unwrap();
        assert_eq!(opened.read(100).unwrap(), b"abcdefgh");
        let opened = handle.open_entry("f").unwrap().unwrap();
        std::fs::write(dir.path().join("f"), "a".repeat(200)).unwrap();
        assert!(opened.read(100).is_err(), "grown past the bound");
    }
}
