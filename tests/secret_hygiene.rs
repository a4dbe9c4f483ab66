//! Where a plaintext private key must never be: core dumps (keyprov is non-dumpable, RLIMIT_CORE
//! 0), log lines at trace level, argv and environment of keyprov and of its hooks, files other
//! than the 0600 private.pem, leftover temporary files; and a umask of 000 changes no mode.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

const PATIENCE: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Everything that gives a private key away: its DER, hex, base64, the PEM body lines, and
/// the EC private scalar raw, in hex, and as a Rust `Debug` byte list.
fn needles(private_pem: &[u8]) -> Vec<(String, Vec<u8>)> {
    let der = pem::parse(private_pem).unwrap().into_contents();
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("a P-256 PKCS#8 key holds an ECPrivateKey")
        + marker.len();
    let scalar = der[at..at + 32].to_vec();
    let debug = format!("{:?}", &scalar[..8]);
    let mut needles = vec![
        ("DER".to_string(), der.clone()),
        ("hex DER".into(), hex::encode(&der).into_bytes()),
        ("HEX DER".into(), hex::encode_upper(&der).into_bytes()),
        (
            "base64 DER".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&der)
                .into_bytes(),
        ),
        ("scalar".into(), scalar.clone()),
        ("hex scalar".into(), hex::encode(&scalar).into_bytes()),
        (
            "Debug scalar".into(),
            debug.trim_end_matches(']').as_bytes().to_vec(),
        ),
    ];
    for line in String::from_utf8(private_pem.to_vec()).unwrap().lines() {
        if !line.starts_with("-----") && line.len() >= 16 {
            needles.push((format!("PEM line {line:.8}…"), line.as_bytes().to_vec()));
        }
    }
    needles
}

/// The needle found in `haystack`, if any.
fn leak<'a>(needles: &'a [(String, Vec<u8>)], haystack: &[u8]) -> Option<&'a str> {
    needles
        .iter()
        .find(|(_, n)| haystack.windows(n.len()).any(|w| w == n.as_slice()))
        .map(|(name, _)| name.as_str())
}

/// Regular files below `root` (symlinks not followed).
fn files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

fn owner(path: impl AsRef<Path>) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

