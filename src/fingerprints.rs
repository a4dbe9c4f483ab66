//! Stat fingerprints of the files keyprov derives from a checked public key (`public.jwk`,
//! `public.pub`, a key's `jwks.json`, config JWK Sets), as git's index keeps them: after their
//! content was read and found right, (dev, ino, size, mtime ns, ctime ns, mode, uid) and a
//! digest of that content are recorded in `<stateDir>/ledger/fingerprints-<n>.json`; a later
//! pass trusts a file whose `lstat` is the one recorded for the content it wants, and reads it
//! otherwise. ctime cannot be set from userland, so any write, rename over, chmod or chown is
//! seen. A stat taken less than [`RACY_NS`] after the file's last change is never recorded
//! (racily clean: a change within the timestamps' granularity could hide), so such a file is
//! read again next time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::stat::FileStat;

use crate::ledger::Ledger;

/// Shards of the record: a change rewrites only its shard.
const SHARDS: usize = 64;

/// A file changed less than this before it was checked is not recorded (2 s).
pub const RACY_NS: i128 = 2_000_000_000;

/// One file as recorded: dev, ino, size, mtime ns, ctime ns, mode (with type), uid, and the
/// first 8 bytes of the SHA-256 of the content it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry(u64, u64, i64, i64, i64, u32, u32, u64);

/// Files by group (a key directory, a JWK Set's path), then by name below it.
type Groups = HashMap<String, BTreeMap<String, Entry>>;

#[derive(Default)]
struct Shard {
    /// `None` until first used.
    groups: Option<Groups>,
    dirty: bool,
}

/// The fingerprints of one stateDir, each shard read on first use and written by
/// [`Fingerprints::save`] when it changed.
pub struct Fingerprints {
    state_dir: PathBuf,
    shards: Vec<Mutex<Shard>>,
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprints")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn digest(content: &[u8]) -> u64 {
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    u64::from_be_bytes(sum.as_ref()[..8].try_into().expect("8 bytes"))
}

fn entry(stat: &FileStat, content: &[u8]) -> Entry {
    Entry(
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        nanos(stat.st_mtime, stat.st_mtime_nsec),
        nanos(stat.st_ctime, stat.st_ctime_nsec),
        stat.st_mode,
        stat.st_uid,
        digest(content),
    )
}

fn is_regular(stat: &FileStat) -> bool {
    use nix::sys::stat::SFlag;
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// FNV-1a: stable across releases.
fn shard_of(group: &str) -> usize {
    let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % SHARDS as u64) as usize
}

impl Fingerprints {
    /// The fingerprints kept under `state_dir` (nothing is read yet).
    pub fn new(state_dir: &Path) -> Self {
        Fingerprints {
            state_dir: state_dir.to_path_buf(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn ledger(&self, index: usize) -> Ledger {
        Ledger::new(&self.state_dir, &format!("fingerprints-{index:x}"))
    }

    /// Runs `f` on the group's files, its shard read first if it was not.
    fn with<T>(&self, group: &Path, f: impl FnOnce(&mut Shard, &str) -> T) -> T {
        let group = group.to_string_lossy();
        let index = shard_of(&group);
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.groups.is_none() {
            shard.groups = Some(self.ledger(index).load());
        }
        f(&mut shard, &group)
    }

    /// Whether `stat` (an `lstat` of `name` below `group`) is the one recorded when the file
    /// held `content`.
    pub fn vouches(&self, group: &Path, name: &str, stat: &FileStat, content: &[u8]) -> bool {
        if !is_regular(stat) {
            return false;
        }
        let recorded = self.with(group, |shard, group| {
            shard
                .groups
                .as_ref()
                .and_then(|g| g.get(group))
                .and_then(|files| files.get(name))
                .copied()
        });
        recorded.is_some_and(|recorded| recorded == entry(stat, content))
    }

    /// Records that `name` below `group` held `content`, `stat` being its `lstat` or `fstat`
    /// taken *before* the content was read (a change after it shows in a later stat). A stat
    /// of a file changed less than [`RACY_NS`] before now is not recorded (any older record
    /// of it is dropped), nor is anything but a regular file.
    pub fn record(&self, group: &Path, name: &str, stat: &FileStat, content: &[u8]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let new = entry(stat, content);
        let clean = is_regular(stat) && i128::from(new.3.max(new.4)) + RACY_NS <= now;
        self.with(group, |shard, group| {
            let groups = shard.groups.get_or_insert_with(Groups::new);
            if clean {
                let files = groups.entry(group.to_string()).or_default();
                if files.get(name) != Some(&new) {
                    files.insert(name.to_string(), new);
                    shard.dirty = true;
                }
            } else if let Some(files) = groups.get_mut(group)
                && files.remove(name).is_some()
            {
                if files.is_empty() {
                    groups.remove(group);
                }
                shard.dirty = true;
            }
        });
    }

    /// Writes the shards that changed (a failure is logged: it only costs reads later).
    pub fn save(&self) {
        for (index, shard) in self.shards.iter().enumerate() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !shard.dirty {
                continue;
            }
            shard.dirty = false;
            let empty = Groups::new();
            let groups = shard.groups.as_ref().unwrap_or(&empty);
            if let Err(err) = self.ledger(index).save(groups) {
                tracing::warn!("{err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &Path) -> FileStat {
        nix::sys::stat::lstat(path).unwrap()
    }

    #[test]
    fn a_recorded_file_is_vouched_for_until_it_changes_and_a_fresh_one_never_is() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("public.jwk");
        std::fs::write(&file, "{}").unwrap();
        let fingerprints = Fingerprints::new(tmp.path());
        let group = tmp.path();
        // Just written: racily clean, not recorded.
        fingerprints.record(group, "public.jwk", &stat(&file), b"{}");
        assert!(!fingerprints.vouches(group, "public.jwk", &stat(&file), b"{}"));
        // Made old (mtime; ctime cannot be set, so the record is made with a stat whose
        // times are shifted back, as if it were checked later).
        let mut old = stat(&file);
        old.st_ctime -= 10;
        old.st_mtime -= 10;
        fingerprints.record(group, "public.jwk", &old, b"{}");
        assert!(fingerprints.vouches(group, "public.jwk", &old, b"{}"));
        assert!(!fingerprints.vouches(group, "public.jwk", &old, b"[]"));
        let mut changed = old;
        changed.st_ctime_nsec = (changed.st_ctime_nsec + 1) % 1_000_000_000;
        assert!(!fingerprints.vouches(group, "public.jwk", &changed, b"{}"));
        fingerprints.save();
        let again = Fingerprints::new(tmp.path());
        assert!(again.vouches(group, "public.jwk", &old, b"{}"));
        assert!(!again.vouches(group, "public.pub", &old, b"{}"));
    }
}
