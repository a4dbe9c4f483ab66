//! Which entries of each config `jwks:` aggregate belong to which key (by kid), remembered in
//! `<stateDir>/.jwks-members.json`, so that a key which cannot be read now (its manifest is
//! invalid, it failed, it waits to retry) keeps exactly the entries it last had while the
//! other keys' entries move on. Holds public key ids only; written atomically, mode 0600.

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::dir::DirHandle;

/// The file's name in the stateDir (a config `jwks[].path` may not name it).
pub const FILE: &str = ".jwks-members.json";
const MODE: u32 = 0o600;

/// Per aggregate (its absolute path), per key name, the kids the key put in the set.
pub type Members = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The remembered members; empty when the file does not exist yet (first run, or upgrade from
/// a keyprov without it). A damaged file is an error: guessing could drop a key's entries.
pub fn load(state_dir: &Path) -> Result<Members, String> {
    let path = state_dir.join(FILE);
    let Some(root) = DirHandle::open_root(state_dir, false).map_err(|e| e.to_string())? else {
        return Ok(Members::new());
    };
    if root.stat(FILE).is_none() {
        return Ok(Members::new());
    }
    let bytes = root
        .read_file_at_most(FILE, crate::store::dir::MAX_GROWING_BYTES)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file's `lstat`, `None` when there is none (a JWK Set's fingerprint covers it).
pub fn stat(state_dir: &Path) -> Option<nix::sys::stat::FileStat> {
    DirHandle::open_root(state_dir, false)
        .ok()
        .flatten()
        .and_then(|root| root.stat(FILE))
}

/// Replaces the file with `members`.
pub fn save(state_dir: &Path, members: &Members) -> Result<(), String> {
    let root = DirHandle::open_root(state_dir, true)
        .map_err(|e| e.to_string())?
        .ok_or("the stateDir vanished")?;
    let mut bytes = serde_json::to_vec_pretty(members).expect("JSON values serialize");
    bytes.push(b'\n');
    root.replace_file(FILE, &bytes, MODE, (None, None))
        .and_then(|()| root.sync())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut members = Members::new();
        members
            .entry("/s/set.json".into())
            .or_default()
            .insert("a".into(), vec!["kid1".into(), "kid2".into()]);
        save(dir.path(), &members).unwrap();
        assert_eq!(load(dir.path()).unwrap(), members);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
