//! Cheap sweeps against LocalStack, through the real binary and a counting proxy
//! (bench/count_proxy.py): a converged sweep describes the scope's change beacon and nothing
//! else; a bump is a tag and creates no version of the beacon; a version another host wrote is
//! named by the beacon's tags, described (not listed) and copied; an older keyprov's bump,
//! garbage, forged, rolled-back or moved tags cost one listing; two writers bumping at once
//! both land; more tags than a reader may miss between two sweeps is a gap (one listing), and
//! writers never leave more tags than AWS allows.

mod common;

use std::path::Path;
use std::process::Stdio;

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

/// Holds this suite's tests one at a time. They count requests exactly, and LocalStack's
/// `ListSecrets` fails with a 500 ("dictionary changed size during iteration", seen in its log)
/// when another test creates secrets meanwhile: the SDK's retry would be counted too.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let port = count_proxy::free_port();
    let proxy = count_proxy::Proxy::start(port, endpoint);
    point_at(install, &format!("http://127.0.0.1:{port}"));
    let run = install.keyprov(args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.all());
    point_at(install, endpoint);
    let counts: std::collections::BTreeMap<String, usize> = proxy
        .stop()
        .into_iter()
        .map(|(operation, n)| (operation, n as usize))
        .collect();
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

/// Name of the scope's beacon.
fn beacon_name(scope: &str) -> String {
    format!("keyprov/beacon/{scope}")
}

/// The scope's beacon: its ARN and every tag, when it exists.
fn beacon(endpoint: &str, scope: &str) -> Option<(String, Vec<(String, String)>)> {
    let out = block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .describe_secret()
            .secret_id(beacon_name(scope))
            .send()
            .await
    })
    .ok()?;
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
    Some((out.arn()?.to_string(), tags))
}

/// The beacon's tags.
fn beacon_tags(endpoint: &str, scope: &str) -> Vec<(String, String)> {
    beacon(endpoint, scope).expect("a beacon").1
}

/// The beacon's bump tags by sequence number: their values' words after the time.
fn bump_tags(endpoint: &str, scope: &str) -> std::collections::BTreeMap<u64, Vec<String>> {
    beacon_tags(endpoint, scope)
        .into_iter()
        .filter_map(|(k, v)| {
            let seq = k.strip_prefix("keyprov:bump:")?.parse().ok()?;
            Some((seq, v.split(' ').skip(1).map(str::to_string).collect()))
        })
        .collect()
}

/// The digest a bump names a secret by (48 bits of SHA-256, base64url).
fn digest(secret: &str) -> String {
    use base64::Engine as _;
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sha.as_ref()[..6])
}

/// The highest bump tag and every digest the bump tags name.
fn logged(endpoint: &str, scope: &str) -> (u64, std::collections::BTreeSet<String>) {
    let tags = bump_tags(endpoint, scope);
    let top = tags.keys().next_back().copied().unwrap_or(0);
    (top, tags.into_values().flatten().collect())
}

/// The version ids of the beacon's value (none: it never had one).
fn beacon_versions(endpoint: &str, scope: &str) -> Vec<String> {
    let out = block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .list_secret_version_ids()
            .secret_id(beacon_name(scope))
            .include_deprecated(true)
            .send()
            .await
    })
    .unwrap();
    out.versions()
        .iter()
        .filter_map(|v| v.version_id().map(str::to_string))
        .collect()
}

/// Puts `value` into the scope's beacon as an older keyprov bumped it (`PutSecretValue`).
fn overwrite_beacon(endpoint: &str, scope: &str, value: &str) {
    block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .put_secret_value()
            .secret_id(beacon_name(scope))
            .secret_string(value)
            .send()
            .await
    })
    .unwrap();
}

/// Tags the beacon as anyone with `TagResource` could.
fn tag_beacon(endpoint: &str, scope: &str, key: &str, value: &str) {
    block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .tag_resource()
            .secret_id(beacon_name(scope))
            .tags(
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
            .await
    })
    .unwrap();
}

