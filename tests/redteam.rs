//! Red-team regression tests of the rewritten file store (issue 8, items 3, 4, 5 and 7), through
//! the real binary on the local provider. Each test names a behaviour that must hold and was
//! found broken on main (d0a8188): they fail until the store and planner are fixed.
//!
//! Like tests/hostile_fs.rs these run as root (the `owner` setting needs it).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// A key with `extra_spec` lines (indented two spaces) and the given output lines.
fn key(name: &str, extra_spec: &str, outputs: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: {name}\nspec:\n  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/test\n{extra_spec}  outputs:\n"
    );
    for output in outputs {
        text.push_str(&format!("    - {output}\n"));
    }
    text
}

fn rotate_now(install: &Install, name: &str) {
    let run = install.keyprov(&["rotate", name, "--now"]);
    assert_eq!(run.code, 0, "rotate {name} --now: {}", run.all());
}

fn uid_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().uid()
}

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root, like tests/hostile_fs.rs (the `owner` setting needs it)"
    );
}

/// Every file below `dir` (recursively) whose name is `name`.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// `owner:` gives the files to the service user; it must never hand over the directories
/// keyprov writes in (the shared `keys/` least of all): on main the first run chowns `keys/`
/// and the key directory to the owner, then refuses them as "owned by uid 65534", failing
/// that key and every other key of the stateDir, on every run.
#[test]
fn an_output_owner_gets_the_files_but_never_the_directories_and_other_keys_still_converge() {
    assert_root();
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "", &["file: {owner: \"65534\", group: \"65534\"}"]),
    );
    install.manifest("beta.yaml", &key("beta", "", &["file: {}"]));
    let first = install.keyprov(&["run", "--once"]);
    let second = install.keyprov(&["run", "--once"]);
    assert_eq!(
        uid_of(&install.state().join("keys")),
        0,
        "keys/ was given away"
    );
    assert_eq!(first.code, 0, "first run: {}", first.all());
    assert_eq!(second.code, 0, "second run: {}", second.all());
    let alpha = install.key_dir("alpha");
    assert_eq!(uid_of(&alpha), 0, "the key directory was given away");
    assert_eq!(
        uid_of(&alpha.join("v0001")),
        0,
        "the version directory was given away"
    );
    assert_eq!(uid_of(&alpha.join("v0001/public.pem")), 65534);
    assert_eq!(
        link(&install.key_dir("beta"), "current").as_deref(),
        Some("v0001")
    );
}

/// A `current` link lost (an operator's `rm`, a restore that skips symlinks) must never make
/// keyprov delete the version that was in use: on main the next run prunes it as "never
/// linked" garbage and generates a new pair, exit 0.
#[test]
fn a_lost_current_link_never_deletes_the_version_that_was_in_use() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "  rotation: {keep: 1}\n", &["file: {}"]),
    );
    install.run_once(0);
    rotate_now(&install, "alpha");
    let dir = install.key_dir("alpha");
    let in_use = std::fs::read(dir.join("v0002/private.enc")).unwrap();
    std::fs::remove_file(dir.join("current")).unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(
        std::fs::read(dir.join("v0002/private.enc")).ok().as_deref(),
        Some(&in_use[..]),
        "the version in use was deleted: {}",
        run.all()
    );
}

/// The same with every link stripped (e.g. `rsync -r` without `-l` restoring a backup): on
/// main every version is deleted and a new pair generated, exit 0.
#[test]
fn stripped_links_never_delete_every_version() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "  rotation: {keep: 1}\n", &["file: {}"]),
    );
    install.run_once(0);
    rotate_now(&install, "alpha");
    let dir = install.key_dir("alpha");
    for name in ["current", "previous"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    let run = install.keyprov(&["run", "--once"]);
    for version in ["v0001", "v0002"] {
        assert!(
            dir.join(version).join("private.enc").is_file(),
            "{version} was deleted: {}",
            run.all()
        );
    }
}

