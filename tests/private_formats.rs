//! `privateFormats: [openssh]` checked by OpenSSH itself: `ssh-keygen -y -f private.ssh` prints
//! the public key of `public.pub` for every key type OpenSSH has; the file is 0600, repaired in
//! place when altered, removed when no longer asked for; specs OpenSSH lacks are refused by
//! validation, naming the key; `decrypt` still returns the PKCS#8 key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{Install, manifest};

const SPECS: [(&str, &str); 6] = [
    ("rsa", "RSA_2048"),
    ("rsa4096", "RSA_4096"),
    ("p256", "ECC_NIST_P256"),
    ("p384", "ECC_NIST_P384"),
    ("p521", "ECC_NIST_P521"),
    ("ed", "ECC_NIST_EDWARDS25519"),
];

fn with_openssh(name: &str, spec: &str, plaintext: bool) -> String {
    manifest(name, spec, &format!("  includePlaintext: {plaintext}\n")).replace(
        "    - file: {}\n",
        "    - file: {publicFormats: [openssh], privateFormats: [openssh]}\n",
    )
}

/// `ssh-keygen -y -f FILE`: the key type and base64 blob of the public key OpenSSH derives
/// from the private key file.
fn ssh_keygen_public(file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(file)
        .output()
        .expect("ssh-keygen runs (Debian's openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen -y -f {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    key_part(&String::from_utf8_lossy(&out.stdout))
}

/// The first two words of an OpenSSH public key line (type and blob, no comment).
fn key_part(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn ssh_keygen_loads_the_private_key_of_every_openssh_key_type() {
    let install = Install::new("");
    for (name, spec) in SPECS {
        install.manifest(&format!("{name}.yaml"), &with_openssh(name, spec, true));
    }
    install.run_once(0);
    for (name, spec) in SPECS {
        let version = install.key_dir(name).join("v0001");
        let private = version.join("private.ssh");
        let text = std::fs::read_to_string(&private).unwrap();
        assert!(
            text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
            "{name}"
        );
        assert_eq!(mode(&private), 0o600, "{name}");
        let public = std::fs::read_to_string(version.join("public.pub")).unwrap();
        assert_eq!(ssh_keygen_public(&private), key_part(&public), "{name}");
        // private.pem stays, and decrypt still returns the PKCS#8 key of the pair.
        assert!(version.join("private.pem").exists());
        let pkcs8 = common::decrypt(&install, name);
        common::assert_pair_matches(spec, &pkcs8, &common::public_der(&install.key_dir(name)));
    }
    // A converged run rewrites nothing.
    let before = common::snapshot_without_fingerprints(&install.state());
    let again = install.run_once(0);
    assert!(again.stdout.contains("0 changed"), "{}", again.all());
    assert_eq!(
        before,
        common::snapshot_without_fingerprints(&install.state())
    );
}

#[test]
fn an_altered_or_missing_private_ssh_is_derived_again_and_an_unlisted_one_removed() {
    let install = Install::new("");
    for (name, spec) in [("ed", "ECC_NIST_EDWARDS25519"), ("p256", "ECC_NIST_P256")] {
        install.manifest(&format!("{name}.yaml"), &with_openssh(name, spec, true));
    }
    install.run_once(0);
    let ed = install.key_dir("ed").join("v0001/private.ssh");
    let p256 = install.key_dir("p256").join("v0001/private.ssh");
    let (ed_bytes, p256_bytes) = (std::fs::read(&ed).unwrap(), std::fs::read(&p256).unwrap());
    std::fs::write(&ed, b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n").unwrap();
    std::fs::set_permissions(&ed, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(&p256).unwrap();
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    for expected in [
        "v0001/private.ssh does not match its key pair",
        "v0001/private.ssh is missing",
    ] {
        assert!(
            verify.all().contains(expected),
            "{expected}: {}",
            verify.all()
        );
    }
    let plan = install.keyprov(&["plan"]);
    assert!(plan.stdout.contains("private.ssh"), "{}", plan.all());
    install.run_once(0);
    assert_eq!(std::fs::read(&ed).unwrap(), ed_bytes);
    assert_eq!(mode(&ed), 0o600);
    assert_eq!(std::fs::read(&p256).unwrap(), p256_bytes);
    assert_eq!(mode(&p256), 0o600);
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    // No longer listed: removed, private.pem kept. Without includePlaintext: all plaintext goes.
    install.manifest(
        "ed.yaml",
        &manifest("ed", "ECC_NIST_EDWARDS25519", "  includePlaintext: true\n"),
    );
    install.manifest(
        "p256.yaml",
        &manifest("p256", "ECC_NIST_P256", "  includePlaintext: false\n"),
    );
    install.run_once(0);
    assert!(!ed.exists());
    assert!(install.key_dir("ed").join("v0001/private.pem").exists());
    assert!(!p256.exists());
    assert!(!install.key_dir("p256").join("v0001/private.pem").exists());
}

#[test]
fn specs_without_an_openssh_type_and_keys_without_plaintext_are_refused() {
    let install = Install::new("");
    install.manifest(
        "k1.yaml",
        &with_openssh("k1", "ECC_SECG_P256K1", true).replace("publicFormats: [openssh], ", ""),
    );
    install.manifest(
        "sm2.yaml",
        &with_openssh("sm2", "SM2", true).replace("publicFormats: [openssh], ", ""),
    );
    install.manifest("nopt.yaml", &with_openssh("nopt", "ECC_NIST_P256", false));
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let all = run.all();
    for expected in [
        "key \"k1\" (ECC_SECG_P256K1) cannot have openssh private keys",
        "key \"sm2\" (SM2) cannot have openssh private keys",
        "key \"nopt\" writes no plaintext private key",
        "privateFormats",
    ] {
        assert!(all.contains(expected), "{expected:?} in {all}");
    }
    install.run_once(2);
    assert!(!install.state().join("keys").exists() || !install.key_dir("k1").exists());
}
