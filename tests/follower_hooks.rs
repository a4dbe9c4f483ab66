//! `onRotate` hooks fire on the hosts that copy a generation from the secret, not only on the
//! host that made it: a consumer and a following writer run their `activate` hook once for each
//! generation that becomes current in their files (LocalStack's Secrets Manager, real processes).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A hook script that appends `NAME GENERATION EVENT` to `hook.log` next to it.
fn hook_script(root: &Path) -> (PathBuf, PathBuf) {
    let log = root.join("hook.log");
    let script = root.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$KEYPROV_NAME $KEYPROV_GENERATION $KEYPROV_EVENT\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// The lines `hook.log` holds (none when the hook never ran).
fn hook_runs(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn hosts_that_copy_a_generation_run_its_activate_hook_once() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = format!("keyprov-test/follower-hooks-{}", uuid::Uuid::new_v4());
    let writer = fleet_host(&endpoint, &keyring, "", "fleet: {hostId: w}");
    let follower = fleet_host(&endpoint, &keyring, "", "fleet: {hostId: f}");
    let consumer = fleet_host(
        &endpoint,
        &keyring,
        "",
        "fleet: {hostId: c, role: consumer}",
    );
    let logs: Vec<PathBuf> = [&writer, &follower, &consumer]
        .iter()
        .map(|host| hooked(host, &secret))
        .collect();
    let [writer_log, follower_log, consumer_log] = [&logs[0], &logs[1], &logs[2]];

    writer.run_once(0);
    assert_eq!(hook_runs(writer_log), ["shared 1 activate"]);
    for (host, log) in [(&follower, follower_log), (&consumer, consumer_log)] {
        host.run_once(0);
        assert_eq!(
            link(&host.key_dir("shared"), "current").as_deref(),
            Some("v0001")
        );
        assert_eq!(
            hook_runs(log),
            ["shared 1 activate"],
            "{}",
            host.root().display()
        );
    }

    let rotate = writer.keyprov(&["rotate", "shared", "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    assert_eq!(
        hook_runs(writer_log),
        ["shared 1 activate", "shared 2 activate"]
    );
    for (host, log) in [(&follower, follower_log), (&consumer, consumer_log)] {
        let run = host.run_once(0);
        assert!(run.stderr.contains("copied as current"), "{}", run.all());
        assert_eq!(
            link(&host.key_dir("shared"), "current").as_deref(),
            Some("v0002")
        );
        assert_eq!(
            hook_runs(log),
            ["shared 1 activate", "shared 2 activate"],
            "{}",
            run.all()
        );
        // Converged: the next run copies nothing and runs no hook.
        host.run_once(0);
        assert_eq!(hook_runs(log).len(), 2, "{}", host.root().display());
    }
}

/// Gives `host` the key `shared` (file + `secret`) with a hook on publish and activate that
/// logs to the host's own `hook.log`, allowed in its configuration; returns that log.
fn hooked(host: &Install, secret: &str) -> PathBuf {
    let (script, log) = hook_script(host.root());
    let config = std::fs::read_to_string(host.config()).unwrap();
    std::fs::write(
        host.config(),
        format!("{config}hooks: {{allowed: [\"{}\"]}}\n", script.display()),
    )
    .unwrap();
    let hook = format!(
        "  onRotate:\n    - command: [\"{}\"]\n      on: [publish, activate]\n",
        script.display()
    );
    host.manifest("shared.yaml", &file_and_secret("shared", secret, &hook));
    log
}
