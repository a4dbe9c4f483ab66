//! The daemon (`keyprov run`) as systemd runs it: a real process, a real sd_notify socket,
//! real signals, manifests edited on disk the way Git and editors do (write, then rename).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Install, link, manifest, snapshot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PATIENCE: Duration = Duration::from_secs(30);

/// A running daemon with the systemd side of sd_notify.
struct Daemon {
    child: Child,
    /// sd_notify messages with their arrival times, read as they come by a thread (as
    /// systemd does: a full socket queue would block the daemon's sends).
    notify: std::sync::mpsc::Receiver<(Instant, String)>,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(install: &Install) -> Daemon {
        Daemon::start_with(install, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. `WATCHDOG_USEC`).
    fn start_with(install: &Install, env: &[(&str, &str)]) -> Daemon {
        let socket = install.root().join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixDatagram::bind(&socket).unwrap();
        let (notify_tx, notify) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = listener.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if notify_tx.send((Instant::now(), message)).is_err() {
                    break;
                }
            }
        });
        let log = install.root().join("daemon.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
        command
            .args(["run", "--config"])
            .arg(install.config())
            .current_dir(install.root())
            .env("NOTIFY_SOCKET", &socket)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("KEYPROV_LOG", "info")
            .env_remove("KEYPROV_TEST_NOW")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        command.envs(env.iter().copied());
        Daemon {
            child: command.spawn().expect("keyprov run starts"),
            notify,
            log,
        }
    }

    /// Waits for a notification containing `want`; returns every message read meanwhile.
    fn expect_notify(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((_, message)) = self.notify.recv_timeout(left) else {
                break;
            };
            let done = message.contains(want);
            seen.push(message);
            if done {
                return seen;
            }
        }
        panic!(
            "no sd_notify message with {want:?}; got {seen:?}\nlog:\n{}",
            self.log()
        );
    }

    /// Every sd_notify message that arrives within `window`, with its arrival time.
    fn notifications_for(&self, window: Duration) -> Vec<(Instant, String)> {
        while self.notify.try_recv().is_ok() {}
        let mut seen = Vec::new();
        let end = Instant::now() + window;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok(message) = self.notify.recv_timeout(left) {
                seen.push(message);
            }
        }
        seen
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if condition() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}\nlog:\n{}", self.log());
    }

    /// Sends SIGTERM and returns the exit code.
    fn stop(mut self) -> (i32, String) {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.log());
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces a file the way Git and editors do: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const CONFIG: &str = "manifests: [manifests.d]\nstateDir: state\n\
    reconcile: {debounce: 100ms, resyncEvery: 1h}\n";

/// An installation whose daemon reacts within 100 ms and resyncs only hourly, so that
/// everything the tests see was caused by an event or a rotation timer.
fn daemon_install() -> Install {
    let install = Install::new("");
    std::fs::write(install.config(), CONFIG).unwrap();
    install
}

fn current(install: &Install, name: &str) -> Option<String> {
    link(&install.key_dir(name), "current")
}

