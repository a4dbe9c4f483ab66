//! Cheap sweeps against LocalStack, through the real binary and a counting proxy
//! (bench/count_proxy.py): a converged sweep reads the scope's change beacon and nothing else;
//! a version another host wrote is named by the beacon, described (not listed) and copied; an
//! old, garbage, forged or moved beacon costs one listing; two writers bumping at once both land.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Keys of the fleet: with a file and a secret output, but every tenth with a secret only.
const KEYS: usize = 105;

/// A host of the fleet: its own stateDir, the shared keyring (one KMS key serves a fleet), the
/// scope of this test (so the listing pages through this test's secrets only), AWS at `aws`.
fn host(keyring: &Path, scope: &str, aws: &str) -> Install {
    let mut install = Install::new("");
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\nprovider: local\n\
             local: {{keyring: \"{}\"}}\n\
             aws: {{region: us-east-1, endpointUrl: \"{aws}\", maxAttempts: 3}}\n\
             reconcile: {{concurrency: 8, maxRequestsPerSecond: 1000, scope: {scope}}}",
            keyring.display()
        ),
    )
    .unwrap();
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

/// Points `install` at another AWS endpoint.
fn point_at(install: &Install, aws: &str) {
    let config = std::fs::read_to_string(install.config()).unwrap();
    let start = config.find("endpointUrl: \"").unwrap() + "endpointUrl: \"".len();
    let end = start + config[start..].find('"').unwrap();
    let mut changed = config.clone();
    changed.replace_range(start..end, aws);
    std::fs::write(install.config(), changed).unwrap();
}

fn manifests(prefix: &str) -> String {
    (0..KEYS)
        .map(|i| {
            let name = format!("k-{i:03}");
            let secret = format!("    - secretsManager: {{secretId: \"{prefix}/{name}\"}}\n");
            let outputs = if i % 10 == 9 {
                secret
            } else {
                format!("    - file: {{}}\n{secret}")
            };
            manifest(&name, "ECC_NIST_P256", "").replace("    - file: {}\n", &outputs)
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// bench/count_proxy.py in front of LocalStack: every request counted by operation.
struct Proxy {
    child: Child,
    url: String,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/count_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(upstream)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs bench/count_proxy.py");
        let mut ready = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "count_proxy.py did not start");
        Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops the proxy: requests by operation (`secretsmanager.ListSecrets` -> 2).
    fn counts(mut self) -> std::collections::BTreeMap<String, usize> {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (n, target) = line.split_once(' ')?;
                Some((target.to_string(), n.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `run --once` of `install` through a counting proxy; its requests by operation.
fn counted_run(install: &Install, endpoint: &str) -> std::collections::BTreeMap<String, usize> {
    counted(install, endpoint, &["run", "--once"])
}

/// One `keyprov ARGS` of `install` through a counting proxy (it must succeed); its requests by
/// operation.
fn counted(
    install: &Install,
    endpoint: &str,
    args: &[&str],
) -> std::collections::BTreeMap<String, usize> {
    let proxy = Proxy::start(endpoint);
    point_at(install, &proxy.url);
    let run = install.keyprov(args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.all());
    point_at(install, endpoint);
    let counts = proxy.counts();
    eprintln!("{}counts: {counts:?}", run.stdout);
    counts
}

fn count(counts: &std::collections::BTreeMap<String, usize>, operation: &str) -> usize {
    counts
        .get(&format!("secretsmanager.{operation}"))
        .copied()
        .unwrap_or(0)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(future)
}

/// The scope's beacon: (ARN, its value as JSON), when it exists.
fn beacon(endpoint: &str, scope: &str) -> Option<(String, serde_json::Value)> {
    let name = format!("keyprov/beacon/{scope}");
    let out = block_on(async {
        let client = secrets_client(endpoint).await;
        client.get_secret_value().secret_id(&name).send().await
    })
    .ok()?;
    let value = serde_json::from_str(out.secret_string()?).unwrap_or(serde_json::Value::Null);
    Some((out.arn()?.to_string(), value))
}

/// The beacon's tags.
fn beacon_tags(endpoint: &str, scope: &str) -> Vec<(String, String)> {
    let name = format!("keyprov/beacon/{scope}");
    let out = block_on(async {
        let client = secrets_client(endpoint).await;
        client.describe_secret().secret_id(&name).send().await
    })
    .unwrap();
    out.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every secret the beacon's log names, and its sequence number.
fn logged(endpoint: &str, scope: &str) -> (u64, std::collections::BTreeSet<String>) {
    let (_, value) = beacon(endpoint, scope).expect("a beacon");
    assert_eq!(value["format"], "keyprov-beacon/2", "{value}");
    let named = value["bumps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["secrets"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (value["seq"].as_u64().unwrap(), named)
}

/// Puts `value` into the scope's beacon as anyone with `PutSecretValue` could (no token).
fn overwrite_beacon(endpoint: &str, scope: &str, value: &str) {
    block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .put_secret_value()
            .secret_id(format!("keyprov/beacon/{scope}"))
            .secret_string(value)
            .send()
            .await
    })
    .unwrap();
}

/// Two hosts on the manifests of this test, both converged and each at its cheapest sweep.
fn converged_fleet(
    endpoint: &str,
    label: &str,
) -> (String, String, [Install; 2], tempfile::TempDir) {
    let id = uuid::Uuid::new_v4();
    let scope = format!("{label}-{id}");
    let prefix = format!("keyprov-test/{label}-{id}");
    let keyring = tempfile::tempdir().unwrap();
    let hosts = [
        host(&keyring.path().join("k"), &scope, endpoint),
        host(&keyring.path().join("k"), &scope, endpoint),
    ];
    for host in &hosts {
        host.manifest("keys.yaml", &manifests(&prefix));
    }
    // Host 0 creates every key (and the beacon, naming them); host 1 copies; host 0 then
    // describes what its own bump named once (its listing was taken before its writes).
    hosts[0].run_once(0);
    hosts[1].run_once(0);
    hosts[0].run_once(0);
    (scope, prefix, hosts, keyring)
}

#[test]
fn a_converged_sweep_is_one_request_and_a_change_elsewhere_is_described_not_listed() {
    let Some(endpoint) = localstack() else { return };
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "sweep");
    // The beacon: tagged with the scope, never as a key's secret; its log names every secret
    // host 0 created, in one bump (host 1 only copied: it did not bump).
    let tags = beacon_tags(&endpoint, &scope);
    assert!(
        tags.contains(&("keyprov:scope".into(), scope.clone())),
        "{tags:?}"
    );
    assert!(
        !tags.iter().any(|(k, _)| k == "keyprov:managed"),
        "{tags:?}"
    );
    let (seq, named) = logged(&endpoint, &scope);
    assert_eq!(seq, 1);
    assert_eq!(named.len(), KEYS);
    assert!(named.contains(&format!("{prefix}/k-000")), "{named:?}");

    // A converged sweep: the beacon's value, one request, on either host.
    for host in &hosts {
        for _ in 0..2 {
            let counts = counted_run(host, &endpoint);
            assert_eq!(count(&counts, "GetSecretValue"), 1, "{counts:?}");
            assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
        }
    }
    // Files are still observed locally: a current link removed by hand is restored.
    std::fs::remove_file(hosts[1].key_dir("k-001").join("current")).unwrap();
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        link(&hosts[1].key_dir("k-001"), "current").as_deref(),
        Some("v0001")
    );
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");

    // Host 0 rotates two keys, one of them secret-only: two bumps, each naming its secret.
    // The bump of a pass: the log read, put under the next token, read back.
    let mut bumps = Vec::new();
    for key in ["k-000", "k-009"] {
        bumps.push(counted(&hosts[0], &endpoint, &["rotate", key, "--now"]));
    }
    for counts in &bumps {
        assert!(count(counts, "PutSecretValue") >= 2, "{counts:?}");
        assert!(count(counts, "GetSecretValue") >= 2, "{counts:?}");
    }
    assert_eq!(logged(&endpoint, &scope).0, 3);
    // Host 1 describes those two secrets (and the key whose files must follow once more,
    // directly, before acting), reads the beacon and the two new versions by id (the copy
    // into files and its proof take the value read), lists nothing.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");
    assert_eq!(count(&counts, "BatchGetSecretValue"), 0, "{counts:?}");
    let described = count(&counts, "DescribeSecret");
    assert!((2..=3).contains(&described), "{counts:?}");
    assert_eq!(count(&counts, "GetSecretValue"), 1 + 2, "{counts:?}");
    assert_eq!(
        link(&hosts[1].key_dir("k-000"), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        public_der(&hosts[1].key_dir("k-000")),
        public_der(&hosts[0].key_dir("k-000"))
    );
    let status = hosts[1].keyprov(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let k009 = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "k-009")
        .unwrap();
    assert_eq!(k009["generation"], 2, "{k009}");
    // And converged again at once: one request.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
}

#[test]
fn an_old_garbage_forged_or_moved_beacon_costs_one_listing_and_a_writer_writes_a_log() {
    let Some(endpoint) = localstack() else { return };
    let (scope, _prefix, hosts, _keyring) = converged_fleet(&endpoint, "beacon");
    let pages = KEYS.div_ceil(100);
    let (_, log) = beacon(&endpoint, &scope).unwrap();
    for value in [
        // Today's format (a rolling upgrade: an old writer bumped it).
        r#"{"changedAt":"2026-12-01T00:00:00Z","by":"0123456789abcdef"}"#.to_string(),
        "garbage".to_string(),
        // A well-formed log under a version id that is not its token: forged-looking.
        log.to_string(),
    ] {
        overwrite_beacon(&endpoint, &scope, &value);
        // Host 1 (a writer) lists once and writes a fresh log; then it is back to 1 request,
        // and so is host 0 after one listing of its own (the log is another epoch).
        let counts = counted_run(&hosts[1], &endpoint);
        assert_eq!(count(&counts, "ListSecrets"), pages, "{value}: {counts:?}");
        let (seq, _) = logged(&endpoint, &scope);
        assert_eq!(seq, 1, "{value}");
        let counts = counted_run(&hosts[1], &endpoint);
        assert_eq!(counts.values().sum::<usize>(), 1, "{value}: {counts:?}");
        let counts = counted_run(&hosts[0], &endpoint);
        assert_eq!(count(&counts, "ListSecrets"), pages, "{value}: {counts:?}");
        // No second listing. One more request at most: when host 0's listing came within the
        // listing lag of host 1's fresh log, the sweep after it may describe once more
        // (seen once in CI: 2 requests; not yet explained).
        let counts = counted_run(&hosts[0], &endpoint);
        assert_eq!(count(&counts, "ListSecrets"), 0, "{value}: {counts:?}");
        assert!(counts.values().sum::<usize>() <= 2, "{value}: {counts:?}");
    }

    // A beacon deleted (and so created again elsewhere under another ARN) is a gap: one
    // listing, and the change that created it is copied.
    let (arn, _) = beacon(&endpoint, &scope).unwrap();
    block_on(async {
        let client = secrets_client(&endpoint).await;
        client
            .delete_secret()
            .secret_id(format!("keyprov/beacon/{scope}"))
            .force_delete_without_recovery(true)
            .send()
            .await
    })
    .unwrap();
    let run = hosts[1].run_once(0);
    assert!(!run.stdout.contains("ERROR"), "{}", run.stdout);
    let rotated = hosts[0].keyprov(&["rotate", "k-001", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    assert_ne!(beacon(&endpoint, &scope).unwrap().0, arn);
    let counts = counted_run(&hosts[1], &endpoint);
    assert!(count(&counts, "ListSecrets") <= pages, "{counts:?}");
    assert_eq!(
        link(&hosts[1].key_dir("k-001"), "current").as_deref(),
        Some("v0002")
    );
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
}

#[test]
fn two_writers_bumping_at_once_both_land() {
    let Some(endpoint) = localstack() else { return };
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "bumps");
    let (before, _) = logged(&endpoint, &scope);
    for round in 0..3 {
        let keys = [
            format!("k-{:03}", 10 + round),
            format!("k-{:03}", 20 + round),
        ];
        let children: Vec<_> = hosts
            .iter()
            .zip(&keys)
            .map(|(host, key)| {
                host.command(&["rotate", key, "--now"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (seq, named) = logged(&endpoint, &scope);
        assert_eq!(seq, before + 2 * (round as u64 + 1), "round {round}");
        for key in &keys {
            assert!(
                named.contains(&format!("{prefix}/{key}")),
                "{key}: {named:?}"
            );
        }
    }
    // Each host follows the other's rotations from the log, without listing.
    for host in &hosts {
        let counts = counted_run(host, &endpoint);
        assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");
    }
    for key in ["k-010", "k-020", "k-012", "k-022"] {
        assert_eq!(
            public_der(&hosts[0].key_dir(key)),
            public_der(&hosts[1].key_dir(key)),
            "{key}"
        );
    }
}
