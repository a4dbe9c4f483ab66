//! `keyprov decrypt --out`: only a new path or a regular file takes the private key; a device,
//! a symlink, a FIFO or a directory is refused and left exactly as it is. `--out -` is stdout;
//! `--version` takes `1` or `v0001`.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

fn installed() -> Install {
    let install = Install::new("");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    install.run_once(0);
    install
}

fn decrypt_to(install: &Install, out: &std::path::Path) -> Run {
    install.keyprov(&["decrypt", "k", "--out", out.to_str().unwrap()])
}

#[test]
fn stdout_a_new_path_and_a_regular_file_take_the_key() {
    let install = installed();
    let stdout = install.keyprov(&["decrypt", "k"]);
    assert_eq!(stdout.code, 0, "{}", stdout.all());
    assert!(stdout.stdout.starts_with("-----BEGIN PRIVATE KEY-----"));
    let dash = install.keyprov(&["decrypt", "k", "--out", "-"]);
    assert_eq!(
        (dash.code, &dash.stdout),
        (0, &stdout.stdout),
        "{}",
        dash.all()
    );
    assert!(!install.root().join("-").exists(), "no file named -");
    for version in ["1", "v0001", "v1"] {
        let run = install.keyprov(&["decrypt", "k", "--version", version]);
        assert_eq!(
            (run.code, &run.stdout),
            (0, &stdout.stdout),
            "{version}: {}",
            run.all()
        );
    }
    let bad = install.keyprov(&["decrypt", "k", "--version", "v00x1"]);
    assert_eq!(bad.code, 64, "{}", bad.all());
    assert!(bad.stderr.contains("(v0001)"), "{}", bad.stderr);

    let new = install.root().join("new.pem");
    assert_eq!(decrypt_to(&install, &new).code, 0);
    assert_eq!(std::fs::read_to_string(&new).unwrap(), stdout.stdout);
    let existing = install.root().join("existing.pem");
    std::fs::write(&existing, "old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = decrypt_to(&install, &existing);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), stdout.stdout);
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(leftovers(install.root()).is_empty());
}

#[test]
fn a_symlink_a_fifo_and_a_directory_are_refused_and_left() {
    let install = installed();
    let target = install.root().join("target.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = install.root().join("link.pem");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = install.root().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dir = install.root().join("dir");
    std::fs::create_dir(&dir).unwrap();
    for (path, kind) in [
        (&link, "a symbolic link"),
        (&fifo, "a FIFO"),
        (&dir, "a directory"),
    ] {
        let before = fingerprint(install.root());
        let run = decrypt_to(&install, path);
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.stderr
                .contains(&format!("--out {}: it is {kind}", path.display()))
                && run.stderr.contains("nothing was written"),
            "{}",
            run.stderr
        );
        assert!(!run.all().contains("PRIVATE KEY"), "{}", run.all());
        let diff = fingerprint_diff(&before, &fingerprint(install.root()));
        assert!(diff.is_empty(), "{kind}: {diff:?}");
    }
}

#[test]
fn dev_null_in_a_private_mount_namespace_stays_a_device() {
    let install = installed();
    if !can_mount() {
        eprintln!("skipping: cannot mount here (needs root), /dev/null not tried");
        return;
    }
    // A private mount namespace with its own tmpfs /dev holding a fresh null device: the
    // machine's /dev is never at risk, even if keyprov replaced the node.
    let script = format!(
        "set -e; mount -t tmpfs -o size=64k keyprov-dev /dev; mknod -m 666 /dev/null c 1 3; \
         set +e; {} decrypt k --config {} --out /dev/null; echo \"rc=$?\"; \
         stat -c '%F %t:%T %a' /dev/null; ls -A /dev",
        env!("CARGO_BIN_EXE_keyprov"),
        install.config().display()
    );
    let run: Run = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
        .into();
    assert!(run.stdout.contains("rc=1"), "{}", run.all());
    assert!(
        run.stdout.contains("character special file 1:3 666"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.trim_end().ends_with("null"),
        "nothing beside it: {}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("--out /dev/null: it is a character device"),
        "{}",
        run.stderr
    );
    // The machine's own /dev/null is untouched too.
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == libc::makedev(1, 3));
}
