//! A `keyprov run` daemon of a test installation, its log kept in `<root>/daemon.log`.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Install;

/// How long a test waits for what a daemon should reach before it fails with the log.
const PATIENCE: Duration = Duration::from_secs(150);

/// A daemon of an installation; killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `keyprov run` of `install` at log level info.
    pub fn start(install: &Install) -> Daemon {
        let log = install.root().join("daemon.log");
        let mut command = install.command(&["run"]);
        command
            .env("KEYPROV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Daemon {
            child: command.spawn().expect("keyprov run starts"),
            log,
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Passes finished so far.
    pub fn passes(&self) -> usize {
        self.log().matches("next reconcile at").count()
    }

    /// Sends SIGHUP: reload the configuration and reconcile every key (a sweep).
    pub fn reload(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("the daemon is running");
    }

    /// Waits until `condition` holds; panics with the log after [`PATIENCE`].
    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if condition() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}\nlog:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
