//! A hostile or unlucky filesystem under the file store (issue 8, item 4 and the harness's
//! filesystem section), through the real binary on the local provider: symlinks planted where
//! keyprov expects its own directories and files, umask 000, special files, a full filesystem
//! and a read-only output directory. Whatever is planted, keyprov fails the key concerned with
//! a clear error, touches nothing outside its tree, and the other keys converge.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Generous bound on a run that must not hang (a hang is what is detected, not a speed).
const DEADLINE: Duration = Duration::from_secs(120);

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A directory outside the installation that an attacker would like keyprov to write in:
/// foreign files (one 0600, owned by nobody), fake version directories and links.
fn outside_tree() -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path();
    std::fs::write(root.join("foreign.txt"), "not keyprov's\n").unwrap();
    std::fs::write(root.join("secret"), "owned by nobody, 0600\n").unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("secret"), Some(65534), Some(65534)).unwrap();
    for version in ["v0001", "v0002", "v0003"] {
        let dir = root.join(version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("public.pem"), "fake\n").unwrap();
        std::fs::write(dir.join("meta.json"), "{}\n").unwrap();
        std::fs::write(dir.join("data"), "foreign data\n").unwrap();
    }
    std::os::unix::fs::symlink("v0003", root.join("current")).unwrap();
    std::os::unix::fs::symlink("v0002", root.join("previous")).unwrap();
    std::fs::create_dir(root.join(".tmp-v0004")).unwrap();
    outside
}

fn assert_untouched(outside: &Path, before: &std::collections::BTreeMap<PathBuf, Entry>) {
    let diff = fingerprint_diff(before, &fingerprint(outside));
    assert!(
        diff.is_empty(),
        "keyprov changed the tree outside its directory:\n{}",
        diff.join("\n")
    );
}

/// Every link of a key directory points at a real version directory inside it.
fn assert_links_are_versions(dir: &Path) {
    for name in ["current", "previous", "next"] {
        let Some(target) = link(dir, name) else {
            continue;
        };
        assert!(
            target.starts_with('v') && !target.contains('/'),
            "{name} -> {target}"
        );
        let meta = std::fs::symlink_metadata(dir.join(&target))
            .unwrap_or_else(|e| panic!("{name} -> {target}: {e}"));
        assert!(
            meta.file_type().is_dir(),
            "{name} -> {target}, which is not a directory"
        );
    }
}

/// `current` of a key points at a complete version whose public key matches its meta.json.
fn assert_current_complete(dir: &Path) {
    assert_links_are_versions(dir);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
    let public = public_der(dir);
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
    let sha: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(meta["publicKeySha256"], sha.as_str(), "{}", dir.display());
    assert!(
        std::fs::metadata(dir.join("current/private.enc"))
            .unwrap()
            .len()
            > 0
    );
}

fn no_temporaries(root: &Path) -> Vec<PathBuf> {
    fingerprint(root)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect()
}

