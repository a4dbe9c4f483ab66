//! Leftover new key directories (`.tmp-new-<pid>-<name>`, see [`super::commit`]) of runs that
//! were interrupted, found by listing each parent directory once per reconcile pass.
//!
//! Looking for them with a listing per key created made creating N keys in one directory cost
//! N listings of up to N entries: quadratic (30,000 keys took 7.5× the time of 10,000). Writers
//! of a state directory are serialised by its lock, so no other process adds leftovers while
//! a pass runs; this process's own are removed by name before each creation.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use super::*;

/// Prefix of a key directory under construction: `.tmp-new-<pid>-<name>`.
pub(super) const NEW_DIR_PREFIX: &str = ".tmp-new-";

/// The leftovers of each parent directory listed so far, by the key directory name they were
/// meant to become. One per pass (the writer of a [`super::FileStore`] holds it).
#[derive(Debug, Default)]
pub struct Leftovers {
    by_parent: HashMap<PathBuf, HashMap<OsString, Vec<OsString>>>,
}

impl Leftovers {
    /// Removes the leftovers meant to become `name` in `parent`, listing `parent` the first
    /// time it is asked about.
    pub(super) fn collect(&mut self, parent: &DirHandle, name: &OsStr) -> Result<(), StoreError> {
        let listed = match self.by_parent.entry(parent.path().to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(index(parent.names()?))
            }
        };
        for leftover in listed.remove(name).unwrap_or_default() {
            parent.remove_tree(&leftover)?;
        }
        Ok(())
    }
}

/// The leftovers among `names`, by the name they were meant to become.
fn index(names: Vec<OsString>) -> HashMap<OsString, Vec<OsString>> {
    let mut found: HashMap<OsString, Vec<OsString>> = HashMap::new();
    for entry in names {
        if let Some(name) = meant_for(&entry.to_string_lossy()) {
            found.entry(OsString::from(name)).or_default().push(entry);
        }
    }
    found
}

/// The key directory name a leftover `.tmp-new-<pid>-<name>` was meant to become.
fn meant_for(entry: &str) -> Option<&str> {
    let (pid, name) = entry.strip_prefix(NEW_DIR_PREFIX)?.split_once('-')?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_matched_to_the_name_they_were_meant_for() {
        assert_eq!(meant_for(".tmp-new-123-key-a"), Some("key-a"));
        assert_eq!(meant_for(".tmp-new-9-12-x"), Some("12-x"));
        assert_eq!(meant_for(".tmp-new--key"), None);
        assert_eq!(meant_for(".tmp-new-12a-key"), None);
        assert_eq!(meant_for(".tmp-new-12-"), None);
        assert_eq!(meant_for("key-a"), None);
    }

    #[test]
    fn each_parent_is_listed_once_and_only_the_asked_name_is_removed() {
        let root = tempfile::tempdir().unwrap();
        for entry in [".tmp-new-1-a", ".tmp-new-2-a", ".tmp-new-3-b", "c"] {
            std::fs::create_dir(root.path().join(entry)).unwrap();
        }
        std::fs::write(root.path().join(".tmp-new-1-a/f"), "x").unwrap();
        let parent = DirHandle::open_root(root.path(), false).unwrap().unwrap();
        let mut leftovers = Leftovers::default();
        leftovers.collect(&parent, OsStr::new("a")).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tmp-new-3-b", "c"]);
        // Listed once: an entry appearing later is not seen in this pass.
        std::fs::create_dir(root.path().join(".tmp-new-4-c")).unwrap();
        leftovers.collect(&parent, OsStr::new("c")).unwrap();
        assert!(root.path().join(".tmp-new-4-c").exists());
        leftovers.collect(&parent, OsStr::new("b")).unwrap();
        assert!(!root.path().join(".tmp-new-3-b").exists());
    }
}