/// The daemon, as `nobody` when the tests run as root (so that /proc/PID's owner shows
/// dumpability), with a hook that records its own argv and environment and then waits.
struct Scene {
    install: Install,
    daemon: Child,
    /// Outside the watched directories: at trace level, the daemon logs every file event it
    /// sees, and a log inside them would feed itself.
    _log_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Scene {
    fn start() -> Scene {
        let mut install = Install::new("");
        let root = install.root().to_path_buf();
        let script = root.join("hook.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat /proc/$$/cmdline > hook.cmdline\ncat /proc/$$/environ > hook.environ\n\
             echo $$ > hook.pid\necho $PPID > keyprov.pid\n\
             while [ ! -e go ]; do sleep 0.05; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        install.extra_config = format!(
            "hooks: {{allowed: [{}]}}\nlog: {{level: trace}}",
            script.display()
        );
        install.write_config();
        install.manifest(
            "secret.yaml",
            &manifest(
                "secret",
                "ECC_NIST_P256",
                &format!(
                    "  includePlaintext: true\n  onRotate:\n    - command: [\"{}\", \"--flag\"]\n      timeout: 10m\n",
                    script.display()
                ),
            ),
        );
        let as_root = nix::unistd::geteuid().is_root();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", &format!("{NOBODY}:{NOBODY}")])
                .arg(&root)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
        command
            .args(["run", "--config"])
            .arg(install.config())
            .current_dir(&root)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("KEYPROV_LOG", "trace")
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        if as_root {
            command.uid(NOBODY).gid(NOBODY);
        }
        let daemon = command.spawn().expect("keyprov run starts");
        Scene {
            install,
            daemon,
            _log_dir: log_dir,
            log,
        }
    }

    fn root(&self) -> &Path {
        self.install.root()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon (SIGTERM) and returns its log.
    fn stop(&mut self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.daemon.wait().unwrap();
        assert!(status.success(), "daemon: {status}\n{}", self.log());
        self.log()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // A failed assertion must not leave the daemon running.
        if matches!(self.daemon.try_wait(), Ok(None)) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

#[test]
fn no_plaintext_outside_private_pem_and_no_core_dumps() {
    let mut scene = Scene::start();
    let root = scene.root().to_path_buf();
    // `echo $PPID > keyprov.pid` creates the file before it writes the number: wait for both.
    wait_for("the hook to start", || {
        std::fs::read_to_string(root.join("keyprov.pid")).is_ok_and(|pid| pid.ends_with('\n'))
    });
    let keyprov = read_pid(&root.join("keyprov.pid"));
    let hook = read_pid(&root.join("hook.pid"));
    assert_eq!(keyprov, scene.daemon.id(), "the hook is keyprov's child");

    let limits = std::fs::read_to_string(format!("/proc/{keyprov}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        fields[4..6],
        ["0", "0"],
        "soft and hard RLIMIT_CORE: {core}"
    );
    // A dumpable process's private /proc files (environ, fd/, ...) belong to its user; a
    // non-dumpable one's to root. (/proc/PID itself always shows the process's euid.)
    if nix::unistd::geteuid().is_root() {
        for file in ["environ", "fd", "mem"] {
            assert_eq!(
                owner(format!("/proc/{hook}/{file}")),
                NOBODY,
                "control: the hook's {file}"
            );
            assert_eq!(
                owner(format!("/proc/{keyprov}/{file}")),
                0,
                "keyprov (running as nobody) must be non-dumpable: /proc/PID/{file}"
            );
        }
    } else {
        assert_eq!(owner(format!("/proc/{keyprov}/environ")), 0, "non-dumpable");
    }
    let keyprov_cmdline = std::fs::read(format!("/proc/{keyprov}/cmdline")).unwrap();
    let keyprov_environ = std::fs::read(format!("/proc/{keyprov}/environ")).unwrap();

    std::fs::write(root.join("go"), "").unwrap();
    wait_for("the hook to finish", || {
        scene.log().contains("onRotate succeeded")
    });
    let log = scene.stop();
    let install = &scene.install;
    let key_dir = install.key_dir("secret");
    let private = std::fs::read(key_dir.join("current/private.pem")).unwrap();
    let needles = needles(&private);

    assert!(log.contains("TRACE"), "logged at trace level: {log}");
    assert_eq!(leak(&needles, log.as_bytes()), None, "in the log:\n{log}");
    for (what, bytes) in [
        ("keyprov's cmdline", keyprov_cmdline),
        ("keyprov's environ", keyprov_environ),
        (
            "the hook's cmdline",
            std::fs::read(root.join("hook.cmdline")).unwrap(),
        ),
        (
            "the hook's environ",
            std::fs::read(root.join("hook.environ")).unwrap(),
        ),
    ] {
        assert!(!bytes.is_empty(), "{what} was read");
        assert_eq!(leak(&needles, &bytes), None, "in {what}");
    }
    let hook_cmdline = std::fs::read(root.join("hook.cmdline")).unwrap();
    assert!(
        hook_cmdline.ends_with(b"--flag\0"),
        "the hook's argv was read"
    );

    let mut holders = Vec::new();
    for path in files(&install.state()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".tmp") && !name.contains("tmp"),
            "temporary file left: {}",
            path.display()
        );
        if leak(&needles, &std::fs::read(&path).unwrap()).is_some() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(name, "private.pem", "plaintext in {}", path.display());
            assert_eq!(mode, 0o600, "{}", path.display());
            holders.push(path);
        }
    }
    assert_eq!(holders, [key_dir.join("v0001/private.pem")]);
}

/// Modes of everything under `state` (symlinks aside), by path relative to it.
fn modes(state: &Path) -> BTreeMap<PathBuf, u32> {
    let mut modes = BTreeMap::new();
    modes.insert(
        PathBuf::from("."),
        std::fs::metadata(state).unwrap().permissions().mode() & 0o7777,
    );
    for (path, (_, mode, _, _)) in snapshot(state) {
        if std::fs::symlink_metadata(&path).unwrap().is_symlink() {
            continue;
        }
        modes.insert(
            path.strip_prefix(state).unwrap().to_path_buf(),
            mode & 0o7777,
        );
    }
    modes
}

fn run_under_umask(umask: u32) -> BTreeMap<PathBuf, u32> {
    let install = Install::new("");
    install.manifest(
        "a.yaml",
        &manifest("alpha", "ECC_NIST_P256", "  includePlaintext: true\n"),
    );
    install.manifest("b.yaml", &manifest("beta", "ECC_NIST_EDWARDS25519", ""));
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
    command
        .args(["run", "--once", "--config"])
        .arg(install.config())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("KEYPROV_LOG")
        .current_dir(install.root());
    // SAFETY: umask(2) is async-signal-safe and touches nothing but this (child) process.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    let run: Run = command.output().unwrap().into();
    assert_eq!(run.code, 0, "umask {umask:03o}: {}", run.all());
    modes(&install.state())
}

#[test]
fn umask_000_gives_the_same_modes_as_022() {
    let open = run_under_umask(0o000);
    let usual = run_under_umask(0o022);
    for (path, mode) in &open {
        assert_eq!(
            mode & 0o022,
            0,
            "under umask 000, {} is {mode:04o}: writable by group or others",
            path.display()
        );
    }
    assert_eq!(open, usual, "modes under umask 000 (left) and 022 (right)");
}
