//! The parse cache: the documents of a manifest file that the bounded scan read cheaply and
//! that had no problem at all (see `fast.rs`), kept under `<stateDir>/ledger/manifest-cache/`
//! by the SHA-256 of the file's text (with keyprov's version, revision and this format), so an
//! unchanged file is not scanned again. Only the YAML reading is skipped: the shape check,
//! deserialization, validation and the checks across files run on every load, and the text
//! stays at hand for the positions of any later diagnostic. A file whose cached documents give
//! any diagnostic is read again in full, as if there were no cache.
//!
//! An entry is `<checksum>\n<JSON of the documents>`, the checksum being the SHA-256 of the
//! entry's name and its JSON: an entry torn by a crash, damaged, copied under another name or
//! larger than [`MAX_ENTRY_BYTES`] is a miss. Entries are written (0600, under a temporary
//! name then renamed, not flushed: a lost or torn entry is only a miss) only by a reconcile
//! pass, which holds the stateDir lock, and only for files it missed; after writing, the pass
//! removes the entries of files no longer read. `validate`, `plan` and a `rotate`'s first
//! reading only read the cache, `validate` without a configuration does not use it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde_yaml::Value;

use crate::ledger::LEDGER_DIR;
use crate::store::dir::DirHandle;

/// The directory of the entries, below `<stateDir>/ledger/`.
pub const CACHE_DIR: &str = "manifest-cache";

/// Bumped whenever what an entry holds, or what the scan reads from a text, changes meaning.
const FORMAT: &str = "keyprov-manifest-cache/1";

/// Largest entry read or written (a manifest file is at most 4 MiB; its documents as JSON
/// take at most about twice its text).
pub const MAX_ENTRY_BYTES: u64 = 4 * super::MAX_FILE_BYTES;

/// How a load uses the parse cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not at all (no stateDir known, tests, fuzzing).
    Off,
    /// Entries are read, never written (`validate`, `plan`, anything outside the lock).
    Read,
    /// Entries are read, and written for files missed (a reconcile pass, holding the lock).
    Write,
}

/// The parse cache of one load.
pub(super) struct Cache {
    mode: CacheUse,
    state_dir: PathBuf,
    reader: OnceLock<Option<DirHandle>>,
    /// Entries to write: (name, bytes).
    pending: Mutex<Vec<(String, Vec<u8>)>>,
    /// The entry names of every file of this load (kept by a prune).
    live: Mutex<Vec<String>>,
}

impl Cache {
    /// The cache under `state_dir`, used as `mode` says.
    pub(super) fn new(state_dir: &Path, mode: CacheUse) -> Self {
        Cache {
            mode,
            state_dir: state_dir.to_path_buf(),
            reader: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            live: Mutex::new(Vec::new()),
        }
    }

