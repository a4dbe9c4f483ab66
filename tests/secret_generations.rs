//! A secret's generations come from its version ids, not from its staging labels: labels moved
//! or removed by hand (AWSCURRENT moved back, keyprov-vNNNN moved or taken off) are drift,
//! repaired to what the versions say, with nothing pruned or lost. Against LocalStack, through
//! the real binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_secretsmanager::Client;
use common::*;
use keyprov::store::secrets_manager::layout::version_id;

async fn client(endpoint: &str) -> Client {
    secrets_client(endpoint).await
}

fn install(endpoint: &str) -> Install {
    secrets_install(endpoint, "")
}

fn unique(prefix: &str) -> String {
    format!("keyprov-test/{prefix}-{}", uuid::Uuid::new_v4())
}

/// A manifest with a file output and a secret output, or a secret only.
fn with_secret(name: &str, secret: &str, files: bool) -> String {
    let outputs = if files {
        format!("    - file: {{}}\n    - secretsManager: {{secretId: \"{secret}\"}}\n")
    } else {
        format!("    - secretsManager: {{secretId: \"{secret}\"}}\n")
    };
    manifest(name, "ECC_NIST_P256", "  rotation: {every: 1d, keep: 2}\n")
        .replace("    - file: {}\n", &outputs)
}

fn at(install: &Install, args: &[&str], now: &str, expected: i32) -> Run {
    let run = install.keyprov_env(args, &[("KEYPROV_TEST_NOW", now)]);
    assert_eq!(run.code, expected, "{args:?} at {now}: {}", run.all());
    run
}

/// Generation -> staging labels of every version of key `name` (by version id), and the
/// labels of versions that are no generation of it.
async fn by_generation(
    client: &Client,
    secret: &str,
    name: &str,
) -> (BTreeMap<u32, BTreeSet<String>>, BTreeSet<String>) {
    let described = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let ids: BTreeMap<String, u32> = (1..=20).map(|g| (version_id(name, g), g)).collect();
    let mut found = BTreeMap::new();
    let mut foreign = BTreeSet::new();
    for (id, stages) in described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
    {
        if stages.is_empty() {
            continue;
        }
        match ids.get(&id) {
            Some(g) => {
                found.insert(*g, stages.into_iter().collect());
            }
            None => foreign.extend(stages),
        }
    }
    (found, foreign)
}

/// What keyprov leaves with keep 2 and current `current`: every kept version holds its own
/// label, AWSPREVIOUS on the one before current.
fn converged(current: u32) -> BTreeMap<u32, BTreeSet<String>> {
    (current.saturating_sub(2).max(1)..=current)
        .map(|g| {
            let mut labels = BTreeSet::from([format!("keyprov-v{g:04}")]);
            if g == current {
                labels.insert("AWSCURRENT".into());
            } else if g + 1 == current {
                labels.insert("AWSPREVIOUS".into());
            }
            (g, labels)
        })
        .collect()
}

async fn move_label(client: &Client, secret: &str, label: &str, to: Option<&str>, from: &str) {
    client
        .update_secret_version_stage()
        .secret_id(secret)
        .version_stage(label)
        .set_move_to_version_id(to.map(str::to_string))
        .remove_from_version_id(from)
        .send()
        .await
        .unwrap();
}

fn link(install: &Install, name: &str, which: &str) -> String {
    std::fs::read_link(install.key_dir(name).join(which))
        .unwrap()
        .display()
        .to_string()
}

