//! Clocks and prune that a redeploy or another host cannot trigger (issue 18, part C), through
//! the real binary on a simulated clock (`KEYPROV_TEST_NOW`): orphans pruned only after
//! `reconcile.pruneAfter` and restored with the same pair; a clock ten years ahead for one run,
//! or a staged `activatesAt` of 9999, never suspends rotation; with `provider: aws`, a clock far
//! from AWS's (LocalStack's `Date`) generates nothing.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use keyprov::schedule::{format_time, parse_time};

const DAY: Duration = Duration::from_secs(86_400);

fn t0() -> SystemTime {
    parse_time("2031-01-01T00:00:00Z").unwrap()
}

fn at(install: &Install, args: &[&str], now: SystemTime) -> Run {
    install.keyprov_env(args, &[("KEYPROV_TEST_NOW", &format_time(now))])
}

fn run_at(install: &Install, now: SystemTime, expected: i32) -> Run {
    let run = at(install, &["run", "--once"], now);
    assert_eq!(
        run.code,
        expected,
        "run at {}: {}",
        format_time(now),
        run.all()
    );
    run
}

/// Replaces the config with one of the test's own `reconcile` settings (and `extra` lines).
fn configure(install: &Install, reconcile: &str, extra: &str) {
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\n\
             reconcile: {{concurrency: 4, maxRequestsPerSecond: 1000, {reconcile}}}\n{extra}\n"
        ),
    )
    .unwrap();
}

fn public_pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("current/public.pem")).unwrap()
}

