//! onRotate hooks through the real binary: process-group kill on timeout, background processes
//! holding the output open, output cap (keyprov's peak RSS), minimal environment.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Writes an executable `/bin/sh` script `name` into the installation and allows it as a hook.
fn hook(install: &mut Install, name: &str, body: &str, extra_config: &str) -> PathBuf {
    let script = install.root().join(name);
    std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    install.extra_config = format!("hooks: {{allowed: [{}]{extra_config}}}", script.display());
    install.write_config();
    script
}

/// One key whose activation runs `script` with `timeout`.
fn key_with_hook(install: &Install, script: &Path, timeout: &str) {
    install.manifest(
        "k.yaml",
        &manifest(
            "hooked",
            "ECC_NIST_P256",
            &format!(
                "  onRotate:\n    - command: [\"{}\"]\n      timeout: {timeout}\n",
                script.display()
            ),
        ),
    );
}

/// True when `pid` no longer runs: gone, or a zombie nobody reaped yet (PID 1 of a container
/// may never reap).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap().trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Waits (bounded, only against hangs) until `pid` is dead; SIGKILL is delivered
/// asynchronously, so a just-killed process may take a moment to leave.
fn wait_dead(pid: i32) -> bool {
    for _ in 0..600 {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Runs `keyprov run --once` with stdout/stderr into files; returns (exit status, peak RSS in
/// KiB from wait4's rusage, stderr). Fails instead of hanging when it takes more than 5 minutes.
fn run_measured(install: &Install, env: &[(&str, &str)]) -> (i32, i64, String) {
    let stdout = std::fs::File::create(install.root().join("stdout.log")).unwrap();
    let stderr_path = install.root().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
    command
        .args(["run", "--once", "--config"])
        .arg(install.config())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .current_dir(install.root())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // Reaped below with wait4, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap();
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..3000 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
            }
            // SAFETY: plain kill(2) of our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for by anyone else; both pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.join().unwrap();
    let status = std::process::ExitStatus::from_raw(status);
    assert!(
        status.signal().is_none(),
        "keyprov was killed by signal {:?} (hung?)",
        status.signal()
    );
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    (status.code().unwrap(), usage.ru_maxrss, stderr)
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let mut install = Install::new("");
    let pidfile = install.root().join("sleeper.pid");
    let script = hook(
        &mut install,
        "hang.sh",
        &format!(
            "sleep 777 &\necho $! > {}\necho started\nwait\n",
            pidfile.display()
        ),
        "",
    );
    key_with_hook(&install, &script, "5s");
    let (code, _, stderr) = run_measured(&install, &[]);
    assert_eq!(code, 1, "a hook that times out fails its key: {stderr}");
    assert!(
        stderr.contains("killed (with its process group) after its timeout of 5s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("started"),
        "output before the kill is logged: {stderr}"
    );
    let sleeper = read_pid(&pidfile);
    assert!(
        wait_dead(sleeper),
        "the hook's background `sleep 777` (pid {sleeper}) survived the timeout"
    );
}

#[test]
fn a_background_process_holding_the_output_does_not_hang_keyprov() {
    let mut install = Install::new("");
    let pidfile = install.root().join("sleeper.pid");
    let script = hook(
        &mut install,
        "leave.sh",
        &format!(
            "sleep 777 &\necho $! > {}\necho handed over\n",
            pidfile.display()
        ),
        "",
    );
    key_with_hook(&install, &script, "10m");
    let (code, _, stderr) = run_measured(&install, &[]);
    assert_eq!(code, 0, "the hook itself succeeded: {stderr}");
    assert!(stderr.contains("handed over"), "{stderr}");
    assert!(
        stderr.contains("kept its output open; killed its process group"),
        "{stderr}"
    );
    let sleeper = read_pid(&pidfile);
    assert!(
        wait_dead(sleeper),
        "the background sleep (pid {sleeper}) outlived its hook"
    );
}

#[test]
fn output_is_capped_and_memory_stays_small() {
    let mut install = Install::new("");
    let total: u64 = 200 * 1000 * 1000;
    let script = hook(
        &mut install,
        "loud.sh",
        &format!("head -c {total} /dev/zero | tr '\\0' x\necho to-stderr >&2\n"),
        "",
    );
    key_with_hook(&install, &script, "10m");
    let (code, max_rss_kib, stderr) = run_measured(&install, &[]);
    eprintln!("keyprov peak RSS: {max_rss_kib} KiB for {total} bytes of hook output");
    assert_eq!(code, 0, "{}", &stderr[stderr.len().saturating_sub(2000)..]);
    let kept = 64 * 1024;
    assert!(
        stderr.contains(&format!("... {} more bytes truncated", total - kept)),
        "{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    assert!(stderr.contains("to-stderr"));
    let logged = stderr
        .lines()
        .map(|l| l.matches('x').count())
        .max()
        .unwrap();
    assert!(
        (kept as usize..kept as usize + 100).contains(&logged),
        "64 KiB of stdout logged, got {logged} bytes"
    );
    assert!(
        max_rss_kib < 150 * 1024,
        "keyprov's peak RSS was {max_rss_kib} KiB for a hook printing {total} bytes"
    );
}

/// Names of the variables in the environment file the hook wrote, sorted.
fn names(env_file: &Path) -> Vec<String> {
    let text = std::fs::read(env_file).unwrap();
    let mut names: Vec<String> = text
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split_once('=').unwrap().0.to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn hooks_see_a_minimal_environment() {
    let mut install = Install::new("");
    let env_file = install.root().join("env.bin");
    let script = hook(
        &mut install,
        "env.sh",
        &format!("cat /proc/$$/environ > {}\n", env_file.display()),
        "",
    );
    key_with_hook(&install, &script, "1m");
    let (code, _, stderr) = run_measured(
        &install,
        &[
            ("AWS_SECRET_ACCESS_KEY", "hook-must-not-see-this"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        names(&env_file),
        [
            "KEYPROV_EVENT",
            "KEYPROV_GENERATION",
            "KEYPROV_NAME",
            "KEYPROV_OUTPUT_DIRS",
            "PATH"
        ]
    );
    let text = String::from_utf8(std::fs::read(&env_file).unwrap()).unwrap();
    assert!(text.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\0"));
    assert!(!text.contains("hook-must-not-see-this"));
}

#[test]
fn hooks_env_in_the_config_passes_only_the_listed_names() {
    let mut install = Install::new("");
    let env_file = install.root().join("env.bin");
    let script = hook(
        &mut install,
        "env.sh",
        &format!("cat /proc/$$/environ > {}\n", env_file.display()),
        ", env: [LANG, HOOK_TEST_UNSET]",
    );
    key_with_hook(&install, &script, "1m");
    let (code, _, stderr) = run_measured(
        &install,
        &[
            ("AWS_SECRET_ACCESS_KEY", "hook-must-not-see-this"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        names(&env_file),
        [
            "KEYPROV_EVENT",
            "KEYPROV_GENERATION",
            "KEYPROV_NAME",
            "KEYPROV_OUTPUT_DIRS",
            "LANG",
            "PATH"
        ],
        "listed and set: passed; listed and unset: absent; not listed: absent"
    );
    let text = String::from_utf8(std::fs::read(&env_file).unwrap()).unwrap();
    assert!(text.contains("LANG=C.UTF-8\0"));
}

/// The runs of the hook in `log` ("start|tick|end <run> <ns>" lines): by run, the first and
/// last time it wrote, and whether it ended; in the order they started.
fn runs_of(log: &Path) -> Vec<(String, u128, u128, bool)> {
    let mut runs: Vec<(String, u128, u128, bool)> = Vec::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [what, run, at] = fields[..] else {
            panic!("bad line {line:?}");
        };
        let at: u128 = at.parse().unwrap();
        match runs.iter_mut().find(|r| r.0 == run) {
            Some(entry) => {
                entry.1 = entry.1.min(at);
                entry.2 = entry.2.max(at);
                entry.3 |= what == "end";
            }
            None => runs.push((run.to_string(), at, at, what == "end")),
        }
    }
    runs.sort_by_key(|r| r.1);
    runs
}

#[test]
fn sigkill_of_keyprov_mid_hook_20_times_never_runs_the_hook_twice_at_once() {
    let mut install = Install::new("");
    let log = install.root().join("log");
    // The work happens in a background process of the hook's group, which the death signal of
    // the leader does not reach: only the restart can stop it. It lasts 3 s, well past the kill
    // (at most 0.5 s after the start) and the restart on a loaded machine: a cut-off run must
    // not get to finish on its own before the restart stops it.
    let script = hook(
        &mut install,
        "slow.sh",
        &format!(
            "log={log}\nrun=$$\necho \"start $run $(date +%s%N)\" >> $log\n\
             ( i=0; while [ $i -lt 30 ]; do echo \"tick $run $(date +%s%N)\" >> $log; \
             sleep 0.1; i=$((i+1)); done; echo \"end $run $(date +%s%N)\" >> $log ) &\nwait\n",
            log = log.display()
        ),
        "",
    );
    key_with_hook(&install, &script, "1m");
    let (mut rng, seed) = Rng::from_env("KEYPROV_HOOK_KILL_SEED");
    let mut killed_leftovers = 0;
    for round in 0..20 {
        let started = runs_of(&log).len();
        let stderr =
            std::fs::File::create(install.root().join(format!("run-{round}.log"))).unwrap();
        let mut keyprov = install
            .command(&["run", "--once"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while runs_of(&log).len() == started {
            assert!(
                keyprov.try_wait().unwrap().is_none(),
                "round {round}: keyprov ended before the hook started again (seed {seed})"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no hook run"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(500)));
        keyprov.kill().unwrap();
        keyprov.wait().unwrap();
        let leader: i32 = runs_of(&log).last().unwrap().0.parse().unwrap();
        assert!(
            wait_dead(leader),
            "round {round}: the hook outlived keyprov"
        );
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(install.state().join("retry/hooked.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            record["hooks"][0]["running"]["pgid"], leader,
            "round {round}: the run is recorded as started: {record}"
        );
        let text =
            std::fs::read_to_string(install.root().join(format!("run-{round}.log"))).unwrap();
        killed_leftovers += text.matches("killed the processes an onRotate run").count();
    }
    let last = install.run_once(0);
    killed_leftovers += last
        .stderr
        .matches("killed the processes an onRotate run")
        .count();
    assert!(!install.state().join("retry/hooked.json").exists());

    let runs = runs_of(&log);
    let cut: Vec<&String> = runs.iter().filter(|r| !r.3).map(|r| &r.0).collect();
    let overlaps = runs.windows(2).filter(|w| w[0].2 >= w[1].1).count();
    println!(
        "seed {seed}: {} hook runs, {} cut off by SIGKILL, {overlaps} concurrent double runs, \
         {killed_leftovers} restarts killed a cut-off run's leftovers",
        runs.len(),
        cut.len()
    );
    assert_eq!(overlaps, 0, "two runs at once (seed {seed}): {runs:?}");
    assert_eq!(runs.len(), 21, "each cut-off run ran again once: {runs:?}");
    assert_eq!(cut.len(), 20, "only the last run finished: {runs:?}");
    assert!(runs.last().unwrap().3);
    assert!(
        killed_leftovers > 0,
        "the restarts never had leftovers to kill"
    );
}

/// The shipped unit sets `ProcSubset=pid`, which hides `/proc/sys` (the kernel's boot id): a
/// hook must still run. Here `/proc/sys` is hidden by a tmpfs in a private mount namespace.
#[test]
fn hooks_run_where_proc_sys_is_hidden() {
    let mut install = Install::new("");
    let marker = install.root().join("ran");
    let script = hook(
        &mut install,
        "mark.sh",
        &format!("echo ran > {}\n", marker.display()),
        "",
    );
    key_with_hook(&install, &script, "10s");
    let shell = format!(
        "mount -t tmpfs none /proc/sys && ! test -e /proc/sys/kernel/random/boot_id && \
         {} run --once --config {}; echo rc=$?",
        env!("CARGO_BIN_EXE_keyprov"),
        install.config().display()
    );
    let run: Run = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &shell])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
        .into();
    assert!(run.stdout.contains("rc=0"), "{}", run.all());
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "ran\n",
        "{}",
        run.all()
    );
}
