//! Fleet trust against LocalStack (KMS and Secrets Manager), through the real binary: what a
//! secret holds is proven with the manifest's KMS key and the encryption context bound to the
//! key's name and generation, never believed. Forged versions (another KMS key, another
//! context, another public key) and a retired pair replayed as a new generation are adopted
//! nowhere (files, jwks.json, `verify`); versions written before the binding are rotated once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::trust::*;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn forged_versions_are_adopted_nowhere_and_named_in_their_keys_error() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let variants = ["other-kms-key", "other-context", "other-public-key"];
    let secrets: Vec<String> = variants.iter().map(|v| unique(v)).collect();
    for (variant, secret) in variants.iter().zip(&secrets) {
        install.manifest(
            &format!("{variant}.yaml"),
            &key(variant, &aws.ours, secret, ""),
        );
    }
    install.run_once(0);
    let before: Vec<_> = variants.iter().map(|v| visible(&install, v)).collect();

    // Someone who can write the secrets puts generation 2 into each, under keyprov's token,
    // every field consistent with the pair it holds.
    let attackers = kms_pair(&aws, &aws.theirs, &bound("other-kms-key", 2)).await;
    let mut other_context = bound("other-context", 2);
    other_context.insert("service".into(), "attacker".into());
    let forged_context = kms_pair(&aws, &aws.ours, &other_context).await;
    // A ciphertext that does decrypt as generation 2 of this key (e.g. from another
    // installation sharing the KMS key), beside the attacker's public key.
    let (_, valid_ciphertext) = kms_pair(&aws, &aws.ours, &bound("other-public-key", 2)).await;
    let mismatched = (attackers.0.clone(), valid_ciphertext);
    let forged = [
        (&attackers, &aws.theirs, bound("other-kms-key", 2)),
        (&forged_context, &aws.ours, bound("other-context", 2)),
        (&mismatched, &aws.ours, bound("other-public-key", 2)),
    ];
    let mut forged_publics = Vec::new();
    for ((variant, secret), (pair, kms_key, claimed)) in variants.iter().zip(&secrets).zip(&forged)
    {
        let json = holding(
            secret_json(&aws.sm, secret, None).await,
            2,
            pair,
            kms_key,
            claimed,
        );
        put_as(&aws.sm, secret, variant, 2, &json).await;
        forged_publics.push(pair.0.clone());
    }
    // A healthy key created in the same run still converges.
    let healthy = unique("healthy");
    install.manifest("healthy.yaml", &key("healthy", &aws.ours, &healthy, ""));

    let run = install.run_once(1);
    let mut named = 0;
    for (variant, secret) in variants.iter().zip(&secrets) {
        let version = keyprov::store::secrets_manager::layout::version_id(variant, 2);
        let origin = format!("secret {secret} version {version} (generation 2)");
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("key \"{variant}\"")) && l.contains(&origin));
        assert!(line.is_some(), "{variant}: {origin} named: {}", run.all());
        named += 1;
    }
    assert!(run.stdout.contains("3 failed"), "{}", run.stdout);
    assert_eq!(
        link(&install.key_dir("healthy"), "current").as_deref(),
        Some("v0001"),
        "{}",
        run.all()
    );

    // Refused for good, AWSCURRENT back on generation 1: readers get keyprov's pair again.
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(
        verify.stdout.contains("ok      healthy generation 1"),
        "{}",
        verify.stdout
    );
    let mut adopted = 0;
    for (i, (variant, secret)) in variants.iter().zip(&secrets).enumerate() {
        assert!(
            verify
                .stdout
                .contains(&format!("ok      {variant} generation 1")),
            "{}",
            verify.stdout
        );
        assert_eq!(secret_json(&aws.sm, secret, None).await["generation"], 1);
        if visible(&install, variant) != before[i] || exposed(&install, variant, &forged_publics[i])
        {
            adopted += 1;
        }
    }
    eprintln!(
        "forged variants: {}, named in their key's error: {named}, adopted in files/jwks.json: {adopted}",
        variants.len()
    );
    assert_eq!(adopted, 0);
    // A second run: still refused (a warning), still nothing copied, nothing fails.
    install.run_once(0);
    for (i, variant) in variants.iter().enumerate() {
        assert_eq!(visible(&install, variant), before[i], "{variant}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_pair_replayed_as_a_new_generation_is_not_adopted() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    // Replayed verbatim (its JSON still says generation 1), and edited to claim generation 3.
    let variants = ["replay-verbatim", "replay-edited"];
    let secrets: Vec<String> = variants.iter().map(|v| unique(v)).collect();
    for (variant, secret) in variants.iter().zip(&secrets) {
        install.manifest(
            &format!("{variant}.yaml"),
            &key(variant, &aws.ours, secret, ""),
        );
    }
    install.run_once(0);
    let mut retired = Vec::new();
    for (variant, secret) in variants.iter().zip(&secrets) {
        retired.push(secret_json(&aws.sm, secret, None).await);
        let run = install.keyprov(&["rotate", variant, "--now"]);
        assert_eq!(run.code, 0, "{}", run.all());
    }
    let before: Vec<_> = variants.iter().map(|v| visible(&install, v)).collect();
    for (variant, _) in variants.iter().zip(&before) {
        assert_eq!(
            link(&install.key_dir(variant), "current").as_deref(),
            Some("v0002")
        );
    }
    for ((variant, secret), json) in variants.iter().zip(&secrets).zip(&retired) {
        let mut json = json.clone();
        if *variant == "replay-edited" {
            json["generation"] = 3.into();
            json["encryptionContext"] = serde_json::to_value(bound(variant, 3)).unwrap();
        }
        put_as(&aws.sm, secret, variant, 3, &json).await;
    }
    let run = install.keyprov(&["run", "--once"]);
    let edited_origin = format!(
        "secret {} version {} (generation 3)",
        secrets[1],
        keyprov::store::secrets_manager::layout::version_id("replay-edited", 3)
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("key \"replay-edited\"")
                && l.contains(&edited_origin)
                && l.contains("does not decrypt")),
        "{}",
        run.all()
    );
    // The verbatim replay (version id of generation 3, contents of generation 1) is no
    // generation at all: AWSCURRENT comes back and the key fails, naming the version.
    let verbatim_id = keyprov::store::secrets_manager::layout::version_id("replay-verbatim", 3);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("key \"replay-verbatim\"")
                && l.contains(&secrets[0])
                && l.contains(&verbatim_id)
                && l.contains("forged or replayed")),
        "{}",
        run.all()
    );
    let back = secret_json(&aws.sm, &secrets[0], None).await;
    assert_eq!(
        back["generation"], 2,
        "AWSCURRENT is back on generation 2: {back}"
    );
    let edited_now = secret_json(&aws.sm, &secrets[1], None).await;
    eprintln!(
        "after the run, AWSCURRENT of the edited replay's secret holds generation {}",
        edited_now["generation"]
    );
    // Both refused for good; AWSCURRENT is back on generation 2 in both secrets.
    assert_eq!(edited_now["generation"], 2, "{edited_now}");
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let mut adopted = 0;
    for (i, variant) in variants.iter().enumerate() {
        let retired_public = pem::parse(retired[i]["publicKeyPem"].as_str().unwrap())
            .unwrap()
            .into_contents();
        let now = visible(&install, variant);
        // Generation 1 stays as `previous` (keep: 1); it must not come back as current.
        if now.0 != before[i].0
            || now.1 != before[i].1
            || now.3.contains(&"v0003".to_string())
            || std::fs::read(install.key_dir(variant).join("current/public.pem")).unwrap()
                == pem::encode(&pem::Pem::new("PUBLIC KEY", retired_public)).into_bytes()
            || verify
                .stdout
                .contains(&format!("ok      {variant} generation 3"))
        {
            adopted += 1;
        }
    }
    eprintln!(
        "replayed variants: {}, named: 2, adopted: {adopted}",
        variants.len()
    );
    assert_eq!(adopted, 0);
}