/// Untags the beacon as anyone with `UntagResource` could.
fn untag_beacon(endpoint: &str, scope: &str, key: &str) {
    block_on(async {
        let client = secrets_client(endpoint).await;
        client
            .untag_resource()
            .secret_id(beacon_name(scope))
            .tag_keys(key)
            .send()
            .await
    })
    .unwrap();
}

/// Unix seconds now.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// AWS's limits on the beacon's tags, which LocalStack does not enforce (it took 62 tags, a
/// 129-character key, a 257-character value and `!#` when tried): keyprov must keep them.
fn assert_within_tag_limits(endpoint: &str, scope: &str) {
    let tags = beacon_tags(endpoint, scope);
    assert!(tags.len() <= 50, "{} tags: {tags:?}", tags.len());
    let bumps = tags
        .iter()
        .filter(|(k, _)| k.starts_with("keyprov:bump:"))
        .count();
    assert!(bumps <= 46, "{bumps} bump tags");
    let allowed = |c: char| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c);
    for (k, v) in &tags {
        assert!(k.len() <= 128 && v.len() <= 256, "{k}={v}");
        assert!(k.chars().all(allowed) && v.chars().all(allowed), "{k}={v}");
    }
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
    // Host 0 creates every key (and the beacon, whose first tag says "list": 105 secrets do
    // not fit a tag); host 1 copies; host 0 lists once more (the beacon appeared since its
    // listing).
    hosts[0].run_once(0);
    hosts[1].run_once(0);
    hosts[0].run_once(0);
    (scope, prefix, hosts, keyring)
}

