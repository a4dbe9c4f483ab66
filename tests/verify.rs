//! `keyprov verify` against tampered state: every output, every file, every problem reported
//! with its path, exit 1.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `alpha` (two file outputs) and `beta`, both with includePlaintext, generation 1 everywhere.
fn install() -> Install {
    let install = Install::new("");
    let spec = "ECC_NIST_P256";
    install.manifest(
        "alpha.yaml",
        &format!(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: alpha\nspec:\n  keyPairSpec: {spec}\n  kmsKeyId: alias/test\n  includePlaintext: true\n  outputs:\n    - file: {{}}\n    - file: {{dir: alpha-copy}}\n"
        ),
    );
    install.manifest(
        "beta.yaml",
        &manifest("beta", spec, "  includePlaintext: true\n"),
    );
    install.run_once(0);
    install
}

/// meta.json text with another generation.
fn with_generation(meta: &str, generation: u32) -> String {
    let mut value: serde_json::Value = serde_json::from_str(meta).unwrap();
    value["generation"] = generation.into();
    value.to_string()
}

fn v1(install: &Install, dir: &str) -> PathBuf {
    install.state().join(dir).join("v0001")
}

/// Runs verify; asserts exit 1, that `beta` is still ok, and that every `(file, words)` has a
/// FAILED line for alpha naming that file and containing those words. Returns the stdout.
fn assert_fails(install: &Install, expected: &[(&Path, &str)]) -> String {
    let run = install.keyprov(&["verify"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("ok      beta generation 1"),
        "{}",
        run.stdout
    );
    for (path, words) in expected {
        let prefix = format!("FAILED  alpha: {}: ", path.display());
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "expected a line starting {prefix:?} containing {words:?}:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("ok      alpha"), "{}", run.stdout);
    run.stdout
}

#[test]
fn untouched_state_verifies() {
    let install = install();
    let run = install.keyprov(&["verify"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        run.stdout,
        "ok      alpha generation 1\nok      beta generation 1\n"
    );
}

#[test]
fn each_tampered_file_fails_verify_naming_it() {
    let install = install();
    let alpha = v1(&install, "keys/alpha");
    let copy = v1(&install, "alpha-copy");
    let beta = v1(&install, "keys/beta");
    let garbage = b"garbage\n".as_slice();

    type Tamper<'a> = (&'a str, PathBuf, Vec<u8>, &'a str);
    let meta = std::fs::read_to_string(alpha.join("meta.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let sha = value["publicKeySha256"].as_str().unwrap();
    let wrong_sha = meta.replace(sha, &"0".repeat(64));
    let cases: Vec<Tamper> = vec![
        (
            "wrong publicKeySha256",
            alpha.join("meta.json"),
            wrong_sha.into_bytes(),
            "publicKeySha256 0000",
        ),
        (
            "garbage private.enc",
            copy.join("private.enc"),
            garbage.to_vec(),
            "cannot decrypt",
        ),
        (
            "another key's public.pem",
            alpha.join("public.pem"),
            std::fs::read(beta.join("public.pem")).unwrap(),
            "does not match the private key",
        ),
        (
            "garbage public.pem",
            copy.join("public.pem"),
            garbage.to_vec(),
            "not PEM",
        ),
        (
            "another key's private.pem",
            alpha.join("private.pem"),
            std::fs::read(beta.join("private.pem")).unwrap(),
            "is not the private key of this version",
        ),
        (
            "meta.json of another generation",
            copy.join("meta.json"),
            with_generation(&meta, 2).into_bytes(),
            "generation is 2, expected 1",
        ),
    ];
    for (what, path, contents, words) in cases {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, &contents).unwrap();
        let stdout = assert_fails(&install, &[(&path, words)]);
        eprintln!("{what}:\n{stdout}");
        std::fs::write(&path, original).unwrap();
    }
    let run = install.keyprov(&["verify"]);
    assert_eq!(run.code, 0, "restored: {}", run.all());
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let install = install();
    let alpha = v1(&install, "keys/alpha");
    let copy = v1(&install, "alpha-copy");
    std::fs::write(alpha.join("public.pem"), "garbage").unwrap();
    std::fs::write(copy.join("private.enc"), "garbage").unwrap();
    std::fs::remove_file(copy.join("private.pem")).unwrap();
    assert_fails(
        &install,
        &[
            (&alpha.join("public.pem"), "not PEM"),
            (&copy.join("private.enc"), "cannot decrypt"),
            (&copy.join("private.pem"), "missing"),
        ],
    );
}

#[test]
fn a_symlinked_file_is_not_followed() {
    let install = install();
    let alpha = v1(&install, "keys/alpha");
    let outside = install.root().join("outside.pem");
    std::fs::copy(alpha.join("public.pem"), &outside).unwrap();
    std::fs::remove_file(alpha.join("public.pem")).unwrap();
    std::os::unix::fs::symlink(&outside, alpha.join("public.pem")).unwrap();
    assert_fails(&install, &[(&alpha.join("public.pem"), "symbolic link")]);
}

#[test]
fn outputs_holding_different_versions_fail() {
    let install = install();
    let current = install.state().join("alpha-copy/current");
    std::fs::remove_file(&current).unwrap();
    assert_fails(&install, &[(&current, "absent here, v0001 in")]);
}

#[test]
fn next_is_checked_too() {
    let install = install();
    let dir = install.key_dir("alpha");
    let v2 = dir.join("v0002");
    let copy = install.state().join("alpha-copy");
    // A staged generation 2 in both outputs, then damaged in one.
    for out in [&dir, &copy] {
        let from = out.join("v0001");
        let to = out.join("v0002");
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        let meta = std::fs::read_to_string(to.join("meta.json")).unwrap();
        std::fs::write(to.join("meta.json"), with_generation(&meta, 2)).unwrap();
        std::os::unix::fs::symlink("v0002", out.join("next")).unwrap();
    }
    let run = install.keyprov(&["verify"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("ok      alpha generation 1 (next 2)"),
        "{}",
        run.stdout
    );
    std::fs::write(v2.join("private.enc"), "garbage").unwrap();
    assert_fails(&install, &[(&v2.join("private.enc"), "cannot decrypt")]);
}