/// Rewrites generation `generation` of the file output of `name` as keyprov wrote it before
/// the binding: a pair whose ciphertext is bound to the manifest's context alone, and a
/// meta.json recording that context.
async fn unbind(aws: &Aws, dir: &Path, generation: u32) {
    let version = dir.join(format!("v{generation:04}"));
    let context = BTreeMap::from([("service".to_string(), "trust".to_string())]);
    let (public, ciphertext) = kms_pair(aws, &aws.ours, &context).await;
    let meta_path = version.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["encryptionContext"] = serde_json::to_value(&context).unwrap();
    meta["publicKeySha256"] = sha256_hex(&public).into();
    meta["privateKeyCiphertextSha256"] = sha256_hex(&ciphertext).into();
    for (file, bytes) in [
        ("meta.json", serde_json::to_vec_pretty(&meta).unwrap()),
        (
            "public.pem",
            pem::encode(&pem::Pem::new("PUBLIC KEY", public)).into_bytes(),
        ),
        ("private.enc", ciphertext),
    ] {
        let path = version.join(file);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, mode).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_written_before_the_binding_stay_in_files_are_rotated_once_and_never_adopted_from_a_secret()
 {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    // A file-only key from before the upgrade, staged rotation.
    install.manifest(
        "legacy.yaml",
        &manifest(
            "legacy",
            "ECC_NIST_P256",
            &format!("{CONTEXT}  rotation: {{every: 30d, publishAhead: 7d}}\n"),
        )
        .replace("alias/test", &aws.ours),
    );
    install.run_once(0);
    unbind(&aws, &install.key_dir("legacy"), 1).await;
    let unbound_public = std::fs::read(install.key_dir("legacy").join("v0001/public.pem")).unwrap();
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "kept where it is: {}", verify.all());
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("generation 1 predates keyprov's key binding"),
        "{}",
        plan.stdout
    );
    let run = install.run_once(0);
    assert!(run.stdout.contains("1 provider call"), "{}", run.stdout);
    let dir = install.key_dir("legacy");
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"), "staged");
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    assert_eq!(
        std::fs::read(dir.join("current/public.pem")).unwrap(),
        unbound_public
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("v0002/meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["encryptionContext"],
        serde_json::to_value(bound("legacy", 2)).unwrap()
    );
    let again = install.run_once(0);
    assert!(
        again
            .stdout
            .contains("0 changed, 0 failed, 0 provider calls"),
        "rotated once: {}",
        again.stdout
    );

    // A secret holding a generation from before the binding: a valid pair under keyprov's key
    // and the manifest's context, which the old proof accepted. It is not copied into the files.
    let secret = unique("legacy-secret");
    install.manifest("secret.yaml", &key("legacy-secret", &aws.ours, &secret, ""));
    install.run_once(0);
    let manifest_context = BTreeMap::from([("service".to_string(), "trust".to_string())]);
    let pair = kms_pair(&aws, &aws.ours, &manifest_context).await;
    let json = holding(
        secret_json(&aws.sm, &secret, None).await,
        2,
        &pair,
        &aws.ours,
        &manifest_context,
    );
    put_as(&aws.sm, &secret, "legacy-secret", 2, &json).await;
    let run = install.run_once(1);
    let origin = format!(
        "secret {secret} version {} (generation 2) is not believed: it predates keyprov's key binding",
        keyprov::store::secrets_manager::layout::version_id("legacy-secret", 2)
    );
    assert!(run.stderr.contains(&origin), "{}", run.all());
    let dir = install.key_dir("legacy-secret");
    assert!(
        !versions(&dir).contains(&"v0002".to_string()),
        "{}",
        run.all()
    );
    assert!(
        !exposed(&install, "legacy-secret", &pair.0),
        "{}",
        run.all()
    );
    let verify = install.keyprov(&["verify"]);
    assert!(
        verify
            .stdout
            .contains(&format!("FAILED  legacy-secret: secretsManager:{secret}")),
        "{}",
        verify.stdout
    );
    std::fs::remove_file(install.manifests().join("secret.yaml")).unwrap();

    // A secret-only key exactly as keyprov wrote it before the upgrade: its one generation is
    // unbound in every output, so it is rotated once (never adopted into anything new).
    let old_secret = unique("pre-upgrade");
    let template = secret_json(&aws.sm, &secret, None).await;
    aws.sm
        .create_secret()
        .name(&old_secret)
        .tags(tag("keyprov:managed", "true"))
        .tags(tag("keyprov:name", "old"))
        .tags(tag("keyprov:scope", "default"))
        .send()
        .await
        .unwrap();
    let pair = kms_pair(&aws, &aws.ours, &manifest_context).await;
    let mut json = holding(template, 1, &pair, &aws.ours, &manifest_context);
    json["name"] = "old".into();
    put_as(&aws.sm, &old_secret, "old", 1, &json).await;
    install.manifest(
        "old.yaml",
        &key("old", &aws.ours, &old_secret, "").replace("    - file: {publicFormats: [jwk]}\n", ""),
    );
    let plan = install.keyprov(&["plan"]);
    assert!(
        plan.stdout
            .contains("generation 1 predates keyprov's key binding"),
        "{}",
        plan.all()
    );
    // One Decrypt shows the unbound version is genuine (made under the manifest's KMS key,
    // not a forgery lying about its context), one generation replaces it.
    let run = install.run_once(0);
    assert!(run.stdout.contains("2 provider calls"), "{}", run.stdout);
    let current = secret_json(&aws.sm, &old_secret, None).await;
    assert_eq!(current["generation"], 2);
    assert_eq!(
        current["encryptionContext"],
        serde_json::to_value(bound("old", 2)).unwrap()
    );
    let again = install.run_once(0);
    assert!(
        again
            .stdout
            .contains("0 changed, 0 failed, 0 provider calls"),
        "{}",
        again.stdout
    );
}