#[test]
fn the_daemon_follows_manifest_edits_reloads_on_sighup_and_stops_on_sigterm() {
    let install = daemon_install();
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    assert_eq!(current(&install, "alpha").as_deref(), Some("v0001"));

    // A new manifest file appears (renamed into place).
    replace(
        &install.manifests().join("beta.yaml"),
        &manifest("beta", "ECC_NIST_P384", ""),
    );
    daemon.wait_until("beta exists", || {
        current(&install, "beta").as_deref() == Some("v0001")
    });

    // An edited spec makes the next generation.
    replace(
        &install.manifests().join("alpha.yaml"),
        &manifest("alpha", "RSA_2048", ""),
    );
    daemon.wait_until("alpha is regenerated", || {
        current(&install, "alpha").as_deref() == Some("v0002")
    });

    // A broken edit changes nothing, and the daemon keeps running.
    let before = snapshot(&install.state());
    replace(
        &install.manifests().join("alpha.yaml"),
        "apiVersion: [oops\n",
    );
    daemon.wait_until("the invalid manifest is reported", || {
        daemon.log().contains("alpha.yaml:") && daemon.log().contains("invalid manifests")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        snapshot(&install.state()),
        before,
        "an invalid manifest changed the state"
    );
    assert!(daemon.child.id() > 0);

    // SIGHUP reloads the configuration: a second manifest directory now counts.
    std::fs::create_dir_all(install.root().join("more.d")).unwrap();
    std::fs::write(
        install.root().join("more.d/gamma.yaml"),
        manifest("gamma", "ECC_NIST_P256", ""),
    )
    .unwrap();
    std::fs::write(
        install.config(),
        "manifests: [manifests.d, more.d]\nstateDir: state\n\
         reconcile: {debounce: 100ms, resyncEvery: 1h}\n",
    )
    .unwrap();
    // The configuration file is watched: the edit alone reloads it.
    daemon.wait_until("gamma exists", || {
        current(&install, "gamma").as_deref() == Some("v0001")
    });
    assert!(daemon.log().contains("configuration reloaded"));
    // What the file's reload and the passes since sent is not the SIGHUP's answer.
    while daemon.notify.try_recv().is_ok() {}
    daemon.signal(Signal::SIGHUP);
    let messages = daemon.expect_notify("RELOADING=1");
    assert!(
        messages.last().unwrap().contains("MONOTONIC_USEC="),
        "{messages:?}"
    );
    daemon.expect_notify("READY=1");

    // A manifest in the new directory is watched after the reload.
    replace(
        &install.root().join("more.d/delta.yaml"),
        &manifest("delta", "ECC_NIST_P256", ""),
    );
    daemon.wait_until("delta exists", || {
        current(&install, "delta").as_deref() == Some("v0001")
    });

    // Idle means idle: its own reads and writes do not wake it. The pass that made delta
    // ends first (on a loaded machine its summary line can come well after the link).
    daemon.wait_until("the pass that made delta ends", || {
        common::pass_ended_after(&daemon.log(), "activated key=delta generation=1")
    });
    std::thread::sleep(Duration::from_millis(500));
    let reconciles = |log: &str| log.matches("next reconcile at").count();
    let settled = reconciles(&daemon.log());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reconciles(&daemon.log()), settled, "{}", daemon.log());

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert_eq!(current(&install, "alpha").as_deref(), Some("v0002"));
}

#[test]
fn an_invalid_configuration_on_sighup_keeps_the_previous_one() {
    let install = daemon_install();
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: 7: 8\n",
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.expect_notify("RELOADING=1");
    daemon.expect_notify("READY=1");
    assert!(
        daemon.log().contains("configuration not reloaded"),
        "{}",
        daemon.log()
    );
    // Still working with the old configuration.
    replace(
        &install.manifests().join("beta.yaml"),
        &manifest("beta", "ECC_NIST_P256", ""),
    );
    daemon.wait_until("beta exists", || {
        current(&install, "beta").as_deref() == Some("v0001")
    });
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

#[test]
fn staged_rotations_publish_and_activate_on_their_timers() {
    let install = daemon_install();
    install.manifest(
        "alpha.yaml",
        &manifest(
            "alpha",
            "ECC_NIST_P256",
            "  rotation: {every: 6s, publishAhead: 3s, keep: 3}\n",
        ),
    );
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    let dir = install.key_dir("alpha");
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "next"), None);

    // Nothing but the timer can move it from here.
    // `current` read before `next` in one look: the activation renames `next` to `current`, so
    // the pair is what the links were when `next` was read, however late this look comes.
    let mut current_then = None;
    daemon.wait_until("v0002 is published as next", || {
        current_then = link(&dir, "current");
        link(&dir, "next").as_deref() == Some("v0002")
    });
    assert_eq!(current_then.as_deref(), Some("v0001"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("v0002/meta.json")).unwrap()).unwrap();
    let activates_at =
        keyprov::schedule::parse_time(meta["activatesAt"].as_str().unwrap()).unwrap();

    // The daemon moves `current` first and `previous` after it (see `store::file`): wait for
    // the activation to finish, not for its first link.
    daemon.wait_until("v0002 becomes current", || {
        link(&dir, "current").as_deref() == Some("v0002")
    });
    assert!(
        SystemTime::now() >= activates_at,
        "activated before its activatesAt"
    );
    daemon.wait_until("v0001 becomes previous", || {
        link(&dir, "previous").as_deref() == Some("v0001")
    });
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

