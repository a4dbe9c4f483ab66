//! Stat fingerprints of the files keyprov derives from checked public keys (a version's
//! `public.jwk` and `public.pub`, a key's `jwks.json`, config JWK Sets), as git's index keeps
//! them, bound to what the files are derived from. After a file was read and found to hold
//! what its inputs make (a version's verified public key, the formats asked for, the key's
//! name and generation; for a set, its members' keys), one [`Stamp`] is recorded for the
//! group of files and their inputs: an id naming the group (kind and path) and a 128-bit
//! digest of the inputs and of each file's `lstat` (dev, ino, size, mtime ns, ctime ns, mode,
//! uid, gid). A later pass that makes the same stamp from the same inputs and fresh `lstat`s
//! trusts the files without reading them, or making what they should hold; any other stamp
//! means they are read and checked as before. ctime cannot be set from userland, so a write,
//! a rename over, a chmod or a chown shows; anything but a regular file is never stamped.
//! A write through a shared writable mapping shows only at the write fault that makes a
//! page writable (once per page until it is written out): a file is stamped only after
//! [`settle`] wrote its pages out (so every mapping faults again), on a filesystem that
//! updates the times at that fault (not on tmpfs, where a mapped page never faults again).
//! Files changed less than [`RACY_NS`] before the check (or later than now: a clock set back)
//! are not recorded (racily clean: a change within the timestamps' granularity could hide).
//!
//! The record is `<stateDir>/ledger/fingerprints.bin`: a header (magic, and a digest of this
//! build's version and of what it derives from fixed keys, so that another build's record is
//! dropped) and 24 bytes per stamp (id, digest), sorted by id. It is read once, on first use,
//! and rewritten by [`Fingerprints::save`] only when a stamp changed. Any damage to it only
//! costs reads: an unreadable record is dropped, and a digest read wrong matches nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aws_lc_rs::digest;
use nix::sys::stat::FileStat;

use crate::store::dir::DirHandle;

/// A file changed less than this before it was checked is not recorded (2 s).
pub const RACY_NS: i128 = 2_000_000_000;

/// The record's name in `<stateDir>/ledger/`.
pub const FILE: &str = "fingerprints.bin";

const MAGIC: &[u8; 8] = b"kpfp\x00\x00\x00\x01";
const HEADER: usize = MAGIC.len() + 16;
const ENTRY: usize = 8 + 16;
/// Records larger than this are dropped (64 MiB: more than two million stamps).
const MAX_BYTES: u64 = crate::store::dir::MAX_GROWING_BYTES;

/// The 128-bit digest a stamp records.
pub type Digest = [u8; 16];

/// What a group of files and their inputs were found to be (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    id: u64,
    digest: Digest,
    /// Every file it covers changed at least [`RACY_NS`] before now.
    clean: bool,
}

/// Makes a [`Stamp`]: inputs and file stats are fed in order, each delimited.
pub struct Stamper {
    id: u64,
    context: digest::Context,
    newest_ns: i128,
    /// False once a file that is not a regular file was fed.
    regular: bool,
}

