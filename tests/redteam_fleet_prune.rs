//! Red team (session 25): a redeploy that empties the manifests, or removes a key, on one host
//! of a fleet with `reconcile.prune: true`, against the change beacon: no host prunes or
//! regenerates what another host's manifests still define beyond the documented
//! prune-then-restore, and a restored secret is not pruned again at once.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use keyprov::schedule::{format_time, parse_time};

const DAY: Duration = Duration::from_secs(86_400);

fn t0() -> SystemTime {
    parse_time("2031-01-01T00:00:00Z").unwrap()
}

fn run_at(install: &Install, now: SystemTime) -> Run {
    let run = install.keyprov_env(
        &["run", "--once"],
        &[("KEYPROV_TEST_NOW", &format_time(now))],
    );
    assert_eq!(run.code, 0, "run at {}: {}", format_time(now), run.all());
    run
}

/// A host of the fleet pruning its orphans of `scope` (after 24 h seen orphaned).
fn pruning_host(endpoint: &str, keyring: &Path, scope: &str) -> Install {
    fleet_host(
        endpoint,
        keyring,
        &format!(", scope: {scope}, prune: true, pruneAfter: 24h, pruneRecoveryWindowDays: 7"),
        "",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_emptied_or_missing_a_key_never_costs_the_fleet_a_key() {
    let Some(endpoint) = localstack() else { return };
    let sm = aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(&endpoint).await);
    let id = uuid::Uuid::new_v4();
    let scope = format!("redprune-{id}");
    let keyring = tempfile::tempdir().unwrap();
    let hosts: Vec<Install> = (0..3)
        .map(|_| pruning_host(&endpoint, &keyring.path().join("k"), &scope))
        .collect();
    let secrets: Vec<String> = (0..3)
        .map(|i| format!("keyprov-test/redprune-{id}/k{i}"))
        .collect();
    for host in &hosts {
        for (i, secret) in secrets.iter().enumerate() {
            host.manifest(
                &format!("k{i}.yaml"),
                &file_and_secret(&format!("k{i}"), secret, ""),
            );
        }
    }
    for (i, host) in hosts.iter().enumerate() {
        run_at(host, t0() + Duration::from_secs(60 * i as u64));
    }
    let before: Vec<Vec<u8>> = (0..3)
        .map(|i| public_der(&hosts[1].key_dir(&format!("k{i}"))))
        .collect();

    // Host 0's manifests emptied (a bad redeploy), runs past pruneAfter: nothing of the
    // scope's secrets goes (no secret output left: secrets are not even listed).
    for i in 0..3 {
        std::fs::remove_file(hosts[0].manifests().join(format!("k{i}.yaml"))).unwrap();
    }
    run_at(&hosts[0], t0() + DAY);
    run_at(&hosts[0], t0() + DAY + DAY / 2);
    run_at(&hosts[0], t0() + 2 * DAY + Duration::from_secs(1));
    for secret in &secrets {
        assert!(
            !secret_deleted(&sm, secret).await,
            "{secret} pruned by an emptied host"
        );
    }
    // Host 0 keeps only k0: k1 and k2 go after pruneAfter (documented: one scope, one set of
    // manifests); hosts 1 and 2 restore them (same pair), nothing regenerated anywhere.
    hosts[0].manifest("k0.yaml", &file_and_secret("k0", &secrets[0], ""));
    run_at(&hosts[0], t0() + 4 * DAY);
    run_at(&hosts[0], t0() + 4 * DAY + DAY / 2);
    run_at(&hosts[0], t0() + 5 * DAY + Duration::from_secs(1));
    let pruned = [
        secret_deleted(&sm, &secrets[1]).await,
        secret_deleted(&sm, &secrets[2]).await,
    ];
    assert_eq!(
        pruned,
        [true, true],
        "host 0 prunes what its manifests dropped"
    );
    for host in &hosts[1..] {
        let run = run_at(host, t0() + 5 * DAY + Duration::from_secs(120));
        eprintln!("{}", run.all());
        assert_eq!(provider_calls(&run.stdout), Some(0), "{}", run.all());
    }
    for secret in &secrets {
        assert!(!secret_deleted(&sm, secret).await, "{secret} not restored");
    }
    // Host 0 runs again right after: a secret just restored by the fleet is not pruned again
    // at once (it would flip between deleted and restored at every pass).
    run_at(&hosts[0], t0() + 5 * DAY + Duration::from_secs(180));
    let again = [
        secret_deleted(&sm, &secrets[1]).await,
        secret_deleted(&sm, &secrets[2]).await,
    ];
    for host in &hosts[1..] {
        for (i, before) in before.iter().enumerate() {
            let dir = host.key_dir(&format!("k{i}"));
            assert_eq!(versions(&dir), ["v0001"], "k{i}");
            assert_eq!(&public_der(&dir), before, "k{i}");
        }
    }
    assert_eq!(
        again,
        [false, false],
        "pruned again at once after the fleet restored"
    );
}
