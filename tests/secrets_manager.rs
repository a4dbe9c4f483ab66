//! Secrets Manager outputs against LocalStack, through the real binary: versions and staging
//! labels after each step of a key's life, convergence of a file and a secret output by copy,
//! a foreign secret left alone, and several hosts racing to rotate one secret.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_secretsmanager::Client;
use common::*;

async fn client(endpoint: &str) -> Client {
    secrets_client(endpoint).await
}

fn install(endpoint: &str) -> Install {
    install_with(endpoint, "")
}

/// [`install`] with more config lines (e.g. a keyring shared by several hosts, as KMS is).
fn install_with(endpoint: &str, extra: &str) -> Install {
    secrets_install(endpoint, extra)
}

fn unique(prefix: &str) -> String {
    format!("keyprov-test/{prefix}-{}", uuid::Uuid::new_v4())
}

/// A manifest with a file output and a secret output.
fn with_secret(name: &str, spec: &str, secret: &str, extra: &str) -> String {
    manifest(name, spec, extra).replace(
        "    - file: {}\n",
        &format!("    - file: {{}}\n    - secretsManager: {{secretId: \"{secret}\", tags: {{env: test}}}}\n"),
    )
}

/// A manifest whose only output is a secret.
fn secret_only(name: &str, spec: &str, secret: &str, extra: &str) -> String {
    manifest(name, spec, extra).replace(
        "    - file: {}\n",
        &format!("    - secretsManager: {{secretId: \"{secret}\"}}\n"),
    )
}

fn at(install: &Install, now: &str, expected: i32) -> Run {
    let run = install.keyprov_env(&["run", "--once"], &[("KEYPROV_TEST_NOW", now)]);
    assert_eq!(run.code, expected, "run at {now}: {}", run.all());
    run
}

/// Generation label -> staging labels of every labelled version, and the count of all
/// versions (deprecated included).
async fn labels(client: &Client, secret: &str) -> (BTreeMap<String, BTreeSet<String>>, usize) {
    let described = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let mut by_generation = BTreeMap::new();
    for (_, stages) in described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
    {
        if stages.is_empty() {
            continue;
        }
        let own = stages
            .iter()
            .find(|s| s.starts_with("keyprov-v"))
            .cloned()
            .unwrap_or_else(|| format!("unlabelled {stages:?}"));
        by_generation.insert(own, stages.into_iter().collect());
    }
    let all = client
        .list_secret_version_ids()
        .secret_id(secret)
        .include_deprecated(true)
        .send()
        .await
        .unwrap();
    (by_generation, all.versions().len())
}

fn expect(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    entries
        .iter()
        .map(|(generation, stages)| {
            let mut set: BTreeSet<String> = stages.iter().map(|s| s.to_string()).collect();
            set.insert(generation.to_string());
            (generation.to_string(), set)
        })
        .collect()
}

async fn current_json(client: &Client, secret: &str) -> serde_json::Value {
    let value = client
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    serde_json::from_str(value.secret_string().unwrap()).unwrap()
}

