//! The stateDir lock: writers on one stateDir (`run --once`, `rotate`, each daemon reconcile)
//! are serialised by an advisory lock on `<stateDir>/.lock` (flock(2)). The kernel drops it
//! when its holder exits, even by SIGKILL, so a crash never leaves a stale lock. The file is
//! never written (a no-op reconcile changes no mtime); the holder's pid, for the message to a
//! waiting user, is read from `/proc/locks`.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use crate::store::dir::DirHandle;

/// Name of the lock file in the stateDir.
pub const LOCK_FILE: &str = ".lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (keyprov, or anything that flocks it, such as flock(1)) holds it and
    /// we were asked not to wait.
    #[error("{path} is held by {}; it was not waited for (--no-wait)", held_by(*holder))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when `/proc/locks` tells it.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {message}")]
    Failed {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
    _dir: Flock<File>,
    waited: bool,
}

impl StateLock {
    /// Whether another keyprov held the lock first (it may have changed the stateDir, or
    /// acted on changed manifests, meanwhile).
    pub fn waited(&self) -> bool {
        self.waited
    }
}

/// Takes the lock of `state_dir` (creating the directory and the file when missing). When
/// another process holds it: with `wait`, says so on stderr and waits; without, fails with
/// [`LockError::Held`].
pub fn acquire(state_dir: &Path, wait: bool) -> Result<StateLock, LockError> {
    let path = state_dir.join(LOCK_FILE);
    let failed = |message: String| LockError::Failed {
        path: path.clone(),
        message,
    };
    let dir = DirHandle::open_root(state_dir, true)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed("the state directory does not exist".into()))?;
    let mut waited = false;
    loop {
        let (locked, waited_for_file) = lock_file(&dir, &path, wait)?;
        waited |= waited_for_file;
        // Someone may have removed or replaced the file while we waited for it: a lock on a
        // file no longer at `.lock` excludes nobody. Take the one that is there now.
        let held = nix::sys::stat::fstat(&*locked).map_err(|e| failed(e.desc().to_string()))?;
        let there = nix::sys::stat::fstatat(&dir, LOCK_FILE, AtFlags::AT_SYMLINK_NOFOLLOW);
        if there.is_ok_and(|s| s.st_dev == held.st_dev && s.st_ino == held.st_ino) {
            // The stateDir itself is locked too: `.lock` can be deleted while held (and a new
            // one created and locked by someone else); the directory cannot.
            let dir_file = dir.file().map_err(|e| failed(e.to_string()))?;
            let (dir_lock, waited_for_dir) = flock(dir_file, &path, wait)?;
            return Ok(StateLock {
                _file: locked,
                _dir: dir_lock,
                waited: waited || waited_for_dir,
            });
        }
        tracing::debug!(lock = %path.display(), "the lock file was replaced; locking again");
    }
}

/// Opens (or creates) `.lock` in `dir` and flocks it (see [`flock`]).
fn lock_file(dir: &DirHandle, path: &Path, wait: bool) -> Result<(Flock<File>, bool), LockError> {
    let failed = |message: String| LockError::Failed {
        path: path.to_path_buf(),
        message,
    };
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, LOCK_FILE, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| failed(e.desc().to_string()))?;
    flock(File::from(fd), path, wait)
}

/// flocks `file` exclusively; when another process holds it, waits (saying so) or fails.
/// Returns the lock and whether it was waited for.
fn flock(file: File, path: &Path, wait: bool) -> Result<(Flock<File>, bool), LockError> {
    let failed = |message: String| LockError::Failed {
        path: path.to_path_buf(),
        message,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok((locked, false)),
        Err((file, Errno::EWOULDBLOCK)) => {
            let holder = holder(&file);
            if !wait {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            // For a person at a terminal; a log (the journal) has the line below.
            if !crate::output::json_logs() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                crate::errln!(
                    "keyprov: waiting for {} (held by {})",
                    path.display(),
                    held_by(holder)
                );
            }
            tracing::info!(lock = %path.display(), holder = held_by(holder),
                "waiting for the stateDir lock");
            Flock::lock(file, FlockArg::LockExclusive)
                .map(|locked| (locked, true))
                .map_err(|(_, errno)| failed(errno.desc().to_string()))
        }
        Err((_, errno)) => Err(failed(errno.desc().to_string())),
    }
}

/// Who holds the lock, as the messages say it: any process may (keyprov, flock(1), ...).
fn held_by(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".into(),
    }
}

/// The pid of the process holding a flock on `file`, from `/proc/locks`, when it says.
fn holder(file: &File) -> Option<u32> {
    let stat = nix::sys::stat::fstat(file).ok()?;
    let (major, minor) = (
        nix::sys::stat::major(stat.st_dev),
        nix::sys::stat::minor(stat.st_dev),
    );
    let id = format!("{major:02x}:{minor:02x}:{}", stat.st_ino);
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"
    locks
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
        .and_then(|fields| fields.get(4).and_then(|pid| pid.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_without_waiting_and_named() {
        let state = tempfile::tempdir().unwrap();
        let first = acquire(state.path(), false).unwrap();
        // flock locks belong to open files: a second open in this process conflicts too.
        match acquire(state.path(), false) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = acquire(state.path(), false).unwrap();
        assert!(!again.waited(), "a free lock is not waited for");
    }

    #[test]
    fn a_lock_taken_after_another_holder_says_it_waited() {
        let state = tempfile::tempdir().unwrap();
        let first = acquire(state.path(), false).unwrap();
        let dir = state.path().to_path_buf();
        let second = std::thread::spawn(move || acquire(&dir, true).unwrap().waited());
        // Released only once the second is blocked on it: "1: -> FLOCK ADVISORY WRITE <pid>
        // <dev>:<inode> 0 EOF" in /proc/locks.
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(state.path().join(LOCK_FILE)).unwrap(),
        );
        let waiter = |line: &str| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&"->")
                && fields
                    .get(6)
                    .is_some_and(|id| id.ends_with(&format!(":{inode}")))
        };
        while !std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(waiter)
        {
            std::thread::yield_now();
        }
        drop(first);
        assert!(second.join().unwrap(), "the second holder waited");
    }
}
