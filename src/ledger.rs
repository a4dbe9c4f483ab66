//! Small durable records keyprov keeps between reconciles in `<stateDir>/ledger/` (when an
//! orphan was first seen, since when a version's times were distrusted): one JSON file each,
//! replaced atomically and flushed, read with a size bound. A record that cannot be read is
//! reported and treated as empty, which only ever delays a prune or restarts a clock anchor.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::dir::DirHandle;

/// The directory under stateDir that holds the records (neither a key's output directory nor
/// a JWK Set aggregate may be there).
pub use crate::state_layout::LEDGER_DIR;

/// Records larger than this are refused when read (per-key records grow with the keys).
const MAX_BYTES: u64 = crate::store::dir::MAX_GROWING_BYTES;

/// One record file, `<stateDir>/ledger/<name>.json`.
#[derive(Debug, Clone)]
pub struct Ledger {
    state_dir: PathBuf,
    file: String,
}

impl Ledger {
    /// The record `name` of the installation whose stateDir is `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Ledger {
            state_dir: state_dir.to_path_buf(),
            file: format!("{name}.json"),
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(LEDGER_DIR).join(&self.file)
    }

    /// The record, or its default when there is none or it cannot be read (logged).
    pub fn load<T: DeserializeOwned + Default>(&self) -> T {
        match self.try_load() {
            Ok(record) => record,
            Err(err) => {
                tracing::error!(path = %self.path().display(), "ignoring an unreadable record: {err}");
                T::default()
            }
        }
    }

    fn try_load<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        let Some(root) = DirHandle::open_root(&self.state_dir, false).map_err(|e| e.to_string())?
        else {
            return Ok(T::default());
        };
        let Some(dir) = root.open_dir(LEDGER_DIR).map_err(|e| e.to_string())? else {
            return Ok(T::default());
        };
        if dir.stat(&self.file).is_none() {
            return Ok(T::default());
        }
        let bytes = dir
            .read_file_at_most(&self.file, MAX_BYTES)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// Replaces the record with `record` (0600), durably: written under a temporary name,
    /// flushed, renamed into place, the directory flushed.
    pub fn save<T: Serialize>(&self, record: &T) -> Result<(), String> {
        let context = |e: String| format!("cannot write {}: {e}", self.path().display());
        let root = DirHandle::open_root(&self.state_dir, true)
            .map_err(|e| context(e.to_string()))?
            .ok_or_else(|| context("stateDir is missing".into()))?;
        root.create_dir(LEDGER_DIR, 0o700, (None, None))
            .map_err(|e| context(e.to_string()))?;
        let dir = root
            .open_dir(LEDGER_DIR)
            .map_err(|e| context(e.to_string()))?
            .ok_or_else(|| context("the ledger directory vanished".into()))?;
        // Compact: records of many keys are read by every reconcile.
        let bytes = serde_json::to_vec(record).map_err(|e| context(e.to_string()))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(context(format!(
                "{} bytes, more than a record may hold ({MAX_BYTES})",
                bytes.len()
            )));
        }
        // A run killed while writing leaves its temporary file (`.tmp-<file>-<pid>`, see
        // `DirHandle::replace_file`); writers of a stateDir hold its lock, so any there is
        // stale.
        let prefix = format!(".tmp-{}-", self.file);
        for leftover in dir.names().map_err(|e| context(e.to_string()))? {
            let leftover = leftover.to_string_lossy();
            if leftover
                .strip_prefix(&prefix)
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            {
                dir.remove_file(&*leftover)
                    .map_err(|e| context(e.to_string()))?;
            }
        }
        dir.replace_file(&self.file, &bytes, 0o600, (None, None))
            .map_err(|e| context(e.to_string()))?;
        dir.sync().map_err(|e| context(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_save_removes_the_temporary_file_a_killed_writer_left() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(tmp.path(), "test");
        ledger.save(&BTreeMap::from([("a", 1)])).unwrap();
        let dir = tmp.path().join(LEDGER_DIR);
        for name in [
            ".tmp-test.json-123",
            ".tmp-test.json-x",
            ".tmp-other.json-123",
        ] {
            std::fs::write(dir.join(name), "{").unwrap();
        }
        ledger.save(&BTreeMap::from([("a", 2)])).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".tmp-other.json-123", ".tmp-test.json-x", "test.json"]
        );
    }

    #[test]
    fn a_record_of_many_keys_is_read_back_whole() {
        // Larger than a stored file's read bound: read as empty, it was rewritten whole by
        // every reconcile (a no-op of 10,000 keys wrote and flushed 1 MB).
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(tmp.path(), "test");
        let record: BTreeMap<String, String> = (0..30_000)
            .map(|i| (format!("key-{i:06}"), format!("sha256:{i:032x}")))
            .collect();
        ledger.save(&record).unwrap();
        let size = std::fs::metadata(ledger.path()).unwrap().len();
        assert!(size > crate::store::dir::MAX_READ_BYTES, "{size}");
        assert_eq!(ledger.load::<BTreeMap<String, String>>(), record);
    }

    #[test]
    fn a_record_round_trips_and_a_damaged_one_reads_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(tmp.path(), "test");
        let empty: BTreeMap<String, u32> = ledger.load();
        assert!(empty.is_empty());
        let record = BTreeMap::from([("a".to_string(), 1u32)]);
        ledger.save(&record).unwrap();
        assert_eq!(ledger.load::<BTreeMap<String, u32>>(), record);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ledger.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(ledger.path(), b"{not json").unwrap();
        assert!(ledger.load::<BTreeMap<String, u32>>().is_empty());
    }
}
