//! Two writers on one stateDir (issue 8, item 3): concurrent `run --once` pairs, `--no-wait`
//! against a holder of the lock, and the daemon with an operator's `rotate` beside it. Every
//! generation is written once (one version, one hook run), the pair stays matched, and a
//! reader following `current` never fails.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Deadline for liveness waits (never a timed assertion: only a hang trips it).
const PATIENCE: Duration = Duration::from_secs(120);

/// An installation whose keys run a hook that logs `NAME GENERATION EVENT` to `hook.log`.
fn hooked_install(extra_config: &str) -> (Install, PathBuf) {
    let mut install = Install::new("");
    let log = install.root().join("hook.log");
    let script = install.root().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$KEYPROV_NAME $KEYPROV_GENERATION $KEYPROV_EVENT\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    install.extra_config = format!(
        "hooks: {{allowed: [{}]}}\nlog: {{level: warn}}\n{extra_config}",
        script.display()
    );
    install.write_config();
    (install, script)
}

/// Key `i` of `count`: every third one with includePlaintext, so readers read private.pem too.
fn key_manifest(i: usize, context: &str, hook: &Path) -> String {
    let spec = if i % 4 == 1 {
        "ECC_NIST_P384"
    } else {
        "ECC_NIST_P256"
    };
    manifest(
        &format!("key-{i:02}"),
        spec,
        &format!(
            "  encryptionContext: {{round: \"{context}\"}}\n  includePlaintext: {}\n  \
             onRotate:\n    - command: [\"{}\"]\n",
            i.is_multiple_of(3),
            hook.display()
        ),
    )
}