#[test]
fn a_key_directory_planted_as_a_symlink_fails_that_key_and_nothing_outside_changes() {
    let install = Install::new("");
    let keep = "  rotation: {keep: 1}\n";
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", keep));
    install.manifest("beta.yaml", &manifest("beta", "ECC_NIST_P256", keep));
    install.run_once(0);

    // beta's real directory is moved outside (foreign files beside it) and replaced by a
    // symlink to it; a new key gamma arrives at the same time.
    let outside = outside_tree();
    let planted = outside.path().join("beta");
    std::fs::rename(install.key_dir("beta"), &planted).unwrap();
    std::fs::write(planted.join("foreign.txt"), "not keyprov's\n").unwrap();
    for version in ["v0000", "v0009"] {
        std::fs::create_dir(planted.join(version)).unwrap();
        std::fs::write(planted.join(version).join("data"), "foreign\n").unwrap();
    }
    std::os::unix::fs::symlink(&planted, install.key_dir("beta")).unwrap();
    install.manifest("gamma.yaml", &manifest("gamma", "ECC_NIST_P256", keep));
    let before = fingerprint(outside.path());

    // A metadata change (repair: chmod, prune), then a spec change (a new version, linking,
    // pruning), then a forced rotation: each fails beta alone, outside stays as it was.
    let stages = [
        manifest("beta", "ECC_NIST_P256", keep).replace("file: {}", "file: {mode: \"0644\"}"),
        manifest("beta", "ECC_NIST_P384", keep),
    ];
    for text in stages {
        install.manifest("beta.yaml", &text);
        install.manifest("alpha.yaml", &text.replace("beta", "alpha"));
        let run = install.keyprov(&["run", "--once"]);
        assert_untouched(outside.path(), &before);
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.stdout.contains("1 failed"),
            "only beta fails: {}",
            run.all()
        );
        let refused = format!("{} is not a directory", install.key_dir("beta").display());
        assert!(
            run.stderr.contains("key \"beta\"") && run.stderr.contains(&refused),
            "the error names the key and the planted path: {}",
            run.stderr
        );
        assert_current_complete(&install.key_dir("alpha"));
        assert_current_complete(&install.key_dir("gamma"));
    }
    let rotate = install.keyprov(&["rotate", "beta", "--now"]);
    assert_untouched(outside.path(), &before);
    assert_eq!(rotate.code, 1, "{}", rotate.all());
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(install.key_dir("alpha").join("current/meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["keyPairSpec"], "ECC_NIST_P384", "alpha converged");
    assert!(
        std::fs::symlink_metadata(install.key_dir("beta"))
            .unwrap()
            .is_symlink(),
        "keyprov does not silently replace what it refuses"
    );
}

#[test]
fn repair_does_not_chmod_or_chown_through_a_planted_file_symlink() {
    let install = Install::new("");
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    install.run_once(0);
    let outside = outside_tree();
    let secret = outside.path().join("secret");
    let public = install.key_dir("alpha").join("v0001/public.pem");
    std::fs::remove_file(&public).unwrap();
    std::os::unix::fs::symlink(&secret, &public).unwrap();
    let before = fingerprint(outside.path());

    // A mode and owner change makes keyprov repair the version in place.
    install.manifest(
        "alpha.yaml",
        &manifest("alpha", "ECC_NIST_P256", "").replace(
            "file: {}",
            "file: {mode: \"0644\", owner: \"0\", group: \"0\"}",
        ),
    );
    let run = install.keyprov(&["run", "--once"]);
    assert_untouched(outside.path(), &before);
    let secret_meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(secret_meta.mode() & 0o7777, 0o600);
    assert_eq!((secret_meta.uid(), secret_meta.gid()), (65534, 65534));
    // No other output holds the version: the key fails, saying what to do.
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("key \"alpha\"") && run.stderr.contains("keyprov rotate alpha --now"),
        "{}",
        run.stderr
    );
    let verify = install.keyprov(&["verify"]);
    assert_untouched(outside.path(), &before);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify
            .stdout
            .lines()
            .any(|l| l.starts_with("FAILED  alpha") && l.contains(&*public.to_string_lossy())),
        "verify names the planted file: {}",
        verify.stdout
    );
    // The emergency path makes a new current pair; the planted file stays in the previous
    // version (refused, named) until an operator moves it; outside is still untouched.
    let rotate = install.keyprov(&["rotate", "alpha", "--now"]);
    assert_untouched(outside.path(), &before);
    assert!(
        rotate.code == 0
            || rotate
                .stderr
                .contains(&format!("{} is a symlink", public.display())),
        "{}",
        rotate.all()
    );
    assert_eq!(
        link(&install.key_dir("alpha"), "current").as_deref(),
        Some("v0002")
    );
    assert_current_complete(&install.key_dir("alpha"));
}