    /// The entry name of a file holding `text`; `None` when the cache is off.
    pub(super) fn key(&self, text: &str) -> Option<String> {
        if self.mode == CacheUse::Off {
            return None;
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [FORMAT, env!("CARGO_PKG_VERSION"), env!("KEYPROV_REVISION")] {
            context.update(part.as_bytes());
            context.update(b"\0");
        }
        context.update(text.as_bytes());
        let key = hex::encode(context.finish().as_ref());
        self.live.lock().expect("not poisoned").push(key.clone());
        Some(key)
    }

    /// The documents cached under `key`; `None` for a miss (no entry, or one that cannot be
    /// read or fails its checksum).
    pub(super) fn get(&self, key: &str) -> Option<Vec<Value>> {
        let dir = self
            .reader
            .get_or_init(|| self.open(false).ok().flatten())
            .as_ref()?;
        let bytes = dir.read_file_at_most(key, MAX_ENTRY_BYTES).ok()?;
        let found = decode(key, &bytes);
        if found.is_none() {
            tracing::debug!(entry = %dir.child_path(key).display(), "ignoring a damaged manifest cache entry");
        }
        found
    }

    /// The entry to write for `documents` under `key`: `None` unless this load writes (or
    /// when they cannot be cached).
    pub(super) fn entry(&self, key: &str, documents: &[Value]) -> Option<Vec<u8>> {
        (self.mode == CacheUse::Write)
            .then(|| encode(key, documents))
            .flatten()
    }

    /// Keeps `entry` (from [`Cache::entry`]) to be written under `key` by [`Cache::finish`].
    pub(super) fn put(&self, key: &str, entry: Vec<u8>) {
        if self.mode == CacheUse::Write {
            let mut pending = self.pending.lock().expect("not poisoned");
            pending.push((key.to_string(), entry));
        }
    }

    /// After the load: when it found no problem at all (a load with any problem changes
    /// nothing under the stateDir), writes the entries kept, then removes every entry (and
    /// temporary file a killed writer left) that is not one of this load's files. Failures
    /// only cost a later miss (logged at debug level).
    pub(super) fn finish(self, valid: bool) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        if !valid || pending.is_empty() {
            return;
        }
        let dir = match self.open(true) {
            Ok(Some(dir)) => dir,
            Ok(None) => return,
            Err(err) => {
                tracing::debug!("manifest cache not written: {err}");
                return;
            }
        };
        for (key, entry) in &pending {
            let tmp = format!(".tmp-{key}-{}", std::process::id());
            let written = dir
                .remove_file(&tmp)
                .and_then(|()| dir.create_file(&tmp, entry, 0o600, (None, None)))
                .and_then(|_| dir.rename(&tmp, key));
            if let Err(err) = written {
                let _ = dir.remove_file(&tmp);
                tracing::debug!("manifest cache entry not written: {err}");
            }
        }
        let live: HashSet<String> = self
            .live
            .into_inner()
            .expect("not poisoned")
            .into_iter()
            .collect();
        let Ok(names) = dir.names() else { return };
        for name in names {
            let Some(name) = name.to_str() else { continue };
            let ours = is_key(name)
                || name.strip_prefix(".tmp-").is_some_and(|rest| {
                    rest.split_once('-').is_some_and(|(key, pid)| {
                        is_key(key) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
                    })
                });
            if ours && !live.contains(name) {
                let _ = dir.remove_file(name);
            }
        }
    }

    /// `<stateDir>/ledger/manifest-cache`, created when `create`.
    fn open(&self, create: bool) -> Result<Option<DirHandle>, crate::store::StoreError> {
        let Some(root) = DirHandle::open_root(&self.state_dir, false)? else {
            return Ok(None);
        };
        if create {
            root.create_dir(LEDGER_DIR, 0o700, (None, None))?;
        }
        let Some(ledger) = root.open_dir(LEDGER_DIR)? else {
            return Ok(None);
        };
        if create {
            ledger.create_dir(CACHE_DIR, 0o700, (None, None))?;
        }
        ledger.open_dir(CACHE_DIR)
    }
}

/// Whether `name` is an entry name (64 lowercase hex digits): only those are ever removed.
fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn checksum(key: &str, json: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(key.as_bytes());
    context.update(b"\n");
    context.update(json);
    hex::encode(context.finish().as_ref())
}

/// The entry for `documents` under `key`; `None` when they cannot be written as JSON or the
/// entry would be too large.
fn encode(key: &str, documents: &[Value]) -> Option<Vec<u8>> {
    let json = serde_json::to_vec(documents).ok()?;
    let mut bytes = checksum(key, &json).into_bytes();
    bytes.push(b'\n');
    bytes.extend_from_slice(&json);
    (bytes.len() as u64 <= MAX_ENTRY_BYTES).then_some(bytes)
}