fn file_meta(install: &Install, name: &str) -> serde_json::Value {
    let text = std::fs::read(install.key_dir(name).join("current/meta.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secrets_life_create_noop_rotation_keep_spec_change_staged() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("life");
    let install = install(&endpoint);
    let write = |extra: &str, spec: &str| {
        install.manifest("k.yaml", &with_secret("life", spec, &secret, extra));
    };
    write("  rotation: {every: 1d, keep: 1}\n", "ECC_NIST_P256");

    let run = at(&install, "2030-01-01T00:00:00Z", 0);
    assert_eq!(provider_calls(&run.stdout), Some(1), "{}", run.stdout);
    assert_eq!(
        labels(&sm, &secret).await,
        (expect(&[("keyprov-v0001", &["AWSCURRENT"])]), 1)
    );
    let json = current_json(&sm, &secret).await;
    assert_eq!(json["generation"], 1);
    assert_eq!(json["name"], "life");
    assert!(json.get("privateKeyPem").is_none());
    assert_eq!(
        json["publicKeySha256"],
        file_meta(&install, "life")["publicKeySha256"]
    );
    let tags: BTreeMap<String, String> = sm
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap()
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().into(), t.value().unwrap().into()))
        .collect();
    assert_eq!(tags["keyprov:managed"], "true");
    assert_eq!(tags["keyprov:name"], "life");
    assert_eq!(tags["env"], "test");

    // No-op: nothing generated, no new version.
    let run = at(&install, "2030-01-01T12:00:00Z", 0);
    assert!(
        run.stdout
            .contains("1 key, 0 changed, 0 failed, 0 provider calls"),
        "{}",
        run.stdout
    );
    assert_eq!(labels(&sm, &secret).await.1, 1);

    // Due rotation, keep 1.
    at(&install, "2030-01-02T00:15:00Z", 0);
    assert_eq!(
        labels(&sm, &secret).await,
        (
            expect(&[
                ("keyprov-v0001", &["AWSPREVIOUS"]),
                ("keyprov-v0002", &["AWSCURRENT"])
            ]),
            2
        )
    );
    at(&install, "2030-01-03T00:30:00Z", 0);
    // v1 lost its labels (keep 1): Secrets Manager deprecates it (LocalStack drops it at once,
    // AWS later), so only the labelled versions are compared.
    assert_eq!(
        labels(&sm, &secret).await.0,
        expect(&[
            ("keyprov-v0002", &["AWSPREVIOUS"]),
            ("keyprov-v0003", &["AWSCURRENT"])
        ]),
    );

    // keep 3: nothing more is dropped.
    write("  rotation: {every: 1d, keep: 3}\n", "ECC_NIST_P256");
    at(&install, "2030-01-04T00:45:00Z", 0);
    at(&install, "2030-01-05T01:00:00Z", 0);
    assert_eq!(
        labels(&sm, &secret).await.0,
        expect(&[
            ("keyprov-v0002", &[]),
            ("keyprov-v0003", &[]),
            ("keyprov-v0004", &["AWSPREVIOUS"]),
            ("keyprov-v0005", &["AWSCURRENT"])
        ]),
    );

    // A spec change makes a new version at once.
    write("  rotation: {every: 1d, keep: 3}\n", "ECC_NIST_P384");
    let run = at(&install, "2030-01-05T02:00:00Z", 0);
    assert_eq!(provider_calls(&run.stdout), Some(1), "{}", run.stdout);
    let json = current_json(&sm, &secret).await;
    assert_eq!(
        (json["generation"].as_u64(), json["keyPairSpec"].as_str()),
        (Some(6), Some("ECC_NIST_P384"))
    );

    // Staged rotation: published with AWSPENDING, activated later by moving AWSCURRENT.
    write(
        "  rotation: {every: 1d, publishAhead: 6h, keep: 1}\n",
        "ECC_NIST_P384",
    );
    at(&install, "2030-01-05T20:15:00Z", 0);
    let (labelled, _) = labels(&sm, &secret).await;
    assert_eq!(
        labelled["keyprov-v0007"],
        ["AWSPENDING", "keyprov-v0007"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(labelled["keyprov-v0006"].contains("AWSCURRENT"));
    assert_eq!(
        std::fs::read_link(install.key_dir("life").join("next")).unwrap(),
        std::path::PathBuf::from("v0007")
    );
    let run = at(&install, "2030-01-06T02:15:00Z", 0);
    assert_eq!(
        provider_calls(&run.stdout),
        Some(0),
        "activation generates nothing: {}",
        run.stdout
    );
    assert_eq!(
        labels(&sm, &secret).await.0,
        expect(&[
            ("keyprov-v0006", &["AWSPREVIOUS"]),
            ("keyprov-v0007", &["AWSCURRENT"])
        ])
    );
    assert_eq!(file_meta(&install, "life")["generation"], 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_and_a_secret_output_restore_each_other_without_generating() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("pair");
    let install = install(&endpoint);
    install.manifest("k.yaml", &with_secret("pair", "ECC_NIST_P256", &secret, ""));
    install.run_once(0);
    let first = file_meta(&install, "pair");

    std::fs::remove_dir_all(install.key_dir("pair")).unwrap();
    let run = install.run_once(0);
    // One Decrypt: a pair copied out of a secret is proven first; no GenerateDataKeyPair.
    assert_eq!(provider_calls(&run.stdout), Some(1), "{}", run.stdout);
    assert!(!run.stderr.contains("generating"), "{}", run.stderr);
    assert_eq!(
        file_meta(&install, "pair")["publicKeySha256"],
        first["publicKeySha256"]
    );
    assert_eq!(file_meta(&install, "pair")["generation"], 1);

    sm.delete_secret()
        .secret_id(&secret)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let run = install.run_once(0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.stdout);
    let json = current_json(&sm, &secret).await;
    assert_eq!(json["publicKeySha256"], first["publicKeySha256"]);
    assert_eq!(json["generation"], 1);
    let run = install.run_once(0);
    assert!(
        run.stdout.contains("0 changed"),
        "converged: {}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_secret_is_never_written_and_fails_only_its_key() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let foreign = unique("foreign");
    sm.create_secret()
        .name(&foreign)
        .secret_string("someone else's")
        .send()
        .await
        .unwrap();
    let before = labels(&sm, &foreign).await;
    let install = install(&endpoint);
    install.manifest(
        "a.yaml",
        &with_secret("intruder", "ECC_NIST_P256", &foreign, ""),
    );
    install.manifest(
        "b.yaml",
        &with_secret("fine", "ECC_NIST_P256", &unique("fine"), ""),
    );
    let run = install.run_once(1);
    assert!(
        run.stderr.contains("not created by keyprov"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("2 keys, 1 changed, 1 failed"),
        "{}",
        run.stdout
    );
    let value = sm
        .get_secret_value()
        .secret_id(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(value.secret_string(), Some("someone else's"));
    assert_eq!(labels(&sm, &foreign).await, before);
    let tags = sm
        .describe_secret()
        .secret_id(&foreign)
        .send()
        .await
        .unwrap();
    assert!(tags.tags().is_empty(), "no tag added");
    assert!(
        !install.key_dir("intruder").exists(),
        "the failed key wrote nothing"
    );
    assert!(install.key_dir("fine").join("current").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_racing_to_rotate_leave_one_version_per_round() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("race");
    // One keyring for all hosts, as one KMS key serves a fleet: a host proves an adopted pair
    // by decrypting it.
    let keyring = tempfile::tempdir().unwrap();
    let shared = format!(
        "local: {{keyring: \"{}\"}}",
        keyring.path().join("k").display()
    );
    let hosts: Vec<Install> = (0..3).map(|_| install_with(&endpoint, &shared)).collect();
    for host in &hosts {
        host.manifest(
            "k.yaml",
            &with_secret(
                "race",
                "ECC_NIST_P256",
                &secret,
                "  rotation: {every: 1h, keep: 500}\n",
            ),
        );
    }
    let rounds: u32 = std::env::var("KEYPROV_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut adopted = 0;
    for round in 0..=rounds {
        // An hour and a minute apart: every rotation is due, its spread (< 36 s) included.
        let now = keyprov::schedule::format_time(
            keyprov::schedule::parse_time("2031-01-01T00:00:01Z").unwrap()
                + std::time::Duration::from_secs(u64::from(round) * 3660),
        );
        let children: Vec<_> = hosts
            .iter()
            .map(|host| {
                let mut command = host.command(&["run", "--once"]);
                command.env("KEYPROV_TEST_NOW", &now);
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        for child in children {
            let run: Run = child.wait_with_output().unwrap().into();
            assert_eq!(run.code, 0, "round {round}: {}", run.all());
            if run.stderr.contains("adopting") || run.stdout.contains("adopting") {
                adopted += 1;
            }
        }
        let (_, versions) = labels(&sm, &secret).await;
        assert_eq!(
            versions as u32,
            round + 1,
            "round {round}: exactly one new version"
        );
        let json = current_json(&sm, &secret).await;
        assert_eq!(json["generation"].as_u64(), Some(u64::from(round) + 1));
        for host in &hosts {
            let meta = file_meta(host, "race");
            assert_eq!(meta["generation"], json["generation"], "round {round}");
            assert_eq!(
                meta["publicKeySha256"], json["publicKeySha256"],
                "round {round}"
            );
        }
    }
    eprintln!("{rounds} rounds, {adopted} runs adopted another host's version");
}

/// Rewrites the config with `reconcile` settings of the test's own.
fn reconcile_settings(install: &Install, endpoint: &str, reconcile: &str) {
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\nprovider: local\n\
             aws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 3}}\n\
             reconcile: {{concurrency: 4, maxRequestsPerSecond: 1000, {reconcile}}}\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_are_listed_and_removed_only_with_prune_and_every_manifest_valid() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let scope = format!("test-{}", uuid::Uuid::new_v4());
    let install = install(&endpoint);
    reconcile_settings(&install, &endpoint, &format!("scope: {scope}"));
    let gone_secret = unique("gone");
    install.manifest(
        "gone.yaml",
        &with_secret("gone", "ECC_NIST_P256", &gone_secret, ""),
    );
    install.manifest(
        "kept.yaml",
        &with_secret("kept", "ECC_NIST_P256", &unique("kept"), ""),
    );
    install.run_once(0);
    // Not keyprov's: a directory without a current link.
    std::fs::create_dir_all(install.key_dir("stranger")).unwrap();
    std::fs::remove_file(install.manifests().join("gone.yaml")).unwrap();

    let status = install.keyprov(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let orphans: BTreeSet<(String, String)> = json["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().into(),
                o["location"].as_str().unwrap().into(),
            )
        })
        .collect();
    let gone_dir = install.key_dir("gone").display().to_string();
    assert_eq!(
        orphans,
        BTreeSet::from([
            ("file".to_string(), gone_dir.clone()),
            ("secretsManager".to_string(), gone_secret.clone())
        ])
    );
    let table = install.keyprov(&["status"]);
    assert!(
        table
            .stdout
            .contains("orphan (no manifest defines its key; left in place)"),
        "{}",
        table.stdout
    );
    install.run_once(0);
    assert!(
        install.key_dir("gone").join("current").exists(),
        "left in place without prune"
    );

    // prune, but a manifest is broken: nothing is removed.
    reconcile_settings(
        &install,
        &endpoint,
        &format!("scope: {scope}, prune: true, pruneRecoveryWindowDays: 7"),
    );
    install.manifest(
        "broken.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: [\n",
    );
    let run = install.run_once(2);
    assert!(
        run.stderr.contains("reconcile.prune skipped"),
        "{}",
        run.all()
    );
    assert!(install.key_dir("gone").join("current").exists());
    let described = sm
        .describe_secret()
        .secret_id(&gone_secret)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_none());

    // Every manifest valid: the orphans go once seen orphaned for pruneAfter (24h), the
    // stranger stays.
    std::fs::remove_file(install.manifests().join("broken.yaml")).unwrap();
    install.run_once(0);
    assert!(
        install.key_dir("gone").join("current").exists(),
        "first sighting only"
    );
    // Seen again within pruneAfter (an orphan must be seen continuously), then past it.
    let start = std::time::SystemTime::now();
    let midway = start + std::time::Duration::from_secs(12 * 3600);
    at(&install, &keyprov::schedule::format_time(midway), 0);
    assert!(install.key_dir("gone").join("current").exists());
    let later = keyprov::schedule::format_time(start + std::time::Duration::from_secs(25 * 3600));
    at(&install, &later, 0);
    assert!(!install.key_dir("gone").exists());
    let aside: Vec<String> = std::fs::read_dir(install.state().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".orphaned-gone-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, not deleted");
    assert!(
        install
            .state()
            .join("keys")
            .join(&aside[0])
            .join("current/meta.json")
            .exists()
    );
    assert!(install.key_dir("stranger").exists());
    assert!(install.key_dir("kept").join("current").exists());
    let described = sm
        .describe_secret()
        .secret_id(&gone_secret)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_some(), "scheduled for deletion");
    let status = install.keyprov_env(&["status", "--json"], &[("KEYPROV_TEST_NOW", &later)]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        json["orphans"].as_array().unwrap().len(),
        0,
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_and_decrypt_read_a_secret_only_key_and_see_tampering() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("only");
    let install = install(&endpoint);
    install.manifest("k.yaml", &secret_only("only", "ECC_NIST_P256", &secret, ""));
    install.run_once(0);
    let status = install.keyprov(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["keys"][0]["generation"], 1, "{}", status.stdout);
    assert!(
        json["keys"][0]["kmsKeyArn"].is_string(),
        "read from the secret: {}",
        status.stdout
    );
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(
        verify.stdout.contains("ok      only generation 1"),
        "{}",
        verify.stdout
    );
    let decrypt = install.keyprov(&["decrypt", "only"]);
    assert_eq!(decrypt.code, 0, "{}", decrypt.all());
    let json = current_json(&sm, &secret).await;
    let public = pem::parse(json["publicKeyPem"].as_str().unwrap()).unwrap();
    let private = pem::parse(decrypt.stdout.as_bytes()).unwrap();
    assert_pair_matches("ECC_NIST_P256", private.contents(), public.contents());

    // Someone swaps the public key of the current version by hand (a new version, same labels).
    let mut tampered = json.clone();
    let other = current_json(&sm, &secret).await["publicKeyPem"]
        .as_str()
        .unwrap()
        .replace('A', "B");
    tampered["publicKeyPem"] = serde_json::Value::String(other);
    sm.put_secret_value()
        .secret_id(&secret)
        .secret_string(tampered.to_string())
        .version_stages("AWSCURRENT")
        .version_stages("keyprov-v0001")
        .send()
        .await
        .unwrap();
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify.stdout.contains("FAILED  only: secretsManager:"),
        "{}",
        verify.stdout
    );
    // AWSCURRENT on a version keyprov did not write is moved back to generation 1 (still
    // there, with AWSPREVIOUS), nothing generated, and the key fails once, naming it.
    let run = install.run_once(1);
    assert!(
        run.stderr.contains("AWSCURRENT was moved outside keyprov"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.lines().any(|l| l.contains("ERROR")
            && l.contains(&secret)
            && l.contains("forged or replayed")),
        "{}",
        run.all()
    );
    assert_eq!(
        provider_calls(&run.stdout),
        Some(0),
        "nothing generated over a tampered secret"
    );
    assert_eq!(current_json(&sm, &secret).await, json);
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    install.run_once(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_in_the_middle_of_writing_secrets_converges_on_rerun() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let install = install(&endpoint);
    let prefix = unique("kill");
    let keys = 30;
    for i in 0..keys {
        install.manifest(
            &format!("k{i}.yaml"),
            &with_secret(
                &format!("kill-{i}"),
                "ECC_NIST_P256",
                &format!("{prefix}/{i}"),
                "",
            ),
        );
    }
    let (mut rng, seed) = Rng::from_env("KEYPROV_KILL_SEED");
    let mut killed = 0;
    for _ in 0..8 {
        let mut child = install
            .command(&["run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + rng.below(300)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        }
    }
    eprintln!("seed {seed}: {killed} of 8 runs killed by SIGKILL");
    assert!(
        killed > 0,
        "seed {seed}: no run was killed: the harness proved nothing"
    );
    let run = install.run_once(0);
    assert!(
        run.stdout.contains("0 failed"),
        "seed {seed}: {}",
        run.stdout
    );
    eprintln!(
        "seed {seed}: the rerun after the kills: {}",
        run.stdout.trim()
    );
    let run = install.run_once(0);
    assert!(
        run.stdout.contains("0 changed, 0 failed, 0 provider calls"),
        "seed {seed}: converged: {}",
        run.stdout
    );
    for i in 0..keys {
        let secret = format!("{prefix}/{i}");
        let json = current_json(&sm, &secret).await;
        let meta = file_meta(&install, &format!("kill-{i}"));
        assert_eq!(json["generation"], 1, "seed {seed}: key {i}");
        assert_eq!(
            meta["publicKeySha256"], json["publicKeySha256"],
            "seed {seed}: key {i}"
        );
        let (_, versions) = labels(&sm, &secret).await;
        assert_eq!(versions, 1, "seed {seed}: key {i}: one version");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_secret_version_is_never_copied_into_the_files() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let (victim, other) = (unique("victim"), unique("other"));
    let install = install(&endpoint);
    install.manifest(
        "v.yaml",
        &with_secret("victim", "ECC_NIST_P256", &victim, ""),
    );
    install.manifest("o.yaml", &with_secret("other", "ECC_NIST_P256", &other, ""));
    install.run_once(0);
    // Someone with PutSecretValue (no KMS rights) writes generation 2 under keyprov's token:
    // the real ciphertext, another public key.
    let mut forged = current_json(&sm, &victim).await;
    let theirs = current_json(&sm, &other).await;
    forged["generation"] = 2.into();
    forged["publicKeyPem"] = theirs["publicKeyPem"].clone();
    forged["publicKeySha256"] = theirs["publicKeySha256"].clone();
    sm.put_secret_value()
        .secret_id(&victim)
        .client_request_token(keyprov::store::secrets_manager::layout::version_id(
            "victim", 2,
        ))
        .secret_string(forged.to_string())
        .version_stages("AWSCURRENT")
        .version_stages("keyprov-v0002")
        .send()
        .await
        .unwrap();
    let before = std::fs::read(install.key_dir("victim").join("current/public.pem")).unwrap();
    let run = install.run_once(1);
    assert!(
        run.stderr.contains("(generation 2) is not believed"),
        "{}",
        run.all()
    );
    assert_eq!(
        std::fs::read_link(install.key_dir("victim").join("current")).unwrap(),
        std::path::PathBuf::from("v0001")
    );
    assert_eq!(
        std::fs::read(install.key_dir("victim").join("current/public.pem")).unwrap(),
        before
    );
    assert!(!install.key_dir("victim").join("v0002").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_now_of_a_secret_only_key_counts_the_next_rotation_from_the_real_activation() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("early");
    let install = install(&endpoint);
    install.manifest(
        "k.yaml",
        &secret_only(
            "early",
            "ECC_NIST_P256",
            &secret,
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        ),
    );
    install.run_once(0);
    for args in [&["rotate", "early"][..], &["rotate", "early", "--now"]] {
        let run = install.keyprov(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.all());
    }
    let described = sm
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap();
    let activated = described
        .tags()
        .iter()
        .find(|t| t.key() == Some("keyprov:activated"))
        .and_then(|t| t.value())
        .unwrap_or_default()
        .to_string();
    // A fresh pair (generation 3), not the staged generation 2 made before the emergency;
    // AWSPENDING left generation 2.
    assert!(activated.starts_with("keyprov-v0003@"), "{activated:?}");
    let status = install.keyprov(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["keys"][0]["generation"], 3, "{}", status.stdout);
    assert_eq!(
        json["keys"][0]["next"],
        serde_json::Value::Null,
        "{}",
        status.stdout
    );
    let next =
        keyprov::schedule::parse_time(json["keys"][0]["nextRotation"].as_str().unwrap()).unwrap();
    let days = next
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs_f64()
        / 86_400.0;
    assert!(days > 29.0 && days < 30.1, "next rotation in {days} days");
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
}