#[test]
fn a_key_directory_linked_to_another_key_fails_and_is_never_verified_ok() {
    let install = Install::new("");
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    install.run_once(0);
    let alpha = install.key_dir("alpha");
    let before = fingerprint(&alpha);
    std::os::unix::fs::symlink("alpha", install.key_dir("beta")).unwrap();
    install.manifest("beta.yaml", &manifest("beta", "ECC_NIST_P256", ""));

    let run = install.run_once(1);
    let refused = format!("{} is not a directory", install.key_dir("beta").display());
    assert!(
        run.stderr.contains("key \"beta\"") && run.stderr.contains(&refused),
        "{}",
        run.stderr
    );
    let alpha_after = fingerprint(&alpha);
    assert!(
        fingerprint_diff(&before, &alpha_after).is_empty(),
        "alpha changed: {:?}",
        fingerprint_diff(&before, &alpha_after)
    );
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify
            .stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains(" alpha ")),
        "{}",
        verify.stdout
    );
    assert!(
        !verify
            .stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains(" beta ")),
        "beta shares alpha's pair, verify must not call it ok: {}",
        verify.stdout
    );
    assert!(
        verify.stdout.lines().any(|l| l.starts_with("FAILED  beta")),
        "{}",
        verify.stdout
    );
    // Under a rotation of beta, alpha still keeps its pair.
    let rotate = install.keyprov(&["rotate", "beta", "--now"]);
    assert_eq!(rotate.code, 1, "{}", rotate.all());
    assert!(fingerprint_diff(&before, &fingerprint(&alpha)).is_empty());
}

#[test]
fn a_keys_directory_planted_as_a_symlink_fails_the_keys_and_nothing_outside_changes() {
    let install = Install::new("");
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    install.manifest("beta.yaml", &manifest("beta", "ECC_NIST_P256", ""));
    std::fs::create_dir(install.state()).unwrap();
    let outside = outside_tree();
    std::os::unix::fs::symlink(outside.path(), install.state().join("keys")).unwrap();
    let before = fingerprint(outside.path());

    let run = install.keyprov(&["run", "--once"]);
    assert_untouched(outside.path(), &before);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("2 keys, 0 changed, 2 failed"),
        "{}",
        run.all()
    );
    let refused = format!(
        "{} is not a directory",
        install.state().join("keys").display()
    );
    for key in ["alpha", "beta"] {
        assert!(
            run.stderr.contains(&format!("key \"{key}\"")) && run.stderr.contains(&refused),
            "{}",
            run.stderr
        );
    }
    let rotate = install.keyprov(&["rotate", "alpha", "--now"]);
    assert_ne!(rotate.code, 0, "{}", rotate.all());
    assert_untouched(outside.path(), &before);
}

#[test]
fn under_umask_000_directories_and_files_get_explicit_modes() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &manifest("alpha", "ECC_NIST_P256", "  includePlaintext: true\n"),
    );
    install.manifest(
        "beta.yaml",
        &manifest("beta", "RSA_2048", "").replace("file: {}", "file: {mode: \"0600\"}"),
    );
    let mut command = install.command(&["run", "--once"]);
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            nix::libc::umask(0);
            Ok(())
        });
    }
    let run: Run = command.output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.all());

    for dir in [
        install.state(),
        install.state().join("keys"),
        install.key_dir("alpha"),
        install.key_dir("alpha").join("v0001"),
        install.key_dir("beta"),
        install.key_dir("beta").join("v0001"),
    ] {
        let mode = mode_of(&dir);
        assert_eq!(
            mode & 0o022,
            0,
            "{} is {mode:o}: writable by group or others",
            dir.display()
        );
    }
    let alpha = install.key_dir("alpha").join("v0001");
    let beta = install.key_dir("beta").join("v0001");
    assert_eq!(mode_of(&alpha.join("public.pem")), 0o640);
    assert_eq!(mode_of(&alpha.join("private.enc")), 0o640);
    assert_eq!(mode_of(&alpha.join("private.pem")), 0o600);
    assert_eq!(mode_of(&beta.join("public.pem")), 0o600);
    assert_eq!(mode_of(&beta.join("private.enc")), 0o600);
    for (path, entry) in fingerprint(&install.state()) {
        if entry.kind != "symlink" {
            assert_eq!(
                entry.mode & 0o022,
                0,
                "{} is {:o}",
                path.display(),
                entry.mode
            );
        }
    }
}