fn tag(key: &str, value: &str) -> aws_sdk_secretsmanager::types::Tag {
    aws_sdk_secretsmanager::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

#[test]
fn a_manifest_may_not_set_a_reserved_context_key() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &manifest(
            "k",
            "ECC_NIST_P256",
            "  encryptionContext:\n    service: x\n    keyprov:generation: \"7\"\n",
        ),
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.all().contains(
            "k.yaml:10:5: spec.encryptionContext.keyprov:generation: keys starting with \"keyprov:\" are reserved"
        ),
        "{}",
        run.all()
    );
    assert!(!install.key_dir("k").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_claiming_the_last_generation_number_crashes_nothing() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let (name, secret) = ("overflow", unique("overflow"));
    let healthy = unique("overflow-sibling");
    install.manifest(
        "a.yaml",
        &key(name, &aws.ours, &secret, "  rotation: {every: 1h}\n"),
    );
    install.manifest("b.yaml", &key("overflow-sibling", &aws.ours, &healthy, ""));
    install.run_once(0);
    // Generation u32::MAX, under keyprov's own token for it, holding garbage.
    aws.sm
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(keyprov::store::secrets_manager::layout::version_id(
            name,
            u32::MAX,
        ))
        .secret_string("{\"x\":1}")
        .version_stages("AWSPREVIOUS")
        .version_stages(format!("keyprov-v{}", u32::MAX))
        .send()
        .await
        .unwrap();
    for args in [
        &["plan"][..],
        &["run", "--once"][..],
        &["rotate", name, "--now"][..],
    ] {
        let run = install.keyprov(args);
        assert_ne!(run.code, 101, "{args:?} panicked: {}", run.all());
        assert!(!run.stderr.contains("panicked"), "{}", run.all());
    }
    // The rotation happened: generation 2, in the files and in the secret.
    assert_eq!(
        link(&install.key_dir(name), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_staged_generation_of_a_secret_only_key_is_never_activated() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let (name, secret) = ("forged-staged", unique("forged-staged"));
    install.manifest("a.yaml", &secret_only(name, &aws.ours, &secret));
    install.run_once(0);
    // Put by someone with PutSecretValue only: generation 2 under keyprov's token, made under
    // their own KMS key, labelled the way keyprov labels a generation it has just published.
    let original = secret_json(&aws.sm, &secret, None).await;
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 2)).await;
    let json = holding(original.clone(), 2, &pair, &aws.theirs, &bound(name, 2));
    aws.sm
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(keyprov::store::secrets_manager::layout::version_id(name, 2))
        .secret_string(json.to_string())
        .version_stages("keyprov-v0002")
        .send()
        .await
        .unwrap();
    // The run that finds it fails; later ones warn that it is refused and exit 0.
    for expected in [1, 0] {
        let run = install.run_once(expected);
        let version = keyprov::store::secrets_manager::layout::version_id(name, 2);
        let origin = format!("secret {secret} version {version} (generation 2)");
        assert!(
            run.stderr
                .lines()
                .any(|l| (l.contains(&format!("key \"{name}\""))
                    && l.contains(&origin)
                    && l.contains("is not believed"))
                    || (expected == 0 && l.contains(&version) && l.contains("refused"))),
            "{}",
            run.all()
        );
        assert!(!run.all().contains("activated staged"), "{}", run.all());
        // AWSCURRENT never moved onto it.
        assert_eq!(secret_json(&aws.sm, &secret, None).await, original);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_current_version_of_a_secret_only_key_fails_that_key() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let install = aws_install(&endpoint);
    let (name, secret) = ("forged-current", unique("forged-current"));
    let sibling = unique("forged-current-sibling");
    install.manifest("a.yaml", &secret_only(name, &aws.ours, &secret));
    install.manifest(
        "b.yaml",
        &secret_only("forged-current-sibling", &aws.ours, &sibling),
    );
    let first = install.run_once(0);
    // A converged secret-only key is proven once, then costs no Decrypt.
    let again = install.run_once(0);
    assert!(again.stdout.contains("0 provider calls"), "{}", again.all());
    let _ = first;
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
    // Generation 2 under keyprov's token, made under someone else's KMS key, put as current.
    let original = secret_json(&aws.sm, &secret, None).await;
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 2)).await;
    let json = holding(original, 2, &pair, &aws.theirs, &bound(name, 2));
    put_as(&aws.sm, &secret, name, 2, &json).await;
    let run = install.run_once(1);
    let version = keyprov::store::secrets_manager::layout::version_id(name, 2);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(&format!("key \"{name}\""))
                && l.contains(&format!("secret {secret} version {version} (generation 2)"))
                && l.contains("is not believed")),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("1 failed"), "{}", run.all());
    let status = install.keyprov(&["status"]);
    assert_eq!(
        status.code,
        1,
        "status says the key fails: {}",
        status.all()
    );
    // AWSCURRENT is back on generation 1, which this host proved: readers get it again.
    assert_eq!(secret_json(&aws.sm, &secret, None).await["generation"], 1);
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    install.run_once(0);
}