/// The documents of the entry `bytes` found under `key`, when its checksum holds and it holds
/// what the scan builds: at least one document, each a mapping.
fn decode(key: &str, bytes: &[u8]) -> Option<Vec<Value>> {
    let (sum, json) = bytes.split_at_checked(64)?;
    let json = json.strip_prefix(b"\n")?;
    if sum != checksum(key, json).as_bytes() {
        return None;
    }
    let documents: Vec<Value> = serde_json::from_slice(json).ok()?;
    (!documents.is_empty() && documents.iter().all(Value::is_mapping)).then_some(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documents(text: &str) -> Vec<Value> {
        super::super::scan::scan_values(text, 10)
            .unwrap()
            .1
            .unwrap()
    }

    #[test]
    fn an_entry_gives_back_the_documents_the_scan_built() {
        let text = "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: a-b\n  \
                    labels: {team: x}\nspec:\n  rotation: {every: 90d, keep: 1}\n  \
                    outputs:\n    - file: {format: pem, mode: \"0640\"}\n  nums: [1, 2, 30]\n  \
                    flag: true\n---\ne: f\n";
        let built = documents(text);
        let key = "0".repeat(64);
        let entry = encode(&key, &built).unwrap();
        assert_eq!(decode(&key, &entry), Some(built));
    }

    #[test]
    fn a_damaged_or_moved_entry_is_a_miss() {
        let built = documents("a: b\nc: [1, 2]\n");
        let key = "0".repeat(64);
        let entry = encode(&key, &built).unwrap();
        assert!(decode(&"1".repeat(64), &entry).is_none(), "another name");
        for at in [0, 10, 65, entry.len() - 3] {
            let mut damaged = entry.clone();
            damaged[at] ^= 1;
            assert!(decode(&key, &damaged).is_none(), "byte {at}");
        }
        assert!(decode(&key, &entry[..entry.len() - 1]).is_none(), "torn");
        assert!(decode(&key, b"").is_none());
        let not_a_mapping = encode(&key, &[Value::String("x".into())]).unwrap();
        assert!(decode(&key, &not_a_mapping).is_none());
        assert!(decode(&key, &encode(&key, &[]).unwrap()).is_none());
    }

    #[test]
    fn only_a_writing_cache_writes_and_a_write_prunes_what_was_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let built = documents("a: b\n");
        let reader = Cache::new(tmp.path(), CacheUse::Read);
        let key = reader.key("a: b\n").unwrap();
        assert!(reader.entry(&key, &built).is_none());
        reader.put(&key, encode(&key, &built).unwrap());
        reader.finish(true);
        assert!(!tmp.path().join(LEDGER_DIR).exists());
        assert!(
            Cache::new(tmp.path(), CacheUse::Off)
                .key("a: b\n")
                .is_none()
        );

        let writer = Cache::new(tmp.path(), CacheUse::Write);
        let key = writer.key("a: b\n").unwrap();
        assert_eq!(writer.get(&key), None);
        writer.put(&key, writer.entry(&key, &built).unwrap());
        writer.finish(false);
        assert!(
            !tmp.path().join(LEDGER_DIR).exists(),
            "a load with problems writes nothing"
        );
        let writer = Cache::new(tmp.path(), CacheUse::Write);
        let key = writer.key("a: b\n").unwrap();
        writer.put(&key, writer.entry(&key, &built).unwrap());
        writer.finish(true);
        let dir = tmp.path().join(LEDGER_DIR).join(CACHE_DIR);
        let stale = format!(".tmp-{}-123", "f".repeat(64));
        for name in [&"e".repeat(64), &stale, "other"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let reader = Cache::new(tmp.path(), CacheUse::Read);
        assert_eq!(reader.get(&reader.key("a: b\n").unwrap()), Some(built));

        // A load of another text writes its entry and removes the stale ones, not "other".
        let writer = Cache::new(tmp.path(), CacheUse::Write);
        let other = writer.key("c: d\n").unwrap();
        writer.put(&other, writer.entry(&other, &documents("c: d\n")).unwrap());
        writer.finish(true);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [other, "other".to_string()]);
    }

    /// Loads of the same manifests through the cache and without it.
    struct Fixture {
        _tmp: tempfile::TempDir,
        state: PathBuf,
        manifests: PathBuf,
        root: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let (state, manifests) = (tmp.path().join("state"), tmp.path().join("m"));
            std::fs::create_dir_all(&state).unwrap();
            std::fs::create_dir_all(&manifests).unwrap();
            let root = tmp.path().join("out");
            Fixture {
                _tmp: tmp,
                state,
                manifests,
                root,
            }
        }

        fn write(&self, file: &str, names: &[&str], dir: Option<&str>) {
            let dir = dir.map(|d| format!("dir: \"{d}\", ")).unwrap_or_default();
            let text: Vec<String> = names
                .iter()
                .map(|name| {
                    format!(
                        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: {name}\n\
                         spec:\n  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/k\n  \
                         outputs:\n    - file: {{{dir}format: pem}}\n"
                    )
                })
                .collect();
            std::fs::write(self.manifests.join(file), text.join("---\n")).unwrap();
        }

        fn load(&self, mode: CacheUse, with_root: bool) -> super::super::Loaded {
            let roots = if with_root {
                vec![self.root.clone()]
            } else {
                Vec::new()
            };
            let ctx = super::super::Context {
                state_dir: &self.state,
                output_roots: &roots,
                hooks_allowed: &[],
                check_hooks_allowed: true,
            };
            super::super::load_with(std::slice::from_ref(&self.manifests), &ctx, mode)
        }

        fn entries(&self) -> Vec<String> {
            let dir = self.state.join(LEDGER_DIR).join(CACHE_DIR);
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    fn same(a: &super::super::Loaded, b: &super::super::Loaded) {
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.diagnostics, b.diagnostics);
        assert_eq!(a.frozen, b.frozen);
        assert_eq!(a.invalid_at, b.invalid_at);
        assert_eq!(a.file_validity, b.file_validity);
    }

    #[test]
    fn a_hit_gives_the_keys_and_diagnostics_of_a_miss() {
        let f = Fixture::new();
        let out = format!("{}/k", f.root.display());
        f.write("a.yaml", &["a", "b"], None);
        // Valid only with the output root.
        f.write("b.yaml", &["c"], Some(&out));
        f.write("c.yaml", &["d"], None);
        let plain = f.load(CacheUse::Off, true);
        assert!(plain.is_valid(), "{:?}", plain.diagnostics);
        assert!(f.entries().is_empty());
        same(&plain, &f.load(CacheUse::Write, true));
        assert_eq!(f.entries().len(), 3);
        same(&plain, &f.load(CacheUse::Read, true));
        // Problems beside cached files: a syntax error, and a name clashing with a cached
        // file's (reported with its line there: the positions come from the text).
        std::fs::write(f.manifests.join("d.yaml"), "kind: [\n").unwrap();
        f.write("e.yaml", &["e", "a"], None);
        let plain = f.load(CacheUse::Off, true);
        assert_eq!(plain.diagnostics.len(), 2, "{:?}", plain.diagnostics);
        assert!(plain.diagnostics[1].message.contains("a.yaml:4:3"));
        same(&plain, &f.load(CacheUse::Read, true));
        same(&plain, &f.load(CacheUse::Write, true));
        assert_eq!(f.entries().len(), 3, "a load with problems writes nothing");
        // Validation still runs on a hit: without the output root b.yaml is invalid.
        let plain = f.load(CacheUse::Off, false);
        assert_eq!(plain.diagnostics.len(), 3, "{:?}", plain.diagnostics);
        same(&plain, &f.load(CacheUse::Read, false));
    }

    #[test]
    fn an_edited_file_misses_and_its_old_entry_goes() {
        let f = Fixture::new();
        f.write("a.yaml", &["a"], None);
        f.load(CacheUse::Write, false);
        let before = f.entries();
        assert_eq!(before.len(), 1);
        f.write("a.yaml", &["b"], None);
        let read = f.load(CacheUse::Read, false);
        assert_eq!(read.keys[0].name, "b");
        assert_eq!(f.entries(), before, "reading writes nothing");
        let written = f.load(CacheUse::Write, false);
        assert_eq!(written.keys[0].name, "b");
        let after = f.entries();
        assert_eq!(after.len(), 1);
        assert_ne!(after, before);
        // Nothing missed, nothing written: the entry stays as it is.
        let modified = |name: &str| {
            std::fs::metadata(f.state.join(LEDGER_DIR).join(CACHE_DIR).join(name))
                .unwrap()
                .modified()
                .unwrap()
        };
        let at = modified(&after[0]);
        f.load(CacheUse::Write, false);
        assert_eq!(f.entries(), after);
        assert_eq!(modified(&after[0]), at);
    }

    #[test]
    fn a_damaged_entry_is_ignored_and_replaced() {
        let f = Fixture::new();
        f.write("a.yaml", &["a", "b"], None);
        let plain = f.load(CacheUse::Off, false);
        f.load(CacheUse::Write, false);
        let entry = f
            .state
            .join(LEDGER_DIR)
            .join(CACHE_DIR)
            .join(&f.entries()[0]);
        let good = std::fs::read(&entry).unwrap();
        // Another valid-looking document list under a wrong checksum, a torn entry, garbage.
        let text = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"b\"", "\"x\"");
        for damaged in [
            text.into_bytes(),
            good[..good.len() / 2].to_vec(),
            vec![0xff; 10],
        ] {
            std::fs::write(&entry, &damaged).unwrap();
            same(&plain, &f.load(CacheUse::Read, false));
            same(&plain, &f.load(CacheUse::Write, false));
            assert_eq!(
                std::fs::read(&entry).unwrap(),
                good,
                "written again on the miss"
            );
        }
    }
}
