//! Derived public files (`public.jwk`, `public.pub`, a key's `jwks.json`, a config JWK Set)
//! are checked on a no-op by the stat recorded in `<stateDir>/ledger/fingerprints-*.json`
//! instead of being read: every way of changing them that leaves size and mtime as they were
//! (in place with `touch -r`, renamed over, chmod, a symlink, the record deleted, a rewrite
//! right after a run) is still found and repaired, and a converged no-op writes no record.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Install, manifest};

/// Fingerprints are recorded only for files changed at least this long before the check.
const PAST_RACY: Duration = Duration::from_millis(2_100);

fn key(name: &str) -> String {
    manifest(name, "ECC_NIST_P256", "")
        .replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{team: t}}\n"),
        )
        .replace(
            "    - file: {}\n",
            "    - file: {publicFormats: [jwk, openssh]}\n",
        )
}

/// The fingerprint records: name -> contents.
fn records(install: &Install) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(install.state().join("ledger"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("fingerprints-"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Writes `bytes` into `path` in place (same inode) and puts its mtime back, as `touch -r`
/// from a copy of its times taken first.
fn rewrite_keeping_mtime(path: &Path, bytes: &[u8]) {
    let reference = path.with_extension("times");
    let touch = |args: &[&Path]| {
        let status = Command::new("touch").arg("-r").args(args).status().unwrap();
        assert!(status.success());
    };
    std::fs::File::create(&reference).unwrap();
    touch(&[path, &reference]);
    assert_eq!(std::fs::read(path).unwrap().len(), bytes.len(), "{path:?}");
    std::fs::write(path, bytes).unwrap();
    touch(&[&reference, path]);
    std::fs::remove_file(reference).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A run --once that repaired something (not a no-op).
fn assert_repaired(install: &Install, what: &str) {
    let run = install.run_once(0);
    assert!(
        !run.stdout.contains(" 0 changed"),
        "{what}: the run saw nothing to repair: {}",
        run.all()
    );
}

/// A one-byte change of JSON text that keeps its size: a kid's first letter.
fn same_size_change(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let at = text.find("\"kid\": \"").unwrap() + 8;
    let mut out = bytes.to_vec();
    out[at] = if out[at] == b'A' { b'B' } else { b'A' };
    out
}

#[test]
fn derived_files_changed_behind_a_recorded_fingerprint_are_found_and_repaired() {
    let install =
        Install::new("jwks:\n  - path: issuer/jwks.json\n    selector: {labels: {team: t}}");
    for name in ["a", "b", "c", "d"] {
        install.manifest(&format!("{name}.yaml"), &key(name));
    }
    install.run_once(0);
    std::thread::sleep(PAST_RACY);
    // Reads every file, finds it right, records it.
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    let recorded = records(&install);
    assert!(!recorded.is_empty());
    // A converged no-op writes no record.
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    assert_eq!(records(&install), recorded);

    let dir = |name: &str| install.key_dir(name);
    let set = install.state().join("issuer/jwks.json");
    let original: BTreeMap<PathBuf, Vec<u8>> = ["a", "b", "c", "d"]
        .iter()
        .flat_map(|k| ["v0001/public.jwk", "v0001/public.pub", "jwks.json"].map(|f| dir(k).join(f)))
        .chain([set.clone()])
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let modes: BTreeMap<&PathBuf, u32> = original.keys().map(|p| (p, mode(p))).collect();

    // a: another key's JWK written in place, the mtime put back (only ctime tells).
    rewrite_keeping_mtime(
        &dir("a").join("v0001/public.jwk"),
        &std::fs::read(dir("b").join("v0001/public.jwk")).unwrap(),
    );
    // b: another key's OpenSSH line (same length) renamed over, the mtime put back.
    let planted = dir("b").join("planted");
    let line = String::from_utf8(std::fs::read(dir("c").join("v0001/public.pub")).unwrap())
        .unwrap()
        .replace("keyprov:c:", "keyprov:b:");
    std::fs::write(&planted, &line).unwrap();
    let status = Command::new("touch")
        .arg("-r")
        .arg(dir("b").join("v0001/public.pub"))
        .arg(&planted)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(&planted, dir("b").join("v0001/public.pub")).unwrap();
    // c: chmod of public.jwk.
    let c_jwk = dir("c").join("v0001/public.jwk");
    let status = Command::new("chmod")
        .arg("0600")
        .arg(&c_jwk)
        .status()
        .unwrap();
    assert!(status.success());
    // d: jwks.json replaced by a symlink to a copy of what it held.
    let copy = install.root().join("d-jwks-copy.json");
    std::fs::copy(dir("d").join("jwks.json"), &copy).unwrap();
    std::fs::remove_file(dir("d").join("jwks.json")).unwrap();
    std::os::unix::fs::symlink(&copy, dir("d").join("jwks.json")).unwrap();
    // The config's set: one kid's letter changed in place, the mtime put back.
    rewrite_keeping_mtime(&set, &same_size_change(&original[&set]));

    assert_repaired(&install, "tampered behind the fingerprints");
    for (path, bytes) in &original {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{path:?} is a regular file again"
        );
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path:?} repaired");
        assert_eq!(mode(path), modes[path], "{path:?} mode repaired");
    }

    // The record deleted: files are read again (a changed jwks.json is found).
    std::thread::sleep(PAST_RACY);
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    for (name, _) in records(&install) {
        std::fs::remove_file(install.state().join("ledger").join(name)).unwrap();
    }
    let a_jwks = dir("a").join("jwks.json");
    rewrite_keeping_mtime(&a_jwks, &same_size_change(&original[&a_jwks]));
    assert_repaired(&install, "record deleted");
    assert_eq!(std::fs::read(&a_jwks).unwrap(), original[&a_jwks]);

    // Right after a run (racily clean: not recorded yet), rewritten in place, same size.
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    rewrite_keeping_mtime(&a_jwks, &same_size_change(&original[&a_jwks]));
    let a_jwk = dir("a").join("v0001/public.jwk");
    rewrite_keeping_mtime(&a_jwk, &same_size_change(&original[&a_jwk]));
    assert_repaired(&install, "rewritten right after a run");
    assert_eq!(std::fs::read(&a_jwks).unwrap(), original[&a_jwks]);
    assert_eq!(std::fs::read(&a_jwk).unwrap(), original[&a_jwk]);
}