fn set_aside(install: &Install, name: &str) -> Vec<String> {
    let prefix = format!(".orphaned-{name}-");
    let mut found: Vec<String> = std::fs::read_dir(install.state().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    found.sort();
    found
}

#[test]
fn a_redeploy_prunes_nothing_and_a_pruned_key_comes_back_with_the_same_pair() {
    let install = Install::new("");
    configure(&install, "prune: true, pruneAfter: 24h", "");
    let keys = ["alpha", "beta"];
    let write_manifests = || {
        for name in keys {
            install.manifest(
                &format!("{name}.yaml"),
                &manifest(name, "ECC_NIST_P256", "  rotation: {every: 90d}\n"),
            );
        }
    };
    write_manifests();
    run_at(&install, t0(), 0);
    let pems: Vec<String> = keys
        .iter()
        .map(|k| public_pem(&install.key_dir(k)))
        .collect();

    // The manifest directory emptied by a deploy for 1 s, 1 min, 1 h: nothing pruned, and
    // nothing regenerated when the manifests come back.
    let mut now = t0() + DAY;
    for gone in [
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::from_secs(3600),
    ] {
        for name in keys {
            std::fs::remove_file(install.manifests().join(format!("{name}.yaml"))).unwrap();
        }
        run_at(&install, now, 0);
        let plan = at(&install, &["plan"], now + gone);
        assert!(
            plan.stdout.contains(&format!(
                "orphan file:{}: pruned after",
                install.key_dir("alpha").display()
            )),
            "{}",
            plan.all()
        );
        assert_eq!(plan.code, 0, "nothing due yet: {}", plan.all());
        run_at(&install, now + gone, 0);
        write_manifests();
        let run = run_at(&install, now + gone + Duration::from_secs(1), 0);
        assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.stdout);
        for (name, pem) in keys.iter().zip(&pems) {
            assert_eq!(&public_pem(&install.key_dir(name)), pem, "{gone:?}");
            assert_eq!(versions(&install.key_dir(name)), ["v0001"], "{gone:?}");
            assert!(set_aside(&install, name).is_empty(), "{gone:?}");
        }
        now += DAY;
    }

    // Gone for longer than pruneAfter: pruned (set aside) by the first run after it.
    std::fs::remove_file(install.manifests().join("alpha.yaml")).unwrap();
    let first_seen = now;
    run_at(&install, first_seen, 0);
    let ledger = std::fs::read_to_string(install.state().join("ledger/prune.json")).unwrap();
    assert!(ledger.contains(&format_time(first_seen)), "{ledger}");
    let just_before = first_seen + DAY - Duration::from_secs(1);
    run_at(&install, just_before, 0);
    assert!(install.key_dir("alpha").join("current").exists());
    let due = first_seen + DAY;
    let plan = at(&install, &["plan", "--json"], due);
    assert_eq!(plan.code, 3, "a prune is a change: {}", plan.all());
    let json: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(json["prunes"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["prunes"][0]["due"], true);
    assert_eq!(
        json["prunes"][0]["orphanedSince"].as_str(),
        Some(format_time(first_seen).as_str())
    );
    let plan = at(&install, &["plan"], due);
    assert!(
        plan.stdout.contains(&format!(
            "orphan file:{}: prune (seen orphaned since",
            install.key_dir("alpha").display()
        )),
        "{}",
        plan.stdout
    );
    run_at(&install, due, 0);
    assert!(!install.key_dir("alpha").exists(), "pruned");
    assert_eq!(
        set_aside(&install, "alpha").len(),
        1,
        "set aside, not deleted"
    );
    assert_eq!(
        public_pem(&install.key_dir("beta")),
        pems[1],
        "others untouched"
    );

    // It comes back: restored from what was set aside, never regenerated.
    write_manifests();
    let later = due + DAY;
    let plan = at(&install, &["plan"], later);
    assert!(
        plan.stdout.contains("alpha: restore") && !plan.stdout.contains("generate"),
        "{}",
        plan.stdout
    );
    let run = run_at(&install, later, 0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.all());
    assert_eq!(public_pem(&install.key_dir("alpha")), pems[0]);
    assert_eq!(versions(&install.key_dir("alpha")), ["v0001"]);
    assert!(set_aside(&install, "alpha").is_empty());
    let plan = at(&install, &["plan"], later);
    assert_eq!(plan.code, 0, "{}", plan.all());
    let ledger = std::fs::read_to_string(install.state().join("ledger/prune.json")).unwrap();
    assert!(!ledger.contains("alpha"), "a key that came back: {ledger}");
}

#[test]
fn prune_with_a_secret_output_requires_an_explicit_scope() {
    let install = Install::new("");
    configure(&install, "prune: true", "");
    install.manifest(
        "s.yaml",
        &manifest("s", "ECC_NIST_P256", "").replace(
            "    - file: {}\n",
            "    - file: {}\n    - secretsManager: {secretId: keyprov-test/never-written}\n",
        ),
    );
    for args in [&["run", "--once"][..], &["plan"], &["validate"]] {
        let run = install.keyprov(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        assert!(
            run.stderr
                .contains("reconcile.scope: must be set when reconcile.prune is true")
                && run.stderr.contains("key \"s\""),
            "{}",
            run.stderr
        );
    }
    assert!(!install.key_dir("s").exists(), "nothing was changed");
    // With the scope written out, the manifest is fine (no AWS is needed to validate that).
    configure(&install, "prune: true, scope: team-a", "");
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.all());
}

#[test]
fn a_clock_ten_years_ahead_for_one_run_does_not_suspend_rotation() {
    let install = Install::new("");
    let every = 30 * DAY;
    install.manifest(
        "k.yaml",
        &manifest("k", "ECC_NIST_P256", "  rotation: {every: 30d}\n"),
    );
    let dir = install.key_dir("k");
    run_at(&install, t0(), 0);
    // One run with the clock ten years ahead: the rotation it finds due stamps 2041.
    run_at(&install, t0() + 3653 * DAY, 0);
    assert_eq!(versions(&dir), ["v0001", "v0002"]);
    // The clock is right again.
    let corrected = t0() + DAY;
    let status = at(&install, &["status", "--json"], corrected);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let warnings = json["keys"][0]["clockWarnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{json}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("generation 2 records 2041-"),
        "{json}"
    );
    let run = run_at(&install, corrected, 0);
    assert!(
        run.stderr.contains("ahead of this host's clock"),
        "warned: {}",
        run.stderr
    );
    let table = at(&install, &["status"], corrected);
    assert!(
        table.stdout.contains("clock: generation 2"),
        "{}",
        table.stdout
    );
    // Its rotation is due every + spread after the first corrected run, not in 2041.
    let due = corrected + every + keyprov::schedule::spread("k", every);
    run_at(&install, due - Duration::from_secs(60), 0);
    assert_eq!(versions(&dir), ["v0001", "v0002"], "not yet");
    let plan = at(&install, &["plan"], due + Duration::from_secs(1));
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(plan.stdout.contains("generate generation 3 (rotation due)"));
    run_at(&install, due + Duration::from_secs(1), 0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0003"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
    assert!(meta["createdAt"].as_str().unwrap().starts_with("2031-"));
    // Generation 3 was stamped by a right clock: no warning, no anchor left.
    let status = at(&install, &["status", "--json"], due + DAY);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["keys"][0]["clockWarnings"], serde_json::json!([]));
    run_at(&install, due + DAY, 0);
    let anchors =
        std::fs::read_to_string(install.state().join("ledger/clock-anchors.json")).unwrap();
    assert_eq!(anchors.trim(), "{}");
}

#[test]
fn a_staged_activation_in_9999_is_capped_and_shown() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &manifest(
            "k",
            "ECC_NIST_P256",
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        ),
    );
    let dir = install.key_dir("k");
    run_at(&install, t0(), 0);
    // Publication of generation 2 starts at due - publishAhead.
    let every = 30 * DAY;
    let due = t0() + every + keyprov::schedule::spread("k", every);
    let published = due - 7 * DAY + Duration::from_secs(1);
    run_at(&install, published, 0);
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    // Someone (or a bad clock) wrote activatesAt 9999 into the staged version's meta.
    let meta_path = dir.join("v0002/meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["activatesAt"] = "9999-01-01T00:00:00.000000Z".into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();

    let after = published + 8 * DAY;
    let plan = at(&install, &["plan"], after);
    assert_eq!(plan.code, 3, "not \"no change\": {}", plan.all());
    assert!(
        plan.stdout.contains("k: activate staged generation 2"),
        "{}",
        plan.stdout
    );
    let status = at(&install, &["status", "--json"], after);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["keys"][0]["state"], "pending", "{json}");
    assert!(
        json["keys"][0]["clockWarnings"][0]
            .as_str()
            .unwrap()
            .contains("activatesAt 9999-01-01"),
        "{json}"
    );
    run_at(&install, after, 0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(link(&dir, "next"), None);
}

