//! Red team (session 26): the change beacon against a writer killed in the middle of its bump
//! and against forged bump tags, through the real binary and LocalStack. A bump lost to a
//! kill -9 and a racing writer's overwrite is noticed at the follower's next full listing
//! (`reconcile.fullSweepEvery`), nobody generates; a forged tag dated far ahead does not date a
//! writer's later bump (its digests would never be recent after a listing).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::count_proxy::{Proxy, free_port};
use common::*;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(future)
}

fn beacon_name(scope: &str) -> String {
    format!("keyprov/beacon/{scope}")
}

/// The beacon's bump tags, by sequence number: (stamp, digests).
fn bumps(endpoint: &str, scope: &str) -> std::collections::BTreeMap<u64, (u64, Vec<String>)> {
    block_on(async {
        let sm = secrets_client(endpoint).await;
        let out = sm
            .describe_secret()
            .secret_id(beacon_name(scope))
            .send()
            .await
            .unwrap();
        out.tags()
            .iter()
            .filter_map(|t| {
                let seq = t.key()?.strip_prefix("keyprov:bump:")?.parse().ok()?;
                let mut words = t.value()?.split(' ');
                let at = words.next()?.parse().ok()?;
                Some((seq, (at, words.map(str::to_string).collect())))
            })
            .collect()
    })
}

fn tag_beacon(endpoint: &str, scope: &str, key: &str, value: &str) {
    block_on(async {
        let sm = secrets_client(endpoint).await;
        let tag = aws_sdk_secretsmanager::types::Tag::builder()
            .key(key)
            .value(value)
            .build();
        sm.tag_resource()
            .secret_id(beacon_name(scope))
            .tags(tag)
            .send()
            .await
            .unwrap();
    });
}

/// Generations the secret holds (labelled `keyprov-vNNNN`).
fn generations(endpoint: &str, secret: &str) -> Vec<String> {
    block_on(async {
        let sm = secrets_client(endpoint).await;
        let out = sm.describe_secret().secret_id(secret).send().await.unwrap();
        let mut labels: Vec<String> = out
            .version_ids_to_stages()
            .into_iter()
            .flat_map(|m| m.values().flatten().cloned())
            .filter(|l| l.starts_with("keyprov-v"))
            .collect();
        labels.sort();
        labels
    })
}

