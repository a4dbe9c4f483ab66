//! Retries and fault isolation of the AWS KMS provider: a fault-injecting HTTP proxy of this
//! test, on 127.0.0.1, in front of LocalStack answers chosen requests with KMS errors, drops or
//! resets the connection (before or after forwarding), or answers past the client's attempt
//! timeout, and forwards the rest.
//!
//! The 30% harness (`thirty_percent_faults_...`) provisions `KEYPROV_FAULTS_KEYS` keys (default
//! 100; `bench/faults.sh` runs 500) through that proxy and reports the requests per key.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;

/// What the proxy does with one request.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// Answer with this HTTP status and KMS error type.
    Error(u16, &'static str),
    /// Close the connection without answering.
    Drop,
    /// Reset the connection (RST) without forwarding.
    Reset,
    /// Forward to LocalStack (which generates), then reset instead of answering.
    ResetAfterForward,
    /// Hold the request this long, then close without forwarding.
    Stall(Duration),
    /// Forward to LocalStack, then answer only after this long.
    SlowAnswer(Duration),
}

/// Decides per request: `Some(fault)` or forward to LocalStack.
type Script = Box<dyn Fn(usize, &str) -> Option<Fault> + Send + Sync>;

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// `X-Amz-Target` without the service prefix, e.g. `GenerateDataKeyPairWithoutPlaintext`.
    operation: String,
    body: String,
    fault: Option<Fault>,
    /// LocalStack's status, when the request was forwarded.
    upstream_status: Option<u16>,
    /// LocalStack's response body, when it was forwarded and answered 200.
    upstream_body: Option<String>,
    /// Whether LocalStack's answer was written back at once (no fault after forwarding).
    delivered: bool,
    /// How long after the request arrived its answer was written back.
    answered_after: Duration,
}

struct Proxy {
    address: String,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Closes with RST rather than FIN: SO_LINGER on, timeout 0.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        nix::libc::setsockopt(
            stream.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<nix::libc::linger>() as nix::libc::socklen_t,
        );
    }
    drop(stream);
}

fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).ok()?;
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    read_message(&mut BufReader::new(up))
}

fn status_of(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1)?.parse().ok()
}

fn serve(stream: TcpStream, upstream: String, script: Arc<Script>, proxy: Shared) {
    let (requests, bodies, seen) = proxy;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some((head, body)) = read_message(&mut reader) {
        let arrived = std::time::Instant::now();
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&body).into_owned();
        bodies.lock().unwrap().push(text.clone());
        let fault = script(n, &text);
        let mut record = Seen {
            operation: header(&head, "x-amz-target")
                .and_then(|t| t.rsplit('.').next())
                .unwrap_or_default()
                .to_string(),
            body: text,
            fault: fault.clone(),
            upstream_status: None,
            upstream_body: None,
            delivered: false,
            answered_after: Duration::ZERO,
        };
        let forwards = matches!(
            fault,
            None | Some(Fault::ResetAfterForward | Fault::SlowAnswer(_))
        );
        let answer = if forwards {
            let answer = forward(&upstream, &head, &body);
            if let Some((up_head, up_body)) = &answer {
                record.upstream_status = status_of(up_head);
                if record.upstream_status == Some(200) {
                    record.upstream_body = Some(String::from_utf8_lossy(up_body).into_owned());
                }
            }
            answer
        } else {
            None
        };
        let keep_serving = match fault {
            None => {
                let (up_head, up_body) = answer.expect("LocalStack answers");
                record.delivered = writer.write_all(up_head.as_bytes()).is_ok()
                    && writer.write_all(&up_body).is_ok();
                record.answered_after = arrived.elapsed();
                record.delivered
            }
            Some(Fault::Error(status, kind)) => {
                let body =
                    format!("{{\"__type\":\"{kind}\",\"message\":\"injected by the test proxy\"}}");
                let response = format!(
                    "HTTP/1.1 {status} Injected\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-errortype: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                writer.write_all(response.as_bytes()).is_ok()
            }
            Some(Fault::Drop) => false,
            Some(Fault::Reset | Fault::ResetAfterForward) => {
                seen.lock().unwrap().push(record);
                reset(writer);
                return;
            }
            Some(Fault::Stall(pause)) => {
                seen.lock().unwrap().push(record);
                std::thread::sleep(pause);
                return;
            }
            Some(Fault::SlowAnswer(pause)) => {
                seen.lock().unwrap().push(record);
                std::thread::sleep(pause);
                if let Some((up_head, up_body)) = answer {
                    let _ = writer.write_all(up_head.as_bytes());
                    let _ = writer.write_all(&up_body);
                }
                return;
            }
        };
        seen.lock().unwrap().push(record);
        if !keep_serving {
            return;
        }
    }
}