// ---- LocalStack ----

fn secret_install(endpoint: &str, keyring: &Path, reconcile: &str) -> Install {
    let mut install = Install::new("");
    configure(
        &install,
        reconcile,
        &format!(
            "provider: local\nlocal: {{keyring: \"{}\"}}\n\
             aws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 3}}",
            keyring.display()
        ),
    );
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

async fn secret_json(sm: &aws_sdk_secretsmanager::Client, secret: &str) -> serde_json::Value {
    let value = sm
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    serde_json::from_str(value.secret_string().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_ahead_on_one_host_does_not_suspend_the_fleets_rotation() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let secret = format!("keyprov-test/clock-{}", uuid::Uuid::new_v4());
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("k");
    let hosts = [
        secret_install(&endpoint, &keyring, "scope: clock-test"),
        secret_install(&endpoint, &keyring, "scope: clock-test"),
    ];
    let every = 30 * DAY;
    for host in &hosts {
        host.manifest(
            "k.yaml",
            &file_and_secret("clocked", &secret, "  rotation: {every: 30d}\n"),
        );
    }
    run_at(&hosts[0], t0(), 0);
    run_at(&hosts[1], t0() + Duration::from_secs(60), 0);
    // Host 0's clock runs ten years ahead for one run: generation 2 stamped 2041, everywhere.
    run_at(&hosts[0], t0() + 3653 * DAY, 0);
    assert_eq!(secret_json(&sm, &secret).await["generation"], 2);
    // Clocks right again: host 1 copies generation 2 and both count from their first sighting.
    let corrected = t0() + DAY;
    run_at(&hosts[1], corrected, 0);
    run_at(&hosts[0], corrected + Duration::from_secs(60), 0);
    for host in &hosts {
        assert_eq!(
            link(&host.key_dir("clocked"), "current").as_deref(),
            Some("v0002")
        );
    }
    let due = corrected + every + keyprov::schedule::spread("clocked", every);
    for host in &hosts {
        run_at(host, due - Duration::from_secs(120), 0);
    }
    assert_eq!(secret_json(&sm, &secret).await["generation"], 2, "not yet");
    // Host 1 rotates on the real schedule; host 0 (its anchor a minute later) adopts it.
    run_at(&hosts[1], due + Duration::from_secs(1), 0);
    run_at(&hosts[0], due + Duration::from_secs(2), 0);
    let json = secret_json(&sm, &secret).await;
    assert_eq!(json["generation"], 3);
    assert!(
        json["createdAt"].as_str().unwrap().starts_with("2031-"),
        "{json}"
    );
    for host in &hosts {
        assert_eq!(
            link(&host.key_dir("clocked"), "current").as_deref(),
            Some("v0003")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pruned_secret_is_restored_with_the_same_pair_when_its_key_comes_back() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let secret = format!("keyprov-test/prune-{}", uuid::Uuid::new_v4());
    let keyring = tempfile::tempdir().unwrap();
    let scope = format!("prune-{}", uuid::Uuid::new_v4());
    let reconcile =
        format!("scope: {scope}, prune: true, pruneAfter: 24h, pruneRecoveryWindowDays: 7");
    // Host A prunes; host B (same fleet, its own stateDir) still has the manifest.
    let hosts = [
        secret_install(&endpoint, &keyring.path().join("k"), &reconcile),
        secret_install(&endpoint, &keyring.path().join("k"), &reconcile),
    ];
    let manifest_text = file_and_secret("pruned", &secret, "");
    // Another key keeps the installation using secrets (orphan secrets are listed then).
    let other = file_and_secret(
        "other",
        &format!("keyprov-test/prune-other-{}", uuid::Uuid::new_v4()),
        "",
    );
    for host in &hosts {
        host.manifest("p.yaml", &manifest_text);
        host.manifest("other.yaml", &other);
    }
    run_at(&hosts[0], t0(), 0);
    run_at(&hosts[1], t0() + Duration::from_secs(60), 0);
    let before = secret_json(&sm, &secret).await;
    let [a, b] = &hosts;
    std::fs::remove_file(a.manifests().join("p.yaml")).unwrap();
    run_at(a, t0() + DAY, 0);
    run_at(a, t0() + 2 * DAY - Duration::from_secs(1), 0);
    let described = sm
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_none(), "within pruneAfter");
    let plan = at(a, &["plan"], t0() + 2 * DAY);
    assert!(
        plan.stdout
            .contains(&format!("orphan secretsManager:{secret}: prune")),
        "{}",
        plan.all()
    );
    run_at(a, t0() + 2 * DAY, 0);
    let described = sm
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_some(), "scheduled for deletion");

    // Host B, whose manifest still names the key, restores the secret another host pruned.
    let plan = at(b, &["plan"], t0() + 2 * DAY + Duration::from_secs(30));
    assert!(
        plan.stdout
            .contains(&format!("pruned: restore secret {secret}")),
        "{}",
        plan.all()
    );
    let run = run_at(b, t0() + 2 * DAY + Duration::from_secs(60), 0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.all());
    let described = sm
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_none(), "restored by host B");

    // The manifest comes back on host A: its directory is restored, nothing generated.
    a.manifest("p.yaml", &manifest_text);
    let run = run_at(a, t0() + 3 * DAY, 0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.all());
    let after = secret_json(&sm, &secret).await;
    assert_eq!(after["generation"], 1);
    assert_eq!(after["publicKeySha256"], before["publicKeySha256"]);
    for host in &hosts {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(host.key_dir("pruned").join("current/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["publicKeySha256"], before["publicKeySha256"]);
        assert_eq!(versions(&host.key_dir("pruned")), ["v0001"]);
    }
    let plan = at(a, &["plan"], t0() + 3 * DAY);
    assert_eq!(plan.code, 0, "{}", plan.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_far_from_aws_generates_and_activates_nothing_and_names_both_times() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let arn = new_kms_key(&kms).await;
    let mut install = Install::new(&format!(
        "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 2}}"
    ));
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install.manifest(
        "k.yaml",
        &manifest("skewed", "ECC_NIST_P256", "").replace("alias/test", &arn),
    );
    // LocalStack's Date is the real time; the test clock is a year away.
    let far = SystemTime::now() + 365 * DAY;
    let run = run_at(&install, far, 1);
    assert!(
        run.stderr
            .contains("key \"skewed\": not generated or activated")
            && run.stderr.contains(&format!(
                "this host's clock says {}",
                &format_time(far)[..10]
            ))
            && run.stderr.contains("but AWS said")
            && run.stderr.contains("reconcile.clockTolerance"),
        "{}",
        run.stderr
    );
    assert!(!install.key_dir("skewed").exists(), "nothing written");
    // Within the tolerance (the real clock): generated.
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let dir = install.key_dir("skewed");
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));

    // A staged generation is not activated by a clock far ahead of AWS's either.
    install.manifest(
        "k.yaml",
        &manifest(
            "skewed",
            "ECC_NIST_P256",
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        )
        .replace("alias/test", &arn),
    );
    let run = install.keyprov(&["rotate", "skewed"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    let run = run_at(&install, SystemTime::now() + 8 * DAY, 1);
    assert!(
        run.stderr
            .contains("key \"skewed\": not generated or activated")
            && run.stderr.contains("but AWS said"),
        "{}",
        run.stderr
    );
    assert_eq!(
        link(&dir, "current").as_deref(),
        Some("v0001"),
        "not activated"
    );
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_version_published_by_a_clock_ahead_activates_on_time_from_its_secret() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let secret = format!("keyprov-test/staged-{}", uuid::Uuid::new_v4());
    let keyring = tempfile::tempdir().unwrap();
    let host = secret_install(&endpoint, &keyring.path().join("k"), "scope: staged-test");
    // A secret-only key: what the staged version says comes from the secret alone.
    host.manifest(
        "k.yaml",
        &manifest(
            "staged",
            "ECC_NIST_P256",
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        )
        .replace(
            "    - file: {}\n",
            &format!("    - secretsManager: {{secretId: \"{secret}\"}}\n"),
        ),
    );
    run_at(&host, t0(), 0);
    // Ten years ahead for one run: generation 2 published with activatesAt 2041 + 7d.
    run_at(&host, t0() + 3653 * DAY, 0);
    let pending = sm
        .get_secret_value()
        .secret_id(&secret)
        .version_stage("AWSPENDING")
        .send()
        .await
        .unwrap();
    let pending: serde_json::Value =
        serde_json::from_str(pending.secret_string().unwrap()).unwrap();
    assert!(
        pending["activatesAt"]
            .as_str()
            .unwrap()
            .starts_with("2041-"),
        "{pending}"
    );
    assert_eq!(secret_json(&sm, &secret).await["generation"], 1);
    // Corrected: it activates publishAhead after the first corrected run, not in 2041.
    let corrected = t0() + DAY;
    let status = at(&host, &["status", "--json"], corrected);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let activates = corrected + 7 * DAY;
    assert_eq!(
        json["keys"][0]["nextActivatesAt"].as_str(),
        Some(format_time(activates).as_str()),
        "{json}"
    );
    run_at(&host, corrected, 0);
    run_at(&host, activates - Duration::from_secs(60), 0);
    assert_eq!(secret_json(&sm, &secret).await["generation"], 1, "not yet");
    let plan = at(&host, &["plan"], activates);
    assert!(
        plan.stdout.contains("staged: activate staged generation 2"),
        "{}",
        plan.all()
    );
    run_at(&host, activates, 0);
    assert_eq!(secret_json(&sm, &secret).await["generation"], 2);
}

fn tag(key: &str, value: &str) -> aws_sdk_secretsmanager::types::Tag {
    aws_sdk_secretsmanager::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_only_carries_keyprovs_tags_is_never_pruned() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let scope = format!("deputy-{}", uuid::Uuid::new_v4());
    let reconcile =
        format!("scope: {scope}, prune: true, pruneAfter: 24h, pruneRecoveryWindowDays: 7");
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("k");
    let host = secret_install(&endpoint, &keyring, &reconcile);
    let mine = format!("keyprov-test/deputy-mine-{}", uuid::Uuid::new_v4());
    let kept = format!("keyprov-test/deputy-kept-{}", uuid::Uuid::new_v4());
    host.manifest("mine.yaml", &file_and_secret("mine", &mine, ""));
    host.manifest("kept.yaml", &file_and_secret("kept", &kept, ""));
    run_at(&host, t0(), 0);

    // Someone else's secret (say, a database password), which anyone with TagResource can make
    // look like keyprov's orphan in this scope; even a version under keyprov's version id.
    let victim = format!("keyprov-test/deputy-victim-{}", uuid::Uuid::new_v4());
    sm.create_secret()
        .name(&victim)
        .tags(tag("keyprov:managed", "true"))
        .tags(tag("keyprov:scope", &scope))
        .tags(tag("keyprov:name", "victim"))
        .send()
        .await
        .unwrap();
    sm.put_secret_value()
        .secret_id(&victim)
        .client_request_token(keyprov::store::secrets_manager::layout::version_id(
            "victim", 1,
        ))
        .secret_string("hunter2")
        .version_stages("AWSCURRENT")
        .send()
        .await
        .unwrap();
    // A fresh host of the same fleet (empty ledger) that never had the key `mine`.
    let fresh = secret_install(&endpoint, &keyring, &reconcile);
    fresh.manifest("kept.yaml", &file_and_secret("kept", &kept, ""));
    std::fs::remove_file(host.manifests().join("mine.yaml")).unwrap();
    for now in [t0() + DAY, t0() + DAY + DAY / 2] {
        run_at(&host, now, 0);
        run_at(&fresh, now, 0);
    }
    let due = t0() + 2 * DAY;
    let plan = at(&host, &["plan"], due);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains(&format!("orphan secretsManager:{mine}: prune")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!(
            "orphan secretsManager:{victim}: not pruned: never managed here"
        )),
        "{}",
        plan.stdout
    );
    let json = at(&host, &["plan", "--json"], due);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let victim_entry = json["prunes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["location"] == victim.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(victim_entry["neverManagedHere"], true, "{json}");
    assert_eq!(victim_entry["due"], false, "{json}");
    // The fresh host prunes nothing it never managed: neither the victim nor `mine`.
    let plan = at(&fresh, &["plan"], due);
    for secret in [&mine, &victim] {
        assert!(
            plan.stdout.contains(&format!(
                "orphan secretsManager:{secret}: not pruned: never managed here"
            )),
            "{}",
            plan.stdout
        );
    }
    run_at(&fresh, due, 0);
    assert!(
        !secret_deleted(&sm, &mine).await,
        "the fresh host never managed it"
    );
    run_at(&host, due, 0);
    assert!(
        secret_deleted(&sm, &mine).await,
        "the host that managed it prunes it"
    );
    assert!(
        !secret_deleted(&sm, &victim).await,
        "never managed here: left alone"
    );
    assert!(!secret_deleted(&sm, &kept).await);
    let ledger = std::fs::read_to_string(host.state().join("ledger/prune.json")).unwrap();
    assert!(!ledger.contains(&victim), "{ledger}");
    sm.delete_secret()
        .secret_id(&victim)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_behind_at_the_first_sighting_does_not_shorten_prune_after() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let scope = format!("behind-{}", uuid::Uuid::new_v4());
    let keyring = tempfile::tempdir().unwrap();
    let host = secret_install(
        &endpoint,
        &keyring.path().join("k"),
        &format!("scope: {scope}, prune: true, pruneAfter: 24h, pruneRecoveryWindowDays: 7"),
    );
    let gone = format!("keyprov-test/behind-gone-{}", uuid::Uuid::new_v4());
    host.manifest("gone.yaml", &file_and_secret("gone", &gone, ""));
    host.manifest(
        "kept.yaml",
        &file_and_secret(
            "kept",
            &format!("keyprov-test/behind-kept-{}", uuid::Uuid::new_v4()),
            "",
        ),
    );
    let now = SystemTime::now();
    run_at(&host, now, 0);
    std::fs::remove_file(host.manifests().join("gone.yaml")).unwrap();
    // The first sighting by a clock ten years behind.
    run_at(&host, now - 3653 * DAY, 0);
    let ledger = std::fs::read_to_string(host.state().join("ledger/prune.json")).unwrap();
    assert!(ledger.contains(&gone), "seen: {ledger}");
    // The clock is right: the wait starts now, it does not lie ten years behind.
    run_at(&host, now, 0);
    assert!(!secret_deleted(&sm, &gone).await, "not pruned at once");
    assert!(host.key_dir("gone").join("current").exists());
    let plan = at(&host, &["plan"], now);
    assert!(
        plan.stdout.contains(&format!(
            "orphan secretsManager:{gone}: pruned after {}",
            humantime::format_rfc3339_seconds(now + DAY)
        )),
        "{}",
        plan.stdout
    );
    // Seen again within pruneAfter, then past it: pruned.
    run_at(&host, now + DAY / 2, 0);
    assert!(!secret_deleted(&sm, &gone).await);
    run_at(&host, now + Duration::from_secs(25 * 3600), 0);
    assert!(
        secret_deleted(&sm, &gone).await,
        "pruned once seen for pruneAfter"
    );
    assert!(!host.key_dir("gone").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_provider_aws_an_orphan_is_seen_only_by_a_clock_that_agrees_with_aws() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let arn = new_kms_key(&kms).await;
    let mut install = Install::new("");
    configure(
        &install,
        "prune: true, pruneAfter: 24h",
        &format!(
            "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 2}}"
        ),
    );
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    for name in ["gone", "kept"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", "").replace("alias/test", &arn),
        );
    }
    let now = SystemTime::now();
    run_at(&install, now, 0);
    std::fs::remove_file(install.manifests().join("gone.yaml")).unwrap();
    let run = run_at(&install, now - 3653 * DAY, 0);
    assert!(
        run.stderr.contains("reconcile.prune held back") && run.stderr.contains("but AWS said"),
        "{}",
        run.all()
    );
    let ledger = install.state().join("ledger/prune.json");
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    assert!(!text.contains("keys/gone"), "no sighting: {text}");
    run_at(&install, now, 0);
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        text.contains(&format_time(now)) && text.contains("keys/gone"),
        "seen by a clock AWS agrees with: {text}"
    );
    assert!(install.key_dir("gone").join("current").exists());
}