fn key_state(install: &Install, now: &str) -> serde_json::Value {
    let status = install.keyprov_env(&["status", "--json"], &[("KEYPROV_TEST_NOW", now)]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    json["keys"][0]["state"].clone()
}

/// Three runs a day and an hour apart (every rotation due, its spread included):
/// generations 1, 2, 3.
fn three_generations(install: &Install) {
    for day in 1..=3 {
        at(
            install,
            &["run", "--once"],
            &format!("2032-01-0{day}T0{day}:00:00Z"),
            0,
        );
    }
}

const LATER: &str = "2032-01-03T06:00:00Z";

#[tokio::test(flavor = "multi_thread")]
async fn awscurrent_moved_back_by_hand_is_undone_everywhere_and_nothing_is_pruned() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("moved-back");
    let install = install(&endpoint);
    install.manifest("k.yaml", &with_secret("back", &secret, true));
    three_generations(&install);
    assert_eq!(by_generation(&sm, &secret, "back").await.0, converged(3));
    let public = std::fs::read(install.key_dir("back").join("v0003/public.pem")).unwrap();

    // An operator "rolls back" by moving AWSCURRENT to generation 2 (Secrets Manager moves
    // AWSPREVIOUS to generation 3).
    let (v2, v3) = (version_id("back", 2), version_id("back", 3));
    move_label(&sm, &secret, "AWSCURRENT", Some(&v2), &v3).await;
    assert_eq!(
        key_state(&install, LATER),
        "pending",
        "never converged while the secret and the files disagree"
    );
    let plan = at(&install, &["plan"], LATER, 3);
    assert!(
        plan.stdout.contains("AWSCURRENT is on generation 2"),
        "{}",
        plan.all()
    );

    let run = at(&install, &["run", "--once"], LATER, 0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.stdout);
    assert!(
        run.stderr.contains("WARN")
            && run
                .stderr
                .contains("AWSCURRENT was moved outside keyprov (it was on generation 2)")
            && run
                .stderr
                .contains("generation 3 is the newest that was current"),
        "{}",
        run.stderr
    );
    assert_eq!(by_generation(&sm, &secret, "back").await.0, converged(3));
    assert_eq!(link(&install, "back", "current"), "v0003");
    assert_eq!(link(&install, "back", "previous"), "v0002");
    assert!(install.key_dir("back").join("v0001").is_dir(), "keep: 2");
    assert_eq!(
        std::fs::read(install.key_dir("back").join("current/public.pem")).unwrap(),
        public
    );
    assert_eq!(key_state(&install, LATER), "converged");
    let run = at(&install, &["run", "--once"], LATER, 0);
    assert!(run.stdout.contains("0 changed"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_only_rollback_of_both_labels_keeps_the_newest_generation() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("rolled");
    let install = install(&endpoint);
    install.manifest("k.yaml", &with_secret("rolled", &secret, false));
    three_generations(&install);
    let (v1, v2, v3) = (
        version_id("rolled", 1),
        version_id("rolled", 2),
        version_id("rolled", 3),
    );
    // AWSCURRENT back to 2, AWSPREVIOUS to 1: generation 3 holds only its own label, as a
    // version a crash left unlinked would; the activation tag still names it.
    move_label(&sm, &secret, "AWSCURRENT", Some(&v2), &v3).await;
    move_label(&sm, &secret, "AWSPREVIOUS", Some(&v1), &v3).await;
    assert_eq!(key_state(&install, LATER), "pending");

    let run = at(&install, &["run", "--once"], LATER, 0);
    assert!(
        run.stderr.contains("moved outside keyprov"),
        "{}",
        run.stderr
    );
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.stdout);
    assert_eq!(by_generation(&sm, &secret, "rolled").await.0, converged(3));
    assert_eq!(key_state(&install, LATER), "converged");
    // The next rotation goes on from generation 3, and keep 2 drops generation 1 only then.
    at(&install, &["run", "--once"], "2032-01-04T04:00:00Z", 0);
    assert_eq!(by_generation(&sm, &secret, "rolled").await.0, converged(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn generation_labels_moved_or_removed_by_hand_are_repaired_and_nothing_is_lost() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("labels");
    let install = install(&endpoint);
    install.manifest("k.yaml", &with_secret("labels", &secret, true));
    three_generations(&install);
    let (v1, v2, v3) = (
        version_id("labels", 1),
        version_id("labels", 2),
        version_id("labels", 3),
    );
    // The previous loses its own label (it keeps AWSPREVIOUS); the current's label is moved
    // onto generation 1.
    move_label(&sm, &secret, "keyprov-v0002", None, &v2).await;
    move_label(&sm, &secret, "keyprov-v0003", Some(&v1), &v3).await;
    let (labels, _) = by_generation(&sm, &secret, "labels").await;
    assert_eq!(labels[&2], BTreeSet::from(["AWSPREVIOUS".to_string()]));
    assert_eq!(key_state(&install, LATER), "pending");

    let run = at(&install, &["run", "--once"], LATER, 0);
    assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.stdout);
    assert_eq!(
        by_generation(&sm, &secret, "labels").await,
        (converged(3), BTreeSet::new())
    );
    assert_eq!(link(&install, "labels", "previous"), "v0002");
    assert_eq!(key_state(&install, LATER), "converged");

    // The next rotation moves AWSPREVIOUS to the real previous and drops generation 1 only
    // now (keep: 2).
    at(&install, &["run", "--once"], "2032-01-04T04:00:00Z", 0);
    assert_eq!(by_generation(&sm, &secret, "labels").await.0, converged(4));
    assert_eq!(link(&install, "labels", "previous"), "v0003");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_repairing_the_same_hand_moved_labels_at_once_all_succeed() {
    let Some(endpoint) = localstack() else { return };
    let sm = client(&endpoint).await;
    let secret = unique("repair-race");
    // One keyring for every host, as one KMS key serves a fleet.
    let keyring = tempfile::tempdir().unwrap();
    let hosts: Vec<Install> = (0..3)
        .map(|_| {
            let mut host = install(&endpoint);
            host.extra_config.push_str(&format!(
                "local: {{keyring: \"{}\"}}\n",
                keyring.path().join("k").display()
            ));
            host.write_config();
            host.manifest("k.yaml", &with_secret("shared", &secret, false));
            host
        })
        .collect();
    three_generations(&hosts[0]);
    let v: Vec<String> = (1..=3).map(|g| version_id("shared", g)).collect();
    let rounds: u32 = std::env::var("KEYPROV_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    for round in 0..rounds {
        // Each round another hand edit: AWSCURRENT moved back, or generation labels moved or
        // taken off (never a version's last label, which Secrets Manager would drop).
        match round % 3 {
            0 => move_label(&sm, &secret, "AWSCURRENT", Some(&v[1]), &v[2]).await,
            1 => {
                move_label(&sm, &secret, "keyprov-v0002", Some(&v[0]), &v[1]).await;
                move_label(&sm, &secret, "keyprov-v0003", None, &v[2]).await;
            }
            _ => {
                move_label(&sm, &secret, "AWSCURRENT", Some(&v[0]), &v[2]).await;
                move_label(&sm, &secret, "keyprov-v0003", Some(&v[1]), &v[2]).await;
            }
        }
        let children: Vec<_> = hosts
            .iter()
            .map(|host| {
                let mut command = host.command(&["run", "--once"]);
                command.env("KEYPROV_TEST_NOW", LATER);
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        for child in children {
            let run: Run = child.wait_with_output().unwrap().into();
            assert_eq!(run.code, 0, "round {round}: {}", run.all());
            // A host that did not write the current version proves it once (one Decrypt,
            // remembered in its stateDir); nothing is generated.
            let allowed = if round == 0 { 1 } else { 0 };
            let calls = provider_calls(&run.stdout).unwrap_or(usize::MAX);
            assert!(calls <= allowed, "round {round}: {calls} provider calls");
        }
        assert_eq!(
            by_generation(&sm, &secret, "shared").await,
            (converged(3), BTreeSet::new()),
            "round {round}"
        );
    }
}