#[test]
fn a_regular_file_named_like_a_version_is_never_linked() {
    let install = Install::new("");
    let dir = install.key_dir("alpha");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(dir.join("v0001"), "a regular file, not a version\n").unwrap();
    std::fs::write(dir.join("v0003"), "another one\n").unwrap();
    let keep = |spec: &str| manifest("alpha", spec, "  rotation: {keep: 2}\n");
    for spec in [
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_NIST_P256",
    ] {
        install.manifest("alpha.yaml", &keep(spec));
        let run = install.keyprov(&["run", "--once"]);
        assert!(run.code == 0 || run.code == 1, "{}", run.all());
        assert_links_are_versions(&dir);
        let verify = install.keyprov(&["verify"]);
        assert_links_are_versions(&dir);
        if run.code == 0 {
            assert_eq!(verify.code, 0, "{}", verify.all());
        }
    }
}

#[test]
fn special_files_in_the_store_never_hang_keyprov() {
    let install = Install::new("");
    let names = ["pem-fifo", "enc-fifo", "meta-fifo", "dir-fifo", "link-fifo"];
    for name in names {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", ""),
        );
    }
    install.manifest("fine.yaml", &manifest("fine", "ECC_NIST_P256", ""));
    install.run_once(0);
    let fifo = |path: PathBuf| {
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    };
    fifo(install.key_dir("pem-fifo").join("v0001/public.pem"));
    fifo(install.key_dir("enc-fifo").join("v0001/private.enc"));
    fifo(install.key_dir("meta-fifo").join("v0001/meta.json"));
    let dir = install.key_dir("dir-fifo");
    std::fs::remove_dir_all(&dir).unwrap();
    fifo(dir);
    let link_dir = install.key_dir("link-fifo");
    std::fs::remove_file(link_dir.join("current")).unwrap();
    fifo(link_dir.join("current"));

    let fine = install.key_dir("fine");
    let out = install.root().join("decrypted.pem");
    let out = out.to_str().unwrap();
    // (command, whether it must fail: status and plan may report the damage and exit 0 or 3)
    let commands: [(&[&str], bool); 6] = [
        (&["run", "--once"], true),
        (&["status"], false),
        (&["verify"], true),
        (&["plan"], false),
        // The emergency path replaces a damaged pair: the FIFO'd version becomes previous.
        (&["rotate", "pem-fifo", "--now"], false),
        (&["decrypt", "enc-fifo", "--out", out], true),
    ];
    for (args, fails) in commands {
        let run = run_with_deadline(install.command(args), DEADLINE)
            .unwrap_or_else(|| panic!("keyprov {args:?} hung on a FIFO in the store"));
        assert_ne!(run.code, 101, "{args:?} panicked: {}", run.all());
        if fails {
            assert_ne!(run.code, 0, "{args:?}: {}", run.all());
        }
    }
    // A metadata change makes keyprov repair every key: still no hang, the fine key repaired.
    for name in names.iter().chain(["fine"].iter()) {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", "").replace("file: {}", "file: {mode: \"0600\"}"),
        );
    }
    let run = run_with_deadline(install.command(&["run", "--once"]), DEADLINE)
        .expect("run --once hung on a FIFO in the store");
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("6 keys"), "{}", run.all());
    assert_eq!(mode_of(&fine.join("v0001/public.pem")), 0o600);
    assert_current_complete(&fine);
}

