//! Throughput ceiling of LocalStack (or AWS) for what keyprov does to provision one key into a
//! new secret: DescribeSecret (not found), GenerateDataKeyPairWithoutPlaintext, CreateSecret
//! (no value), PutSecretValue; a minimal client issuing these for N keys with C keys in flight,
//! nothing else (no files written).
//!
//! Usage: secrets_ceiling ENDPOINT KEY_ARN PREFIX N CONCURRENCY  (prints keys per second)

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_kms::types::DataKeyPairSpec;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, key, prefix, n, concurrency] = args.as_slice() else {
        eprintln!("usage: secrets_ceiling ENDPOINT KEY_ARN PREFIX N CONCURRENCY");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (kms, secrets, key, permit) = (
            kms.clone(),
            secrets.clone(),
            key.clone(),
            semaphore.clone().acquire_owned().await.unwrap(),
        );
        let name = format!("{prefix}/key-{i:05}");
        tasks.spawn(async move {
            let _ = secrets.describe_secret().secret_id(&name).send().await;
            let pair = kms
                .generate_data_key_pair_without_plaintext()
                .key_id(key)
                .key_pair_spec(DataKeyPairSpec::EccNistP256)
                .send()
                .await
                .expect("GenerateDataKeyPairWithoutPlaintext");
            secrets
                .create_secret()
                .name(&name)
                .tags(
                    aws_sdk_secretsmanager::types::Tag::builder()
                        .key("keyprov:managed")
                        .value("true")
                        .build(),
                )
                .send()
                .await
                .expect("CreateSecret");
            // A body of keyprov's size: both keys base64, plus room for the meta fields.
            use base64::Engine;
            let b64 = |b: Option<&aws_sdk_kms::primitives::Blob>| {
                base64::engine::general_purpose::STANDARD
                    .encode(b.map(|b| b.as_ref()).unwrap_or(&[]))
            };
            let body = format!(
                "{{\"publicKey\":\"{}\",\"privateKeyCiphertext\":\"{}\",\"meta\":\"{}\"}}",
                b64(pair.public_key()),
                b64(pair.private_key_ciphertext_blob()),
                "m".repeat(600)
            );
            secrets
                .put_secret_value()
                .secret_id(&name)
                .client_request_token(uuid::Uuid::new_v4().to_string())
                .secret_string(body)
                .version_stages("AWSCURRENT")
                .send()
                .await
                .expect("PutSecretValue");
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.1}", n as f64 / seconds);
}