/// An installation on `provider: aws` with its own `reconcile.scope`.
fn scoped_aws_install(endpoint: &str, scope: &str) -> Install {
    let install = aws_install(endpoint);
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\n\
             reconcile: {{concurrency: 4, maxRequestsPerSecond: 1000, scope: \"{scope}\"}}\n{}\n",
            install.extra_config
        ),
    )
    .unwrap();
    install
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_copied_from_another_installations_secret_is_refused() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    // Two installations in one AWS account, same key names, same KMS key, other scopes.
    let suffix = uuid::Uuid::new_v4();
    let (staging_scope, prod_scope) = (format!("staging-{suffix}"), format!("prod-{suffix}"));
    let staging = scoped_aws_install(&endpoint, &staging_scope);
    let prod = scoped_aws_install(&endpoint, &prod_scope);
    // Copied as it is (it records staging's scope), and edited to claim prod's.
    let variants = ["scope-verbatim", "scope-edited"];
    let mut secrets = Vec::new();
    for install in [&staging, &prod] {
        let mut of_install = Vec::new();
        for variant in variants {
            let secret = unique(variant);
            install.manifest(
                &format!("{variant}.yaml"),
                &key(variant, &aws.ours, &secret, ""),
            );
            of_install.push(secret);
        }
        install.run_once(0);
        secrets.push(of_install);
    }
    // An explicit scope is bound into every pair.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(prod.key_dir("scope-edited").join("v0001/meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta["encryptionContext"]["keyprov:scope"].as_str(),
        Some(prod_scope.as_str()),
        "{meta}"
    );
    let before: Vec<_> = variants.iter().map(|v| visible(&prod, v)).collect();
    // Staging rotates; its generation 2 is copied into prod's secrets as generation 2.
    let mut copied_publics = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let run = staging.keyprov(&["rotate", variant, "--now"]);
        assert_eq!(run.code, 0, "{}", run.all());
        let mut json = secret_json(&aws.sm, &secrets[0][i], None).await;
        assert_eq!(json["generation"], 2);
        if *variant == "scope-edited" {
            json["encryptionContext"]["keyprov:scope"] = prod_scope.clone().into();
        }
        copied_publics.push(
            pem::parse(json["publicKeyPem"].as_str().unwrap())
                .unwrap()
                .into_contents(),
        );
        put_as(&aws.sm, &secrets[1][i], variant, 2, &json).await;
    }

    let run = prod.run_once(1);
    for (i, variant) in variants.iter().enumerate() {
        let origin = format!(
            "secret {} version {} (generation 2)",
            secrets[1][i],
            keyprov::store::secrets_manager::layout::version_id(variant, 2)
        );
        let why = if *variant == "scope-verbatim" {
            format!("bound to keyprov scope \"{staging_scope}\", not this installation's")
        } else {
            "does not decrypt".to_string()
        };
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(&format!("key \"{variant}\""))
                    && l.contains(&origin)
                    && l.contains(&why)),
            "{variant}: {origin}: {why}: {}",
            run.all()
        );
    }
    assert!(run.stdout.contains("2 failed"), "{}", run.stdout);
    let mut adopted = 0;
    for (i, variant) in variants.iter().enumerate() {
        if visible(&prod, variant) != before[i] || exposed(&prod, variant, &copied_publics[i]) {
            adopted += 1;
        }
    }
    eprintln!(
        "versions replayed across scopes: {}, adopted: {adopted}",
        variants.len()
    );
    assert_eq!(adopted, 0, "nothing copied");
    // The refused versions are off AWSCURRENT: verify proves generation 1, never the copy.
    let verify = prod.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    for variant in variants {
        assert!(
            !verify
                .stdout
                .contains(&format!("ok      {variant} generation 2"))
                && verify
                    .stdout
                    .contains(&format!("ok      {variant} generation 1")),
            "{}",
            verify.stdout
        );
    }
    // The installation the versions came from is untouched by all this.
    let run = staging.run_once(0);
    assert!(run.stdout.contains("0 failed"), "{}", run.stdout);
}

