//! `publicFormats: [jwk, openssh]` checked by independent tools: `ssh-keygen` fingerprints of
//! `public.pub` against those it derives from `public.pem`, and Python's joserfc verifying a
//! JWT signed with the decrypted private key against `jwks.json` (key picked by `kid`), the
//! thumbprint recomputed in Python. A staged rotation shows the next key in `jwks.json` before
//! it becomes current, and the previous one after.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::{Install, manifest};

const FORMATS: &str = "  rotation: {every: 30d, publishAhead: 7d}\n";

fn with_formats(name: &str, spec: &str, formats: &str) -> String {
    manifest(name, spec, FORMATS).replace(
        "    - file: {}\n",
        &format!("    - file: {{publicFormats: [{formats}]}}\n"),
    )
}

/// `ssh-keygen -l -f FILE`: bits, fingerprint and key type, without the comment.
fn ssh_fingerprint(file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(file)
        .output()
        .expect("ssh-keygen runs (Debian's openssh-client)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ssh-keygen -l -f {}: {text}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    format!("{} {} {}", words[0], words[1], words[words.len() - 1])
}

/// The OpenSSH form of a PEM public key, made without keyprov: `ssh-keygen -i -m PKCS8`, or
/// Python's cryptography for Ed25519 (which this ssh-keygen cannot import from PKCS#8).
fn openssh_of_pem(pem: &Path, out: &Path) {
    let converted = Command::new("ssh-keygen")
        .args(["-i", "-m", "PKCS8", "-f"])
        .arg(pem)
        .output()
        .unwrap();
    let line = if converted.status.success() {
        converted.stdout
    } else {
        let script = "import sys\nfrom cryptography.hazmat.primitives import serialization as s\n\
                      k = s.load_pem_public_key(open(sys.argv[1], 'rb').read())\n\
                      sys.stdout.buffer.write(k.public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH))";
        common::python_stdout(
            [OsStr::new("-c"), OsStr::new(script), pem.as_os_str()],
            "to OpenSSH",
        )
    };
    std::fs::write(out, line).unwrap();
}

/// Runs tests/scripts/jose_check.py: thumbprint, numbers, and a JWT round trip through
/// `jwks.json`. Returns its JSON report.
fn jose_check(install: &Install, name: &str, version: &str) -> serde_json::Value {
    let dir = install.key_dir(name);
    let private = install.root().join(format!("{name}.key.pem"));
    let decrypt = install.keyprov(&[
        "decrypt",
        name,
        "--version",
        version.trim_start_matches("v0").trim_start_matches('0'),
        "--out",
        private.to_str().unwrap(),
    ]);
    assert_eq!(decrypt.code, 0, "{}", decrypt.all());
    let out = run_jose_check(
        &dir.join("jwks.json"),
        &dir.join(version).join("public.jwk"),
        &private,
        &dir.join(version).join("public.pem"),
        &format!("jose_check {name} {version}"),
    );
    std::fs::remove_file(&private).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// tests/scripts/jose_check.py SET JWK PRIVATE PUBLIC; asserts it succeeds, returns stdout.
fn run_jose_check(set: &Path, jwk: &Path, private: &Path, public: &Path, context: &str) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/jose_check.py");
    common::python_stdout(
        [
            OsStr::new("-W"),
            OsStr::new("ignore"),
            script.as_os_str(),
            set.as_os_str(),
            jwk.as_os_str(),
            private.as_os_str(),
            public.as_os_str(),
        ],
        context,
    )
}

/// Activates `name`'s staged generation the way the daemon does, at its time: a pass 8 days on
/// (past publishAhead: 7d). `rotate --now` would not: it makes a fresh pair.
fn activate_staged(install: &Install) {
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(8 * 86_400);
    let run = install.keyprov_env(
        &["run", "--once"],
        &[("KEYPROV_TEST_NOW", &keyprov::schedule::format_time(later))],
    );
    assert_eq!(run.code, 0, "{}", run.all());
}

fn jwks_kids(install: &Install, name: &str) -> Vec<String> {
    let text = std::fs::read(install.key_dir(name).join("jwks.json")).unwrap();
    let set: serde_json::Value = serde_json::from_slice(&text).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(install: &Install, name: &str, version: &str) -> String {
    let path = install.key_dir(name).join(version).join("public.jwk");
    let jwk: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jwk["kid"].as_str().unwrap().to_string()
}

#[test]
fn openssh_keys_have_the_fingerprints_ssh_keygen_derives_from_the_pem() {
    let install = Install::new("");
    let specs = [
        ("rsa", "RSA_2048", "ssh-rsa", "(RSA)"),
        ("p256", "ECC_NIST_P256", "ecdsa-sha2-nistp256", "(ECDSA)"),
        ("p384", "ECC_NIST_P384", "ecdsa-sha2-nistp384", "(ECDSA)"),
        ("p521", "ECC_NIST_P521", "ecdsa-sha2-nistp521", "(ECDSA)"),
        ("ed", "ECC_NIST_EDWARDS25519", "ssh-ed25519", "(ED25519)"),
    ];
    for (name, spec, _, _) in specs {
        install.manifest(
            &format!("{name}.yaml"),
            &with_formats(name, spec, "openssh"),
        );
    }
    install.run_once(0);
    for (name, _, kind, label) in specs {
        let version = install.key_dir(name).join("v0001");
        let line = std::fs::read_to_string(version.join("public.pub")).unwrap();
        assert!(line.starts_with(&format!("{kind} ")), "{line}");
        assert!(
            line.ends_with(&format!(" keyprov:{name}:v0001\n")),
            "{line}"
        );
        let converted = install.root().join(format!("{name}.converted.pub"));
        openssh_of_pem(&version.join("public.pem"), &converted);
        let ours = ssh_fingerprint(&version.join("public.pub"));
        assert_eq!(ours, ssh_fingerprint(&converted), "{name}");
        assert!(ours.ends_with(label), "{ours}");
        // Mode as public.pem; no jwk asked, so no JWKS.
        assert!(!version.join("public.jwk").exists());
        assert!(!install.key_dir(name).join("jwks.json").exists());
    }
}

#[test]
fn a_jwt_signed_with_each_key_verifies_against_jwks_json() {
    let install = Install::new("");
    let specs = [
        ("rsa", "RSA_2048", "RS256"),
        ("rsa4096", "RSA_4096", "RS256"),
        ("p256", "ECC_NIST_P256", "ES256"),
        ("p384", "ECC_NIST_P384", "ES384"),
        ("p521", "ECC_NIST_P521", "ES512"),
        ("k1", "ECC_SECG_P256K1", "ES256K"),
        ("ed", "ECC_NIST_EDWARDS25519", "EdDSA"),
    ];
    for (name, spec, _) in specs {
        let formats = if spec == "ECC_SECG_P256K1" {
            "jwk"
        } else {
            "jwk, openssh"
        };
        install.manifest(&format!("{name}.yaml"), &with_formats(name, spec, formats));
    }
    install.run_once(0);
    for (name, _, alg) in specs {
        let report = jose_check(&install, name, "v0001");
        assert_eq!(report["alg"], alg, "{name}");
        assert_eq!(
            jwks_kids(&install, name),
            vec![kid_of(&install, name, "v0001")]
        );
        let mode = std::fs::metadata(install.key_dir(name).join("jwks.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
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
fn jwks_json_holds_the_next_key_before_it_is_current_and_the_previous_after() {
    let install = Install::new("");
    install.manifest("sig.yaml", &with_formats("sig", "ECC_NIST_P256", "jwk"));
    install.run_once(0);
    let first = kid_of(&install, "sig", "v0001");
    let rotate = install.keyprov(&["rotate", "sig"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    assert_eq!(
        common::link(&install.key_dir("sig"), "next").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        common::link(&install.key_dir("sig"), "current").as_deref(),
        Some("v0001")
    );
    let second = kid_of(&install, "sig", "v0002");
    assert_ne!(first, second);
    // Published: verifiers already trust the next key; the signer still uses the current one.
    assert_eq!(
        jwks_kids(&install, "sig"),
        vec![second.clone(), first.clone()]
    );
    let report = jose_check(&install, "sig", "v0002");
    assert_eq!(report["kids"], serde_json::json!([second, first]));
    jose_check(&install, "sig", "v0001");
    // Activated: current and previous.
    activate_staged(&install);
    assert_eq!(
        common::link(&install.key_dir("sig"), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        jwks_kids(&install, "sig"),
        vec![second.clone(), first.clone()]
    );
    assert!(common::link(&install.key_dir("sig"), "next").is_none());
    // A third generation, straight to current with --now: the oldest leaves the set.
    let third_run = install.keyprov(&["rotate", "sig", "--now"]);
    assert_eq!(third_run.code, 0, "{}", third_run.all());
    let third = kid_of(&install, "sig", "v0003");
    assert_eq!(jwks_kids(&install, "sig"), vec![third, second]);
}

#[test]
fn with_keep_0_jwks_json_never_lists_a_pruned_version_and_verify_passes_after_each_rotation() {
    let install = Install::new("");
    let spec = "  rotation: {every: 30d, publishAhead: 7d, keep: 0}\n";
    let text = manifest("sig", "ECC_NIST_P256", spec)
        .replace("    - file: {}\n", "    - file: {publicFormats: [jwk]}\n");
    install.manifest("sig.yaml", &text);
    install.run_once(0);
    let dir = install.key_dir("sig");
    let verify = |context: &str| {
        let run = install.keyprov(&["verify"]);
        assert_eq!(run.code, 0, "verify {context}: {}", run.all());
    };
    verify("after the first run");
    for generation in 2..=4u32 {
        // Staged (publishAhead): the next key is trusted, the current one still signs.
        let staged = install.keyprov(&["rotate", "sig"]);
        assert_eq!(staged.code, 0, "{}", staged.all());
        let next = format!("v{generation:04}");
        let current = format!("v{:04}", generation - 1);
        assert_eq!(
            jwks_kids(&install, "sig"),
            vec![
                kid_of(&install, "sig", &next),
                kid_of(&install, "sig", &current)
            ]
        );
        verify(&format!("with {next} staged"));
        // Activated: keep 0 prunes the old current at once, and the set follows.
        activate_staged(&install);
        assert_eq!(common::link(&dir, "current"), Some(next.clone()));
        assert_eq!(common::versions(&dir), vec![next.clone()], "keep 0");
        assert_eq!(
            jwks_kids(&install, "sig"),
            vec![kid_of(&install, "sig", &next)],
            "jwks.json lists exactly the current key right after activating {next}"
        );
        verify(&format!("right after activating {next}"));
    }
}

#[test]
fn formats_added_later_are_written_into_kept_versions_and_removed_when_dropped() {
    let install = Install::new("");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", FORMATS));
    install.run_once(0);
    let rotate = install.keyprov(&["rotate", "k", "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    install.manifest(
        "k.yaml",
        &with_formats("k", "ECC_NIST_P256", "jwk, openssh"),
    );
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout.contains("jwks.json is missing"),
        "{}",
        plan.stdout
    );
    let run = install.run_once(0);
    assert!(run.stdout.contains("0 provider calls"), "{}", run.all());
    let dir = install.key_dir("k");
    for version in ["v0001", "v0002"] {
        assert!(dir.join(version).join("public.jwk").exists(), "{version}");
        assert!(dir.join(version).join("public.pub").exists(), "{version}");
    }
    assert_eq!(
        jwks_kids(&install, "k"),
        vec![
            kid_of(&install, "k", "v0002"),
            kid_of(&install, "k", "v0001")
        ]
    );
    // A tampered public.jwk is drift, rewritten from the public key.
    std::fs::write(dir.join("v0002/public.jwk"), "{}").unwrap();
    let plan = install.keyprov(&["plan"]);
    assert!(
        plan.stdout
            .contains("v0002/public.jwk does not match its public key"),
        "{}",
        plan.stdout
    );
    install.run_once(0);
    jose_check(&install, "k", "v0002");
    // Dropped again: the files and the set go.
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", FORMATS));
    install.run_once(0);
    assert!(!dir.join("jwks.json").exists());
    assert!(!dir.join("v0002/public.jwk").exists());
    assert!(!dir.join("v0001/public.pub").exists());
}

#[test]
fn formats_a_spec_cannot_have_are_validation_errors_naming_the_key() {
    let install = Install::new("");
    install.manifest("k1.yaml", &with_formats("k1", "ECC_SECG_P256K1", "openssh"));
    install.manifest("sm2.yaml", &with_formats("sm2", "SM2", "jwk"));
    install.manifest("twice.yaml", &with_formats("twice", "RSA_2048", "jwk, jwk"));
    install.manifest("typo.yaml", &with_formats("typo", "RSA_2048", "pgp"));
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    for wanted in [
        "k1.yaml:",
        "spec.outputs[0].file.publicFormats: key \"k1\" (ECC_SECG_P256K1) cannot have openssh public keys",
        "spec.outputs[0].file.publicFormats: key \"sm2\" (SM2) cannot have jwk public keys",
        "spec.outputs[0].file.publicFormats[1]: \"jwk\" is listed twice",
        "publicFormats[0]",
        "pgp",
    ] {
        assert!(run.stderr.contains(wanted), "{wanted}: {}", run.stderr);
    }
    assert!(!install.state().join("keys").exists());
}

fn labelled(name: &str, team: &str, extra: &str) -> String {
    manifest(name, "ECC_NIST_P256", extra).replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  labels: {{team: {team}}}\n"),
    )
}

fn kids_of_set(path: &Path) -> Vec<String> {
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The RFC 7638 thumbprint of a P-256 public.pem, computed in Python (cryptography for the
/// numbers, hashlib for the digest), independently of keyprov's JWK code. (joserfc 1.5's own
/// `thumbprint()` is not used: it drops leading zero bytes of EC coordinates, which RFC 7518
/// §6.2.1.2 forbids, and so disagrees for about 1 key in 128.)
fn kid_from_pem(pem: &Path) -> String {
    let script = "import base64, hashlib, json, sys\n\
                  from cryptography.hazmat.primitives import serialization as s\n\
                  n = s.load_pem_public_key(open(sys.argv[1], 'rb').read()).public_numbers()\n\
                  b = lambda i: base64.urlsafe_b64encode(i.to_bytes(32, 'big')).rstrip(b'=').decode()\n\
                  c = json.dumps({'crv': 'P-256', 'kty': 'EC', 'x': b(n.x), 'y': b(n.y)}, \
                  separators=(',', ':'), sort_keys=True)\n\
                  print(base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode())";
    let out = common::python_stdout(
        [OsStr::new("-c"), OsStr::new(script), pem.as_os_str()],
        "thumbprint",
    );
    String::from_utf8(out).unwrap().trim().to_string()
}

#[test]
fn a_config_jwks_set_merges_the_keys_its_selector_picks() {
    let install = Install::new(
        "jwks:\n  - path: issuer/payments.json\n    selector: {labels: {team: payments}}",
    );
    install.manifest(
        "a.yaml",
        &labelled(
            "pay-a",
            "payments",
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        ),
    );
    install.manifest("b.yaml", &labelled("pay-b", "payments", ""));
    install.manifest("c.yaml", &labelled("other", "search", ""));
    install.run_once(0);
    let set = install.state().join("issuer/payments.json");
    let pem = |name: &str, version: &str| install.key_dir(name).join(version).join("public.pem");
    let (a1, b1) = (
        kid_from_pem(&pem("pay-a", "v0001")),
        kid_from_pem(&pem("pay-b", "v0001")),
    );
    assert_eq!(kids_of_set(&set), vec![a1.clone(), b1.clone()]);
    let mode = std::fs::metadata(&set).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
    // Converged: not rewritten.
    let before = std::fs::metadata(&set).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    install.run_once(0);
    assert_eq!(std::fs::metadata(&set).unwrap().modified().unwrap(), before);

    // A staged rotation: the set has the next key before it is current.
    let rotate = install.keyprov(&["rotate", "pay-a"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    let a2 = kid_from_pem(&pem("pay-a", "v0002"));
    assert_eq!(kids_of_set(&set), vec![a2.clone(), a1.clone(), b1.clone()]);
    activate_staged(&install);
    assert_eq!(kids_of_set(&set), vec![a2, a1, b1.clone()]);

    // A JWT signed by pay-b verifies against the merged set (joserfc, key by kid).
    let dir = install.key_dir("pay-b");
    let private = install.root().join("pay-b.key.pem");
    let decrypt = install.keyprov(&["decrypt", "pay-b", "--out", private.to_str().unwrap()]);
    assert_eq!(decrypt.code, 0, "{}", decrypt.all());
    let own = install.root().join("pay-b.jwk");
    let set_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&set).unwrap()).unwrap();
    let mine = set_json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == b1.as_str())
        .unwrap();
    std::fs::write(&own, serde_json::to_vec(mine).unwrap()).unwrap();
    run_jose_check(
        &set,
        &own,
        &private,
        &dir.join("v0001/public.pem"),
        "pay-b through the merged set",
    );

    // A manifest breaks: its key keeps its entries (they must keep verifying).
    let kept = std::fs::read(&set).unwrap();
    install.manifest("b.yaml", &labelled("pay-b", "payments", "  bogus: 1\n"));
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(std::fs::read(&set).unwrap(), kept);
}

#[test]
fn a_config_jwks_path_outside_the_roots_is_refused() {
    let bad = [
        "../escape.json",
        "/tmp/elsewhere.json",
        "local-kms.keyring",
        "retry/k.json",
        "keys/k/jwks.json",
    ];
    let entries: Vec<String> = bad.iter().map(|p| format!("  - path: {p}")).collect();
    let install = Install::new(&format!("jwks:\n{}", entries.join("\n")));
    let run = install.keyprov(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.all());
    for i in 0..bad.len() {
        assert!(
            run.stderr.contains(&format!("jwks[{i}].path")),
            "{i}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_config_jwks_path_inside_a_key_directory_is_refused_at_run_time() {
    let install = Install::new("jwks:\n  - path: custom/k/set.json");
    install.manifest(
        "k.yaml",
        &labelled("k", "payments", "").replace("file: {}", "file: {dir: custom/k}"),
    );
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("is inside the key directory of \"k\""),
        "{}",
        run.stderr
    );
    // Published everywhere it could be, never current: the set that selects it cannot hold it.
    let dir = install.state().join("custom/k");
    assert_eq!(common::link(&dir, "current"), None);
    assert_eq!(common::link(&dir, "next").as_deref(), Some("v0001"));
    assert!(!dir.join("set.json").exists());
}

/// `keyprov ARGS` that must finish within 30 s (a FIFO must not hang it).
fn keyprov_within(install: &Install, args: &[&str]) -> common::Run {
    let mut child = install
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("keyprov {args:?} hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap().into()
}

#[test]
fn a_config_jwks_set_is_written_without_following_what_others_plant() {
    let install = Install::new(
        "jwks:\n  - path: pub/issuer/set.json\n    selector: {labels: {team: payments}}\n  \
         - path: fifo.json\n    selector: {labels: {team: payments}}\n  \
         - path: none.json\n    selector: {labels: {team: nobody}}",
    );
    install.manifest("a.yaml", &labelled("pay-a", "payments", ""));
    let outside = install.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(install.state()).unwrap();
    // A symlinked directory on the way: refused, nothing written outside.
    std::os::unix::fs::symlink(&outside, install.state().join("pub")).unwrap();
    // A FIFO where a set goes: replaced, never opened (it would block a read).
    let fifo = install.state().join("fifo.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let run = keyprov_within(&install, &["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("pub/issuer/set.json"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(std::fs::metadata(&fifo).unwrap().is_file());
    assert_eq!(kids_of_set(&fifo).len(), 1);
    // A selector that matches nothing writes nothing.
    assert!(run.stderr.contains("matches no key"), "{}", run.stderr);
    assert!(!install.state().join("none.json").exists());
    // Directories made for a set are 0755 whatever the umask, so verifiers can reach it.
    std::fs::remove_file(install.state().join("pub")).unwrap();
    let run: common::Run = Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_keyprov"))
        .args(["run", "--once", "--config"])
        .arg(install.config())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 0, "{}", run.all());
    for dir in ["pub", "pub/issuer"] {
        let mode = std::fs::metadata(install.state().join(dir))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o755,
            "{dir}"
        );
    }
}

#[test]
fn a_failing_key_keeps_its_keys_in_the_config_jwks_set() {
    let install =
        Install::new("jwks:\n  - path: set.json\n    selector: {labels: {team: payments}}");
    install.manifest("a.yaml", &labelled("pay-a", "payments", ""));
    install.manifest("b.yaml", &labelled("pay-b", "payments", ""));
    install.run_once(0);
    let set = install.state().join("set.json");
    assert_eq!(kids_of_set(&set).len(), 2);
    std::fs::remove_file(install.key_dir("pay-a").join("current")).unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(kids_of_set(&set).len(), 2);
}

#[test]
fn a_key_whose_jwks_json_cannot_be_written_is_not_activated() {
    let install = Install::new("");
    install.manifest("sig.yaml", &with_formats("sig", "ECC_NIST_P256", "jwk"));
    install.run_once(0);
    let dir = install.key_dir("sig");
    // Something foreign where the set goes: verifiers could not learn a new key, so no
    // signer may get one.
    std::fs::remove_file(dir.join("jwks.json")).unwrap();
    std::fs::create_dir(dir.join("jwks.json")).unwrap();
    let rotate = install.keyprov(&["rotate", "sig", "--now"]);
    assert_eq!(rotate.code, 1, "{}", rotate.all());
    assert!(rotate.stderr.contains("jwks.json"), "{}", rotate.stderr);
    assert_eq!(common::link(&dir, "current").as_deref(), Some("v0001"));
    assert!(
        common::leftovers(&dir).is_empty(),
        "{:?}",
        common::leftovers(&dir)
    );
    // Cleared: the run finishes what was published (the set takes it first), a rotation goes
    // through, the set holds both keys.
    std::fs::remove_dir(dir.join("jwks.json")).unwrap();
    install.run_once(0);
    let before = common::link(&dir, "current").unwrap();
    let rotate = install.keyprov(&["rotate", "sig", "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    let current = common::link(&dir, "current").unwrap();
    assert_ne!(current, before);
    assert_eq!(
        jwks_kids(&install, "sig"),
        vec![
            kid_of(&install, "sig", &current),
            kid_of(&install, "sig", &before)
        ]
    );
}

#[test]
fn verify_checks_the_public_files_verifiers_consume() {
    let install = Install::new("");
    install.manifest(
        "a.yaml",
        &with_formats("a", "ECC_NIST_P256", "jwk, openssh"),
    );
    install.manifest(
        "b.yaml",
        &with_formats("b", "ECC_NIST_P256", "jwk, openssh"),
    );
    install.run_once(0);
    let ok = install.keyprov(&["verify"]);
    assert_eq!(ok.code, 0, "{}", ok.all());
    // Another key's public files swapped in: verify must not say ok.
    let (a, b) = (install.key_dir("a"), install.key_dir("b"));
    for file in ["v0001/public.jwk", "v0001/public.pub", "jwks.json"] {
        std::fs::copy(b.join(file), a.join(file)).unwrap();
    }
    let bad = install.keyprov(&["verify"]);
    assert_eq!(bad.code, 1, "{}", bad.all());
    for wanted in [
        "v0001/public.jwk does not match its public key",
        "v0001/public.pub does not match its public key",
        "jwks.json does not hold next, current and previous",
    ] {
        assert!(bad.all().contains(wanted), "{wanted}: {}", bad.all());
    }
}

/// The JWK Set's bytes are what `serde_json` writes for `{"keys": [...]}` pretty, plus a
/// newline, whether the keys are values or references to them (the config's set is built from
/// references): the bytes a verifier and the drift check compare do not depend on how it is
/// built.
#[test]
fn jwks_bytes_are_the_pretty_json_of_the_keys_member() {
    let keys = [
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "kid": "k1"}),
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "c", "kid": "k2"}),
    ];
    for set in [&keys[..], &keys[..1], &[]] {
        let mut want = serde_json::to_vec_pretty(&serde_json::json!({ "keys": set })).unwrap();
        want.push(b'\n');
        assert_eq!(keyprov::public_formats::jwks(set), want);
        let refs: Vec<&serde_json::Value> = set.iter().collect();
        assert_eq!(keyprov::public_formats::jwks(&refs), want);
    }
}

#[test]
fn a_key_planted_in_previous_is_never_published() {
    // `previous` is not verified by observation; its public key is checked against its
    // meta.json when jwks.json is made (also behind a recorded stamp of the files).
    let install = Install::new("");
    install.manifest("sig.yaml", &with_formats("sig", "ECC_NIST_P256", "jwk"));
    install.manifest("other.yaml", &with_formats("other", "ECC_NIST_P256", "jwk"));
    install.run_once(0);
    let first = kid_of(&install, "sig", "v0001");
    let now = install.keyprov(&["rotate", "sig", "--now"]);
    assert_eq!(now.code, 0, "{}", now.all());
    let second = kid_of(&install, "sig", "v0002");
    assert_eq!(
        jwks_kids(&install, "sig"),
        vec![second.clone(), first.clone()]
    );
    // Old enough to be recorded, then recorded by a no-op.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    install.run_once(0);
    // Another key's public key copied over previous's.
    let planted = kid_of(&install, "other", "v0001");
    std::fs::copy(
        install.key_dir("other").join("v0001/public.pem"),
        install.key_dir("sig").join("v0001/public.pem"),
    )
    .unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.all()
            .contains("its public key does not match its meta.json (publicKeySha256): left out"),
        "{}",
        run.all()
    );
    assert!(run.all().contains("sig/v0001"), "{}", run.all());
    // Left out: what cannot be verified is not published (the real key cannot be told).
    let kids = jwks_kids(&install, "sig");
    assert!(!kids.contains(&planted), "published: {kids:?}");
    assert!(!kids.contains(&first), "published: {kids:?}");
    assert_eq!(kids, vec![second]);
}

#[test]
fn rotate_now_replaces_a_damaged_current_of_a_key_with_jwk() {
    // README "Damage": `rotate NAME --now` replaces a damaged pair; the damaged one becomes
    // previous, which jwks.json leaves out instead of failing the key.
    let install = Install::new("");
    install.manifest("sig.yaml", &with_formats("sig", "ECC_NIST_P256", "jwk"));
    install.run_once(0);
    let pem = install.key_dir("sig").join("v0001/public.pem");
    let mut text = std::fs::read_to_string(&pem).unwrap();
    let at = text.find('\n').unwrap() + 1;
    let replaced = if &text[at..at + 1] == "A" { "B" } else { "A" };
    text.replace_range(at..at + 1, replaced);
    std::fs::write(&pem, text).unwrap();
    let now = install.keyprov(&["rotate", "sig", "--now"]);
    assert_eq!(now.code, 0, "{}", now.all());
    assert_eq!(
        common::link(&install.key_dir("sig"), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        jwks_kids(&install, "sig"),
        vec![kid_of(&install, "sig", "v0002")]
    );
    install.run_once(0);
}
