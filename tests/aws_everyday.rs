//! What a user of `provider: aws` and Secrets Manager sees every day, against LocalStack through
//! the real binary: a quiet log at `level: info`, missing credentials called credentials, and
//! the manifest's labels on the secret.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use common::*;

fn unique(prefix: &str) -> String {
    format!("keyprov-test/{prefix}-{}", uuid::Uuid::new_v4())
}

/// A manifest whose only output is a secret; `labels` go under metadata.
fn secret_only(name: &str, secret: &str, labels: &str, tags: &str) -> String {
    manifest(name, "ECC_NIST_P256", "")
        .replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{{labels}}}\n"),
        )
        .replace(
            "    - file: {}\n",
            &format!("    - secretsManager: {{secretId: \"{secret}\", tags: {{{tags}}}}}\n"),
        )
}

fn with_credentials(mut install: Install) -> Install {
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

fn debug_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains("DEBUG")).collect()
}

#[test]
fn a_converged_aws_run_at_info_logs_no_debug_line() {
    let Some(endpoint) = localstack() else { return };
    let arn = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let kms = kms_client(&endpoint).await;
        let key = kms.create_key().send().await.unwrap();
        key.key_metadata.unwrap().arn.unwrap()
    });
    let install = with_credentials(Install::new(&format!(
        "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\"}}\nlog: {{format: text, level: info}}"
    )));
    for i in 0..4 {
        let name = format!("quiet-{i}");
        install.manifest(
            &format!("{name}.yaml"),
            &secret_only(&name, &unique("quiet"), "team: a", "").replace("alias/test", &arn),
        );
    }
    let first = install.run_once(0);
    assert!(
        first.stdout.contains("4 keys, 4 changed, 0 failed"),
        "{}",
        first.all()
    );
    let converged = install.run_once(0);
    assert!(
        converged.stdout.contains("4 keys, 0 changed, 0 failed"),
        "{}",
        converged.all()
    );
    for (what, run) in [
        ("first run", &first),
        ("converged run", &converged),
        ("status", &install.keyprov(&["status"])),
        ("plan", &install.keyprov(&["plan"])),
        ("verify", &install.keyprov(&["verify"])),
    ] {
        assert!(
            debug_lines(&run.stderr).is_empty(),
            "{what}: {} DEBUG lines at level info:\n{}",
            debug_lines(&run.stderr).len(),
            run.stderr
        );
    }
}

/// An instance metadata service that refuses every request (403), as one with IMDS disabled
/// does: the credential chain then fails with an error the SDK calls a dispatch failure.
fn refusing_metadata_service() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0; 4096];
            let _ = stream.read(&mut buffer);
            let body = "resolve_deny: denied destination";
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{address}")
}

#[test]
fn missing_credentials_on_a_secret_say_credentials_in_words() {
    let Some(endpoint) = localstack() else { return };
    let install = Install::new(&format!(
        "provider: local\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 2}}"
    ));
    install.manifest(
        "k.yaml",
        &secret_only("nocreds", &unique("nocreds"), "", ""),
    );
    let home = tempfile::tempdir().unwrap();
    let imds = refusing_metadata_service();
    let home = home.path().to_str().unwrap();
    for env in [
        // No provider of the chain has credentials.
        vec![("HOME", home)],
        // The instance metadata service answers, refusing: what the issue saw.
        vec![
            ("HOME", home),
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.as_str()),
        ],
    ] {
        for args in [&["run", "--once"][..], &["status"], &["decrypt", "nocreds"]] {
            let run = install.keyprov_env(args, &env);
            assert_eq!(run.code, 1, "{args:?} {env:?}: {}", run.all());
            // status prints a key's error in its table (stdout), the others on stderr.
            let all = run.all();
            assert!(
                all.contains("no AWS credentials to read or write secret keyprov-test/nocreds-"),
                "{args:?} {env:?}: {all}"
            );
            for debug in [
                "check the network",
                "DispatchFailure",
                "Some(",
                " { ",
                "kind: ",
            ] {
                assert!(!all.contains(debug), "{args:?} {env:?}: {debug:?} in {all}");
            }
        }
        // plan fails the key as run --once does (1, not 0: a CI gate on plan must not pass
        // what run fails), naming it and why.
        let plan = install.keyprov_env(&["plan"], &env);
        assert_eq!(plan.code, 1, "{env:?}: {}", plan.all());
        assert!(
            plan.stderr.contains(
                "error: not planned: key \"nocreds\": cannot read its outputs: no AWS credentials"
            ),
            "{env:?}: {}",
            plan.all()
        );
        assert!(
            plan.stdout
                .contains("Not planned: 0 converged, 1 not planned for lack of AWS credentials"),
            "{env:?}: {}",
            plan.all()
        );
        let json = install.keyprov_env(&["plan", "--json"], &env);
        assert_eq!(json.code, 1, "{env:?}: {}", json.all());
        let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(document["exitCode"], 1, "{document}");
        assert_eq!(document["notPlanned"][0]["key"], "nocreds", "{document}");
    }
}

async fn tags(endpoint: &str, secret: &str) -> (BTreeMap<String, String>, String, usize) {
    let client = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(endpoint).await);
    let described = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let tags = described
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let versions = described
        .version_ids_to_stages()
        .map_or(0, |stages| stages.len());
    (
        tags,
        described.arn().unwrap_or_default().to_string(),
        versions,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_reach_the_secret_tags_and_a_change_is_repaired_in_place() {
    let Some(endpoint) = localstack() else { return };
    let install = with_credentials(Install::new(&format!(
        "provider: local\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 3}}"
    )));
    let secret = unique("labels");
    install.manifest(
        "k.yaml",
        &secret_only(
            "labelled",
            &secret,
            "team: payments, tier: gold, env: prod",
            "env: test",
        ),
    );
    install.run_once(0);
    let (first, arn, versions) = tags(&endpoint, &secret).await;
    for (key, value) in [
        ("team", "payments"),
        ("tier", "gold"),
        ("env", "test"),
        ("keyprov:managed", "true"),
        ("keyprov:name", "labelled"),
    ] {
        assert_eq!(first.get(key).map(String::as_str), Some(value), "{first:?}");
    }
    install.manifest(
        "k.yaml",
        &secret_only(
            "labelled",
            &secret,
            "team: payments, tier: platinum, env: prod",
            "env: test",
        ),
    );
    let plan = install.keyprov(&["plan"]);
    assert_eq!(
        plan.code,
        3,
        "a changed label is a pending repair: {}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("tag tier should be \"platinum\""),
        "{}",
        plan.all()
    );
    let run = install.run_once(0);
    assert!(
        run.stdout
            .contains("1 key, 1 changed, 0 failed, 0 provider calls"),
        "{}",
        run.all()
    );
    let (repaired, same_arn, same_versions) = tags(&endpoint, &secret).await;
    assert_eq!(repaired.get("tier").map(String::as_str), Some("platinum"));
    assert_eq!(
        (same_arn, same_versions),
        (arn, versions),
        "the same secret, no new version"
    );
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "converged: {}", plan.all());
}
