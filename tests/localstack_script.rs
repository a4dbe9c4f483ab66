//! `scripts/localstack kms-key` as README's "Trying provider: aws on LocalStack" runs it, in a
//! fresh clone: LocalStack running (started elsewhere), no virtualenv here.

mod common;

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