/// A garbage meta.json in the current version of one output is repaired from the other
/// output (item 7). On main the planner plans to prune the current generation (the store
/// refuses), so the key fails on every run and nothing is repaired.
#[test]
fn a_damaged_meta_json_of_current_is_repaired_from_another_output_never_pruned() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "", &["file: {}", "file: {dir: alpha-copy}"]),
    );
    install.run_once(0);
    rotate_now(&install, "alpha");
    let (damaged, intact) = (install.key_dir("alpha"), install.state().join("alpha-copy"));
    std::fs::write(damaged.join("v0002/meta.json"), "garbage").unwrap();
    let plan = install.keyprov(&["plan"]);
    assert!(
        !plan
            .stdout
            .lines()
            .any(|l| l.contains("prune generation") && l.contains(" 2 from")),
        "the current generation is planned for pruning: {}",
        plan.all()
    );
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        std::fs::read(damaged.join("v0002/meta.json")).unwrap(),
        std::fs::read(intact.join("v0002/meta.json")).unwrap()
    );
    assert_eq!(install.keyprov(&["verify"]).code, 0);
}

/// Whoever may write the directory holding key directories (an outputRoot owned by a service
/// user) can swap two keys' directories. keyprov must not call that converged: on main
/// `run --once` says "0 changed, 0 failed" (exit 0) while each key serves the other's pair
/// (only `verify` notices, by meta.json's name).
#[test]
fn a_key_directory_holding_another_keys_versions_is_never_reported_converged() {
    let install = Install::new("outputRoots: [out]");
    let out = install.root().join("out");
    std::fs::create_dir(&out).unwrap();
    for name in ["alpha", "beta"] {
        let output = format!("file: {{dir: {}}}", out.join(name).display());
        install.manifest(&format!("{name}.yaml"), &key(name, "", &[&output]));
    }
    install.run_once(0);
    // What the outputRoot's owner can do with three renames.
    std::fs::rename(out.join("alpha"), out.join("x")).unwrap();
    std::fs::rename(out.join("beta"), out.join("alpha")).unwrap();
    std::fs::rename(out.join("x"), out.join("beta")).unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_ne!(
        run.code,
        0,
        "swapped key directories passed as converged: {}",
        run.all()
    );
    assert!(run.stderr.contains("alpha"), "{}", run.all());
}

/// Turning `includePlaintext` off removes the plaintext private key from every version kept,
/// not only the linked ones: on main v0001 and v0002 keep `private.pem` (keep: 3) and the key
/// is reported converged.
#[test]
fn turning_include_plaintext_off_leaves_no_plaintext_key_in_any_kept_version() {
    let install = Install::new("");
    let manifest = |plaintext: bool| {
        key(
            "alpha",
            &format!("  includePlaintext: {plaintext}\n  rotation: {{keep: 3}}\n"),
            &["file: {}"],
        )
    };
    install.manifest("alpha.yaml", &manifest(true));
    install.run_once(0);
    for _ in 0..3 {
        rotate_now(&install, "alpha");
    }
    install.manifest("alpha.yaml", &manifest(false));
    install.run_once(0);
    install.run_once(0);
    let dir = install.key_dir("alpha");
    assert_eq!(versions(&dir).len(), 4, "keep: 3 keeps them all");
    assert_eq!(files_named(&dir, "private.pem"), Vec::<PathBuf>::new());
}

/// An entry with a non-UTF-8 name inside an old version never blocks its pruning: on main
/// the version is renamed aside, `remove_tree` cannot remove the lossily-decoded name, and
/// the key fails on every later run ("Directory not empty").
#[test]
fn a_non_utf8_name_inside_an_old_version_never_fails_the_key_forever() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "  rotation: {keep: 1}\n", &["file: {}"]),
    );
    install.run_once(0);
    let odd = std::ffi::OsStr::from_bytes(b"backup\xff");
    std::fs::write(install.key_dir("alpha").join("v0001").join(odd), "x").unwrap();
    rotate_now(&install, "alpha");
    let run = install.keyprov(&["rotate", "alpha", "--now"]);
    assert_eq!(run.code, 0, "{}", run.all());
    install.run_once(0);
    assert_eq!(leftovers(&install.state()), Vec::<PathBuf>::new());
}