type Shared = (
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<Seen>>>,
);

fn proxy(upstream: &str, script: Script) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let upstream = upstream.trim_start_matches("http://").to_string();
    let shared: Shared = (requests.clone(), bodies.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (upstream, script, shared) = (upstream.clone(), script.clone(), shared.clone());
            std::thread::spawn(move || serve(stream.unwrap(), upstream, script, shared));
        }
    });
    Proxy {
        address,
        requests,
        bodies,
        seen,
    }
}

fn create_key(endpoint: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kms = kms_client(endpoint).await;
        kms.create_key()
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap()
    })
}

fn install_behind(proxy: &Proxy, max_attempts: u32) -> Install {
    let mut install = Install::new(&format!(
        "provider: aws\naws: {{region: us-east-1, endpointUrl: \"{}\", maxAttempts: {max_attempts}, attemptTimeout: 5s, operationTimeout: 60s}}",
        proxy.address
    ));
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

#[test]
fn throttling_unavailability_and_dropped_connections_are_retried() {
    let Some(endpoint) = localstack() else { return };
    let arn = create_key(&endpoint);
    let faults = [
        Fault::Error(400, "ThrottlingException"),
        Fault::Error(503, "DependencyTimeoutException"),
        Fault::Error(500, "KeyUnavailableException"),
        Fault::Drop,
    ];
    let proxy = proxy(&endpoint, Box::new(move |n, _| faults.get(n).cloned()));
    let install = install_behind(&proxy, 5);
    install.manifest(
        "k.yaml",
        &manifest("retried", "ECC_NIST_P256", "").replace("alias/test", &arn),
    );
    let run = install.run_once(0);
    assert!(
        run.stdout
            .contains("1 key, 1 changed, 0 failed, 1 provider call"),
        "{}",
        run.all()
    );
    assert_eq!(
        proxy.requests.load(Ordering::SeqCst),
        5,
        "four faults, then the forwarded request"
    );
    assert_eq!(
        link(&install.key_dir("retried"), "current").as_deref(),
        Some("v0001")
    );
}

#[test]
fn a_key_whose_kms_calls_keep_failing_fails_alone_after_its_retries() {
    let Some(endpoint) = localstack() else { return };
    let good = create_key(&endpoint);
    let bad = create_key(&endpoint);
    let bad_in_script = bad.clone();
    let proxy = proxy(
        &endpoint,
        Box::new(move |_, body| {
            body.contains(&bad_in_script)
                .then_some(Fault::Error(500, "KMSInternalException"))
        }),
    );
    let install = install_behind(&proxy, 3);
    install.manifest(
        "good.yaml",
        &manifest("good", "ECC_NIST_P256", "").replace("alias/test", &good),
    );
    install.manifest(
        "bad.yaml",
        &manifest("unlucky", "ECC_NIST_P256", "").replace("alias/test", &bad),
    );
    let run = install.run_once(1);
    assert!(
        run.stdout.contains("2 keys, 1 changed, 1 failed"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(&format!(
            "key \"unlucky\": KMS was unavailable (KMSInternalException) for key {bad} after every retry"
        )),
        "{}",
        run.stderr
    );
    let attempts = proxy
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.contains(&bad))
        .count();
    assert_eq!(attempts, 3, "aws.maxAttempts bounds the attempts");
    assert_eq!(
        link(&install.key_dir("good"), "current").as_deref(),
        Some("v0001")
    );
    assert!(!install.key_dir("unlucky").join("current").exists());
}

/// splitmix64: the proxy's fault decisions, reproducible from a seed.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 30% of requests faulted: throttling, 500, 503, resets before and after LocalStack
/// generated, and answers held past the client's attempt timeout.
fn thirty_percent(seed: u64, past_timeout: Duration) -> Script {
    Box::new(move |n, _| {
        let roll = mix(seed, n as u64) % 1000;
        match roll {
            0..=89 => Some(Fault::Error(400, "ThrottlingException")),
            90..=134 => Some(Fault::Error(500, "KMSInternalException")),
            135..=179 => Some(Fault::Error(503, "DependencyTimeoutException")),
            180..=209 => Some(Fault::Reset),
            210..=239 => Some(Fault::ResetAfterForward),
            240..=269 => Some(Fault::Stall(past_timeout)),
            270..=299 => Some(Fault::SlowAnswer(past_timeout)),
            _ => None,
        }
    })
}

fn key_of(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["EncryptionContext"]["keyprov-test-key"]
        .as_str()
        .map(str::to_string)
}

fn percentile(sorted: &[usize], p: usize) -> usize {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[test]
fn thirty_percent_faults_every_key_converges_once_with_bounded_requests() {
    let Some(endpoint) = localstack() else { return };
    let keys: usize = std::env::var("KEYPROV_FAULTS_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("KEYPROV_FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let max_attempts = 12;
    let attempt_timeout = Duration::from_secs(3);
    let arn = create_key(&endpoint);
    let proxy = proxy(
        &endpoint,
        thirty_percent(seed, attempt_timeout + Duration::from_millis(1500)),
    );
    let install = install_behind(&proxy, max_attempts);
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\nreconcile: {{concurrency: 16, maxRequestsPerSecond: 1000}}\nprovider: aws\naws: {{region: us-east-1, endpointUrl: \"{}\", maxAttempts: {max_attempts}, attemptTimeout: 3s, operationTimeout: 600s}}\n",
            proxy.address
        ),
    )
    .unwrap();
    let names: Vec<String> = (0..keys).map(|i| format!("k{i:04}")).collect();
    let mut documents = String::new();
    for name in &names {
        documents.push_str("---\n");
        documents.push_str(
            &manifest(
                name,
                "ECC_NIST_P256",
                &format!("  encryptionContext: {{keyprov-test-key: {name}}}\n"),
            )
            .replace("alias/test", &arn),
        );
    }
    install.manifest("keys.yaml", &documents);

    let run = install.keyprov(&["run", "--once"]);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), proxy.requests.load(Ordering::SeqCst));

    // Requests per key, and what LocalStack generated and the proxy delivered.
    let mut attempts: BTreeMap<String, usize> = BTreeMap::new();
    let mut generated: BTreeMap<String, usize> = BTreeMap::new();
    // (public key, answered well within the attempt timeout) of every answer written back.
    let mut delivered: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    let mut faults = 0;
    for request in &seen {
        let Some(key) = key_of(&request.body) else {
            continue;
        };
        assert!(
            request.operation.starts_with("GenerateDataKeyPair"),
            "{}",
            request.operation
        );
        *attempts.entry(key.clone()).or_default() += 1;
        faults += usize::from(request.fault.is_some());
        if let Some(body) = &request.upstream_body {
            *generated.entry(key.clone()).or_default() += 1;
            if request.delivered {
                let value: serde_json::Value = serde_json::from_str(body).unwrap();
                let public = value["PublicKey"].as_str().unwrap().to_string();
                let in_time = request.answered_after < attempt_timeout / 2;
                delivered.entry(key).or_default().push((public, in_time));
            }
        }
    }
    let mut counts: Vec<usize> = attempts.values().copied().collect();
    counts.sort_unstable();
    let twice_at_kms = generated.values().filter(|&&n| n > 1).count();
    println!(
        "faulty KMS (seed {seed}): {keys} keys, {} requests, {faults} faulted ({:.1}%); requests per key min {} median {} p90 {} max {}; {} keys generated more than once at KMS (a fault after LocalStack answered), {} extra pairs delivered",
        seen.len(),
        100.0 * faults as f64 / seen.len().max(1) as f64,
        counts.first().unwrap_or(&0),
        percentile(&counts, 50),
        percentile(&counts, 90),
        counts.last().unwrap_or(&0),
        twice_at_kms,
        delivered
            .values()
            .map(|d| d.len().saturating_sub(1))
            .sum::<usize>(),
    );

    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(&format!(
            "{keys} keys, {keys} changed, 0 failed, {keys} provider calls"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(attempts.len(), keys, "every key was requested");
    assert!(
        *counts.last().unwrap() <= max_attempts as usize,
        "aws.maxAttempts bounds the requests per key"
    );
    for name in &names {
        let dir = install.key_dir(name);
        assert_eq!(versions(&dir), ["v0001"], "{name}: one version");
        assert_eq!(link(&dir, "current").as_deref(), Some("v0001"), "{name}");
        let stored = base64::engine::general_purpose::STANDARD.encode(public_der(&dir));
        let answers = delivered.get(name).cloned().unwrap_or_default();
        assert!(
            answers.iter().any(|(public, _)| *public == stored),
            "{name}: the stored pair is one KMS delivered"
        );
        // An answer written back late may have reached a client that had already given up on
        // that attempt; one written back at once was received, and only one such may exist.
        let in_time = answers.iter().filter(|(_, in_time)| *in_time).count();
        assert!(
            in_time <= 1 && (answers.len() == 1 || in_time < answers.len()),
            "{name}: {} pairs delivered to keyprov ({in_time} at once)",
            answers.len()
        );
    }
    // A second run is a no-op: nothing lost, nothing regenerated.
    let before = proxy.requests.load(Ordering::SeqCst);
    let again = install.run_once(0);
    assert!(
        again
            .stdout
            .contains("0 changed, 0 failed, 0 provider calls"),
        "{}",
        again.stdout
    );
    assert_eq!(proxy.requests.load(Ordering::SeqCst), before);
}
