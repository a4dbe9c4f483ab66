//! Symlink race harness (issue 8, hostile filesystem): while `keyprov rotate NAME --now` or
//! `keyprov run --once` writes, links, repairs and prunes a key, a racing thread swaps one of
//! the key's paths — the key directory, a version directory, a version file, the `current`
//! link, or the `keys` directory itself — between the real thing and a symlink to a directory
//! outside, with `renameat2(RENAME_EXCHANGE)` (atomic: the path always exists).
//!
//! An attempt is one keyprov run raced by the swapper; an escape is an attempt after which
//! anything outside was created, written, chmodded, chowned, renamed or deleted (inode, type,
//! mode, owner, mtime, ctime, size and content hash of every entry compared).
//!
//! Short mode here: `KEYPROV_RACE_ATTEMPTS` (default 300) attempts. Long mode:
//! `bench/symlink_race.sh` (10,000 attempts).

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const TARGETS: [&str; 5] = ["key-dir", "version-dir", "version-file", "link", "keys-dir"];
const DEADLINE: Duration = Duration::from_secs(120);

/// Atomically exchanges two paths (both must exist, on one filesystem).
fn exchange(a: &Path, b: &Path) -> bool {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    unsafe {
        nix::libc::renameat2(
            nix::libc::AT_FDCWD,
            a.as_ptr(),
            nix::libc::AT_FDCWD,
            b.as_ptr(),
            nix::libc::RENAME_EXCHANGE,
        ) == 0
    }
}

/// A swapper thread: exchanges `real` with `slot` (a symlink to outside) until stopped, then
/// puts the real thing back when it can.
struct Racer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, bool)>,
}

impl Racer {
    fn start(real: PathBuf, slot: PathBuf, seed: u64) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut swaps = 0;
            let mut swapped = false;
            let mut state = seed | 1;
            while !flag.load(Ordering::Relaxed) {
                if exchange(&real, &slot) {
                    swapped = !swapped;
                    if swapped {
                        swaps += 1;
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
                // xorshift: pauses of 0-63 µs, so the swaps land at varied instants.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pause = state % 64;
                if pause > 8 {
                    std::thread::sleep(Duration::from_micros(pause));
                }
            }
            if swapped && exchange(&real, &slot) {
                swapped = false;
            }
            (swaps, swapped)
        });
        Racer { stop, handle }
    }

    /// Stops the swapper: (swaps to the symlink made, whether the real thing is stranded in
    /// the slot because its path disappeared meanwhile).
    fn finish(self) -> (u64, bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The tree an attacker points keyprov at: a fake key directory with versions and links, a
/// fake `keys` directory, foreign files owned by nobody.
fn outside_tree(root: &Path) {
    let fake_key = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        for version in ["v0001", "v0002", "v0003"] {
            let v = dir.join(version);
            std::fs::create_dir(&v).unwrap();
            for file in ["public.pem", "private.enc", "meta.json", "foreign"] {
                std::fs::write(v.join(file), format!("foreign {file}\n")).unwrap();
                std::fs::set_permissions(v.join(file), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
                std::os::unix::fs::chown(v.join(file), Some(65534), Some(65534)).unwrap();
            }
        }
        std::os::unix::fs::symlink("v0003", dir.join("current")).unwrap();
        std::os::unix::fs::symlink("v0002", dir.join("previous")).unwrap();
        std::fs::write(dir.join("foreign.txt"), "foreign\n").unwrap();
    };
    fake_key(&root.join("key"));
    fake_key(&root.join("keys/alpha"));
    fake_key(&root.join("keys/beta"));
    std::fs::write(root.join("secret"), "owned by nobody, 0600\n").unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("secret"), Some(65534), Some(65534)).unwrap();
}

fn alpha_manifest(round: usize) -> String {
    let mode = if round % 4 < 2 { "0640" } else { "0644" };
    manifest(
        "alpha",
        "ECC_NIST_P256",
        &format!("  encryptionContext: {{round: \"{round}\"}}\n  rotation: {{keep: 1}}\n"),
    )
    .replace(
        "file: {}",
        &format!("file: {{mode: \"{mode}\", owner: \"0\", group: \"0\"}}"),
    )
}

