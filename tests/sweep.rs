//! Cheap sweeps against LocalStack, through the real binary and a counting proxy
//! (bench/count_proxy.py): a converged sweep of N keys lists the scope's secrets, ceil(N/100)
//! `ListSecrets` pages, and reads and describes nothing; a version another host wrote is
//! noticed by the next sweep and copied.

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
    let proxy = Proxy::start(endpoint);
    point_at(install, &proxy.url);
    let run = install.run_once(0);
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

#[test]
fn a_converged_sweep_lists_and_reads_nothing_and_notices_a_version_written_elsewhere() {
    let Some(endpoint) = localstack() else { return };
    let id = uuid::Uuid::new_v4();
    let scope = format!("sweep-{id}");
    let prefix = format!("keyprov-test/sweep-{id}");
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("k");
    let hosts = [
        host(&keyring, &scope, &endpoint),
        host(&keyring, &scope, &endpoint),
    ];
    for host in &hosts {
        host.manifest("keys.yaml", &manifests(&prefix));
    }
    // Host 0 creates every key; host 1 copies (and proves) what the secrets hold.
    hosts[0].run_once(0);
    hosts[1].run_once(0);
    for host in &hosts {
        let counts = counted_run(host, &endpoint);
        let total: usize = counts.values().sum();
        assert_eq!(
            count(&counts, "ListSecrets"),
            KEYS.div_ceil(100),
            "{counts:?}"
        );
        for operation in ["GetSecretValue", "BatchGetSecretValue"] {
            assert_eq!(count(&counts, operation), 0, "{operation}: {counts:?}");
        }
        // The change beacon, described before listing (its value is not trusted yet: a
        // value is trusted once two listings in a row saw it).
        assert_eq!(count(&counts, "DescribeSecret"), 1, "{counts:?}");
        assert!(
            total as f64 <= 0.05 * KEYS as f64,
            "{total} requests for {KEYS} keys: {counts:?}"
        );
    }

    // Host 0 rotates two keys, one of them secret-only; host 1's next sweep notices both from
    // their version ids, reads the two new versions (one batch) and copies the one with a file.
    let rotated = hosts[0].keyprov(&["rotate", "k-000", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let rotated = hosts[0].keyprov(&["rotate", "k-009", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        link(&hosts[1].key_dir("k-000"), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        public_der(&hosts[1].key_dir("k-000")),
        public_der(&hosts[0].key_dir("k-000"))
    );
    assert_eq!(count(&counts, "BatchGetSecretValue"), 1, "{counts:?}");
    assert_eq!(
        count(&counts, "ListSecrets"),
        KEYS.div_ceil(100),
        "{counts:?}"
    );
    // Only the changed keys are described again (the listing may lag, so what is done is
    // decided on a fresh description).
    assert!(count(&counts, "DescribeSecret") <= 2 * 3 + 1, "{counts:?}");
    let status = hosts[1].keyprov(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let k009 = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "k-009")
        .unwrap();
    assert_eq!(k009["generation"], 2, "{k009}");

    // And converged again: one more listing confirms the beacon's new value (`status` above
    // swept too, but a read-only command remembers nothing), then the sweep is down to the
    // beacon's description.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        counts.values().sum::<usize>(),
        KEYS.div_ceil(100) + 1,
        "{counts:?}"
    );
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(future)
}

/// The scope's beacon as Secrets Manager describes it: (AWSCURRENT version id, tags).
fn beacon(endpoint: &str, scope: &str) -> Option<(String, Vec<(String, String)>)> {
    let name = format!("keyprov/beacon/{scope}");
    let out = block_on(async {
        let client = secrets_client(endpoint).await;
        client.describe_secret().secret_id(&name).send().await
    })
    .ok()?;
    let current = out
        .version_ids_to_stages()?
        .iter()
        .find(|(_, s)| s.iter().any(|l| l == "AWSCURRENT"))?
        .0
        .clone();
    let tags = out
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Some((current, tags))
}

#[test]
fn an_unchanged_beacon_costs_one_request_and_a_change_elsewhere_is_listed_and_copied() {
    let Some(endpoint) = localstack() else { return };
    let id = uuid::Uuid::new_v4();
    let scope = format!("beacon-{id}");
    let prefix = format!("keyprov-test/beacon-{id}");
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("k");
    let hosts = [
        host(&keyring, &scope, &endpoint),
        host(&keyring, &scope, &endpoint),
    ];
    for host in &hosts {
        host.manifest("keys.yaml", &manifests(&prefix));
    }
    hosts[0].run_once(0);
    // Host 0 wrote secrets: it created the beacon, tagged with the scope, never as a key's.
    let (created, tags) = beacon(&endpoint, &scope).expect("host 0 created the beacon");
    assert!(
        tags.contains(&("keyprov:scope".into(), scope.clone())),
        "{tags:?}"
    );
    assert!(
        !tags.iter().any(|(k, _)| k == "keyprov:managed"),
        "{tags:?}"
    );
    hosts[1].run_once(0);
    // Host 1 only copied: it did not bump the beacon.
    assert_eq!(beacon(&endpoint, &scope).unwrap().0, created);

    // Host 1 lists a second time (a beacon value is trusted once two listings saw it), then
    // its converged sweeps cost one request: the beacon's DescribeSecret.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        count(&counts, "ListSecrets"),
        KEYS.div_ceil(100),
        "{counts:?}"
    );
    for _ in 0..2 {
        let counts = counted_run(&hosts[1], &endpoint);
        assert_eq!(count(&counts, "DescribeSecret"), 1, "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
    }
    // Files are still observed locally: a current link removed by hand is restored.
    std::fs::remove_file(hosts[1].key_dir("k-001").join("current")).unwrap();
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        link(&hosts[1].key_dir("k-001"), "current").as_deref(),
        Some("v0001")
    );
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");

    // Host 0 rotates a key: it bumps the beacon once, and host 1's next sweep lists and copies.
    let rotated = hosts[0].keyprov(&["rotate", "k-000", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let bumped = beacon(&endpoint, &scope).unwrap().0;
    assert_ne!(bumped, created);
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        count(&counts, "ListSecrets"),
        KEYS.div_ceil(100),
        "{counts:?}"
    );
    assert_eq!(
        link(&hosts[1].key_dir("k-000"), "current").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        public_der(&hosts[1].key_dir("k-000")),
        public_der(&hosts[0].key_dir("k-000"))
    );

    // A beacon that disappears is a change: the next sweep lists (nothing fails), and a writer
    // creates it again with its next write.
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
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(
        count(&counts, "ListSecrets"),
        KEYS.div_ceil(100),
        "{counts:?}"
    );
    let rotated = hosts[0].keyprov(&["rotate", "k-001", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    assert!(beacon(&endpoint, &scope).is_some());
}
