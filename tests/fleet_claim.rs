//! Claims of a generation through the secret, through the real binary and LocalStack: daemons
//! racing one scheduled rotation with no offsets (`generateWindow: 0s`) make each generation
//! exactly once, the others copy it; a claim left by a dead host is taken over once stale; a
//! claim version is never a generation (never AWSCURRENT, never in files, status or refused).

mod common;

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client;
use common::logged_daemon::Daemon;
use common::*;
use keyprov::store::secrets_manager::claim::{CLAIM_LABEL, claim_id, claim_value};
use keyprov::store::secrets_manager::layout::version_id;

const PATIENCE: Duration = Duration::from_secs(150);

/// The reconcile settings of a writer host here: a manifest edit followed at once, no resync
/// within a test.
const DAEMON: &str = ", debounce: 100ms, resyncEvery: 1h";

fn unique(prefix: &str) -> String {
    format!("keyprov-test/claim-{prefix}-{}", uuid::Uuid::new_v4())
}

fn wait_until(what: &str, daemons: &[Daemon], mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = daemons.iter().map(Daemon::log).collect();
    panic!(
        "timed out waiting until {what}\nlogs:\n{}",
        logs.join("\n-----\n")
    );
}

/// The generations a daemon's log says it generated (one provider call each).
fn generated(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains(" generating key="))
        .filter_map(|l| {
            let rest = &l[l.find("generation=")? + "generation=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn current_generation(install: &Install, name: &str) -> Option<String> {
    link(&install.key_dir(name), "current")
}

/// Waits until the secret's AWSCURRENT is `version`: a host's file output activates first,
/// the secret's label moves right after.
async fn wait_for_current(client: &Client, secret: &str, version: &str, daemons: &[Daemon]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let [current] = holders(client, secret, &["AWSCURRENT"])
            .await
            .try_into()
            .unwrap();
        if current.as_deref() == Some(version) {
            return;
        }
        let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
        assert!(
            Instant::now() < deadline,
            "AWSCURRENT: {current:?}\n{}",
            logs.join("\n-----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version holding each of `labels` in the secret.
async fn holders(client: &Client, secret: &str, labels: &[&str]) -> Vec<Option<String>> {
    let described = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let stages = described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default();
    labels
        .iter()
        .map(|label| {
            stages
                .iter()
                .find(|(_, held)| held.iter().any(|l| l == label))
                .map(|(id, _)| id.clone())
        })
        .collect()
}

/// What `status --json` says of key `name`: its generation, every output's generation and
/// the versions refused.
fn status(install: &Install, name: &str) -> serde_json::Value {
    let run = install.keyprov(&["status", "--json"]);
    assert_eq!(run.code, 0, "status: {}", run.all());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .cloned()
        .unwrap()
}

/// A claim version is no generation on `install`: the key is on `generation` everywhere,
/// nothing is refused, the files hold only generations.
fn only_generations(install: &Install, name: &str, generation: u64) {
    let key = status(install, name);
    assert_eq!(key["generation"], generation, "{key}");
    // Converged, or pending only because its next rotation has come since (rotations here
    // are seconds apart, and a loaded machine may take that long to get here).
    let rotation_due = key["nextRotation"]
        .as_str()
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
        .is_some_and(|at| at <= std::time::SystemTime::now());
    assert!(
        key["state"] == "converged" || (key["state"] == "pending" && rotation_due),
        "{key}"
    );
    assert_eq!(key["refused"], serde_json::json!([]), "{key}");
    for output in key["outputs"].as_array().unwrap() {
        assert_eq!(output["generation"], generation, "{key}");
    }
    for version in versions(&install.key_dir(name)) {
        assert!(
            version.len() == 5 && version[1..].bytes().all(|b| b.is_ascii_digit()),
            "{version}"
        );
    }
    let refused = install.state().join("ledger/refused.json");
    let recorded = std::fs::read_to_string(&refused).unwrap_or_default();
    assert!(!recorded.contains(name), "{recorded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_daemons_make_each_rotation_once_the_others_copy_it() {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("race");
    let hosts: Vec<Install> = (0..3)
        .map(|i| {
            fleet_host(
                &endpoint,
                &keyring,
                DAEMON,
                &format!("fleet: {{hostId: racer-{i}, generateWindow: 0s}}"),
            )
        })
        .collect();
    let text = file_and_secret("race", &secret, "  rotation: {every: 20s, keep: 5}\n");
    for h in &hosts {
        h.manifest("race.yaml", &text);
        h.run_once(0);
    }
    let daemons: Vec<Daemon> = hosts.iter().map(Daemon::start).collect();
    // Two rotations, every daemon waking for each at the same moment.
    wait_until("every host holds generation 3", &daemons, || {
        hosts
            .iter()
            .all(|h| current_generation(h, "race").as_deref() == Some("v0003"))
    });
    wait_for_current(&client, &secret, &version_id("race", 3), &daemons).await;
    let logs: Vec<String> = daemons.iter().map(Daemon::log).collect();
    drop(daemons);
    let mut made: Vec<u32> = logs.iter().flat_map(|l| generated(l)).collect();
    made.sort();
    assert_eq!(
        made,
        [2, 3],
        "one provider call per generation across the fleet\n{}",
        logs.join("\n-----\n")
    );
    let lost = logs
        .iter()
        .map(|l| l.matches("another host claimed generation").count())
        .sum::<usize>();
    assert!(
        lost >= 1,
        "no daemon lost a claim: the race was not run\n{}",
        logs.join("\n-----\n")
    );
    let [current, claim] = holders(&client, &secret, &["AWSCURRENT", CLAIM_LABEL])
        .await
        .try_into()
        .unwrap();
    assert_eq!(current, Some(version_id("race", 3)));
    assert_eq!(claim, Some(claim_id("race", 3, 0)), "the winner's claim");
    for h in &hosts {
        only_generations(h, "race", 3);
    }
    let shas: Vec<String> = hosts
        .iter()
        .map(|h| sha256_hex(&public_der(&h.key_dir("race"))))
        .collect();
    assert!(shas.iter().all(|s| *s == shas[0]), "{shas:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_claim_of_a_dead_host_is_taken_over_after_the_timeout() {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique("stale");
    let install = fleet_host(
        &endpoint,
        &keyring,
        DAEMON,
        "fleet: {hostId: survivor, generateWindow: 0s, claimTimeout: 40s}",
    );
    let text = file_and_secret("stale", &secret, "  rotation: {every: 25s, keep: 5}\n");
    install.manifest("stale.yaml", &text);
    install.run_once(0);
    // A host claimed generation 2 ahead of its rotation, and died.
    client
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(claim_id("stale", 2, 0))
        .secret_string(claim_value("dead-host", 2, 0))
        .version_stages(CLAIM_LABEL)
        .send()
        .await
        .unwrap();
    let daemon = Daemon::start(&install);
    let daemons = [daemon];
    wait_until("the survivor holds generation 2", &daemons, || {
        current_generation(&install, "stale").as_deref() == Some("v0002")
    });
    let log = daemons[0].log();
    let waited = log
        .find("another host claimed generation 2")
        .unwrap_or_else(|| panic!("the fresh claim was not respected\n{log}"));
    assert!(log[waited..].contains("dead-host"), "{log}");
    let stale = log
        .find("the claim of this generation is stale")
        .unwrap_or_else(|| panic!("the claim was not taken over as stale\n{log}"));
    let made = log.find(" generating key=").unwrap();
    assert!(waited < stale && stale < made, "{log}");
    assert_eq!(generated(&log), [2], "{log}");
    wait_for_current(&client, &secret, &version_id("stale", 2), &daemons).await;
    let [current, claim] = holders(&client, &secret, &["AWSCURRENT", CLAIM_LABEL])
        .await
        .try_into()
        .unwrap();
    assert_eq!(current, Some(version_id("stale", 2)));
    assert_eq!(claim, Some(claim_id("stale", 2, 1)), "attempt 1 took over");
    only_generations(&install, "stale", 2);
}

/// Red team: forged claims delay a rotation by `claimTimeout` at most, whatever they claim.
async fn forged_claims_delay_a_rotation_by_the_timeout_at_most(case: &str) {
    let Some(endpoint) = localstack() else { return };
    let client = secrets_client(&endpoint).await;
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = unique(case);
    let install = fleet_host(
        &endpoint,
        &keyring,
        DAEMON,
        "fleet: {hostId: victim, generateWindow: 0s, claimTimeout: 20s}",
    );
    let text = file_and_secret(case, &secret, "  rotation: {every: 25s, keep: 5}\n");
    install.manifest("k.yaml", &text);
    install.run_once(0);
    let put = |token: String, value: String, label: &str| {
        client
            .put_secret_value()
            .secret_id(&secret)
            .client_request_token(token)
            .secret_string(value)
            .version_stages(label)
            .send()
    };
    match case {
        // A claim of a far later generation, under its own token.
        "future" => {
            let g = 4_000_000_000;
            put(claim_id(case, g, 0), claim_value("evil", g, 0), CLAIM_LABEL)
                .await
                .unwrap();
        }
        // The next attempt's token taken in advance (garbage, no label), then a fresh claim.
        _ => {
            put(claim_id(case, 2, 1), "garbage".into(), "PLANTED")
                .await
                .unwrap();
            put(claim_id(case, 2, 0), claim_value("evil", 2, 0), CLAIM_LABEL)
                .await
                .unwrap();
        }
    }
    let daemons = [Daemon::start(&install)];
    wait_until("the victim makes generation 2", &daemons, || {
        current_generation(&install, case).as_deref() == Some("v0002")
    });
    wait_for_current(&client, &secret, &version_id(case, 2), &daemons).await;
    let log = daemons[0].log();
    assert_eq!(generated(&log), [2], "{log}");
    only_generations(&install, case, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_claim_of_a_far_later_generation_goes_stale_too() {
    forged_claims_delay_a_rotation_by_the_timeout_at_most("future").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_attempt_token_taken_in_advance_does_not_block_a_rotation() {
    forged_claims_delay_a_rotation_by_the_timeout_at_most("planted").await;
}