/// The path raced in this round and the outside path its symlink points at.
fn target(install: &Install, outside: &Path, kind: &str, round: usize) -> (PathBuf, PathBuf) {
    let dir = install.key_dir("alpha");
    let version = link(
        &dir,
        if round.is_multiple_of(2) {
            "current"
        } else {
            "previous"
        },
    )
    .or_else(|| link(&dir, "current"))
    .unwrap_or_else(|| "v0001".into());
    match kind {
        "key-dir" => (dir, outside.join("key")),
        "version-dir" => (dir.join(version), outside.join("key/v0002")),
        "version-file" => {
            let file = ["public.pem", "private.enc", "meta.json"][round / 2 % 3];
            (dir.join(version).join(file), outside.join("secret"))
        }
        "link" => (dir.join("current"), outside.join("key/v0003")),
        "keys-dir" => (install.state().join("keys"), outside.join("keys")),
        other => panic!("unknown target {other}"),
    }
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

#[derive(Default)]
struct Tally {
    attempts: u64,
    swaps: u64,
    escapes: u64,
    failed_runs: u64,
}

#[test]
fn racing_symlink_swaps_never_make_keyprov_write_outside() {
    let attempts: usize = std::env::var("KEYPROV_RACE_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let install = Install::new("");
    install.manifest("alpha.yaml", &alpha_manifest(0));
    install.manifest("beta.yaml", &manifest("beta", "ECC_NIST_P256", ""));
    install.run_once(0);
    let outside = tempfile::tempdir().unwrap();
    outside_tree(outside.path());
    let slots = install.root().join("slots");
    std::fs::create_dir(&slots).unwrap();
    let mut baseline = fingerprint(outside.path());
    let mut tallies: Vec<(&str, Tally)> = TARGETS.iter().map(|t| (*t, Tally::default())).collect();
    let mut first_escapes = Vec::new();

    for round in 0..attempts {
        let kind = TARGETS[round % TARGETS.len()];
        let (real, fake) = target(&install, outside.path(), kind, round / TARGETS.len());
        let slot = slots.join(kind);
        remove(&slot);
        std::os::unix::fs::symlink(&fake, &slot).unwrap();
        let args: Vec<&str> = if round.is_multiple_of(2) {
            vec!["rotate", "alpha", "--now"]
        } else {
            install.manifest("alpha.yaml", &alpha_manifest(round));
            vec!["run", "--once"]
        };
        let racer = Racer::start(real.clone(), slot.clone(), round as u64 * 7919 + 1);
        let run = run_with_deadline(install.command(&args), DEADLINE);
        let (swaps, stranded) = racer.finish();
        let run = run.unwrap_or_else(|| panic!("keyprov {args:?} hung while {kind} was raced"));
        assert!(
            run.code == 0 || run.code == 1,
            "keyprov {args:?} with {kind} raced: {}",
            run.all()
        );
        if stranded {
            // The raced path vanished (a version pruned) while the symlink sat there: what
            // is left in the slot is keyprov's pruned version.
            remove(&slot);
        }
        let now = fingerprint(outside.path());
        let diff = fingerprint_diff(&baseline, &now);
        let tally = &mut tallies[round % TARGETS.len()].1;
        tally.attempts += 1;
        tally.swaps += swaps;
        tally.failed_runs += u64::from(run.code != 0);
        if !diff.is_empty() {
            tally.escapes += 1;
            if first_escapes.len() < 5 {
                first_escapes.push(format!(
                    "round {round} ({kind}, {args:?}):\n{}",
                    diff.join("\n")
                ));
            }
            baseline = now;
        }
    }

    let total = |f: fn(&Tally) -> u64| tallies.iter().map(|(_, t)| f(t)).sum::<u64>();
    println!(
        "symlink race: {} attempts (raced keyprov runs), {} swaps, {} escapes",
        total(|t| t.attempts),
        total(|t| t.swaps),
        total(|t| t.escapes)
    );
    for (kind, t) in &tallies {
        println!(
            "  {kind:<13} {} attempts, {} swaps, {} escapes, {} runs exited 1",
            t.attempts, t.swaps, t.escapes, t.failed_runs
        );
    }
    assert!(
        first_escapes.is_empty(),
        "keyprov wrote outside its directory:\n{}",
        first_escapes.join("\n\n")
    );

    // Unraced, the store converges again and every pair verifies.
    install.manifest("alpha.yaml", &alpha_manifest(attempts + 1));
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 0, "after the race: {}", run.all());
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "after the race: {}", verify.all());
}
