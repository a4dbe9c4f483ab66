//! Helpers of the fleet-trust tests: KMS keys of keyprov's and of an attacker's, forged secret
//! versions put the way an attacker with `secretsmanager:PutSecretValue` would, and what a
//! verifier on the host can see.

use std::collections::BTreeMap;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeyPairSpec;
use aws_sdk_secretsmanager::Client as Secrets;
use base64::Engine as _;

use super::*;

/// The manifest's own encryption context in every test here.
pub const CONTEXT: &str = "  encryptionContext: {service: trust}\n";

pub struct Aws {
    pub kms: aws_sdk_kms::Client,
    pub sm: Secrets,
    /// ARN of keyprov's KMS key (the manifests').
    pub ours: String,
    /// ARN of a KMS key of someone else in the same account.
    pub theirs: String,
}

pub async fn aws(endpoint: &str) -> Aws {
    let kms = kms_client(endpoint).await;
    let sm = Secrets::new(&localstack_sdk_config(endpoint).await);
    let mut arns = Vec::new();
    for _ in 0..2 {
        let meta = kms.create_key().send().await.unwrap().key_metadata.unwrap();
        arns.push(meta.arn.unwrap());
    }
    let theirs = arns.pop().unwrap();
    let ours = arns.pop().unwrap();
    Aws {
        kms,
        sm,
        ours,
        theirs,
    }
}

pub fn aws_install(endpoint: &str) -> Install {
    let mut install = Install::new(&format!(
        "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 4, operationTimeout: 30s}}"
    ));
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

pub fn unique(prefix: &str) -> String {
    format!("keyprov-test/trust-{prefix}-{}", uuid::Uuid::new_v4())
}

/// A key with a file output (public.jwk and jwks.json beside the PEM) and a secret output.
pub fn key(name: &str, kms_key: &str, secret: &str, extra: &str) -> String {
    manifest(name, "ECC_NIST_P256", &format!("{CONTEXT}{extra}"))
        .replace("alias/test", kms_key)
        .replace(
            "    - file: {}\n",
            &format!(
                "    - file: {{publicFormats: [jwk]}}\n    - secretsManager: {{secretId: \"{secret}\"}}\n"
            ),
        )
}

/// The encryption context keyprov binds generation `generation` of `name` to.
pub fn bound(name: &str, generation: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("service".to_string(), "trust".to_string()),
        ("keyprov:name".to_string(), name.to_string()),
        ("keyprov:generation".to_string(), generation.to_string()),
    ])
}

/// A P-256 pair from KMS `GenerateDataKeyPairWithoutPlaintext`: (DER public key, ciphertext).
pub async fn kms_pair(
    aws: &Aws,
    kms_key: &str,
    context: &BTreeMap<String, String>,
) -> (Vec<u8>, Vec<u8>) {
    let out = aws
        .kms
        .generate_data_key_pair_without_plaintext()
        .key_id(kms_key)
        .key_pair_spec(DataKeyPairSpec::EccNistP256)
        .set_encryption_context(Some(context.clone().into_iter().collect()))
        .send()
        .await
        .unwrap();
    (
        out.public_key.map(Blob::into_inner).unwrap(),
        out.private_key_ciphertext_blob
            .map(Blob::into_inner)
            .unwrap(),
    )
}

/// `json` (a version's SecretString) made to hold this pair, recorded as this generation
/// under this KMS key and context: every field consistent, as a careful forger writes it.
pub fn holding(
    mut json: serde_json::Value,
    generation: u32,
    (public, ciphertext): &(Vec<u8>, Vec<u8>),
    kms_key: &str,
    context: &BTreeMap<String, String>,
) -> serde_json::Value {
    json["generation"] = generation.into();
    json["publicKeyPem"] = pem::encode(&pem::Pem::new("PUBLIC KEY", public.clone())).into();
    json["publicKeySha256"] = sha256_hex(public).into();
    json["privateKeyCiphertext"] = base64::engine::general_purpose::STANDARD
        .encode(ciphertext)
        .into();
    json["privateKeyCiphertextSha256"] = sha256_hex(ciphertext).into();
    json["kmsKeyArn"] = kms_key.into();
    json["encryptionContext"] = serde_json::to_value(context).unwrap();
    json
}

pub async fn secret_json(
    sm: &Secrets,
    secret: &str,
    version_id: Option<String>,
) -> serde_json::Value {
    let value = sm
        .get_secret_value()
        .secret_id(secret)
        .set_version_id(version_id)
        .send()
        .await
        .unwrap();
    serde_json::from_str(value.secret_string().unwrap()).unwrap()
}

/// Puts `json` into the secret as generation `generation` of `name` the way keyprov would:
/// keyprov's request token, AWSCURRENT and the generation label (PutSecretValue only).
pub async fn put_as(
    sm: &Secrets,
    secret: &str,
    name: &str,
    generation: u32,
    json: &serde_json::Value,
) {
    sm.put_secret_value()
        .secret_id(secret)
        .client_request_token(keyprov::store::secrets_manager::layout::version_id(
            name, generation,
        ))
        .secret_string(json.to_string())
        .version_stages("AWSCURRENT")
        .version_stages(format!("keyprov-v{generation:04}"))
        .send()
        .await
        .unwrap();
}

/// What a verifier of key `name` on this host can see: the target of `current`, the current
/// public key, jwks.json, and the version directories.
pub fn visible(install: &Install, name: &str) -> (Option<String>, Vec<u8>, Vec<u8>, Vec<String>) {
    let dir = install.key_dir(name);
    (
        link(&dir, "current"),
        std::fs::read(dir.join("current/public.pem")).unwrap_or_default(),
        std::fs::read(dir.join("jwks.json")).unwrap_or_default(),
        versions(&dir),
    )
}

/// Whether the public key `der` appears in what a verifier of `name` can see, as PEM or as a
/// JWK coordinate.
pub fn exposed(install: &Install, name: &str, der: &[u8]) -> bool {
    let dir = install.key_dir(name);
    let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", der.to_vec()));
    // The uncompressed point's x coordinate, as in a JWK.
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 64..][..32]);
    let mut files = vec![dir.join("jwks.json")];
    for version in versions(&dir) {
        files.push(dir.join(&version).join("public.pem"));
        files.push(dir.join(&version).join("public.jwk"));
    }
    files.iter().any(|f| {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned();
        text.contains(pem.trim()) || text.contains(&x)
    })
}

/// A key whose only output is its secret.
pub fn secret_only(name: &str, kms_key: &str, secret: &str) -> String {
    manifest(name, "ECC_NIST_P256", CONTEXT)
        .replace("alias/test", kms_key)
        .replace(
            "    - file: {}\n",
            &format!("    - secretsManager: {{secretId: \"{secret}\"}}\n"),
        )
}
