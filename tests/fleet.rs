//! Fleets of hosts sharing one secret through LocalStack, through the real binary: two manifest
//! versions do not flip-flop, a consumer never generates nor writes the secret, daemons take
//! turns at a scheduled rotation (one writer, the others copy), and a daemon whose failure
//! resolved by itself (an outage, a secret restored elsewhere) goes quiet instead of spinning.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client;
use common::count_proxy::{Proxy, free_port};
use common::logged_daemon::Daemon;
use common::*;

fn unique(prefix: &str) -> String {
    format!("keyprov-test/fleet-{prefix}-{}", uuid::Uuid::new_v4())
}

/// Generations the secret holds, labelled or not (versions whose id is keyprov's token of a generation), with
/// the public key SHA-256 of each.
async fn generations(client: &Client, secret: &str, name: &str) -> Vec<(u32, String)> {
    // Every version, also those pruned of their labels.
    let listed = client
        .list_secret_version_ids()
        .secret_id(secret)
        .include_deprecated(true)
        .max_results(100)
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = listed
        .versions()
        .iter()
        .filter_map(|v| v.version_id().map(str::to_string))
        .collect();
    let mut found = Vec::new();
    for id in &ids {
        let value = client
            .get_secret_value()
            .secret_id(secret)
            .version_id(id)
            .send()
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(value.secret_string().unwrap()).unwrap();
        if json.get("keyprovClaim").is_some() {
            // A daemon's claim of a generation (tests/fleet_claim.rs): never a generation.
            continue;
        }
        let generation = json["generation"].as_u64().unwrap() as u32;
        let token = keyprov::store::secrets_manager::layout::version_id(name, generation);
        assert_eq!(id, &token, "a version keyprov did not write");
        found.push((generation, json["publicKeySha256"].as_str().unwrap().into()));
    }
    found.sort();
    found
}

fn current_generation(install: &Install, name: &str) -> Option<String> {
    link(&install.key_dir(name), "current")
}

