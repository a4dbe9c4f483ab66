//! Retries and fault isolation of the AWS KMS provider: a fault-injecting HTTP proxy of this
//! test, on 127.0.0.1, in front of LocalStack answers chosen requests with KMS errors (or drops
//! the connection) and forwards the rest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

/// What the proxy does with one request.
#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this HTTP status and KMS error type.
    Error(u16, &'static str),
    /// Close the connection without answering.
    Drop,
}

/// Decides per request: `Some(fault)` or forward to LocalStack.
type Script = Box<dyn Fn(usize, &str) -> Option<Fault> + Send + Sync>;

struct Proxy {
    address: String,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
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

fn serve(
    stream: TcpStream,
    upstream: String,
    script: Arc<Script>,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some((head, body)) = read_message(&mut reader) {
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&body).into_owned();
        bodies.lock().unwrap().push(text.clone());
        match script(n, &text) {
            Some(Fault::Drop) => return,
            Some(Fault::Error(status, kind)) => {
                let body =
                    format!("{{\"__type\":\"{kind}\",\"message\":\"injected by the test proxy\"}}");
                let response = format!(
                    "HTTP/1.1 {status} Injected\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-errortype: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                writer.write_all(response.as_bytes()).unwrap();
            }
            None => {
                let mut up = TcpStream::connect(&upstream).unwrap();
                up.write_all(head.as_bytes()).unwrap();
                up.write_all(&body).unwrap();
                let mut up_reader = BufReader::new(up);
                let (head, body) = read_message(&mut up_reader).expect("LocalStack answers");
                writer.write_all(head.as_bytes()).unwrap();
                writer.write_all(&body).unwrap();
            }
        }
    }
}

fn proxy(upstream: &str, script: Script) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let upstream = upstream.trim_start_matches("http://").to_string();
    let (r, b) = (requests.clone(), bodies.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (upstream, script, r, b) = (upstream.clone(), script.clone(), r.clone(), b.clone());
            std::thread::spawn(move || serve(stream.unwrap(), upstream, script, r, b));
        }
    });
    Proxy {
        address,
        requests,
        bodies,
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
            .contains("1 keys, 1 changed, 0 failed, 1 provider calls"),
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
        run.stdout.contains("2 keys, 2 changed, 1 failed"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(&format!(
            "error: key \"unlucky\": KMS was unavailable (KMSInternalException) for key {bad} after every retry"
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
