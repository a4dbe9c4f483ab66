//! Refused secret versions against LocalStack, through the real binary: a forged or replayed
//! version found in a key's secret (as current, staged, or garbage under `AWSCURRENT`) is
//! refused for good (`<stateDir>/ledger/refused.json`), the labels readers follow move back to
//! the newest generation that proves, the run that finds it fails that key only, later runs
//! warn and exit 0, a refused version never blocks rotation (its number is taken), and `plan`
//! says all this without writing anything.

mod common;

use aws_sdk_secretsmanager::Client as Secrets;
use common::trust::*;
use common::*;
use keyprov::store::secrets_manager::layout::version_id;

/// Staging labels per version id.
async fn stages(sm: &Secrets, secret: &str) -> std::collections::HashMap<String, Vec<String>> {
    sm.describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap_or_default()
}

/// The refusal record of the installation.
fn ledger(install: &Install) -> String {
    std::fs::read_to_string(install.state().join("ledger/refused.json")).unwrap_or_default()
}

/// A line of `run` that names `key` and every one of `parts`.
fn names(run: &Run, key: &str, parts: &[&str]) -> bool {
    run.stderr
        .lines()
        .any(|l| l.contains(&format!("key \"{key}\"")) && parts.iter().all(|p| l.contains(p)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_current_beside_files_is_moved_off_refused_and_never_used_again() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let (name, secret) = ("refused-current", unique("refused-current"));
    let sibling = unique("refused-current-sibling");
    install.manifest("a.yaml", &key(name, &aws.ours, &secret, ""));
    install.manifest(
        "b.yaml",
        &key("refused-current-sibling", &aws.ours, &sibling, ""),
    );
    install.run_once(0);
    // A version put outside keyprov is named by no bump of the change beacon: sweeps notice
    // it at their next full listing (reconcile.fullSweepEvery), here at once.
    let config = std::fs::read_to_string(install.config()).unwrap();
    let config = config.replace(
        "maxRequestsPerSecond: 1000}",
        "maxRequestsPerSecond: 1000, fullSweepEvery: 1s}",
    );
    assert!(config.contains("fullSweepEvery"), "{config}");
    std::fs::write(install.config(), config).unwrap();
    // Let that second pass since the last listing (not a timing assertion: a wait for it to
    // be due; the forgery below may take less than a second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let original = secret_json(&aws.sm, &secret, None).await;
    let before = visible(&install, name);
    // Generation 2 under keyprov's token, made under someone else's KMS key, put as current.
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 2)).await;
    let forged = holding(original.clone(), 2, &pair, &aws.theirs, &bound(name, 2));
    put_as(&aws.sm, &secret, name, 2, &forged).await;
    let version = version_id(name, 2);
    let origin = format!("secret {secret} version {version} (generation 2)");

    // `plan` proves too: it names the key and version and what `run` would do, writes nothing.
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(
        plan.all().contains(&origin) && plan.all().contains("refuses it for good"),
        "{}",
        plan.all()
    );
    let json = install.keyprov(&["plan", "--json"]);
    assert_eq!(json.code, 1, "{}", json.all());
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let failed = document["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{document}");
    assert_eq!(failed[0]["key"], name);
    assert!(
        failed[0]["error"].as_str().unwrap().contains(&origin),
        "{document}"
    );
    assert_eq!(
        secret_json(&aws.sm, &secret, None).await,
        forged,
        "plan wrote"
    );
    assert_eq!(ledger(&install), "", "plan wrote the record");

    // The run that finds it: that key fails, AWSCURRENT is back on generation 1.
    let run = install.run_once(1);
    assert!(
        names(&run, name, &[&origin, "AWSCURRENT is back on generation 1"]),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("1 failed"), "{}", run.stdout);
    assert_eq!(secret_json(&aws.sm, &secret, None).await, original);
    let labels = stages(&aws.sm, &secret).await;
    let on_forged = labels.get(&version).cloned().unwrap_or_default();
    assert!(
        !on_forged
            .iter()
            .any(|l| ["AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"].contains(&l.as_str())),
        "{labels:?}"
    );
    assert!(ledger(&install).contains(&version), "{}", ledger(&install));

    // Later runs: a warning naming it, exit 0, nothing copied from it.
    for _ in 0..2 {
        let again = install.run_once(0);
        assert!(
            again
                .stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(&version) && l.contains("refused")),
            "{}",
            again.all()
        );
    }
    let status = install.keyprov(&["status"]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.contains("refused:") && l.contains(&version)),
        "{}",
        status.stdout
    );
    let status = install.keyprov(&["status", "--json"]);
    let document: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let refused = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .map(|k| k["refused"].to_string())
        .unwrap();
    assert!(refused.contains(&version), "{document}");
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(
        verify
            .stdout
            .contains(&format!("ok      {name} generation 1")),
        "{}",
        verify.stdout
    );
    let adopted =
        usize::from(visible(&install, name) != before || exposed(&install, name, &pair.0));
    eprintln!("forged current: adopted in files/jwks.json: {adopted}");
    assert_eq!(adopted, 0);

    // Its labels put back by hand: still refused, moved off again, that key fails.
    aws.sm
        .update_secret_version_stage()
        .secret_id(&secret)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&version)
        .remove_from_version_id(version_id(name, 1))
        .send()
        .await
        .unwrap();
    let run = install.run_once(1);
    assert!(names(&run, name, &[&version]), "{}", run.all());
    assert_eq!(secret_json(&aws.sm, &secret, None).await, original);
    install.run_once(0);
    assert_eq!(visible(&install, name), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_staged_generation_never_blocks_rotation() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    // The test clock runs 2 h ahead below; AWS's clock does not.
    let config = std::fs::read_to_string(install.config()).unwrap();
    std::fs::write(
        install.config(),
        config.replace(
            "maxRequestsPerSecond: 1000}",
            "maxRequestsPerSecond: 1000, clockTolerance: 24h}",
        ),
    )
    .unwrap();
    let (name, secret) = ("refused-staged", unique("refused-staged"));
    install.manifest(
        "a.yaml",
        &key(name, &aws.ours, &secret, "  rotation: {every: 1h}\n"),
    );
    install.run_once(0);
    // Staged as generation 50, activating in 2099: made under someone else's KMS key.
    let original = secret_json(&aws.sm, &secret, None).await;
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 50)).await;
    let mut forged = holding(original.clone(), 50, &pair, &aws.theirs, &bound(name, 50));
    forged["activatesAt"] = "2099-01-01T00:00:00.000000000Z".into();
    let version = version_id(name, 50);
    aws.sm
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(&version)
        .secret_string(forged.to_string())
        .version_stages("AWSPENDING")
        .version_stages("keyprov-v0050")
        .send()
        .await
        .unwrap();
    let origin = format!("secret {secret} version {version} (generation 50)");
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(plan.all().contains(&origin), "{}", plan.all());

    let run = install.run_once(1);
    assert!(
        names(&run, name, &["staged version", &origin, "never activated"]),
        "{}",
        run.all()
    );
    let labels = stages(&aws.sm, &secret).await;
    assert!(
        !labels[&version].contains(&"AWSPENDING".to_string()),
        "{labels:?}"
    );
    assert_eq!(secret_json(&aws.sm, &secret, None).await, original);
    install.run_once(0);

    // Rotation comes due: the next generation skips only the numbers right above the highest
    // real one that refused versions hold, so a forger's number far above does not push the
    // count towards its ceiling.
    let later = humantime::format_rfc3339(
        std::time::SystemTime::now() + std::time::Duration::from_secs(7200),
    )
    .to_string();
    let run = install.keyprov_env(&["run", "--once"], &[("KEYPROV_TEST_NOW", &later)]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        link(&install.key_dir(name), "current").as_deref(),
        Some("v0002"),
        "{}",
        run.all()
    );
    let current = secret_json(&aws.sm, &secret, None).await;
    assert_eq!(current["generation"], 2, "{current}");
    assert!(!exposed(&install, name, &pair.0));
    let verify = install.keyprov_env(&["verify"], &[("KEYPROV_TEST_NOW", &later)]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_that_lies_about_its_spec_is_still_refused() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let (name, secret) = ("refused-liar", unique("refused-liar"));
    install.manifest("a.yaml", &key(name, &aws.ours, &secret, ""));
    install.run_once(0);
    let original = secret_json(&aws.sm, &secret, None).await;
    let before = visible(&install, name);
    // Generation 1's pair replayed as generation 2, its JSON edited to claim another spec and
    // generation 2's binding: rejected as "another spec" without a Decrypt, it used to be
    // spared its refusal; a Decrypt with the manifest's KMS key under the context it records
    // shows that the ciphertext is not generation 2's.
    let mut replay = original.clone();
    replay["generation"] = 2.into();
    replay["specFingerprint"] = "0000000000000000".into();
    replay["encryptionContext"]["keyprov:generation"] = "2".into();
    put_as(&aws.sm, &secret, name, 2, &replay).await;
    let version = version_id(name, 2);
    let run = install.run_once(1);
    assert!(
        names(
            &run,
            name,
            &[&version, "AWSCURRENT is back on generation 1"]
        ),
        "{}",
        run.all()
    );
    assert_eq!(secret_json(&aws.sm, &secret, None).await, original);
    assert!(ledger(&install).contains(&version), "{}", ledger(&install));
    assert_eq!(visible(&install, name), before);
    install.run_once(0);
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

/// Puts a version by hand: `token` (or a random one), `text`, `labels`.
async fn put_raw(sm: &Secrets, secret: &str, token: Option<String>, text: &str, labels: &[&str]) {
    sm.put_secret_value()
        .secret_id(secret)
        .set_client_request_token(token)
        .secret_string(text)
        .set_version_stages(Some(labels.iter().map(|l| l.to_string()).collect()))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_under_awscurrent_of_a_secret_only_key_is_repaired() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let variants = ["garbage-foreign", "garbage-malformed", "garbage-twice"];
    let secrets: Vec<String> = variants.iter().map(|v| unique(v)).collect();
    for (variant, secret) in variants.iter().zip(&secrets) {
        install.manifest(
            &format!("{variant}.yaml"),
            &secret_only(variant, &aws.ours, secret),
        );
    }
    install.run_once(0);
    let mut originals = Vec::new();
    for secret in &secrets {
        originals.push(secret_json(&aws.sm, secret, None).await);
    }
    // A version that is not keyprov's at all, malformed JSON under keyprov's token, and
    // versions that are not keyprov's put twice.
    put_raw(&aws.sm, &secrets[0], None, "hello", &["AWSCURRENT"]).await;
    put_raw(
        &aws.sm,
        &secrets[1],
        Some(version_id(variants[1], 2)),
        "{not json",
        &["AWSCURRENT", "keyprov-v0002"],
    )
    .await;
    // Twice: generation 1 keeps no label but its own, nothing says it was current.
    for text in ["hello", "again"] {
        put_raw(&aws.sm, &secrets[2], None, text, &["AWSCURRENT"]).await;
    }
    let run = install.run_once(1);
    assert!(run.stdout.contains("2 failed"), "{}", run.all());
    for (i, (variant, secret)) in variants.iter().zip(&secrets).enumerate() {
        // The twice-put secret lost every trace of generation 1 but its version id: the run
        // adopts it again (its request token) and succeeds.
        assert!(
            i == 2 || names(&run, variant, &[secret]),
            "{variant}: {}",
            run.all()
        );
        assert_eq!(
            secret_json(&aws.sm, secret, None).await,
            originals[i],
            "{variant}: AWSCURRENT is back on generation 1"
        );
    }
    for _ in 0..2 {
        install.run_once(0);
    }
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_where_no_generation_proves_gets_a_new_one_above_everything() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    // A version's JSON to forge from.
    let template = unique("none-proves-template");
    install.manifest(
        "t.yaml",
        &secret_only("none-proves-template", &aws.ours, &template),
    );
    install.run_once(0);
    let mut json = secret_json(&aws.sm, &template, None).await;
    std::fs::remove_file(install.manifests().join("t.yaml")).unwrap();
    // A secret tagged as keyprov's for key `none-proves` whose only version is a forged
    // generation 1 (someone else's KMS key): nothing in it proves.
    let (name, secret) = ("none-proves", unique("none-proves"));
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 1)).await;
    json["name"] = name.into();
    let forged = holding(json, 1, &pair, &aws.theirs, &bound(name, 1));
    aws.sm
        .create_secret()
        .name(&secret)
        .client_request_token(version_id(name, 1))
        .secret_string(forged.to_string())
        .tags(tag("keyprov:managed", "true"))
        .tags(tag("keyprov:name", name))
        .tags(tag("keyprov:scope", "default"))
        .send()
        .await
        .unwrap();
    install.manifest("a.yaml", &secret_only(name, &aws.ours, &secret));
    let version = version_id(name, 1);
    let run = install.run_once(1);
    assert!(
        names(
            &run,
            name,
            &[
                &format!("secret {secret} version {version}"),
                "new generation"
            ]
        ),
        "{}",
        run.all()
    );
    let run = install.run_once(0);
    let current = secret_json(&aws.sm, &secret, None).await;
    assert_eq!(current["generation"], 2, "{current}\n{}", run.all());
    install.run_once(0);
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(
        verify
            .stdout
            .contains(&format!("ok      {name} generation 2")),
        "{}",
        verify.stdout
    );
}

