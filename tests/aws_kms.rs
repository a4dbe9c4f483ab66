//! The AWS KMS provider against LocalStack (a third-party KMS emulator on 127.0.0.1), through the
//! real binary. LocalStack is started by `scripts/test`; these tests fail when it is missing,
//! unless `KEYPROV_SKIP_LOCALSTACK=1` asks to skip them (never under `CI=true`).

mod common;

use std::os::unix::fs::PermissionsExt;

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use common::*;

/// Creates a symmetric encryption key and returns (key id, key ARN).
async fn symmetric_key(kms: &aws_sdk_kms::Client) -> (String, String) {
    let meta = kms.create_key().send().await.unwrap().key_metadata.unwrap();
    (meta.key_id, meta.arn.unwrap())
}

async fn alias(kms: &aws_sdk_kms::Client, key_id: &str) -> String {
    let name = format!("alias/keyprov-test-{}", uuid::Uuid::new_v4());
    kms.create_alias()
        .alias_name(&name)
        .target_key_id(key_id)
        .send()
        .await
        .unwrap();
    name
}

fn aws_install(endpoint: &str) -> Install {
    let mut install = Install::new(&format!(
        "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 2, operationTimeout: 30s}}"
    ));
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

fn aws_manifest(name: &str, spec: &str, kms_key: &str, extra: &str) -> String {
    manifest(name, spec, extra).replace("alias/test", kms_key)
}

const LOCALSTACK_SPECS: [&str; 7] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_supported_spec_reconciles_and_decrypts_through_kms() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let (_, arn) = symmetric_key(&kms).await;
    let install = aws_install(&endpoint);
    for spec in LOCALSTACK_SPECS {
        let name = spec.to_lowercase().replace('_', "-");
        install.manifest(
            &format!("{name}.yaml"),
            &aws_manifest(&name, spec, &arn, "  encryptionContext: {purpose: test}\n"),
        );
    }
    let run = install.run_once(0);
    assert!(
        run.stdout
            .contains("7 keys, 7 changed, 0 failed, 7 provider calls"),
        "{}",
        run.stdout
    );
    for spec in LOCALSTACK_SPECS {
        let name = spec.to_lowercase().replace('_', "-");
        let dir = install.key_dir(&name);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
        assert_eq!(meta["kmsKeyArn"], arn.as_str());
        assert_eq!(meta["keyPairSpec"], spec);
        assert!(
            !dir.join("current/private.pem").exists(),
            "without includePlaintext no plaintext is written"
        );
        let private = decrypt(&install, &name);
        assert_pair_matches(spec, &private, &public_der(&dir));
    }
    let verify = install.keyprov(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let again = install.run_once(0);
    assert!(
        again
            .stdout
            .contains("0 changed, 0 failed, 0 provider calls"),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_id_arn_alias_and_alias_arn_all_work() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let (key_id, arn) = symmetric_key(&kms).await;
    let alias_name = alias(&kms, &key_id).await;
    let alias_arn = arn.replace(&format!("key/{key_id}"), &alias_name);
    let install = aws_install(&endpoint);
    let references = [
        ("by-id", key_id.clone()),
        ("by-arn", arn.clone()),
        ("by-alias", alias_name),
        ("by-alias-arn", alias_arn),
    ];
    for (name, reference) in &references {
        install.manifest(
            &format!("{name}.yaml"),
            &aws_manifest(name, "ECC_NIST_P256", reference, ""),
        );
    }
    install.run_once(0);
    for (name, reference) in &references {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(install.key_dir(name).join("current/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["kmsKeyArn"],
            arn.as_str(),
            "{name} ({reference}) records the key ARN KMS returned"
        );
        let private = decrypt(&install, name);
        assert_pair_matches(
            "ECC_NIST_P256",
            &private,
            &public_der(&install.key_dir(name)),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encryption_context_is_enforced_on_decrypt() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let (_, arn) = symmetric_key(&kms).await;
    let install = aws_install(&endpoint);
    install.manifest(
        "c.yaml",
        &aws_manifest(
            "ctx",
            "ECC_NIST_P256",
            &arn,
            "  encryptionContext: {service: payments}\n",
        ),
    );
    install.run_once(0);
    let key = decrypt(&install, "ctx");
    let dir = install.key_dir("ctx");
    let ciphertext = std::fs::read(dir.join("current/private.enc")).unwrap();
    // KMS enforces the context keyprov binds: the manifest's entries plus the key's name and
    // generation. Without the reserved entries, or as another generation, Decrypt fails.
    let with = |generation: Option<&str>| {
        let mut context =
            std::collections::HashMap::from([("service".to_string(), "payments".to_string())]);
        if let Some(generation) = generation {
            context.insert("keyprov:name".into(), "ctx".into());
            context.insert("keyprov:generation".into(), generation.into());
        }
        kms.decrypt()
            .key_id(&arn)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(ciphertext.clone()))
            .set_encryption_context(Some(context))
            .send()
    };
    let plain = with(Some("1"))
        .await
        .unwrap()
        .plaintext
        .unwrap()
        .into_inner();
    assert_eq!(plain, key);
    for wrong in [None, Some("2")] {
        let err = with(wrong).await.unwrap_err();
        assert_eq!(
            aws_sdk_kms::error::ProvideErrorMetadata::code(&err),
            Some("InvalidCiphertextException"),
            "{wrong:?}"
        );
    }
    // What meta.json says about the context is not believed: keyprov decrypts with the
    // manifest's, so a tampered meta.json changes nothing.
    let meta_path = dir.join("current/meta.json");
    let meta = std::fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"payments\"", "\"attacker\"");
    std::fs::set_permissions(&meta_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(&meta_path, meta).unwrap();
    assert_eq!(decrypt(&install, "ctx"), key);
    // A manifest whose context changed is not the one the pair was made for.
    install.manifest(
        "c.yaml",
        &aws_manifest(
            "ctx",
            "ECC_NIST_P256",
            &arn,
            "  encryptionContext: {service: attacker}\n",
        ),
    );
    let run = install.keyprov(&["decrypt", "ctx"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.is_empty(), "nothing printed on failure");
    assert!(
        run.stderr
            .contains("it was made for another keyPairSpec, kmsKeyId or encryptionContext"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn include_plaintext_writes_private_pem_0600_equal_to_the_decrypted_key() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let (_, arn) = symmetric_key(&kms).await;
    let install = aws_install(&endpoint);
    install.manifest(
        "p.yaml",
        &aws_manifest("plain", "ECC_NIST_P384", &arn, "  includePlaintext: true\n"),
    );
    let run = install.keyprov_env(&["run", "--once"], &[("KEYPROV_LOG", "trace")]);
    assert_eq!(run.code, 0, "{}", run.all());
    let path = install.key_dir("plain").join("current/private.pem");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored = pem_der(&path);
    assert_eq!(decrypt(&install, "plain"), stored);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&stored);
    for window in b64.as_bytes().chunks(32) {
        assert!(
            !run.all().contains(std::str::from_utf8(window).unwrap()),
            "plaintext key in trace logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kms_key_problems_fail_only_their_key_with_a_precise_message() {
    let Some(endpoint) = localstack() else { return };
    let kms = kms_client(&endpoint).await;
    let (_, good) = symmetric_key(&kms).await;
    let (disabled_id, disabled) = symmetric_key(&kms).await;
    kms.disable_key().key_id(&disabled_id).send().await.unwrap();
    let (deleted_id, deleted) = symmetric_key(&kms).await;
    kms.schedule_key_deletion()
        .key_id(&deleted_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let asymmetric = kms
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let install = aws_install(&endpoint);
    install.manifest(
        "good.yaml",
        &aws_manifest("good", "ECC_NIST_P256", &good, ""),
    );
    install.manifest(
        "disabled.yaml",
        &aws_manifest("disabled", "ECC_NIST_P256", &disabled, ""),
    );
    install.manifest(
        "deleted.yaml",
        &aws_manifest("deleted", "ECC_NIST_P256", &deleted, ""),
    );
    install.manifest(
        "asym.yaml",
        &aws_manifest("asymmetric", "ECC_NIST_P256", &asymmetric, ""),
    );
    install.manifest(
        "missing.yaml",
        &aws_manifest(
            "missing",
            "ECC_NIST_P256",
            "alias/keyprov-does-not-exist",
            "",
        ),
    );
    install.manifest("sm2.yaml", &aws_manifest("sm2", "SM2", &good, ""));
    let run = install.run_once(1);
    assert!(
        run.stdout.contains("6 keys, 1 changed, 5 failed"),
        "{}",
        run.all()
    );
    assert_eq!(
        link(&install.key_dir("good"), "current").as_deref(),
        Some("v0001")
    );
    let expectations = [
        ("disabled", format!("KMS key {disabled} is disabled: enable it (aws kms enable-key)")),
        ("deleted", format!("KMS key {deleted} cannot be used in its current state, e.g. pending deletion: cancel the deletion")),
        ("asymmetric", format!("KMS key {asymmetric} cannot protect data key pairs: kmsKeyId must name a symmetric encryption key")),
        ("missing", "KMS key alias/keyprov-does-not-exist was not found: check kmsKeyId, that the alias exists, and the region".to_string()),
        ("sm2", format!("KMS does not support GenerateDataKeyPairWithoutPlaintext here for key {good}: SM2 is only available in China Regions")),
    ];
    for (name, want) in expectations {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("key {name:?}: ")))
            .unwrap_or_else(|| panic!("no error line for {name}: {}", run.stderr));
        assert!(line.contains(&want), "{name}: want {want:?}\ngot {line}");
        assert!(
            !install.key_dir(name).join("current").exists(),
            "{name} wrote nothing"
        );
    }
}

#[test]
fn plan_and_validate_need_no_credentials_or_endpoint() {
    let install = Install::new("provider: aws\naws: {region: eu-west-1}");
    install.manifest("a.yaml", &manifest("offline", "ECC_NIST_P256", ""));
    let validate = install.keyprov(&["validate"]);
    assert_eq!(validate.code, 0, "{}", validate.all());
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("offline: generate generation 1 (new key)"),
        "{}",
        plan.stdout
    );
    let status = install.keyprov(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
}