/// Spec changes of alpha (a new generation each time) while the filesystem has `budget`
/// bytes left; `current` must always point at a complete version, and once space is back a
/// run converges with nothing temporary or half-written left.
fn assert_full_filesystem_is_clean(
    install: &Install,
    runs: &mut dyn FnMut(&Install) -> Run,
    mut make_room: impl FnMut(),
) {
    let dir = install.key_dir("alpha");
    let mut failures = 0;
    for round in 0..6 {
        install.manifest(
            "alpha.yaml",
            &manifest(
                "alpha",
                "RSA_2048",
                &format!("  encryptionContext: {{round: \"{round}\"}}\n  rotation: {{keep: 1}}\n"),
            ),
        );
        let run = runs(install);
        assert!(run.code == 0 || run.code == 1, "{}", run.all());
        if run.code == 1 {
            failures += 1;
            assert!(
                run.stderr.contains("key \"alpha\"")
                    && run.stderr.contains(&*dir.to_string_lossy()),
                "the error names the key and the path: {}",
                run.stderr
            );
        }
        assert_current_complete(&dir);
        assert_current_complete(&install.key_dir("other"));
    }
    assert!(failures > 0, "the filesystem never filled up");
    make_room();
    let run = install.run_once(0);
    assert!(run.stdout.contains("0 failed"), "{}", run.stdout);
    assert_current_complete(&dir);
    assert_eq!(
        no_temporaries(&install.state()),
        Vec::<PathBuf>::new(),
        "temporaries left after a successful run"
    );
    let linked: Vec<String> = ["current", "previous"]
        .iter()
        .filter_map(|l| link(&dir, l))
        .collect();
    for version in versions(&dir) {
        assert!(
            linked.contains(&version),
            "{version} is neither current nor previous: {linked:?}"
        );
    }
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

#[test]
fn a_file_size_limit_fails_the_key_cleanly() {
    let install = Install::new("");
    install.manifest(
        "alpha.yaml",
        &manifest("alpha", "RSA_2048", "  rotation: {keep: 1}\n"),
    );
    install.manifest("other.yaml", &manifest("other", "ECC_NIST_P256", ""));
    install.run_once(0);
    // RSA_2048: public.pem (~450 bytes) fits under the limit, private.enc (~1.3 kB) does not.
    let mut limited = |install: &Install| -> Run {
        let mut command = install.command(&["run", "--once"]);
        // SAFETY: setrlimit and signal are async-signal-safe; the child's own state only.
        unsafe {
            command.pre_exec(|| {
                let limit = nix::libc::rlimit {
                    rlim_cur: 1000,
                    rlim_max: 1000,
                };
                nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit);
                nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN);
                Ok(())
            });
        }
        command.output().unwrap().into()
    };
    assert_full_filesystem_is_clean(&install, &mut limited, || {});
}

#[test]
fn a_full_filesystem_fails_the_key_cleanly() {
    if !can_mount() {
        eprintln!(
            "skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN); see a_file_size_limit_fails_the_key_cleanly"
        );
        return;
    }
    let install = Install::new("");
    std::fs::create_dir(install.state()).unwrap();
    let _mount = Mount::new(
        &["-t", "tmpfs", "-o", "size=256k,mode=0755", "keyprov-test"],
        &install.state(),
    );
    install.manifest(
        "alpha.yaml",
        &manifest("alpha", "RSA_2048", "  rotation: {keep: 1}\n"),
    );
    install.manifest("other.yaml", &manifest("other", "ECC_NIST_P256", ""));
    install.run_once(0);
    // Fill the tmpfs, then free a little more each round: the version directory fails at
    // different depths (directory, first file, later files).
    let filler = install.state().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &page).is_ok() {}
    let _ = file.sync_all();
    let mut round = 0;
    let mut shrinking = |install: &Install| -> Run {
        let size = std::fs::metadata(&filler).unwrap().len();
        if round > 0 {
            file.set_len(size.saturating_sub(4096)).unwrap();
        }
        round += 1;
        install.keyprov(&["run", "--once"])
    };
    let filler_path = filler.clone();
    assert_full_filesystem_is_clean(&install, &mut shrinking, move || {
        // Truncated, not only unlinked: the handle above is still open.
        std::fs::File::options()
            .write(true)
            .open(&filler_path)
            .unwrap()
            .set_len(0)
            .unwrap();
        std::fs::remove_file(&filler_path).unwrap()
    });
}