#[test]
fn a_converged_sweep_is_one_request_and_a_change_elsewhere_is_described_not_listed() {
    let Some(endpoint) = localstack() else { return };
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "sweep");
    // The beacon: tagged with the scope, never as a key's secret; no value, so no version; one
    // bump tag saying "list" (host 1 only copied: it did not bump).
    let tags = beacon_tags(&endpoint, &scope);
    assert!(
        tags.contains(&("keyprov:scope".into(), scope.clone())),
        "{tags:?}"
    );
    assert!(
        !tags.iter().any(|(k, _)| k == "keyprov:managed"),
        "{tags:?}"
    );
    assert_eq!(beacon_versions(&endpoint, &scope), Vec::<String>::new());
    let first = bump_tags(&endpoint, &scope).remove(&1).unwrap_or_default();
    assert!(
        first.len() == 1 && first[0].starts_with("list-"),
        "{first:?}"
    );

    // A converged sweep: the beacon's description, one request, on either host.
    for host in &hosts {
        for _ in 0..2 {
            let counts = counted_run(host, &endpoint);
            assert_eq!(count(&counts, "DescribeSecret"), 1, "{counts:?}");
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

    // Host 0 rotates two keys, one of them secret-only: two bumps, each one TagResource (the
    // other is the key's own `keyprov:activated`) and no version of the beacon (its version
    // ids before and after: none).
    for key in ["k-000", "k-009"] {
        let before = beacon_versions(&endpoint, &scope);
        let counts = counted(&hosts[0], &endpoint, &["rotate", key, "--now"]);
        assert_eq!(count(&counts, "TagResource"), 1 + 1, "{counts:?}");
        assert_eq!(count(&counts, "UntagResource"), 0, "{counts:?}");
        assert_eq!(beacon_versions(&endpoint, &scope), before);
    }
    let (top, named) = logged(&endpoint, &scope);
    assert_eq!(top, 2);
    for key in ["k-000", "k-009"] {
        assert!(named.contains(&digest(&format!("{prefix}/{key}"))), "{key}");
    }
    assert_within_tag_limits(&endpoint, &scope);
    // Host 1 describes the beacon and those two secrets (and the key whose files must follow
    // once more, directly, before acting), reads the two new versions by id (the copy into
    // files and its proof take the value read), lists nothing: noticed within one sweep.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");
    assert_eq!(count(&counts, "BatchGetSecretValue"), 0, "{counts:?}");
    let described = count(&counts, "DescribeSecret");
    assert!((1 + 2..=1 + 3).contains(&described), "{counts:?}");
    assert_eq!(count(&counts, "GetSecretValue"), 2, "{counts:?}");
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

/// Runs host `index` and asserts it listed the scope (`pages` requests) or not (0), and the
/// next sweep of that host is one request.
fn lists_then_one_request(
    hosts: &[Install; 2],
    index: usize,
    endpoint: &str,
    listed: usize,
    why: &str,
) {
    let counts = counted_run(&hosts[index], endpoint);
    assert_eq!(
        count(&counts, "ListSecrets"),
        listed,
        "host {index}, {why}: {counts:?}"
    );
    let counts = counted_run(&hosts[index], endpoint);
    assert_eq!(
        counts.values().sum::<usize>(),
        1,
        "host {index} after {why}: {counts:?}"
    );
}

#[test]
fn an_old_writer_garbage_forged_rolled_back_or_moved_beacon_costs_one_listing() {
    let Some(endpoint) = localstack() else { return };
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "beacon");
    let pages = KEYS.div_ceil(100);

    // An older keyprov bumped the old way (a value: a new version): each host lists once.
    overwrite_beacon(
        &endpoint,
        &scope,
        r#"{"changedAt":"2026-12-01T00:00:00Z","by":"0123456789abcdef"}"#,
    );
    lists_then_one_request(&hosts, 1, &endpoint, pages, "an old writer's value");
    lists_then_one_request(&hosts, 0, &endpoint, pages, "an old writer's value");

    // A garbage bump tag: host 1 (a writer) lists and removes it; host 0, which never saw it,
    // sees nothing new.
    tag_beacon(&endpoint, &scope, "keyprov:bump:x", "garbage");
    lists_then_one_request(&hosts, 1, &endpoint, pages, "a garbage tag");
    assert!(
        !beacon_tags(&endpoint, &scope)
            .iter()
            .any(|(k, _)| k == "keyprov:bump:x")
    );
    lists_then_one_request(&hosts, 0, &endpoint, 0, "a garbage tag removed");

    // A forged tag naming secrets that are no key's of these hosts: not listed, nothing
    // described but the beacon.
    let (top, _) = logged(&endpoint, &scope);
    tag_beacon(
        &endpoint,
        &scope,
        &format!("keyprov:bump:{}", top + 1),
        &format!(
            "{} {} {}",
            now(),
            digest("someone/else"),
            digest("other/secret")
        ),
    );
    for index in [0, 1] {
        let counts = counted_run(&hosts[index], &endpoint);
        assert_eq!(
            counts.values().sum::<usize>(),
            1,
            "host {index}: {counts:?}"
        );
    }
    // A forged tag saying "list" (dated long ago): one listing each.
    tag_beacon(
        &endpoint,
        &scope,
        &format!("keyprov:bump:{}", top + 2),
        &format!("{} list-AAAAAAAA", now() - 3600),
    );
    lists_then_one_request(&hosts, 0, &endpoint, pages, "a forged list tag");
    lists_then_one_request(&hosts, 1, &endpoint, pages, "a forged list tag");
    // Rolled back: the highest tag removed.
    untag_beacon(&endpoint, &scope, &format!("keyprov:bump:{}", top + 2));
    lists_then_one_request(&hosts, 0, &endpoint, pages, "the highest tag removed");
    lists_then_one_request(&hosts, 1, &endpoint, pages, "the highest tag removed");
    assert_within_tag_limits(&endpoint, &scope);

    // A beacon deleted (and so created again elsewhere under another ARN) is a gap: one
    // listing, and the change that created it is copied.
    let (arn, _) = beacon(&endpoint, &scope).unwrap();
    block_on(async {
        let client = secrets_client(&endpoint).await;
        client
            .delete_secret()
            .secret_id(beacon_name(&scope))
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
    assert_eq!(beacon_versions(&endpoint, &scope), Vec::<String>::new());
    assert!(
        logged(&endpoint, &scope)
            .1
            .contains(&digest(&format!("{prefix}/k-001")))
    );
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
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "bumps");
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
        let (_, named) = logged(&endpoint, &scope);
        for key in &keys {
            assert!(
                named.contains(&digest(&format!("{prefix}/{key}"))),
                "round {round}, {key}: {:?}",
                bump_tags(&endpoint, &scope)
            );
        }
    }
    assert_eq!(beacon_versions(&endpoint, &scope), Vec::<String>::new());
    assert_within_tag_limits(&endpoint, &scope);
    // Each host follows the other's rotations from the tags, without listing.
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

/// Opens `n` bump tags above the highest as other writers would (one digest each, of no
/// key of these hosts), removing the lowest to stay within 46 bump tags.
fn other_writers_open(endpoint: &str, scope: &str, n: u64) {
    for _ in 0..n {
        let tags = bump_tags(endpoint, scope);
        let top = tags.keys().next_back().copied().unwrap_or(0);
        if tags.len() >= 46 {
            let lowest = tags.keys().next().unwrap();
            untag_beacon(endpoint, scope, &format!("keyprov:bump:{lowest}"));
        }
        let value = format!("{} {}", now(), digest(&format!("elsewhere/{}", top + 1)));
        tag_beacon(
            endpoint,
            scope,
            &format!("keyprov:bump:{}", top + 1),
            &value,
        );
    }
}

#[test]
fn more_tags_than_a_reader_may_miss_between_two_sweeps_is_a_gap_and_writers_stay_within_limits() {
    let Some(endpoint) = localstack() else { return };
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "gap");
    let pages = KEYS.div_ceil(100);
    // 10 tags opened elsewhere between two sweeps: followed without listing.
    other_writers_open(&endpoint, &scope, 10);
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
    // 50 more (the lowest removed, as writers do): a gap, one listing.
    other_writers_open(&endpoint, &scope, 50);
    lists_then_one_request(&hosts, 1, &endpoint, pages, "50 tags since");
    // Tags past AWS's 50 (LocalStack takes them): a writer's bump removes the lowest until at
    // most 46 bump tags remain, and the change still reaches host 1 (it lists: the tags it saw
    // were removed).
    let (top, _) = logged(&endpoint, &scope);
    for seq in top + 1..top + 5 {
        tag_beacon(&endpoint, &scope, &format!("keyprov:bump:{seq}"), "1");
    }
    assert!(beacon_tags(&endpoint, &scope).len() > 50);
    let counts = counted(&hosts[0], &endpoint, &["rotate", "k-005", "--now"]);
    assert_eq!(count(&counts, "UntagResource"), 1, "{counts:?}");
    assert_within_tag_limits(&endpoint, &scope);
    assert!(
        logged(&endpoint, &scope)
            .1
            .contains(&digest(&format!("{prefix}/k-005")))
    );
    run_and_follow(&hosts[1], &endpoint);
    assert_eq!(
        public_der(&hosts[0].key_dir("k-005")),
        public_der(&hosts[1].key_dir("k-005"))
    );
    assert_eq!(beacon_versions(&endpoint, &scope), Vec::<String>::new());
}

/// One run of `host` that must not fail.
fn run_and_follow(host: &Install, endpoint: &str) {
    let counts = counted_run(host, endpoint);
    assert!(
        count(&counts, "ListSecrets") <= KEYS.div_ceil(100),
        "{counts:?}"
    );
}

/// Red team: a forged bump tag at the highest sequence number a reader accepts (2^53), full,
/// costs one listing per host; it must not leave writers unable to bump (their next tag,
/// 2^53 + 1, is malformed to every reader: a listing per bump per host, and the bump lost to
/// hosts that read after a writer removed it) for as long as the forged tag stays.
#[test]
fn a_forged_tag_at_the_highest_sequence_number_does_not_stop_bumps() {
    let Some(endpoint) = localstack() else { return };
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "maxseq");
    let pages = KEYS.div_ceil(100);
    let max_seq: u64 = 1 << 53;
    let full: Vec<String> = (0..27).map(|i| digest(&format!("elsewhere/{i}"))).collect();
    tag_beacon(
        &endpoint,
        &scope,
        &format!("keyprov:bump:{max_seq}"),
        &format!("{} {}", now() - 3600, full.join(" ")),
    );
    // Readers: nothing of theirs is named (no listing).
    for index in [0, 1] {
        let counts = counted_run(&hosts[index], &endpoint);
        assert_eq!(count(&counts, "ListSecrets"), 0, "host {index}: {counts:?}");
    }
    for (round, key) in ["k-003", "k-004", "k-005"].into_iter().enumerate() {
        let rotated = hosts[0].keyprov(&["rotate", key, "--now"]);
        assert_eq!(rotated.code, 0, "{}", rotated.all());
        assert!(
            !rotated.all().contains("cannot bump"),
            "round {round}: {}",
            rotated.all()
        );
        let tags = bump_tags(&endpoint, &scope);
        assert!(
            tags.keys().all(|seq| (1..=max_seq).contains(seq)),
            "round {round}: {:?}",
            tags.keys().collect::<Vec<_>>()
        );
        assert!(
            logged(&endpoint, &scope)
                .1
                .contains(&digest(&format!("{prefix}/{key}"))),
            "round {round}"
        );
        assert_within_tag_limits(&endpoint, &scope);
        // Host 1 follows: one listing at most (the first round: the forged tag went), then
        // from the tags alone.
        let counts = counted_run(&hosts[1], &endpoint);
        let listed = if round == 0 { pages } else { 0 };
        assert!(
            count(&counts, "ListSecrets") <= listed,
            "round {round}: {counts:?}"
        );
        assert_eq!(
            public_der(&hosts[0].key_dir(key)),
            public_der(&hosts[1].key_dir(key)),
            "{key}"
        );
    }
}