fn nanos(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

fn is_regular(stat: &FileStat) -> bool {
    use nix::sys::stat::SFlag;
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

impl Stamper {
    /// A stamp of `kind` (what the files are: `version`, `jwks`, `set`) at `path`.
    pub fn new(kind: &str, path: &Path) -> Self {
        let path = path.as_os_str().as_encoded_bytes();
        // FNV-1a: stable across releases; two groups that share an id only cost reads.
        let id = kind
            .bytes()
            .chain([0])
            .chain(path.iter().copied())
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let mut stamper = Stamper {
            id,
            context: digest::Context::new(&digest::SHA256),
            newest_ns: i128::MIN,
            regular: true,
        };
        stamper.input(kind.as_bytes()).input(path);
        stamper
    }

    /// Feeds an input the files are derived from.
    pub fn input(&mut self, bytes: &[u8]) -> &mut Self {
        self.context.update(&(bytes.len() as u64).to_le_bytes());
        self.context.update(bytes);
        self
    }

    /// Feeds another stamp (of the files and inputs these files are derived from): this one
    /// is clean only when that one is.
    pub fn stamp(&mut self, other: &Stamp) -> &mut Self {
        if !other.clean {
            self.newest_ns = i128::MAX;
        }
        self.input(&other.digest)
    }

    /// Feeds a file's `lstat` (or the `fstat` of it opened without following a symlink),
    /// taken before it was read; `None` (no such file) or anything but a regular file makes
    /// the stamp unusable.
    pub fn file(&mut self, stat: Option<&FileStat>) -> &mut Self {
        match stat {
            Some(stat) if is_regular(stat) => self.stat(stat),
            _ => {
                self.regular = false;
                self
            }
        }
    }

    /// Feeds a file's `lstat` that may be missing (recorded as missing) but, when there, must
    /// be a regular file.
    pub fn file_or_none(&mut self, stat: Option<&FileStat>) -> &mut Self {
        match stat {
            Some(_) => self.file(stat),
            None => self.input(b"none"),
        }
    }

    fn stat(&mut self, stat: &FileStat) -> &mut Self {
        let mtime = nanos(stat.st_mtime, stat.st_mtime_nsec);
        let ctime = nanos(stat.st_ctime, stat.st_ctime_nsec);
        self.newest_ns = self.newest_ns.max(mtime).max(ctime);
        let mut bytes = [0u8; 8 * 5 + 4 * 3];
        for (at, value) in [
            stat.st_dev,
            stat.st_ino,
            stat.st_size as u64,
            mtime as u64,
            ctime as u64,
        ]
        .into_iter()
        .enumerate()
        {
            bytes[at * 8..at * 8 + 8].copy_from_slice(&value.to_le_bytes());
        }
        for (at, value) in [stat.st_mode, stat.st_uid, stat.st_gid]
            .into_iter()
            .enumerate()
        {
            bytes[40 + at * 4..44 + at * 4].copy_from_slice(&value.to_le_bytes());
        }
        self.input(&bytes)
    }

    /// The stamp; `None` when a file fed was missing or not a regular file.
    pub fn finish(self) -> Option<Stamp> {
        if !self.regular {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let sum = self.context.finish();
        Some(Stamp {
            id: self.id,
            digest: sum.as_ref()[..16].try_into().expect("16 bytes"),
            clean: self.newest_ns.saturating_add(RACY_NS) <= now,
        })
    }
}

/// Filesystems whose write faults update mtime and ctime once a file's pages were written out
/// (ext2/3/4, XFS, Btrfs): on others (tmpfs, whose mapped pages never fault again; network
/// and FUSE filesystems) a stat cannot vouch for a file.
const SETTLING: [nix::sys::statfs::FsType; 3] = [
    nix::sys::statfs::EXT4_SUPER_MAGIC,
    nix::sys::statfs::XFS_SUPER_MAGIC,
    nix::sys::statfs::BTRFS_SUPER_MAGIC,
];

/// Makes the regular file `name` in `dir` safe to stamp by a stat taken after this: its dirty
/// pages written out (`fdatasync`), so that a later write through a shared mapping made
/// writable before faults again and updates its mtime and ctime. False when it cannot be (not
/// a regular file, a filesystem not in [`SETTLING`], or the sync failed): it is not recorded.
pub fn settle(dir: &DirHandle, name: &str) -> bool {
    // Only a regular file is opened (never a device or a FIFO).
    if !dir.stat(name).is_some_and(|stat| is_regular(&stat)) {
        return false;
    }
    let Ok(Some(file)) = dir.open_entry(name) else {
        return false;
    };
    file.is_regular()
        && nix::sys::statfs::fstatfs(&file).is_ok_and(|fs| SETTLING.contains(&fs.filesystem_type()))
        && nix::unistd::fdatasync(&file).is_ok()
}

/// The stamps of one stateDir: read on first use, written by [`Fingerprints::save`] when one
/// changed.
pub struct Fingerprints {
    state_dir: PathBuf,
    /// As read: (id, digest) sorted by id.
    recorded: OnceLock<Vec<(u64, Digest)>>,
    /// Made in this pass: a digest, or `None` for one forgotten.
    changes: Mutex<HashMap<u64, Option<Digest>>>,
    /// The ids of recorded stamps a lookup vouched for in this pass.
    vouched: Mutex<HashSet<u64>>,
    /// Set by [`Fingerprints::looked_at_everything`]: stamps this pass neither vouched for nor
    /// made are of files no key has any more (pruned versions), dropped when saved.
    complete: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprints")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// What this build derives from fixed keys, and its version: a record made by another build
/// (which may derive other bytes from the same inputs) is not trusted.
fn derivations() -> Digest {
    static DIGEST: OnceLock<Digest> = OnceLock::new();
    *DIGEST.get_or_init(|| {
        use crate::public_formats as pf;
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(env!("CARGO_PKG_VERSION").as_bytes());
        for der in canary_keys() {
            let jwk = pf::jwk(&der).expect("a canary key has a JWK");
            context.update(&pf::jwk_file_of(&jwk));
            context.update(&pf::jwks(&[&jwk, &jwk]));
            let line = pf::openssh(&der, "keyprov:canary:v0001").expect("an OpenSSH form");
            context.update(line.as_bytes());
        }
        context.finish().as_ref()[..16]
            .try_into()
            .expect("16 bytes")
    })
}

/// Fixed public keys of each kind keyprov derives formats from (RSA, P-256, Ed25519), as DER
/// SubjectPublicKeyInfo (their points need not be on the curve: only the encoding is used).
fn canary_keys() -> [Vec<u8>; 3] {
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let len = value.len();
        let mut out = vec![tag];
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(value);
        out
    }
    let spki = |algorithm: &[u8], key: &[u8]| {
        let bits = [&[0u8][..], key].concat();
        tlv(0x30, &[tlv(0x30, algorithm), tlv(0x03, &bits)].concat())
    };
    // OIDs: rsaEncryption (and NULL), id-ecPublicKey with prime256v1, id-Ed25519.
    let rsa_oid = [
        &tlv(
            0x06,
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        )[..],
        &[0x05, 0x00],
    ]
    .concat();
    let ec_oid = [
        tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
        tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
    ]
    .concat();
    let ed_oid = tlv(0x06, &[0x2b, 0x65, 0x70]);
    let modulus: Vec<u8> = [0x00, 0xc3].into_iter().chain(0..=253u8).collect();
    let rsa_key = tlv(
        0x30,
        &[tlv(0x02, &modulus), tlv(0x02, &[0x01, 0x00, 0x01])].concat(),
    );
    let point: Vec<u8> = [0x04].into_iter().chain(1..=64u8).collect();
    let ed: Vec<u8> = (100..132u8).collect();
    [
        spki(&rsa_oid, &rsa_key),
        spki(&ec_oid, &point),
        spki(&ed_oid, &ed),
    ]
}

/// Parses a record: `None` when it is not one this build made.
fn parse(bytes: &[u8]) -> Result<Option<Vec<(u64, Digest)>>, String> {
    let Some(body) = bytes.strip_prefix(MAGIC) else {
        return Err("not a fingerprint record".into());
    };
    if body.len() < 16 || (body.len() - 16) % ENTRY != 0 {
        return Err(format!("{} bytes, not a whole record", bytes.len()));
    }
    let (made_by, entries) = body.split_at(16);
    if made_by != derivations() {
        return Ok(None);
    }
    let entries: Vec<(u64, Digest)> = entries
        .chunks_exact(ENTRY)
        .map(|entry| {
            let (id, digest) = entry.split_at(8);
            (
                u64::from_le_bytes(id.try_into().expect("8 bytes")),
                digest.try_into().expect("16 bytes"),
            )
        })
        .collect();
    if entries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
        return Err("its entries are not in order".into());
    }
    Ok(Some(entries))
}

impl Fingerprints {
    /// The fingerprints kept under `state_dir` (nothing is read yet).
    pub fn new(state_dir: &Path) -> Self {
        Fingerprints {
            state_dir: state_dir.to_path_buf(),
            recorded: OnceLock::new(),
            changes: Mutex::default(),
            vouched: Mutex::default(),
            complete: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(crate::ledger::LEDGER_DIR).join(FILE)
    }

    fn recorded(&self) -> &[(u64, Digest)] {
        self.recorded.get_or_init(|| match self.load() {
            Ok(Some(entries)) => entries,
            Ok(None) => Vec::new(),
            Err(err) => {
                tracing::warn!(path = %self.path().display(),
                    "ignoring an unreadable record of derived files (they are read again): {err}");
                Vec::new()
            }
        })
    }

    fn load(&self) -> Result<Option<Vec<(u64, Digest)>>, String> {
        let Some(root) = DirHandle::open_root(&self.state_dir, false).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let Some(dir) = root
            .open_dir(crate::ledger::LEDGER_DIR)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        if dir.stat(FILE).is_none() {
            return Ok(None);
        }
        let bytes = dir
            .read_file_at_most(FILE, MAX_BYTES)
            .map_err(|e| e.to_string())?;
        parse(&bytes)
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Digest>>> {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `stamp` is the one recorded for its files.
    pub fn vouches(&self, stamp: &Stamp) -> bool {
        let recorded = match self.changes().get(&stamp.id) {
            Some(made) => *made,
            None => {
                let recorded = self.recorded();
                recorded
                    .binary_search_by_key(&stamp.id, |(id, _)| *id)
                    .ok()
                    .map(|at| recorded[at].1)
            }
        };
        let vouched = recorded == Some(stamp.digest);
        if vouched {
            self.vouched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(stamp.id);
        }
        vouched
    }

    /// Says that this pass looked up or made the stamp of every derived file any key has (a
    /// pass over every key, none held): the stamps it did not touch are dropped when saved, so
    /// the record does not keep those of pruned versions for ever.
    pub fn looked_at_everything(&self) {
        self.complete
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records `stamp`, made of files just read (stats taken before the reads) and found to
    /// hold what its inputs make; a stamp that is not clean only forgets what its files had.
    pub fn record(&self, stamp: &Stamp) {
        self.changes()
            .insert(stamp.id, stamp.clean.then_some(stamp.digest));
    }

    /// Forgets what was recorded for the files of `kind` at `path` (they were read and are
    /// not what they should be, or cannot be stamped).
    pub fn forget(&self, kind: &str, path: &Path) {
        self.changes().insert(Stamper::new(kind, path).id, None);
    }

    /// Writes the record when a stamp changed (a failure is logged: it only costs reads).
    pub fn save(&self) {
        let changes = std::mem::take(&mut *self.changes());
        let vouched = std::mem::take(
            &mut *self
                .vouched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let complete = self.complete.load(std::sync::atomic::Ordering::Relaxed);
        if changes.is_empty() && (!complete || vouched.len() == self.recorded().len()) {
            return;
        }
        let recorded = self.recorded();
        let mut merged: Vec<(u64, Digest)> = Vec::with_capacity(recorded.len() + changes.len());
        let mut changed = false;
        for &(id, digest) in recorded {
            match changes.get(&id) {
                // Not touched by a pass that looked at everything: no key has these files.
                None if complete && !vouched.contains(&id) => changed = true,
                None => merged.push((id, digest)),
                Some(made) => {
                    changed |= *made != Some(digest);
                    merged.extend(made.map(|made| (id, made)));
                }
            }
        }
        for (&id, made) in &changes {
            if let Some(made) = made
                && recorded.binary_search_by_key(&id, |(id, _)| *id).is_err()
            {
                merged.push((id, *made));
                changed = true;
            }
        }
        if !changed {
            return;
        }
        merged.sort_unstable_by_key(|(id, _)| *id);
        let mut bytes = Vec::with_capacity(HEADER + merged.len() * ENTRY);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&derivations());
        for (id, digest) in &merged {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(digest);
        }
        if let Err(err) = self.write(&bytes) {
            tracing::warn!(path = %self.path().display(),
                "cannot record derived files (they are read again next time): {err}");
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        let fail = |e: crate::store::StoreError| e.to_string();
        let root = DirHandle::open_root(&self.state_dir, true)
            .map_err(fail)?
            .ok_or("stateDir is missing")?;
        root.create_dir(crate::ledger::LEDGER_DIR, 0o700, (None, None))
            .map_err(fail)?;
        let dir = root
            .open_dir(crate::ledger::LEDGER_DIR)
            .map_err(fail)?
            .ok_or("the ledger directory vanished")?;
        dir.replace_file(FILE, bytes, 0o600, (None, None))
            .map_err(fail)?;
        dir.sync().map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &Path) -> FileStat {
        nix::sys::stat::lstat(path).unwrap()
    }

    fn stamp(path: &Path, input: &[u8], stat: &FileStat) -> Stamp {
        let mut stamper = Stamper::new("version", path);
        stamper.input(input).file(Some(stat));
        stamper.finish().unwrap()
    }

    #[test]
    fn a_recorded_stamp_is_vouched_for_until_a_file_or_an_input_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("public.jwk");
        std::fs::write(&file, "{}").unwrap();
        let fingerprints = Fingerprints::new(tmp.path());
        // Just written: racily clean, not recorded.
        fingerprints.record(&stamp(&file, b"in", &stat(&file)));
        assert!(!fingerprints.vouches(&stamp(&file, b"in", &stat(&file))));
        // Made old (ctime cannot be set: the stat's times are shifted back, as if the file
        // were checked later).
        let mut old = stat(&file);
        old.st_ctime -= 10;
        old.st_mtime -= 10;
        fingerprints.record(&stamp(&file, b"in", &old));
        assert!(fingerprints.vouches(&stamp(&file, b"in", &old)));
        assert!(!fingerprints.vouches(&stamp(&file, b"other", &old)));
        assert!(!fingerprints.vouches(&stamp(&tmp.path().join("x"), b"in", &old)));
        let mut changed = old;
        changed.st_ctime_nsec = (changed.st_ctime_nsec + 1) % 1_000_000_000;
        assert!(!fingerprints.vouches(&stamp(&file, b"in", &changed)));
        fingerprints.save();
        let again = Fingerprints::new(tmp.path());
        assert!(again.vouches(&stamp(&file, b"in", &old)));
        // A file from the future (a clock set back) is not recorded.
        let mut future = old;
        future.st_mtime += 3600;
        again.record(&stamp(&file, b"in", &future));
        assert!(!again.vouches(&stamp(&file, b"in", &future)));
        assert!(!again.vouches(&stamp(&file, b"in", &old)));
    }

    #[test]
    fn a_symlink_or_a_missing_file_is_never_stamped() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("elsewhere", &link).unwrap();
        let mut stamper = Stamper::new("jwks", tmp.path());
        stamper.file(Some(&stat(&link)));
        assert!(stamper.finish().is_none());
        let mut stamper = Stamper::new("jwks", tmp.path());
        stamper.file(None);
        assert!(stamper.finish().is_none());
        let mut stamper = Stamper::new("jwks", tmp.path());
        stamper.file_or_none(None);
        assert!(stamper.finish().is_some());
    }

    #[test]
    fn a_damaged_or_foreign_record_is_dropped_and_an_unchanged_one_not_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let mut old = stat(&file);
        old.st_ctime -= 10;
        old.st_mtime -= 10;
        let fingerprints = Fingerprints::new(tmp.path());
        fingerprints.record(&stamp(&file, b"", &old));
        fingerprints.save();
        let path = fingerprints.path();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), HEADER + ENTRY);
        // The same stamp again: nothing written.
        let again = Fingerprints::new(tmp.path());
        assert!(again.vouches(&stamp(&file, b"", &old)));
        again.record(&stamp(&file, b"", &old));
        std::fs::remove_file(&path).unwrap();
        again.save();
        assert!(!path.exists());
        for damaged in [
            written[..written.len() - 1].to_vec(),
            [b"kpfp\x00\x00\x00\x02", &written[8..]].concat(),
            [&written[..8], &[0u8; 16], &written[24..]].concat(),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let read = Fingerprints::new(tmp.path());
            assert!(!read.vouches(&stamp(&file, b"", &old)));
        }
    }

    #[test]
    fn only_a_regular_file_on_a_filesystem_that_faults_again_settles() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("link")).unwrap();
        let dir = DirHandle::open_root(tmp.path(), false).unwrap().unwrap();
        let here = nix::sys::statfs::statfs(tmp.path())
            .unwrap()
            .filesystem_type();
        assert_eq!(settle(&dir, "f"), SETTLING.contains(&here));
        assert!(!settle(&dir, "link"));
        assert!(!settle(&dir, "missing"));
        // tmpfs: a page mapped writable stays so, a stat never shows a write through it.
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            std::fs::write(shm.path().join("f"), "x").unwrap();
            let dir = DirHandle::open_root(shm.path(), false).unwrap().unwrap();
            assert!(!settle(&dir, "f"));
        }
    }

    #[test]
    fn a_pass_that_looked_at_everything_drops_the_stamps_it_did_not_touch() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for file in [&a, &b] {
            std::fs::write(file, "x").unwrap();
        }
        let old = |path: &Path| {
            let mut stat = stat(path);
            stat.st_ctime -= 10;
            stat.st_mtime -= 10;
            stat
        };
        let first = Fingerprints::new(tmp.path());
        first.record(&stamp(&a, b"", &old(&a)));
        first.record(&stamp(&b, b"", &old(&b)));
        first.save();
        // A partial pass (a due wake) that only met `a` keeps `b`'s stamp.
        let partial = Fingerprints::new(tmp.path());
        assert!(partial.vouches(&stamp(&a, b"", &old(&a))));
        partial.save();
        let after = Fingerprints::new(tmp.path());
        assert!(after.vouches(&stamp(&b, b"", &old(&b))));
        // A pass over every key that only met `a`: `b` belongs to no key any more.
        let full = Fingerprints::new(tmp.path());
        assert!(full.vouches(&stamp(&a, b"", &old(&a))));
        full.looked_at_everything();
        full.save();
        let after = Fingerprints::new(tmp.path());
        assert!(after.vouches(&stamp(&a, b"", &old(&a))));
        assert!(!after.vouches(&stamp(&b, b"", &old(&b))));
        assert_eq!(std::fs::read(after.path()).unwrap().len(), HEADER + ENTRY);
        // Nothing to drop and nothing changed: the record is not written again.
        let again = Fingerprints::new(tmp.path());
        assert!(again.vouches(&stamp(&a, b"", &old(&a))));
        again.looked_at_everything();
        std::fs::remove_file(again.path()).unwrap();
        again.save();
        assert!(!again.path().exists());
    }

    #[test]
    fn the_canary_keys_have_every_form() {
        for der in canary_keys() {
            crate::public_formats::jwk(&der).unwrap();
            crate::public_formats::openssh(&der, "c").unwrap();
        }
        assert_eq!(derivations(), derivations());
    }
}