/// The lock serialises writers even when `.lock` is removed while held (an operator cleaning
/// up "stale lock files"): on main a second writer then creates a new `.lock`, locks that
/// inode, and runs beside the holder.
#[test]
fn removing_the_lock_file_while_it_is_held_never_lets_a_second_writer_in() {
    let install = Install::new("");
    install.manifest("alpha.yaml", &key("alpha", "", &["file: {}"]));
    install.run_once(0);
    // Held the way keyprov holds it: `.lock` and the stateDir itself.
    let held = std::fs::File::open(install.state().join(".lock")).unwrap();
    let held_dir = std::fs::File::open(install.state()).unwrap();
    // SAFETY: flock on descriptors we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    assert_eq!(
        unsafe { libc::flock(held_dir.as_raw_fd(), libc::LOCK_EX) },
        0
    );
    let run = install.keyprov(&["run", "--once", "--no-wait"]);
    assert_eq!(run.code, 75, "{}", run.all());
    // The holder is not a keyprov (this test, as flock(1) in a script would be): not called one.
    let holder = format!("is held by another process (pid {})", std::process::id());
    assert!(run.stderr.contains(&holder), "{}", run.stderr);
    std::fs::remove_file(install.state().join(".lock")).unwrap();
    let run = install.keyprov(&["run", "--once", "--no-wait"]);
    assert_eq!(
        run.code,
        75,
        "a second writer ran beside the holder: {}",
        run.all()
    );
    drop((held, held_dir));
}

/// All outputs of a key hold the same pair (invariant 5). Two outputs holding different pairs
/// under the same generation (a shared output written by another host, a restore) must not
/// pass as converged: on main `run --once` says "0 changed" (exit 0); only `verify` notices.
#[test]
fn outputs_holding_different_pairs_of_one_generation_are_never_reported_converged() {
    let outputs = ["file: {}", "file: {dir: alpha-copy}"];
    let here = Install::new("");
    let there = Install::new("");
    for install in [&here, &there] {
        install.manifest("alpha.yaml", &key("alpha", "", &outputs));
    }
    here.run_once(0);
    // The other host shares the master keys: both pairs decrypt.
    std::fs::create_dir_all(there.state()).unwrap();
    let keyring = "local-kms.keyring";
    std::fs::copy(here.state().join(keyring), there.state().join(keyring)).unwrap();
    there.run_once(0);
    let copy = here.state().join("alpha-copy");
    std::fs::remove_dir_all(&copy).unwrap();
    std::fs::rename(there.state().join("alpha-copy"), &copy).unwrap();
    let run = here.keyprov(&["run", "--once"]);
    let (first, second) = (public_der(&here.key_dir("alpha")), public_der(&copy));
    assert!(
        run.code != 0 || first == second,
        "outputs hold different pairs, yet the run passed: {}",
        run.all()
    );
}

/// Issue 8 item 7: a file deleted in one output is copied back from the other, and with no
/// intact copy the key fails naming the file, changing nothing.
#[test]
fn deleted_files_are_restored_from_the_other_output_or_the_key_fails() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &key("alpha", "", &["file: {}", "file: {dir: alpha-copy}"]),
    );
    install.manifest("beta.yaml", &key("beta", "", &["file: {}"]));
    install.run_once(0);
    let (first, second) = (install.key_dir("alpha"), install.state().join("alpha-copy"));
    let public = std::fs::read(first.join("v0001/public.pem")).unwrap();
    let ciphertext = std::fs::read(second.join("v0001/private.enc")).unwrap();
    std::fs::remove_file(first.join("v0001/public.pem")).unwrap();
    std::fs::remove_file(second.join("v0001/private.enc")).unwrap();
    let beta = install.key_dir("beta");
    std::fs::remove_file(beta.join("v0001/private.enc")).unwrap();
    let before = snapshot(&beta);

    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.all()
            .contains("keys/beta is damaged (v0001/private.enc is missing)"),
        "{}",
        run.all()
    );
    assert_eq!(
        snapshot(&beta),
        before,
        "a key without an intact copy changed"
    );
    assert_eq!(
        std::fs::read(first.join("v0001/public.pem")).unwrap(),
        public
    );
    assert_eq!(
        std::fs::read(second.join("v0001/private.enc")).unwrap(),
        ciphertext
    );
    // Alpha was mended; beta still fails, and a failed key is not a changed one.
    let again = install.keyprov(&["run", "--once"]);
    assert!(
        again.stdout.contains("2 keys, 0 changed, 1 failed"),
        "{}",
        again.all()
    );
}