#[test]
fn an_explicit_scope_rotates_a_key_once_and_keeps_its_old_versions_readable() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &manifest("scoped", "ECC_NIST_P256", "  rotation: {keep: 2}\n"),
    );
    install.run_once(0);
    let dir = install.key_dir("scoped");
    let old_public = std::fs::read(dir.join("v0001/public.pem")).unwrap();
    // Upgraded to an explicit scope: generation 1 is not bound to it.
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\n\
         reconcile: {concurrency: 4, maxRequestsPerSecond: 1000, scope: team-a}\n",
    )
    .unwrap();
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("generation 1 predates keyprov's key binding"),
        "{}",
        plan.stdout
    );
    let run = install.run_once(0);
    assert!(run.stdout.contains("1 provider call"), "{}", run.stdout);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("v0002/meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["encryptionContext"]["keyprov:scope"], "team-a",
        "{meta}"
    );
    let again = install.run_once(0);
    assert!(
        again
            .stdout
            .contains("0 changed, 0 failed, 0 provider calls"),
        "rotated once: {}",
        again.stdout
    );
    // The old generation stays readable where it is (files are this host's own state).
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let out = install.root().join("old.pem");
    let run = install.keyprov(&[
        "decrypt",
        "scoped",
        "--version",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_pair_matches(
        "ECC_NIST_P256",
        &pem_der(&out),
        &pem::parse(&old_public).unwrap().into_contents(),
    );
}
