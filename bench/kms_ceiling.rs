//! Throughput ceiling of a KMS endpoint for `GenerateDataKeyPairWithoutPlaintext`: a minimal
//! client on aws-sdk-kms issuing N requests with C in flight, nothing else.
//!
//! Usage: kms_ceiling ENDPOINT KEY_ARN SPEC N CONCURRENCY  (prints requests per second)

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_kms::types::DataKeyPairSpec;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, key, spec, n, concurrency] = args.as_slice() else {
        eprintln!("usage: kms_ceiling ENDPOINT KEY_ARN SPEC N CONCURRENCY");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&config);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, key, spec, permit) = (
            client.clone(),
            key.clone(),
            spec.clone(),
            semaphore.clone().acquire_owned().await.unwrap(),
        );
        tasks.spawn(async move {
            client
                .generate_data_key_pair_without_plaintext()
                .key_id(key)
                .key_pair_spec(DataKeyPairSpec::from(spec.as_str()))
                .send()
                .await
                .expect("GenerateDataKeyPairWithoutPlaintext");
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.1}", n as f64 / seconds);
}