#[test]
fn sigterm_lets_the_reconcile_in_flight_finish() {
    let install = Install::new("");
    let done = install.root().join("hook-done");
    let go = install.root().join("go");
    let script = install.root().join("slow-hook.sh");
    // The hook runs until the test lets it go: it is in flight when SIGTERM comes, however
    // slowly this machine gets there (a `sleep 2` could be over by then).
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\necho finished > {}\n",
            go.display(),
            done.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        install.config(),
        format!("{CONFIG}hooks: {{allowed: [{}]}}\n", script.display()),
    )
    .unwrap();
    install.manifest(
        "alpha.yaml",
        &manifest(
            "alpha",
            "ECC_NIST_P256",
            &format!("  onRotate:\n    - command: [\"{}\"]\n", script.display()),
        ),
    );
    let daemon = Daemon::start(&install);
    // The pair is in place and the hook is running: the first reconcile is not over yet.
    daemon.wait_until("alpha exists", || {
        current(&install, "alpha").as_deref() == Some("v0001")
    });
    assert!(
        !done.exists(),
        "the hook finished before the stop was asked for"
    );
    daemon.signal(Signal::SIGTERM);
    daemon.wait_until("the stop waits for the reconcile in flight", || {
        daemon
            .log()
            .contains("letting the reconcile in flight finish")
    });
    std::fs::write(&go, "").unwrap();
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(&done).unwrap_or_default(),
        "finished\n",
        "the hook was cut short\n{log}"
    );
}

#[test]
fn sigterm_stops_the_daemon_during_a_flood_of_manifest_events() {
    let install = daemon_install();
    install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
    let daemon = Daemon::start(&install);
    daemon.wait_until("alpha exists", || current(&install, "alpha").is_some());
    // New entries in the manifest directory as fast as possible (each name is debounced on
    // its own, so events keep coming out): the daemon reconciles over and over.
    let stop_flood = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, dir) = (stop_flood.clone(), install.manifests());
        std::thread::spawn(move || {
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = dir.join(format!(".noise-{}", writes % 512));
                std::fs::write(&path, "x").unwrap();
                writes += 1;
            }
            writes
        })
    };
    daemon.wait_until("the flood is reconciled", || {
        daemon.log().matches("manifests changed").count() >= 3
    });
    // `stop` sends SIGTERM and fails the test unless the daemon exits within PATIENCE.
    let (code, log) = daemon.stop();
    stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = flood.join().unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(writes > 0);
}

/// Watchdog pings in `messages`, as arrival times.
fn pings(messages: &[(Instant, String)]) -> Vec<Instant> {
    messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect()
}

