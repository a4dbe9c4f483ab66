//! Derived public files (`public.jwk`, `public.pub`, a key's `jwks.json`, a config JWK Set)
//! are checked on a no-op by the stamp (their stats and what they are made from) recorded in
//! `<stateDir>/ledger/fingerprints.bin` instead of being read: every way of changing them that
//! leaves size and mtime as they were (in place with `touch -r`, renamed over, chmod, a
//! symlink, the record deleted, stale, damaged or foreign, a file gone, a rewrite right after
//! a run, a file dated later than now as after a clock set back) is still found and repaired,
//! and a converged no-op writes no record.

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
        .filter(|e| e.file_name().to_string_lossy().starts_with("fingerprints"))
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

/// The record of stamps.
fn record_path(install: &Install) -> PathBuf {
    install.state().join("ledger/fingerprints.bin")
}

/// Two converged runs, the second recording every derived file; returns the record.
fn recorded_no_op(install: &Install) -> Vec<u8> {
    std::thread::sleep(PAST_RACY);
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    let record = std::fs::read(record_path(install)).unwrap();
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    assert_eq!(std::fs::read(record_path(install)).unwrap(), record);
    record
}

#[test]
fn stale_damaged_or_foreign_records_files_gone_and_files_from_the_future_are_read_again() {
    let install =
        Install::new("jwks:\n  - path: issuer/jwks.json\n    selector: {labels: {team: t}}");
    for name in ["a", "b"] {
        install.manifest(&format!("{name}.yaml"), &key(name));
    }
    install.run_once(0);
    let stale = recorded_no_op(&install);
    let a_jwk = install.key_dir("a").join("v0001/public.jwk");
    let b_pub = install.key_dir("b").join("v0001/public.pub");
    let b_jwks = install.key_dir("b").join("jwks.json");
    let set = install.state().join("issuer/jwks.json");
    let original: BTreeMap<PathBuf, Vec<u8>> = [&a_jwk, &b_pub, &b_jwks, &set]
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let assert_original = |what: &str| {
        for (path, bytes) in &original {
            assert_eq!(&std::fs::read(path).unwrap(), bytes, "{what}: {path:?}");
        }
    };

    // A stale record: put back after the file was repaired (a new inode) and recorded anew,
    // it vouches for nothing there now.
    rewrite_keeping_mtime(&a_jwk, &same_size_change(&original[&a_jwk]));
    assert_repaired(&install, "tampered");
    recorded_no_op(&install);
    std::fs::write(record_path(&install), &stale).unwrap();
    rewrite_keeping_mtime(&a_jwk, &same_size_change(&original[&a_jwk]));
    rewrite_keeping_mtime(&set, &same_size_change(&original[&set]));
    assert_repaired(&install, "stale record");
    assert_original("stale record");

    // A damaged record (cut short, another magic, every digest altered, garbage), or one
    // another build wrote (another digest of what it derives): dropped, the files read.
    let good = recorded_no_op(&install);
    let header = 24;
    let mut altered = good.clone();
    for (at, byte) in altered.iter_mut().enumerate().skip(header) {
        if (at - header) % 24 >= 8 {
            *byte ^= 0x5a;
        }
    }
    let mut foreign = good.clone();
    foreign[8] ^= 1;
    for (what, record) in [
        ("cut short", good[..good.len() - 5].to_vec()),
        (
            "another magic",
            [&b"kpfp\x00\x00\x00\x09"[..], &good[8..]].concat(),
        ),
        ("digests altered", altered),
        ("garbage", vec![0x42; good.len()]),
        ("another build's", foreign),
    ] {
        std::fs::write(record_path(&install), &record).unwrap();
        rewrite_keeping_mtime(&b_jwks, &same_size_change(&original[&b_jwks]));
        assert_repaired(&install, what);
        assert_original(what);
        recorded_no_op(&install);
    }

    // A file the record names gone, and one put back in its place with other bytes of the
    // same size and its old times.
    std::fs::remove_file(&b_pub).unwrap();
    assert_repaired(&install, "file gone");
    assert_original("file gone");
    recorded_no_op(&install);
    let times = install.root().join("b-pub-times");
    std::fs::File::create(&times).unwrap();
    let touch_r = |from: &Path, to: &Path| {
        let status = Command::new("touch")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    touch_r(&b_pub, &times);
    std::fs::remove_file(&b_pub).unwrap();
    let line = String::from_utf8(original[&b_pub].clone()).unwrap();
    let swapped = line.replacen("AAAA", "BBBB", 1);
    assert_ne!(swapped, line);
    std::fs::write(&b_pub, swapped).unwrap();
    touch_r(&times, &b_pub);
    assert_repaired(&install, "file replaced");
    assert_original("file replaced");

    // Dated later than now (written before the clock was set back): never recorded, so read
    // on every run, and a change that keeps that date is found.
    let status = Command::new("touch")
        .args(["-m", "-d", "+1 hour"])
        .arg(&a_jwk)
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(PAST_RACY);
    for _ in 0..2 {
        let run = install.run_once(0);
        assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    }
    rewrite_keeping_mtime(&a_jwk, &same_size_change(&original[&a_jwk]));
    assert_repaired(&install, "dated later than now");
    assert_original("dated later than now");
}

/// A file mapped shared and writable: a write through it changes the file without a system
/// call, and the kernel updates mtime and ctime only at the write that makes a clean page
/// writable again (the first after the page was written out), not at later ones.
struct Mapping {
    at: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(path: &Path) -> Self {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh shared mapping of the whole file, unmapped on drop; only bytes
        // within it are written.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED, "{path:?}");
        Mapping { at: at.cast(), len }
    }

    fn write(&self, bytes: &[u8]) {
        assert_eq!(bytes.len(), self.len);
        // SAFETY: `len` bytes mapped at `at`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at, self.len) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`.
        unsafe { libc::munmap(self.at.cast(), self.len) };
    }
}

#[test]
fn derived_files_changed_through_a_shared_mapping_are_found_and_repaired() {
    let install =
        Install::new("jwks:\n  - path: issuer/jwks.json\n    selector: {labels: {team: t}}");
    install.manifest("a.yaml", &key("a"));
    install.run_once(0);
    let files = [
        install.key_dir("a").join("v0001/public.jwk"),
        install.key_dir("a").join("jwks.json"),
        install.state().join("issuer/jwks.json"),
    ];
    let original: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Mapped and written with what they hold: their pages dirty and writable in the mapping.
    let mappings: Vec<Mapping> = files.iter().map(|p| Mapping::new(p)).collect();
    for (mapping, bytes) in mappings.iter().zip(&original) {
        mapping.write(bytes);
    }
    // Read, found right and recorded (the files were last changed more than 2 s ago).
    std::thread::sleep(PAST_RACY);
    let run = install.run_once(0);
    assert!(run.stdout.contains(" 0 changed"), "{}", run.all());
    // Changed through the mappings: no write fault, so no new mtime or ctime unless the
    // pages were written out (and write-protected) before the stamps were taken.
    for (mapping, bytes) in mappings.iter().zip(&original) {
        mapping.write(&same_size_change(bytes));
    }
    for (path, bytes) in files.iter().zip(&original) {
        assert_ne!(&std::fs::read(path).unwrap(), bytes, "{path:?} changed");
    }
    assert_repaired(&install, "changed through a shared mapping");
    for (path, bytes) in files.iter().zip(&original) {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path:?} repaired");
    }
}