/// Red team: a beacon scheduled for deletion (anyone with `DeleteSecret`, default window 30
/// days) takes no tag and its name cannot be created again: a writer restores it, so bumps
/// land again instead of every host falling back to full listings for the whole window.
#[test]
fn a_beacon_scheduled_for_deletion_is_restored_by_the_next_bump() {
    let Some(endpoint) = localstack() else { return };
    let _alone = alone();
    let (scope, prefix, hosts, _keyring) = converged_fleet(&endpoint, "deleted");
    let (arn, _) = beacon(&endpoint, &scope).unwrap();
    block_on(async {
        let client = secrets_client(&endpoint).await;
        client
            .delete_secret()
            .secret_id(beacon_name(&scope))
            .recovery_window_in_days(7)
            .send()
            .await
    })
    .unwrap();
    // Readers: the frozen tags name nothing new (nobody can tag it meanwhile).
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");
    let rotated = hosts[0].keyprov(&["rotate", "k-006", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    assert!(!rotated.all().contains("cannot bump"), "{}", rotated.all());
    let deleted = block_on(async {
        let client = secrets_client(&endpoint).await;
        client
            .describe_secret()
            .secret_id(beacon_name(&scope))
            .send()
            .await
    })
    .unwrap()
    .deleted_date()
    .is_some();
    assert!(!deleted, "the beacon is still scheduled for deletion");
    assert_eq!(beacon(&endpoint, &scope).unwrap().0, arn);
    assert!(
        logged(&endpoint, &scope)
            .1
            .contains(&digest(&format!("{prefix}/k-006")))
    );
    // Host 1 follows from the tags, without listing.
    let counts = counted_run(&hosts[1], &endpoint);
    assert_eq!(count(&counts, "ListSecrets"), 0, "{counts:?}");
    assert_eq!(
        public_der(&hosts[0].key_dir("k-006")),
        public_der(&hosts[1].key_dir("k-006"))
    );
}