/// Gives the whole installation to `nobody` and runs keyprov as that user: modes are then
/// enforced (root would bypass them), as they are for a daemon running unprivileged.
fn as_nobody(install: &Install, args: &[&str]) -> Run {
    if std::fs::metadata(install.root()).unwrap().uid() != 65534 {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(install.root())
            .status()
            .unwrap();
        assert!(status.success());
    }
    // The binary may sit below directories nobody cannot traverse: use a copy inside.
    let binary = install.root().join("keyprov-bin");
    if !binary.exists() {
        common::copy_binary(&binary);
        std::os::unix::fs::chown(&binary, Some(65534), Some(65534)).unwrap();
    }
    let mut command = Command::new(&binary);
    command.args(args).arg("--config").arg(install.config());
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("KEYPROV_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(install.root())
        .uid(65534)
        .gid(65534);
    command.output().unwrap().into()
}

#[test]
fn a_read_only_output_directory_fails_that_key_only() {
    let install = Install::new("");
    for name in ["alpha", "beta", "frozen"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", ""),
        );
    }
    let run = as_nobody(&install, &["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let frozen = install.key_dir("frozen");
    std::fs::set_permissions(&frozen, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = fingerprint(&frozen);
    for name in ["alpha", "beta", "frozen"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P384", ""),
        );
    }
    install.manifest("delta.yaml", &manifest("delta", "ECC_NIST_P256", ""));
    let run = as_nobody(&install, &["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("4 keys, 3 changed, 1 failed"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("key \"frozen\"") && run.stderr.contains(&*frozen.to_string_lossy()),
        "{}",
        run.stderr
    );
    assert!(fingerprint_diff(&before, &fingerprint(&frozen)).is_empty());
    for name in ["alpha", "beta", "delta"] {
        assert_current_complete(&install.key_dir(name));
    }
    assert_current_complete(&frozen);
    std::fs::set_permissions(&frozen, std::fs::Permissions::from_mode(0o750)).unwrap();
    let run = as_nobody(&install, &["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(no_temporaries(&install.state()), Vec::<PathBuf>::new());
}

#[test]
fn a_read_only_mount_fails_that_key_only_even_for_root() {
    if !can_mount() {
        eprintln!(
            "skipping: cannot bind-mount here (needs CAP_SYS_ADMIN); see a_read_only_output_directory_fails_that_key_only"
        );
        return;
    }
    let install = Install::new("");
    for name in ["alpha", "frozen"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", ""),
        );
    }
    install.run_once(0);
    let frozen = install.key_dir("frozen");
    let _bind = Mount::new(&["--bind", &frozen.to_string_lossy()], &frozen);
    let _ro = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&frozen)
        .status()
        .unwrap();
    assert!(_ro.success());
    let before = fingerprint(&frozen);
    for name in ["alpha", "frozen"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P384", ""),
        );
    }
    let run = install.run_once(1);
    assert!(
        run.stdout.contains("2 keys, 1 changed, 1 failed"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("key \"frozen\""), "{}", run.stderr);
    assert!(fingerprint_diff(&before, &fingerprint(&frozen)).is_empty());
    assert_current_complete(&install.key_dir("alpha"));
    assert_current_complete(&frozen);
}

#[test]
fn a_fifo_as_the_local_keyring_never_hangs_keyprov() {
    let install = Install::new("");
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    install.run_once(0);
    let keyring = install.state().join("local-kms.keyring");
    std::fs::remove_file(&keyring).unwrap();
    nix::unistd::mkfifo(&keyring, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for args in [&["verify"][..], &["rotate", "alpha", "--now"]] {
        let run = run_with_deadline(install.command(args), DEADLINE)
            .unwrap_or_else(|| panic!("keyprov {args:?} hung on a FIFO keyring"));
        assert_eq!(run.code, 1, "{args:?}: {}", run.all());
        assert!(
            run.all().contains(&*keyring.to_string_lossy()),
            "{args:?}: {}",
            run.all()
        );
    }
}