#[test]
fn watchdog_pings_at_half_its_interval_and_stop_while_the_work_is_stuck() {
    let install = daemon_install();
    // The stall limit is the longer of WATCHDOG_USEC and an AWS operation (+5 s): 6 s here.
    std::fs::write(
        install.config(),
        format!("{CONFIG}aws: {{operationTimeout: 1s}}\nhooks: {{allowed: [/usr/bin/true]}}\n"),
    )
    .unwrap();
    // A hook (60 s time limit) runs first: its quiet time must end with it.
    install.manifest(
        "alpha.yaml",
        &manifest(
            "alpha",
            "ECC_NIST_P256",
            "  onRotate: [{command: [/usr/bin/true], timeout: 60s}]\n",
        ),
    );
    let daemon = Daemon::start_with(&install, &[("WATCHDOG_USEC", "1000000")]);
    daemon.expect_notify("READY=1");

    // Idle: a ping every 500 ms.
    let idle = pings(&daemon.notifications_for(Duration::from_secs(3)));
    assert!((4..=8).contains(&idle.len()), "{} pings in 3 s", idle.len());
    let mut gaps: Vec<Duration> = idle.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(350) && median <= Duration::from_millis(700),
        "median gap {median:?}"
    );

    // Stuck: another process holds the stateDir lock, and a manifest edit starts a
    // reconcile that waits for it without end.
    let lock = keyprov::lock::acquire(&install.state(), false).expect("lock is free");
    replace(
        &install.manifests().join("beta.yaml"),
        &manifest("beta", "ECC_NIST_P256", ""),
    );
    daemon.wait_until("the daemon withholds its pings", || {
        daemon.log().contains("withholding the watchdog ping")
    });
    let stuck = pings(&daemon.notifications_for(Duration::from_secs(2)));
    assert!(stuck.is_empty(), "{} pings while stuck", stuck.len());
    assert_eq!(current(&install, "beta"), None);

    // Unstuck: pings resume and the reconcile completes.
    drop(lock);
    daemon.wait_until("beta exists", || current(&install, "beta").is_some());
    let resumed = pings(&daemon.notifications_for(Duration::from_secs(2)));
    assert!(
        resumed.len() >= 2,
        "{} pings after the lock was released",
        resumed.len()
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// The `attempts` of a retry record, if any.
fn retry_attempts(install: &Install, name: &str) -> Option<u64> {
    let path = install.state().join("retry").join(format!("{name}.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    record["failure"]["attempts"].as_u64()
}

/// The `attempts` and `lastAttempt` of a retry record, if any.
fn retry_attempt(install: &Install, name: &str) -> Option<(u64, SystemTime)> {
    let path = install.state().join("retry").join(format!("{name}.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let failure = &record["failure"];
    let at = keyprov::schedule::parse_time(failure["lastAttempt"].as_str()?).ok()?;
    Some((failure["attempts"].as_u64()?, at))
}

fn meta_time(dir: &Path, version: &str, field: &str) -> SystemTime {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(version).join("meta.json")).unwrap())
            .unwrap();
    keyprov::schedule::parse_time(meta[field].as_str().unwrap()).unwrap()
}

#[test]
fn a_failing_key_backs_off_while_a_healthy_key_rotates_on_time() {
    let install = daemon_install();
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nreconcile: {debounce: 100ms, \
         resyncEvery: 1h, retryBackoff: 400ms, retryBackoffMax: 20s}\n",
    )
    .unwrap();
    install.manifest(
        "healthy.yaml",
        &manifest(
            "healthy",
            "ECC_NIST_P256",
            "  rotation: {every: 2s, keep: 10}\n",
        ),
    );
    install.manifest("broken.yaml", &manifest("broken", "ECC_NIST_P256", ""));
    // A regular file where broken's key directory must be: every attempt fails.
    std::fs::create_dir_all(install.state().join("keys")).unwrap();
    std::fs::write(install.key_dir("broken"), "not a directory").unwrap();

    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    // Each attempt as the daemon recorded it (`lastAttempt`), by number: the time this thread
    // happens to look is no measure of the daemon's delays on a loaded machine (seen: a first
    // look 700 ms late made the next delay look 190 ms).
    let started = Instant::now();
    let mut attempts = std::collections::BTreeMap::new();
    while started.elapsed() < Duration::from_secs(8) {
        if let Some((number, at)) = retry_attempt(&install, "broken") {
            attempts.insert(number, at);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Attempts 2, 3, 4, ... after growing delays (400 ms doubling, less up to 25% jitter): the
    // delay before attempt k + 1 is nominally 400 ms << (k - 1).
    let gaps: Vec<(u64, Duration)> = attempts
        .iter()
        .filter_map(|(k, at)| {
            let next = attempts.get(&(k + 1))?;
            Some((*k, next.duration_since(*at).unwrap_or_default()))
        })
        .collect();
    assert!(gaps.len() >= 3, "retries: {attempts:?}\n{}", daemon.log());
    for pair in gaps.windows(2) {
        assert!(pair[1].1 > pair[0].1, "delays do not grow: {gaps:?}");
    }
    for (k, gap) in gaps.iter().filter(|(k, _)| *k <= 4) {
        let nominal = Duration::from_millis(400 << (k - 1));
        assert!(
            *gap >= nominal.mul_f64(0.7) && *gap <= nominal + Duration::from_millis(400),
            "delay {gap:?} before attempt {} for a nominal {nominal:?}: {gaps:?}",
            k + 1
        );
    }

    // Meanwhile the healthy key rotated every 2 s, each generation made on time.
    let dir = install.key_dir("healthy");
    let versions = common::versions(&dir);
    assert!(versions.len() >= 4, "{versions:?}");
    for pair in versions.windows(2) {
        let due = meta_time(&dir, &pair[0], "activatesAt") + Duration::from_secs(2);
        let made = meta_time(&dir, &pair[1], "createdAt");
        let late = made.duration_since(due).unwrap_or_default();
        assert!(
            late < Duration::from_millis(500),
            "{} made {late:?} late",
            pair[1]
        );
    }

    // status tells when the next attempt is.
    let status = install.keyprov(&["status"]);
    assert!(
        status.stdout.contains("the daemon tries again at"),
        "{}",
        status.all()
    );
    let json = install.keyprov(&["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let broken = parsed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "broken")
        .unwrap();
    assert!(
        broken["retry"]["failure"]["nextAttempt"].is_string(),
        "{broken}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// An installation whose `alpha` key has one activate hook, `script`.
fn install_with_hook(script_body: &str) -> (Install, std::path::PathBuf) {
    let install = daemon_install();
    let script = install.root().join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{script_body}")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\nreconcile: {{debounce: 100ms, \
             resyncEvery: 1h, retryBackoff: 300ms, retryBackoffMax: 5s}}\n\
             hooks: {{allowed: [{}]}}\n",
            script.display()
        ),
    )
    .unwrap();
    install.manifest(
        "alpha.yaml",
        &manifest(
            "alpha",
            "ECC_NIST_P256",
            &format!(
                "  onRotate:\n    - command: [\"{}\"]\n      on: [activate]\n      timeout: 30s\n",
                script.display()
            ),
        ),
    );
    let root = install.root().to_path_buf();
    (install, root)
}

fn lines(path: &Path, word: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == word)
        .count()
}

#[test]
fn a_hook_that_fails_twice_then_succeeds_runs_exactly_three_times() {
    let (install, root) = install_with_hook(
        "echo run >> \"$(dirname \"$0\")/runs\"\n\
         [ \"$(wc -l < \"$(dirname \"$0\")/runs\")\" -ge 3 ]\n",
    );
    let runs = root.join("runs");
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    daemon.wait_until("the hook ran three times", || lines(&runs, "run") >= 3);
    // The success is recorded after the hook returns, not with its last line.
    daemon.wait_until("the success clears the retry record", || {
        !install.state().join("retry/alpha.json").exists()
    });
    // Its backoff would have come round again within 2.4 s had the success not been recorded.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines(&runs, "run"), 3, "{}", daemon.log());
    assert!(!install.state().join("retry/alpha.json").exists());
    assert_eq!(current(&install, "alpha").as_deref(), Some("v0001"));
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_hook_cut_by_sigkill_runs_once_after_the_restart() {
    let (install, root) = install_with_hook(
        "echo $$ > \"$(dirname \"$0\")/hook.pid\"\n\
         echo start >> \"$(dirname \"$0\")/runs\"\n\
         while [ ! -e \"$(dirname \"$0\")/go\" ]; do sleep 0.05; done\n\
         echo done >> \"$(dirname \"$0\")/runs\"\n",
    );
    let runs = root.join("runs");
    let daemon = Daemon::start(&install);
    daemon.wait_until("the hook started", || lines(&runs, "start") == 1);
    // The host dies: keyprov and the hook with it, the hook unfinished.
    kill(Pid::from_raw(daemon.pid()), Signal::SIGKILL).unwrap();
    let hook_pid: i32 = std::fs::read_to_string(root.join("hook.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = kill(Pid::from_raw(-hook_pid), Signal::SIGKILL);
    drop(daemon);
    assert_eq!(lines(&runs, "done"), 0);
    assert_eq!(current(&install, "alpha").as_deref(), Some("v0001"));
    assert!(install.state().join("retry/alpha.json").exists());
    // The first run waited for this (a `sleep 2` could have ended before the kill on a loaded
    // machine); the run after the restart goes through.
    std::fs::write(root.join("go"), "").unwrap();

    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    assert_eq!(lines(&runs, "start"), 2, "{}", daemon.log());
    assert_eq!(lines(&runs, "done"), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&runs, "start"), 2, "ran again: {}", daemon.log());
    assert!(!install.state().join("retry/alpha.json").exists());
    assert_eq!(
        current(&install, "alpha").as_deref(),
        Some("v0001"),
        "no new generation"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// Context switches of every thread of `pid`, by thread id.
fn context_switches(pid: i32) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        counts.insert(task.file_name().to_string_lossy().into_owned(), switches);
    }
    counts
}

#[test]
fn an_idle_daemon_does_not_wake_up() {
    let install = daemon_install();
    for i in 0..50 {
        install.manifest(
            &format!("k{i}.yaml"),
            &manifest(
                &format!("k{i}"),
                "ECC_NIST_P256",
                "  rotation: {every: 90d}\n",
            ),
        );
    }
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    // The runtime's spare blocking threads exit 10 s after their last job; then all is quiet.
    std::thread::sleep(Duration::from_secs(11));
    let before = context_switches(daemon.pid());
    std::thread::sleep(Duration::from_secs(5));
    let after = context_switches(daemon.pid());
    let woken: u64 = after
        .iter()
        .map(|(tid, n)| n - before.get(tid).copied().unwrap_or(0))
        .sum();
    assert!(
        woken <= 1 && before.len() == after.len(),
        "{woken} wake-ups in 5 s; threads {before:?} -> {after:?}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_manifest_directory_created_after_start_is_watched() {
    let install = daemon_install();
    std::fs::write(
        install.config(),
        "manifests: [later/manifests.d]\nstateDir: state\n\
         reconcile: {debounce: 100ms, resyncEvery: 1h}\nlog: {level: info}\n",
    )
    .unwrap();
    let daemon = Daemon::start_with(&install, &[("KEYPROV_LOG", "")]);
    daemon.expect_notify("READY=1");
    let dir = install.root().join("later/manifests.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    replace(
        &dir.join("alpha.yaml"),
        &manifest("alpha", "ECC_NIST_P256", ""),
    );
    daemon.wait_until("alpha exists", || current(&install, "alpha").is_some());
    assert!(
        daemon
            .log()
            .contains("keyprov 0.1.0 starting: 0 keys, provider local, watchdog "),
        "{}",
        daemon.log()
    );

    // A reload applies log.level: debug lines appear only after it.
    assert!(!daemon.log().contains("DEBUG"), "{}", daemon.log());
    std::fs::write(
        install.config(),
        "manifests: [later/manifests.d]\nstateDir: state\n\
         reconcile: {debounce: 100ms, resyncEvery: 1h}\nlog: {level: debug}\n",
    )
    .unwrap();
    daemon.wait_until("debug lines appear", || daemon.log().contains("DEBUG"));
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// Lines of the daemon's log that start a timer-driven reconcile.
fn timer_reconciles(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("timer: reconciling"))
        .count()
}

/// A repair by hand of what a sabotage broke, to be undone by `restore`.
type Sabotage = fn(&Install) -> Box<dyn FnOnce()>;

/// The converged key directory moves aside and a regular file takes its place.
fn directory_replaced(install: &Install) -> Box<dyn FnOnce()> {
    let dir = install.key_dir("alpha");
    let aside = install.state().join("alpha-aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    Box::new(move || {
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
    })
}

/// The `current` link gives way to a regular file (keyprov never replaces what is not a link).
fn current_link_replaced(install: &Install) -> Box<dyn FnOnce()> {
    let link = install.key_dir("alpha").join("current");
    let target = std::fs::read_link(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, "not a link").unwrap();
    Box::new(move || {
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
    })
}

#[test]
fn a_failure_repaired_by_hand_does_not_make_the_daemon_spin() {
    let sabotages: [(&str, Sabotage); 2] = [
        ("key directory replaced", directory_replaced),
        ("current link replaced", current_link_replaced),
    ];
    for (what, sabotage) in sabotages {
        let install = daemon_install();
        std::fs::write(
            install.config(),
            "manifests: [manifests.d]\nstateDir: state\nreconcile: {debounce: 100ms, \
             resyncEvery: 1h, retryBackoff: 500ms, retryBackoffMax: 1s}\n",
        )
        .unwrap();
        install.manifest("alpha.yaml", &manifest("alpha", "ECC_NIST_P256", ""));
        install.run_once(0);
        // Every attempt fails until someone repairs it by hand, without keyprov making anything.
        let restore = sabotage(&install);

        let daemon = Daemon::start_with(&install, &[("KEYPROV_LOG", "debug")]);
        daemon.expect_notify("READY=1");
        daemon.wait_until("the failure is recorded", || {
            retry_attempts(&install, "alpha").is_some()
        });
        restore();
        // The next retry (within retryBackoffMax) finds the key converged, with no action to
        // take; then nothing is due (resyncEvery 1h).
        daemon.wait_until("the repair is noticed", || {
            retry_attempts(&install, "alpha").is_none()
        });
        std::thread::sleep(Duration::from_secs(2));
        let before = timer_reconciles(&daemon.log());
        std::thread::sleep(Duration::from_secs(3));
        let after = timer_reconciles(&daemon.log());
        assert!(
            after - before <= 1,
            "{what}: {} timer reconciles in 3 s after the repair (resyncEvery 1h)\n{}",
            after - before,
            daemon.log()
        );
        assert_eq!(
            retry_attempts(&install, "alpha"),
            None,
            "{what}: the failure is forgotten\n{}",
            daemon.log()
        );
        assert_eq!(
            current(&install, "alpha").as_deref(),
            Some("v0001"),
            "{what}"
        );
        let (code, log) = daemon.stop();
        assert_eq!(code, 0, "{what}: {log}");
    }
}

#[test]
fn a_due_wake_reconciles_only_the_keys_due() {
    let install = daemon_install();
    install.manifest(
        "due.yaml",
        &manifest(
            "due",
            "ECC_NIST_P256",
            "  rotation: {every: 3s, keep: 10}\n",
        ),
    );
    install.manifest("still.yaml", &manifest("still", "ECC_NIST_P256", ""));
    install.run_once(0);
    let daemon = Daemon::start_with(&install, &[("KEYPROV_LOG", "debug")]);
    daemon.expect_notify("READY=1");
    // After the start-up pass, still's key directory gives way to a regular file: a pass that
    // looked at still would fail it (an error, a retry record); a wake for due alone does not.
    let dir = install.key_dir("still");
    let aside = install.state().join("still-aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    // The pass that activated generation 3 has told its summary (had the start-up pass been
    // slow enough to make generation 2, this one is the first due wake).
    daemon.wait_until("due rotated twice", || {
        common::versions(&install.key_dir("due")).len() >= 3
            && common::pass_ended_after(&daemon.log(), "activated key=due generation=3")
    });
    let log = daemon.log();
    assert_eq!(retry_attempts(&install, "still"), None, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("still")),
        "{log}"
    );
    assert!(
        log.contains("partial pass (due keys): 1 key, 1 changed, 0 failed"),
        "{log}"
    );
    assert!(log.contains("timer: reconciling 1 key due"), "{log}");
    // A manifest change is a full pass: it sees still's damage.
    replace(
        &install.manifests().join("still.yaml"),
        &manifest("still", "ECC_NIST_P256", "  rotation: {every: 90d}\n"),
    );
    daemon.wait_until("the full pass fails still", || {
        retry_attempts(&install, "still").is_some()
    });
    assert!(
        daemon.log().contains("full pass: 2 keys"),
        "{}",
        daemon.log()
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn an_invalid_manifest_is_told_once_per_full_pass_not_at_every_due_wake() {
    let install = daemon_install();
    install.manifest(
        "due.yaml",
        &manifest(
            "due",
            "ECC_NIST_P256",
            "  rotation: {every: 3s, keep: 10}\n",
        ),
    );
    install.manifest(
        "broken.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: broken}\nspec: {keyPairSpec: NOPE}\n",
    );
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    // The pass that activated generation 3 has told its summary (had the start-up pass been
    // slow enough to make generation 2, this one is the first due wake).
    daemon.wait_until("due rotated twice", || {
        common::versions(&install.key_dir("due")).len() >= 3
            && common::pass_ended_after(&daemon.log(), "activated key=due generation=3")
    });
    let log = daemon.log();
    assert!(
        log.contains("partial pass (due keys): 1 key, 1 changed"),
        "{log}"
    );
    // Told by the start-up pass; the due wakes since (the same files) do not repeat it.
    assert_eq!(
        log.matches("invalid manifests: 1 key left").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("broken.yaml:4:1: spec.kmsKeyId").count(),
        1,
        "{log}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn one_wake_per_scheduled_rotation_at_this_hosts_turn() {
    let install = daemon_install();
    install.manifest(
        "due.yaml",
        &manifest(
            "due",
            "ECC_NIST_P256",
            "  rotation: {every: 3s, keep: 10}\n",
        ),
    );
    let daemon = Daemon::start(&install);
    daemon.expect_notify("READY=1");
    daemon.wait_until("due rotated three times", || {
        common::versions(&install.key_dir("due")).len() >= 4
    });
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    // Each rotation is one due wake, at the host's offset: none woke at the publication time
    // only to find the rotation held back until the offset.
    assert!(
        log.contains("partial pass (due keys): 1 key, 1 changed"),
        "{log}"
    );
    assert!(
        !log.contains("partial pass (due keys): 1 key, 0 changed"),
        "{log}"
    );
}