fn public_sha(install: &Install, name: &str) -> String {
    sha256_hex(&public_der(&install.key_dir(name)))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_manifest_versions_do_not_flip_flop() {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("flip");
    let old = file_and_secret("flip", &secret, "  encryptionContext: {service: old}\n");
    let new = old.replace("service: old", "service: new");
    let (a, b) = (
        fleet_host(&endpoint, &keyring, "", ""),
        fleet_host(&endpoint, &keyring, "", ""),
    );
    a.manifest("flip.yaml", &old);
    b.manifest("flip.yaml", &old);
    a.run_once(0);
    b.run_once(0);
    assert_eq!(current_generation(&b, "flip").as_deref(), Some("v0001"));

    // The rollout of a new encryption context reaches B first: B makes generation 2.
    b.manifest("flip.yaml", &new);
    b.run_once(0);
    assert_eq!(current_generation(&b, "flip").as_deref(), Some("v0002"));
    // A, still on the old manifest, does not regenerate over it, and does not fail: it waits
    // for its manifest, keeping the generation of its own spec.
    for _ in 0..3 {
        let run = a.run_once(0);
        assert!(
            run.all().contains("was made for another spec"),
            "{}",
            run.all()
        );
        assert_eq!(current_generation(&a, "flip").as_deref(), Some("v0001"));
        b.run_once(0);
    }
    let held = generations(&client, &secret, "flip").await;
    assert_eq!(
        held.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        [1, 2],
        "no extra generation while the manifests disagree"
    );

    // The rollout reaches A: it copies B's generation, making none.
    a.manifest("flip.yaml", &new);
    a.run_once(0);
    assert_eq!(current_generation(&a, "flip").as_deref(), Some("v0002"));
    assert_eq!(public_sha(&a, "flip"), public_sha(&b, "flip"));
    assert_eq!(generations(&client, &secret, "flip").await.len(), 2);

    // A rollback of B alone is a change of B's manifest again: B regenerates (once), and A,
    // now on the newer spec it last saw current, waits.
    b.manifest("flip.yaml", &old);
    b.run_once(0);
    assert_eq!(current_generation(&b, "flip").as_deref(), Some("v0003"));
    let run = a.run_once(0);
    assert!(
        run.all().contains("was made for another spec"),
        "{}",
        run.all()
    );
    b.run_once(0);
    let last = generations(&client, &secret, "flip").await.pop();
    assert_eq!(
        last.map(|(g, _)| g),
        Some(3),
        "one generation for the rollback"
    );
}

fn total(counts: &[(String, u64)]) -> u64 {
    counts.iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_never_generates_nor_writes_the_secret() {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("consumer");
    let port = free_port();
    let proxy = Proxy::start(port, &endpoint);
    let writer = fleet_host(&endpoint, &keyring, "", "");
    let consumer = fleet_host(
        &format!("http://127.0.0.1:{port}"),
        &keyring,
        "",
        "fleet: {role: consumer}",
    );
    let text = file_and_secret("shared", &secret, "  rotation: {every: 90d}\n");
    writer.manifest("shared.yaml", &text);
    consumer.manifest("shared.yaml", &text);

    // Nothing to copy yet: the consumer waits for a writer, without failing.
    let run = consumer.run_once(0);
    assert!(run.all().contains("waiting for a writer"), "{}", run.all());
    assert_eq!(current_generation(&consumer, "shared"), None);

    writer.run_once(0);
    consumer.run_once(0);
    assert_eq!(
        current_generation(&consumer, "shared").as_deref(),
        Some("v0001")
    );
    assert_eq!(
        public_sha(&consumer, "shared"),
        public_sha(&writer, "shared")
    );

    // A rotation by the writer reaches the consumer's files.
    let rotated = writer.keyprov(&["rotate", "shared", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let run = consumer.run_once(0);
    // The consumer copies the writer's generation; it activates nothing itself.
    assert!(
        run.stderr
            .contains("copied as current key=shared generation=2"),
        "{}",
        run.all()
    );
    assert!(!run.stderr.contains("activated key="), "{}", run.all());
    assert_eq!(
        current_generation(&consumer, "shared").as_deref(),
        Some("v0002")
    );
    assert_eq!(
        public_sha(&consumer, "shared"),
        public_sha(&writer, "shared")
    );
    let status = consumer.keyprov(&["status"]);
    assert!(
        status.stdout.contains("This host is a consumer"),
        "{}",
        status.all()
    );
    let json: serde_json::Value =
        serde_json::from_str(&consumer.keyprov(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["fleet"]["role"], "consumer");

    let counts = proxy.stop();
    let writes: Vec<&(String, u64)> = counts
        .iter()
        .filter(|(op, _)| {
            ["Put", "Create", "Update", "Tag", "Delete", "Generate"]
                .iter()
                .any(|w| op.contains(w))
        })
        .collect();
    assert!(writes.is_empty(), "the consumer wrote: {counts:?}");
    assert!(total(&counts) > 0, "the consumer read through the proxy");
    assert_eq!(generations(&client, &secret, "shared").await.len(), 2);
}

fn failure_recorded(install: &Install, name: &str) -> bool {
    install
        .state()
        .join("retry")
        .join(format!("{name}.json"))
        .exists()
}

/// Daemon settings of the quiet tests: a retry after 1 s (2 s at most), no resync for an hour,
/// so every pass after the failure resolved is one the daemon wanted on its own.
const QUIET: &str = ", debounce: 100ms, resyncEvery: 1h, retryBackoff: 1s, retryBackoffMax: 2s";
/// How long after a failure resolved the requests of a daemon are counted.
const WINDOW: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn after_an_outage_repaired_by_another_host_the_daemon_goes_quiet() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("outage");
    let port = free_port();
    let proxy = Proxy::start(port, &endpoint);
    let install = fleet_host(&format!("http://127.0.0.1:{port}"), &keyring, QUIET, "");
    // maxAttempts 1: the outage fails a pass at once.
    std::fs::write(
        install.config(),
        std::fs::read_to_string(install.config())
            .unwrap()
            .replace("maxAttempts: 3", "maxAttempts: 1, connectTimeout: 1s"),
    )
    .unwrap();
    let other = fleet_host(&endpoint, &keyring, "", "");
    let text = file_and_secret("quiet", &secret, "  rotation: {every: 90d}\n");
    install.manifest("quiet.yaml", &text);
    other.manifest("quiet.yaml", &text);
    install.run_once(0);

    // Secrets Manager goes out of this host's reach: its passes fail and back off.
    drop(proxy.stop());
    let daemon = Daemon::start(&install);
    daemon.wait_until("the failure is recorded", || {
        failure_recorded(&install, "quiet")
    });
    // Meanwhile another host replaces the pair.
    let rotated = other.keyprov(&["rotate", "quiet", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    std::thread::sleep(Duration::from_secs(2));
    // The outage ends by itself: the next retry copies the other host's generation.
    let proxy = Proxy::start(port, &endpoint);
    let ended = Instant::now();
    let before = daemon.passes();
    daemon.wait_until("the key converges again", || {
        !failure_recorded(&install, "quiet")
            && current_generation(&install, "quiet").as_deref() == Some("v0002")
    });
    let settled = daemon.passes();
    // Every request of the 90 s after the outage ended is counted (issue 20's window).
    std::thread::sleep(WINDOW.saturating_sub(ended.elapsed()));
    let passes = daemon.passes() - settled;
    let counts = proxy.stop();
    eprintln!(
        "in the {WINDOW:?} after the outage: {} passes ({passes} after the key converged), \
         {} requests {counts:?}",
        daemon.passes() - before,
        total(&counts)
    );
    assert!(
        passes <= 1,
        "{passes} passes after the key converged (resyncEvery 1h)\n{}",
        daemon.log()
    );
    assert!(
        total(&counts) <= 20,
        "{} requests in the {WINDOW:?} after the outage: {counts:?}",
        total(&counts)
    );
    assert_eq!(public_sha(&install, "quiet"), public_sha(&other, "quiet"));
}

/// `generating` lines of a daemon's log, by generation.
fn generated(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("generating"))
        .filter_map(|l| {
            let rest = &l[l.find("generation=")? + "generation=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn daemons_take_turns_one_writes_each_rotation_the_others_copy_it() {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("turns");
    let window = Duration::from_secs(8);
    // Two hosts whose offsets for the key are at least 3 s apart.
    let offset = |host: &str| keyprov::fleet::offset::offset(host, "turns", window);
    let first = "host-a".to_string();
    let second = (0..)
        .map(|i| format!("host-b{i}"))
        .find(|h| offset(h) > offset(&first) + Duration::from_secs(3))
        .unwrap();
    let fleet = |host: &str| format!("fleet: {{hostId: {host}, generateWindow: 8s}}");
    let reconcile = ", debounce: 100ms, resyncEvery: 1h";
    let hosts = [
        fleet_host(&endpoint, &keyring, reconcile, &fleet(&first)),
        fleet_host(&endpoint, &keyring, reconcile, &fleet(&second)),
    ];
    let text = file_and_secret("turns", &secret, "  rotation: {every: 15s, keep: 5}\n");
    for h in &hosts {
        h.manifest("turns.yaml", &text);
    }
    hosts[0].run_once(0);
    hosts[1].run_once(0);
    let daemons: Vec<Daemon> = hosts.iter().map(Daemon::start).collect();
    // Two rotations.
    daemons[1].wait_until("both hosts hold generation 3", || {
        hosts
            .iter()
            .all(|h| current_generation(h, "turns").as_deref() == Some("v0003"))
    });
    let made: Vec<Vec<u32>> = daemons.iter().map(|d| generated(&d.log())).collect();
    assert_eq!(
        made[0],
        [2, 3],
        "the host with the smaller offset writes: {made:?}"
    );
    assert!(
        made[1].is_empty(),
        "the other copies: {made:?}\n{}",
        daemons[1].log()
    );
    assert_eq!(
        public_sha(&hosts[0], "turns"),
        public_sha(&hosts[1], "turns")
    );
    let held = generations(&client, &secret, "turns").await;
    assert_eq!(held.iter().map(|(g, _)| *g).collect::<Vec<_>>(), [1, 2, 3]);
}

/// Requests `log` (a [`Proxy::start_logged`] log, with secret ids) holds from `since` (unix
/// seconds) on: (target, secret id or `-`).
fn logged_since(log: &Path, since: f64) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [at, _, target, id] = fields[..] else {
                return None;
            };
            let at: f64 = at.parse().ok()?;
            (at >= since).then(|| (target.to_string(), id.to_string()))
        })
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_due_wake_describes_only_the_due_keys_secret_and_lists_nothing() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let port = free_port();
    let log = keyring.with_file_name("proxy.log");
    let proxy = Proxy::start_logged(port, &endpoint, Some(&log));
    let install = fleet_host(
        &format!("http://127.0.0.1:{port}"),
        &keyring,
        ", debounce: 100ms, resyncEvery: 1h",
        "fleet: {generateWindow: 0s}",
    );
    let calm: Vec<String> = (0..3).map(|i| format!("calm{i}")).collect();
    for name in &calm {
        install.manifest(
            &format!("{name}.yaml"),
            &file_and_secret(name, &unique(name), ""),
        );
    }
    let every = "  rotation: {every: 6s, keep: 5}\n";
    install.manifest("due.yaml", &file_and_secret("due", &unique("due"), every));
    let daemon = Daemon::start(&install);
    daemon.wait_until("the start-up pass", || daemon.passes() >= 1);
    assert!(
        daemon.log().contains("full pass: 4 keys"),
        "{}",
        daemon.log()
    );
    let since = unix_now();
    daemon.wait_until("due rotated twice", || {
        current_generation(&install, "due").as_deref() == Some("v0003")
    });
    // The pass that activated v0003 finishes its requests (the next rotation is 6 s away).
    daemon.wait_until("the pass that activated v0003 ends", || {
        pass_ended_after(&daemon.log(), "activated key=due generation=3")
    });
    let requests = logged_since(&log, since);
    let partial = daemon.log().matches("partial pass (due keys)").count();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for (target, _) in &requests {
        *counts.entry(target.as_str()).or_default() += 1;
    }
    eprintln!("{partial} due wakes over one key of four, 2 rotations: {counts:?}");
    drop(proxy);
    assert!(requests.len() > 5, "{requests:?}");
    let listed: Vec<_> = requests
        .iter()
        .filter(|(target, _)| target.contains("ListSecrets") || target.contains("BatchGet"))
        .collect();
    assert!(listed.is_empty(), "a due wake swept the scope: {listed:?}");
    let calm_requests: Vec<_> = requests
        .iter()
        .filter(|(_, id)| calm.iter().any(|name| id.contains(&format!("-{name}-"))))
        .collect();
    assert!(
        calm_requests.is_empty(),
        "a due wake looked at another key's secret: {calm_requests:?}\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("full pass: 4 keys, 1 changed"),
        "{}",
        daemon.log()
    );
}

/// `rotate` on a consumer is refused and changes nothing: activating ahead of the secret's
/// AWSCURRENT (or making a generation) would set its files apart from the fleet's.
#[test]
fn a_consumer_refuses_to_rotate_and_changes_nothing() {
    let install = Install::new("fleet: {role: consumer}");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    for args in [&["rotate", "k"][..], &["rotate", "k", "--now"]] {
        let run = install.keyprov(args);
        assert_eq!(run.code, 64, "{args:?}: {}", run.all());
        assert!(
            run.stderr.contains("this host is a consumer"),
            "{args:?}: {}",
            run.all()
        );
    }
    assert!(!install.key_dir("k").exists(), "a consumer made nothing");
}

/// Two fleet hosts whose turns at the rotation of `key` (in a `window` of seconds) are at least
/// `gap` seconds apart, the first's earlier: the writer on LocalStack, the follower behind a
/// counting proxy that logs every request to the returned path (`debounce: 100ms, resyncEvery:
/// 1h`).
fn writer_and_logged_follower(
    endpoint: &str,
    keyring: &Path,
    key: &str,
    window: u64,
    gap: u64,
) -> (Install, Install, Proxy, std::path::PathBuf) {
    let offset =
        |host: &str| keyprov::fleet::offset::offset(host, key, Duration::from_secs(window));
    let gap = Duration::from_secs(gap);
    let first = ["host-a".to_string()]
        .into_iter()
        .chain((0..).map(|i| format!("host-a{i}")))
        .find(|h| offset(h) + gap < Duration::from_secs(window.saturating_sub(1)))
        .unwrap();
    let second = (0..)
        .map(|i| format!("host-b{i}"))
        .find(|h| offset(h) > offset(&first) + gap)
        .unwrap();
    let fleet = |host: &str| format!("fleet: {{hostId: {host}, generateWindow: {window}s}}");
    let reconcile = ", debounce: 100ms, resyncEvery: 1h";
    let port = free_port();
    let log = keyring.with_file_name("proxy.log");
    let proxy = Proxy::start_logged(port, endpoint, Some(&log));
    let writer = fleet_host(endpoint, keyring, reconcile, &fleet(&first));
    let follower = fleet_host(
        &format!("http://127.0.0.1:{port}"),
        keyring,
        reconcile,
        &fleet(&second),
    );
    (writer, follower, proxy, log)
}

/// Most `DescribeSecret` requests a follower makes per key-rotation it copies: one look at the
/// secret when its turn comes, and the re-check's when that look came before the writer's put;
/// every later step of the pass (the copy, its links, its prune) reads the same description.
/// (Before stop 25: 7 for the 2 rotations of the test.)
const FOLLOW_DESCRIBES: usize = 2;
/// Most `GetSecretValue` requests per key-rotation a follower makes: the new version, read once
/// for the observation, the proof and the copy, and a claim's when its turn came before the
/// writer's put (one key: no sweep, no beacon). (Before stop 25: 6 for 2 rotations.)
const FOLLOW_READS: usize = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_copies_a_rotation_with_one_look_and_one_read() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("follow");
    // The writer's offset for the key at least 3 s before the follower's.
    let (writer, follower, proxy, log) =
        writer_and_logged_follower(&endpoint, &keyring, "follow", 8, 3);
    let text = file_and_secret("follow", &secret, "  rotation: {every: 15s, keep: 5}\n");
    writer.manifest("follow.yaml", &text);
    follower.manifest("follow.yaml", &text);
    writer.run_once(0);
    follower.run_once(0);
    let daemons = [Daemon::start(&writer), Daemon::start(&follower)];
    daemons[1].wait_until("the follower's start-up pass", || daemons[1].passes() >= 1);
    let since = unix_now();
    let rotations = 2;
    daemons[1].wait_until("the follower holds generation 3", || {
        current_generation(&follower, "follow").as_deref() == Some("v0003")
    });
    // The pass that copied generation 3 finishes its requests (the next rotation is 15 s away).
    // Not "one more pass than when the link was seen": that pass may have ended already, and
    // the next one is the following rotation's, whose requests would count too.
    daemons[1].wait_until("the copying pass ends", || {
        pass_ended_after(
            &daemons[1].log(),
            "copied as current key=follow generation=3",
        )
    });
    let requests = logged_since(&log, since);
    drop(proxy);
    let count = |op: &str| requests.iter().filter(|(t, _)| t.ends_with(op)).count();
    eprintln!(
        "follower, {rotations} key-rotations: {} DescribeSecret, {} GetSecretValue, all {:?}",
        count(".DescribeSecret"),
        count(".GetSecretValue"),
        requests
    );
    assert!(
        generated(&daemons[1].log()).is_empty(),
        "the follower made a generation:\n{}",
        daemons[1].log()
    );
    assert_eq!(
        public_sha(&writer, "follow"),
        public_sha(&follower, "follow")
    );
    assert!(
        count(".DescribeSecret") <= FOLLOW_DESCRIBES * rotations,
        "{} DescribeSecret for {rotations} key-rotations: {requests:?}\n{}",
        count(".DescribeSecret"),
        daemons[1].log()
    );
    assert!(
        count(".GetSecretValue") <= FOLLOW_READS * rotations,
        "{} GetSecretValue for {rotations} key-rotations: {requests:?}\n{}",
        count(".GetSecretValue"),
        daemons[1].log()
    );
}

/// A follower's due wake describes the rotated secret at its turn, more than the margin after
/// the writer's bump of the beacon; its next sweep reads that bump and does not describe the
/// secret again (it already shows what the bump names). Before, every bump a follower had
/// copied cost it one more `DescribeSecret` per key at its next sweep.
#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_does_not_describe_again_what_a_due_wake_described_after_the_bump() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("covered");
    let calm = unique("covered-calm");
    // The follower's turn at least 9 s after the writer's: its look comes after the bump.
    let (writer, follower, proxy, log) =
        writer_and_logged_follower(&endpoint, &keyring, "covered", 20, 9);
    // 90 s: the sweep after the copy is more than a minute before the next rotation, so the
    // key is settled on the listing and only the bump could make it described.
    let rotating = file_and_secret("covered", &secret, "  rotation: {every: 90s, keep: 5}\n");
    for h in [&writer, &follower] {
        h.manifest("covered.yaml", &rotating);
        h.manifest("calm.yaml", &file_and_secret("calm", &calm, ""));
    }
    writer.run_once(0);
    follower.run_once(0);
    let daemons = [Daemon::start(&writer), Daemon::start(&follower)];
    daemons[1].wait_until("the follower holds generation 2", || {
        current_generation(&follower, "covered").as_deref() == Some("v0002")
    });
    daemons[1].wait_until("the copying pass ends", || {
        pass_ended_after(
            &daemons[1].log(),
            "copied as current key=covered generation=2",
        )
    });
    let since = unix_now();
    let passes = daemons[1].passes();
    daemons[1].reload();
    daemons[1].wait_until("the reload's pass ends", || daemons[1].passes() > passes);
    let requests = logged_since(&log, since);
    drop(proxy);
    assert!(
        generated(&daemons[1].log()).is_empty(),
        "the follower made a generation:\n{}",
        daemons[1].log()
    );
    let described = |id: &str| {
        requests
            .iter()
            .filter(|(t, i)| t.ends_with(".DescribeSecret") && i.contains(id))
            .count()
    };
    assert_eq!(
        described("keyprov/beacon/"),
        1,
        "the reload's sweep reads the beacon once: {requests:?}\n{}",
        daemons[1].log()
    );
    assert_eq!(
        described(&secret),
        0,
        "the sweep described again the secret the due wake described after the bump: \
         {requests:?}\n{}",
        daemons[1].log()
    );
}