fn tag(key: &str, value: &str) -> aws_sdk_secretsmanager::types::Tag {
    aws_sdk_secretsmanager::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_still_on_the_old_manifest_never_refuses_the_new_generation_of_a_rolling_deploy() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let (first, second) = (aws_install(&endpoint), aws_install(&endpoint));
    let (name, secret) = ("rolling-deploy", unique("rolling-deploy"));
    let old = key(name, &aws.ours, &secret, "");
    first.manifest("a.yaml", &old);
    second.manifest("a.yaml", &old);
    first.run_once(0);
    second.run_once(0);
    // The new manifest (another KMS key: a new generation) reaches the first host only.
    let newer = new_kms_key(&aws.kms).await;
    let new = key(name, &newer, &secret, "");
    first.manifest("a.yaml", &new);
    first.run_once(0);
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 2);
    // The second host cannot prove it with its manifest (another KMS key: a rollout or a
    // forgery, it cannot tell): that key fails there, and nothing is refused or moved.
    let run = second.run_once(1);
    assert!(
        names(
            &run,
            name,
            &[
                "under another KMS key",
                "proven again by the next reconcile"
            ]
        ),
        "{}",
        run.all()
    );
    assert_eq!(ledger(&second), "");
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 2);
    second.manifest("a.yaml", &new);
    second.run_once(0);
    assert_eq!(
        link(&second.key_dir(name), "current").as_deref(),
        Some("v0002")
    );
    first.run_once(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_that_cannot_answer_refuses_nothing() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let (first, second) = (aws_install(&endpoint), aws_install(&endpoint));
    let (name, secret) = ("kms-down", unique("kms-down"));
    for install in [&first, &second] {
        install.manifest("a.yaml", &secret_only(name, &aws.ours, &secret));
        install.run_once(0);
    }
    let rotate = first.keyprov(&["rotate", name, "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    // The second host meets generation 2 while the KMS key cannot decrypt (disabled).
    aws.kms
        .disable_key()
        .key_id(&aws.ours)
        .send()
        .await
        .unwrap();
    let run = second.keyprov(&["run", "--once"]);
    aws.kms.enable_key().key_id(&aws.ours).send().await.unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        names(&run, name, &["proven again by the next reconcile"]),
        "{}",
        run.all()
    );
    assert_eq!(ledger(&second), "");
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 2);
    second.run_once(0);
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 2);
}
