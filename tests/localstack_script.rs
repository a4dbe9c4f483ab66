//! `scripts/localstack kms-key` as README's "Trying provider: aws on LocalStack" runs it, in a
//! fresh clone: LocalStack running (started elsewhere), no virtualenv here; and `scripts/test`
//! in the same fresh clone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn kms_key(endpoint: &str, alias: &str, venv: &Path) -> Run {
    let port = endpoint
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .expect("the endpoint has a port");
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/localstack"))
        .args(["kms-key", alias])
        .env("KEYPROV_LOCALSTACK_VENV", venv)
        .env("KEYPROV_LOCALSTACK_PORT", port)
        .output()
        .expect("scripts/localstack runs")
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn kms_key_works_without_the_virtualenv_and_is_idempotent() {
    let Some(endpoint) = localstack() else { return };
    // A fresh clone: the virtualenv `start` would make does not exist.
    let missing = tempfile::tempdir().unwrap();
    let venv = missing.path().join(".venv-localstack");
    let alias = format!("alias/keyprov-test-{}", uuid::Uuid::new_v4());

    let created = kms_key(&endpoint, &alias, &venv);
    assert_eq!(created.code, 0, "{}", created.all());
    let arn = created.stdout.trim().to_string();
    assert!(
        arn.starts_with("arn:aws:kms:us-east-1:"),
        "{}",
        created.all()
    );
    // The alias names that key in LocalStack's KMS.
    let described = kms_client(&endpoint)
        .await
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .unwrap();
    assert_eq!(described.key_metadata().unwrap().arn(), Some(arn.as_str()));
    // Again: the same key, no new one.
    let again = kms_key(&endpoint, &alias, &venv);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(again.stdout.trim(), arn);
    assert!(!venv.exists(), "kms-key made a virtualenv");

    let bad = kms_key(&endpoint, "keyprov", &venv);
    assert_eq!(bad.code, 2, "{}", bad.all());
    assert!(
        bad.stderr.contains("is not an alias name (alias/NAME)"),
        "{}",
        bad.all()
    );
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `scripts/test` in a fresh clone where a LocalStack started elsewhere already answers: it
/// does not start one, but still installs the virtualenv whose Python the tests' independent
/// checkers (tests/schema.rs, tests/public_formats.rs, ...) need. Run on a copy of the script
/// with `scripts/localstack` and `cargo` replaced by stand-ins that record their arguments.
#[test]
fn scripts_test_installs_the_virtualenv_when_localstack_already_runs() {
    let clone = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let calls = clone.path().join("calls");
    std::fs::create_dir_all(clone.path().join("scripts")).unwrap();
    std::fs::create_dir_all(clone.path().join("tests")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test"),
        clone.path().join("scripts/test"),
    )
    .unwrap();
    script(
        &clone.path().join("scripts"),
        "localstack",
        &format!("echo \"localstack $*\" >>{}\n", calls.display()),
    );
    // cargo: `deny --version` names the pinned cargo-deny; `test` prints the two suites
    // (lib, bin) a repository without tests/*.rs has.
    script(
        bin.path(),
        "cargo",
        &format!(
            "echo \"cargo $*\" >>{}\n\
             case \"$1 $2\" in\n\
             'deny --version') echo 'cargo-deny 0.20.2' ;;\n\
             test*) for s in lib main; do\n\
               echo \"     Running unittests src/$s.rs (target/debug/deps/x)\"\n\
               echo 'test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out'\n\
             done ;;\n\
             esac\n",
            calls.display()
        ),
    );
    for tool in ["ssh-keygen", "man"] {
        script(bin.path(), tool, "exit 0\n");
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run: Run = Command::new(clone.path().join("scripts/test"))
        .env("PATH", path)
        .env("CARGO_HOME", clone.path())
        .output()
        .expect("scripts/test runs")
        .into();
    assert_eq!(run.code, 0, "{}", run.all());
    let calls = std::fs::read_to_string(&calls).unwrap();
    let localstack: Vec<&str> = calls
        .lines()
        .filter(|line| line.starts_with("localstack "))
        .collect();
    assert_eq!(
        localstack,
        ["localstack install", "localstack status"],
        "{calls}"
    );
    assert!(calls.contains("cargo test --no-fail-fast"), "{calls}");
}