/// The short digest of a secret id as bumps name it.
fn digest(secret: &str) -> String {
    use base64::Engine as _;
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sha.as_ref()[..6])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fleet of this test: its own scope and one keyring for its hosts.
struct Fleet {
    id: uuid::Uuid,
    scope: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let id = uuid::Uuid::new_v4();
        Fleet {
            id,
            scope: format!("redbeacon-{id}"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn keyring(&self) -> std::path::PathBuf {
        self.dir.path().join("fleet.keyring")
    }

    /// A host reaching AWS at `endpoint`, `fleet.hostId: id`, `fullSweepEvery: full`.
    fn host(&self, endpoint: &str, id: &str, full: &str) -> Install {
        fleet_host(
            endpoint,
            &self.keyring(),
            &format!(", scope: {}, fullSweepEvery: {full}", self.scope),
            &format!("fleet: {{hostId: {id}}}"),
        )
    }

    /// The secret of key `key` in this fleet.
    fn secret(&self, key: &str) -> String {
        format!("keyprov-test/redbeacon-{}/{key}", self.id)
    }

    /// Gives each of `hosts` a manifest per key of `keys`: a file and the key's secret.
    fn carry(&self, hosts: &[&Install], keys: &[&str]) {
        for host in hosts {
            for key in keys {
                host.manifest(
                    &format!("{key}.yaml"),
                    &file_and_secret(key, &self.secret(key), ""),
                );
            }
        }
    }
}

/// A writer killed (kill -9) right after it sent its beacon `TagResource`, before its read-back,
/// and a racing writer's tag over it (described before, tagged after: tags have no
/// compare-and-set): the bump is lost. The follower sees nothing new until its next full
/// listing, then copies the generation; nobody generates another; the restarted writer and a
/// later bump are followed as usual.
#[test]
fn a_bump_lost_to_a_kill_and_a_racing_tag_is_followed_at_the_next_full_listing() {
    let Some(endpoint) = localstack() else { return };
    let fleet = Fleet::new();
    let (scope, keyring) = (fleet.scope.clone(), fleet.keyring());
    let port = free_port();
    let log = keyring.with_file_name("proxy.log");
    let _proxy = Proxy::start_logged(port, &endpoint, Some(&log));
    let writer = fleet.host(&format!("http://127.0.0.1:{port}"), "host-a", "20s");
    let follower = fleet.host(&endpoint, "host-f", "20s");
    let (x, y) = (fleet.secret("x"), fleet.secret("y"));
    fleet.carry(&[&writer, &follower], &["x", "y"]);
    writer.run_once(0);
    follower.run_once(0);
    let before = bumps(&endpoint, &scope);
    // The rotation's bump is told from `before` by its stamp (it may append to a tag that names
    // x already): it starts in a later second than any stamp there.
    let latest = before.values().map(|(at, _)| *at).max().unwrap_or(0);
    while now() <= latest {
        std::thread::sleep(Duration::from_millis(50));
    }

    // The writer rotates x and is killed as soon as its beacon TagResource went out.
    let start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let mut rotating = writer.command(&["rotate", "x", "--now"]);
    let mut child = rotating
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .get(start..)
            .is_some_and(|t| t.contains("TagResource keyprov/beacon/"))
        {
            child.kill().unwrap();
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the rotation ended");
        assert!(Instant::now() < deadline, "no beacon TagResource");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    assert_eq!(
        generations(&endpoint, &x),
        ["keyprov-v0001", "keyprov-v0002"]
    );
    // The racing writer's tag, put over the killed writer's: its own digest, without x's. The
    // proxy logged the killed writer's TagResource before forwarding it: wait until it has
    // landed (a tag landing after the racing one would overwrite it and the bump not be lost).
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let after = bumps(&endpoint, &scope);
        if after != before {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "the killed writer's TagResource never landed: {after:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let naming_x = |tags: &std::collections::BTreeMap<u64, (u64, Vec<String>)>| {
        tags.values()
            .filter(|(_, named)| named.contains(&digest(&x)))
            .count()
    };
    for (seq, (_, named)) in &after {
        if before.get(seq).map(|(_, n)| n) != Some(named) {
            let value = match before.get(seq) {
                Some((at, named)) => format!("{at} {}", named.join(" ")),
                None => format!("{} {}", now(), digest(&y)),
            };
            tag_beacon(&endpoint, &scope, &format!("keyprov:bump:{seq}"), &value);
        }
    }
    assert_eq!(
        naming_x(&bumps(&endpoint, &scope)),
        naming_x(&before),
        "the killed writer's bump is lost"
    );

    // The follower sweeps until it holds generation 2: at its next full listing at the latest.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = follower.run_once(0);
        assert!(!run.all().contains("generating"), "{}", run.all());
        if link(&follower.key_dir("x"), "current").as_deref() == Some("v0002") {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never copied x");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        public_der(&follower.key_dir("x")),
        block_on(async {
            let sm = secrets_client(&endpoint).await;
            let v = sm.get_secret_value().secret_id(&x).send().await.unwrap();
            let json: serde_json::Value = serde_json::from_str(v.secret_string().unwrap()).unwrap();
            pem::parse(json["publicKeyPem"].as_str().unwrap())
                .unwrap()
                .into_contents()
        })
    );
    // The killed writer restarts: nothing more to do; its next rotation is followed by a bump.
    let run = writer.run_once(0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.all());
    let rotated = writer.keyprov(&["rotate", "x", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    follower.run_once(0);
    assert_eq!(
        link(&follower.key_dir("x"), "current").as_deref(),
        Some("v0003")
    );
    // One generation per rotation, none from the follower (keep: 1 unlabels generation 1).
    assert_eq!(
        generations(&endpoint, &x).last().map(String::as_str),
        Some("keyprov-v0003")
    );
}

/// A bump tag forged far in the future on top of the beacon: a writer's next bump opens a new
/// tag dated by AWS's clock instead of appending to it (before: its digests took the forged
/// date, so a listing right after the write never described them as recent, and a follower's
/// description never covered them).
#[test]
fn a_tag_forged_far_ahead_does_not_date_a_writers_bump() {
    let Some(endpoint) = localstack() else { return };
    let fleet = Fleet::new();
    let scope = fleet.scope.clone();
    let writer = fleet.host(&endpoint, "host-a", "1h");
    let follower = fleet.host(&endpoint, "host-f", "1h");
    let x = fleet.secret("x");
    fleet.carry(&[&writer, &follower], &["x"]);
    writer.run_once(0);
    follower.run_once(0);
    let top = *bumps(&endpoint, &scope).keys().next_back().unwrap();
    tag_beacon(
        &endpoint,
        &scope,
        &format!("keyprov:bump:{}", top + 1),
        &format!("9999999999 {}", digest("keyprov-test/nothing-of-ours")),
    );
    let rotated = writer.keyprov(&["rotate", "x", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let tags = bumps(&endpoint, &scope);
    let (seq, (at, _)) = tags
        .iter()
        .rev()
        .find(|(_, (_, named))| named.contains(&digest(&x)))
        .unwrap();
    assert!(
        at.abs_diff(now()) < 120,
        "tag {seq} carrying the rotation's bump is dated {at}, now is {}: {tags:?}",
        now()
    );
    follower.run_once(0);
    assert_eq!(
        link(&follower.key_dir("x"), "current").as_deref(),
        Some("v0002")
    );
}

/// A bump tag re-dated to an older stamp, its digests unchanged (anyone with `TagResource` on
/// the beacon; the writer's read-back only checks digests, so it is not put again): a follower
/// that described the secret after the older stamp takes it as covered and skips it, so the
/// change waits for the next full listing, as a removed tag does. It is copied then, and
/// nobody generates.
#[test]
fn a_bump_re_dated_to_an_older_stamp_is_followed_at_the_next_full_listing() {
    let Some(endpoint) = localstack() else { return };
    let fleet = Fleet::new();
    let scope = fleet.scope.clone();
    let writer = fleet.host(&endpoint, "host-a", "20s");
    let follower = fleet.host(&endpoint, "host-f", "20s");
    let x = fleet.secret("x");
    // Two keys: a pass over one key describes it directly, without a sweep.
    fleet.carry(&[&writer, &follower], &["x", "y"]);
    writer.run_once(0);
    // The follower's first sweep lists, then describes what the recent bump names: more than
    // the margin (5 s) after that bump's stamp.
    std::thread::sleep(Duration::from_secs(7));
    follower.run_once(0);
    let oldest = bumps(&endpoint, &scope).values().map(|(at, _)| *at).min();
    let rotated = writer.keyprov(&["rotate", "x", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    for (seq, (at, named)) in bumps(&endpoint, &scope) {
        if named.contains(&digest(&x)) && Some(at) != oldest {
            let value = format!("{} {}", oldest.unwrap(), named.join(" "));
            tag_beacon(&endpoint, &scope, &format!("keyprov:bump:{seq}"), &value);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = follower.run_once(0);
        assert!(!run.all().contains("generating"), "{}", run.all());
        if link(&follower.key_dir("x"), "current").as_deref() == Some("v0002") {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never copied x");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        generations(&endpoint, &x).last().map(String::as_str),
        Some("keyprov-v0002")
    );
}