fn write_keys(install: &Install, count: usize, context: &str, hook: &Path) {
    let text: Vec<String> = (0..count).map(|i| key_manifest(i, context, hook)).collect();
    let path = install.manifests().join("keys.yaml");
    let tmp = install.manifests().join(".keys.yaml.tmp");
    std::fs::write(&tmp, text.join("---\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn targets(install: &Install, count: usize) -> Vec<ReadTarget> {
    (0..count)
        .map(|i| {
            let name = format!("key-{i:02}");
            ReadTarget {
                dir: install.key_dir(&name),
                name,
                der: false,
                plaintext: i.is_multiple_of(3),
            }
        })
        .collect()
}

/// `(name, generation, event)` -> how many times the hook ran for it.
fn hook_runs(install: &Install) -> BTreeMap<(String, u32, String), usize> {
    let text = std::fs::read_to_string(install.root().join("hook.log")).unwrap_or_default();
    let mut runs = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let generation = fields.get(1).and_then(|g| g.parse().ok()).unwrap_or(0);
        let key = (
            fields[0].to_string(),
            generation,
            fields.get(2).unwrap_or(&"").to_string(),
        );
        *runs.entry(key).or_default() += 1;
    }
    runs
}

/// Everything wrong with a key's history: generations `1..=last` must each have exactly one
/// version-making hook run (`activate`), `current` must be the last, the pair must verify.
fn history_problems(install: &Install, count: usize, last: &BTreeMap<String, u32>) -> Vec<String> {
    let runs = hook_runs(install);
    let mut problems = Vec::new();
    for ((name, generation, event), times) in &runs {
        if *times != 1 {
            problems.push(format!(
                "{name}: onRotate ran {times} times for generation {generation} ({event})"
            ));
        }
    }
    for i in 0..count {
        let name = format!("key-{i:02}");
        let last = last.get(&name).copied().unwrap_or(0);
        for generation in 1..=last {
            if !runs.contains_key(&(name.clone(), generation, "activate".into())) {
                problems.push(format!(
                    "{name}: no onRotate run for generation {generation}"
                ));
            }
        }
        let dir = install.key_dir(&name);
        let current = link(&dir, "current");
        if current != Some(format!("v{last:04}")) {
            problems.push(format!(
                "{name}: current -> {current:?}, expected v{last:04}"
            ));
        }
        let kept = versions(&dir);
        if kept.len() > 2 {
            problems.push(format!("{name}: versions {kept:?} beyond keep 1"));
        }
    }
    let verify = install.keyprov(&["verify"]);
    if verify.code != 0 {
        problems.push(format!("verify exited {}: {}", verify.code, verify.all()));
    }
    problems
}

/// The last generation of every key, from its `current` link.
fn generations(install: &Install, count: usize) -> BTreeMap<String, u32> {
    (0..count)
        .map(|i| {
            let name = format!("key-{i:02}");
            let generation = link(&install.key_dir(&name), "current")
                .and_then(|t| t.trim_start_matches('v').parse().ok())
                .unwrap_or(0);
            (name, generation)
        })
        .collect()
}

#[test]
fn concurrent_run_once_pairs_write_each_generation_once() {
    const TRIALS: usize = 20;
    const KEYS: usize = 20;
    let (_, seed) = Rng::from_env("KEYPROV_WRITERS_SEED");
    let mut interleaved = Vec::new();
    let mut waited = 0;
    let mut reads = 0;
    for trial in 0..TRIALS {
        let (install, hook) = hooked_install("");
        write_keys(&install, KEYS, "one", &hook);
        install.run_once(0);
        // Both writers plan generation 2 of every key.
        write_keys(&install, KEYS, "two", &hook);
        let reader = Reader::start(targets(&install, KEYS), seed + trial as u64);
        let spawn = || {
            install
                .command(&["run", "--once"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("keyprov starts")
        };
        let (first, second) = (spawn(), spawn());
        let outputs = [first, second].map(|c| Run::from(c.wait_with_output().unwrap()));
        let read = reader.finish();
        reads += read.reads;
        let mut problems = Vec::new();
        for run in &outputs {
            if run.code != 0 {
                let first = run.stderr.lines().next().unwrap_or_default().to_string();
                problems.push(format!("exit {}: {first}", run.code));
            }
            if run.stderr.contains("lock") {
                waited += 1;
            }
        }
        let changed = outputs
            .iter()
            .filter(|r| !r.stdout.contains(" 0 changed"))
            .count();
        if changed > 1 {
            problems.push(format!(
                "both writers changed keys: {:?}",
                outputs.iter().map(|r| r.stdout.trim()).collect::<Vec<_>>()
            ));
        }
        let last = (0..KEYS).map(|i| (format!("key-{i:02}"), 2)).collect();
        problems.extend(history_problems(&install, KEYS, &last));
        problems.extend(read.first.iter().take(2).map(|f| format!("reader: {f}")));
        if !problems.is_empty() {
            interleaved.push(format!(
                "trial {trial}: {} problems, reader {} of {} reads failed\n  {}",
                problems.len(),
                read.failures,
                read.reads,
                problems.join("\n  ")
            ));
        }
    }
    eprintln!(
        "concurrent writers: {TRIALS} trials of 2 x run --once over {KEYS} keys, {} interleaved, \
         {waited} runs waited for the lock, {reads} reads through current",
        interleaved.len()
    );
    assert!(interleaved.is_empty(), "{}", interleaved.join("\n"));
}

/// Polls `condition` until it holds; panics (naming `what`) only if it never does.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_wait_exits_75_naming_the_holder_and_run_once_waits_for_it() {
    let (install, _) = hooked_install("");
    let started = install.root().join("hook-started");
    let release = install.root().join("hook-release");
    let blocker = install.root().join("block.sh");
    std::fs::write(
        &blocker,
        format!(
            "#!/bin/sh\n: > {}\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            started.display(),
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&blocker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut install = install;
    install.extra_config = format!(
        "hooks: {{allowed: [{}]}}\nlog: {{level: info}}\n",
        blocker.display()
    );
    install.write_config();
    install.manifest(
        "held.yaml",
        &manifest(
            "held",
            "ECC_NIST_P256",
            &format!(
                "  onRotate:\n    - command: [\"{}\"]\n      timeout: 300s\n",
                blocker.display()
            ),
        ),
    );
    // The holder: its reconcile is in its hook until the test releases it.
    let holder = install
        .command(&["run", "--once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = holder.id().to_string();
    let mut holder = KillOnDrop(Some(holder));
    wait_until("the holder's hook runs", || started.exists());

    for args in [
        ["run", "--once", "--no-wait"],
        ["rotate", "held", "--no-wait"],
    ] {
        let run = install.keyprov(&args);
        assert_eq!(
            run.code,
            75,
            "{args:?} while the lock is held: {}",
            run.all()
        );
        assert!(
            run.stderr
                .contains(&format!("is held by another process (pid {pid})")),
            "{args:?}: stderr names the holder's pid {pid}: {}",
            run.stderr
        );
    }

    let waiter_err = install.root().join("waiter.err");
    let waiter = install
        .command(&["run", "--once"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&waiter_err).unwrap())
        .spawn()
        .unwrap();
    let mut waiter = KillOnDrop(Some(waiter));
    wait_until("the waiter says it waits for the holder", || {
        std::fs::read_to_string(&waiter_err).is_ok_and(|e| e.contains("lock") && e.contains(&pid))
    });
    assert!(
        waiter.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "run --once did not wait for the lock"
    );
    std::fs::write(&release, "").unwrap();
    let held = Run::from(holder.take().wait_with_output().unwrap());
    assert_eq!(held.code, 0, "{}", held.all());
    let waited = Run::from(waiter.take().wait_with_output().unwrap());
    assert_eq!(waited.code, 0, "{}", waited.all());
    assert!(
        waited.stdout.contains("1 key, 0 changed"),
        "the waiter found the holder's work done: {}",
        waited.stdout
    );
    assert_eq!(
        link(&install.key_dir("held"), "current").as_deref(),
        Some("v0001")
    );
    assert_eq!(versions(&install.key_dir("held")), ["v0001"]);
}

/// A child killed if the test fails before it is waited for.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(&mut self) -> Child {
        self.0.take().expect("child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_daemon_and_an_operators_rotate_write_each_generation_once() {
    const ROUNDS: usize = 10;
    const KEYS: usize = 5;
    let (install, hook) =
        hooked_install("reconcile: {debounce: 50ms, resyncEvery: 1h, concurrency: 4}");
    // The daemon's config: reconcile settings of its own (Install's default line comes first).
    std::fs::write(
        install.config(),
        std::fs::read_to_string(install.config()).unwrap().replace(
            "reconcile: {concurrency: 4, maxRequestsPerSecond: 1000}\n",
            "",
        ),
    )
    .unwrap();
    write_keys(&install, KEYS, "0", &hook);
    let (mut rng, seed) = Rng::from_env("KEYPROV_WRITERS_SEED");
    let log = install.root().join("daemon.log");
    let daemon = install
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(Some(daemon));
    wait_until("the daemon made every key", || {
        generations(&install, KEYS).values().all(|&g| g >= 1)
    });
    let reader = Reader::start(targets(&install, KEYS), seed);
    let mut rotations = Vec::new();
    for round in 1..=ROUNDS {
        // The daemon sees every key change while the operator rotates one of them.
        write_keys(&install, KEYS, &round.to_string(), &hook);
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        let name = format!("key-{:02}", rng.below(KEYS as u64));
        let run = install.keyprov(&["rotate", &name]);
        rotations.push(format!("{name}: exit {}", run.code));
        assert_eq!(run.code, 0, "rotate {name}: {}", run.all());
        let round = round.to_string();
        wait_until("the daemon applied the round", || {
            (0..KEYS).all(|i| {
                let dir = install.key_dir(&format!("key-{i:02}"));
                std::fs::read(dir.join("current/meta.json"))
                    .ok()
                    .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
                    .is_some_and(|m| m["encryptionContext"]["round"] == round.as_str())
            })
        });
    }
    let child = daemon.take();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = child.wait_with_output().unwrap();
    let read = reader.finish();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(stopped.status.code(), Some(0), "{daemon_log}");
    let mut problems = history_problems(&install, KEYS, &generations(&install, KEYS));
    problems.extend(read.first.iter().map(|f| format!("reader: {f}")));
    eprintln!(
        "daemon + rotate: {ROUNDS} rounds, {} problems, reader {} of {} reads failed",
        problems.len(),
        read.failures,
        read.reads
    );
    assert!(
        problems.is_empty(),
        "{}\nrotations: {rotations:?}",
        problems.join("\n")
    );
}
