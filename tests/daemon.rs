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
    notify: UnixDatagram,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(install: &Install) -> Daemon {
        let socket = install.root().join("notify.sock");
        let notify = UnixDatagram::bind(&socket).unwrap();
        notify.set_read_timeout(Some(PATIENCE)).unwrap();
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
            .stderr(std::fs::File::create(&log).unwrap());
        Daemon {
            child: command.spawn().expect("keyprov run starts"),
            notify,
            log,
        }
    }

    /// Waits for a notification containing `want`; returns every message read meanwhile.
    fn expect_notify(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let Ok(n) = self.notify.recv(&mut buf) else {
                break;
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
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

    // Idle means idle: its own reads and writes do not wake it.
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
    daemon.wait_until("v0002 is published as next", || {
        link(&dir, "next").as_deref() == Some("v0002")
    });
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("v0002/meta.json")).unwrap()).unwrap();
    let activates_at =
        keyprov::schedule::parse_time(meta["activatesAt"].as_str().unwrap()).unwrap();

    daemon.wait_until("v0002 becomes current", || {
        link(&dir, "current").as_deref() == Some("v0002")
    });
    assert!(
        SystemTime::now() >= activates_at,
        "activated before its activatesAt"
    );
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

#[test]
fn sigterm_lets_the_reconcile_in_flight_finish() {
    let install = Install::new("");
    let done = install.root().join("hook-done");
    let script = install.root().join("slow-hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsleep 2\necho finished > {}\n", done.display()),
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
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("letting the reconcile in flight finish"),
        "{log}"
    );
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
