//! Crash harness: `keyprov run --once` over a few hundred keys whose encryptionContext changes
//! every round, SIGKILLed at a random instant. After every kill each `current`, `previous` and
//! `next` must lead to a complete, consistent version; a restart must converge, pass `verify`,
//! leave nothing temporary, keep no more versions than `rotation.keep` allows, and make no more
//! provider calls than the keys still missing need. A reader thread reads through `current`
//! the whole time and must never fail.
//!
//! The test suite runs the short mode; `bench/crash.sh` runs the same harness at length.
//! Environment: `KEYPROV_CRASH_KILLS` (default 50), `KEYPROV_CRASH_KEYS` (200),
//! `KEYPROV_CRASH_RESTART_EVERY` (2: a restart after every second kill, so that killed
//! recoveries are covered too), `KEYPROV_CRASH_SEED` (default: the clock; printed, to replay).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One key of the harness and what its manifest asks for.
struct Key {
    name: String,
    spec: &'static str,
    /// Output directories, in manifest order.
    dirs: Vec<PathBuf>,
    der: bool,
    plaintext: bool,
    keep: u32,
    /// publishAhead: every change is published as `next` and waits there.
    staged: bool,
}

impl Key {
    fn ext(&self) -> &'static str {
        if self.der { "der" } else { "pem" }
    }

    /// The most versions a converged output may hold: current, `keep` previous, next.
    fn max_versions(&self) -> usize {
        self.keep as usize + 1 + usize::from(self.staged)
    }

    fn manifest(&self, round: u64) -> String {
        let format = if self.der { "der" } else { "pem" };
        let mut outputs = format!("    - file: {{format: {format}}}\n");
        if self.dirs.len() > 1 {
            outputs += &format!(
                "    - file: {{dir: mirror/{}, format: {format}}}\n",
                self.name
            );
        }
        let rotation = if self.staged {
            format!("{{every: 3650d, publishAhead: 1d, keep: {}}}", self.keep)
        } else {
            format!("{{every: 3650d, keep: {}}}", self.keep)
        };
        format!(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: {}\nspec:\n  keyPairSpec: {}\n  \
             kmsKeyId: alias/crash\n  encryptionContext: {{round: \"{round}\", key: {}}}\n  \
             includePlaintext: {}\n  rotation: {rotation}\n  outputs:\n{outputs}",
            self.name, self.spec, self.name, self.plaintext
        )
    }
}

/// The mix: mostly P-256 for speed, some P-384 and Ed25519, a few RSA-2048; some keys with two
/// file outputs, includePlaintext, DER files, keep 2, or publishAhead.
fn keys(install: &Install, count: u64) -> Vec<Key> {
    (0..count)
        .map(|i| {
            let name = format!("key-{i:04}");
            let spec = match (i % 50, i % 10) {
                (7, _) => "RSA_2048",
                (_, 1) => "ECC_NIST_P384",
                (_, 2) => "ECC_NIST_EDWARDS25519",
                _ => "ECC_NIST_P256",
            };
            let mut dirs = vec![install.key_dir(&name)];
            if i % 7 == 0 {
                dirs.push(install.state().join("mirror").join(&name));
            }
            Key {
                name,
                spec,
                dirs,
                der: i % 9 == 8,
                plaintext: i % 11 == 0,
                keep: if i % 5 == 4 { 2 } else { 1 },
                staged: i % 13 == 5,
            }
        })
        .collect()
}

fn write_manifests(install: &Install, keys: &[Key], round: u64) {
    for (chunk, group) in keys.chunks(50).enumerate() {
        let text: Vec<String> = group.iter().map(|k| k.manifest(round)).collect();
        install.manifest(&format!("keys-{chunk:03}.yaml"), &text.join("---\n"));
    }
}

/// A link that leads to a complete version: its generation and the round it was made for.
#[derive(Clone, Debug, PartialEq)]
struct Linked {
    generation: u32,
    round: String,
}

fn regular_nonempty(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(bytes)
}

fn der_of(key: &Key, bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, String> {
    if key.der {
        return Ok(bytes);
    }
    pem::parse(&bytes)
        .map(|p| p.into_contents())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks what `dir/link` leads to: a relative link to a complete version of this key.
fn check_link(key: &Key, dir: &Path, link: &str) -> Result<Option<Linked>, String> {
    let path = dir.join(link);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(None);
    };
    if !meta.is_symlink() {
        return Err(format!("{}: not a symlink", path.display()));
    }
    let target = std::fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let target = target.to_string_lossy().into_owned();
    let generation: u32 = target
        .strip_prefix('v')
        .filter(|digits| digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("{}: -> {target:?}, not a relative vNNNN", path.display()))?;
    let version = dir.join(&target);
    match std::fs::symlink_metadata(&version) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{}: not a directory", version.display())),
        Err(e) => return Err(format!("{link} -> {}: {e}", version.display())),
    }
    let ext = key.ext();
    let meta_bytes = regular_nonempty(&version.join("meta.json"))?;
    let public_path = version.join(format!("public.{ext}"));
    let public = der_of(key, regular_nonempty(&public_path)?, &public_path)?;
    regular_nonempty(&version.join("private.enc"))?;
    let private_path = version.join(format!("private.{ext}"));
    if key.plaintext {
        let private = der_of(key, regular_nonempty(&private_path)?, &private_path)?;
        let (spec, private, public) = (key.spec, private.clone(), public.clone());
        std::panic::catch_unwind(move || assert_pair_matches(spec, &private, &public))
            .map_err(|_| format!("{}: private key does not match", version.display()))?;
    } else if private_path.exists() {
        return Err(format!(
            "{}: plaintext not asked for",
            private_path.display()
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta_bytes)
        .map_err(|e| format!("{}/meta.json: {e}", version.display()))?;
    let sha = sha256_hex(&public);
    let problems = [
        (meta["name"] != key.name.as_str(), "name"),
        (meta["generation"] != generation, "generation"),
        (meta["keyPairSpec"] != key.spec, "keyPairSpec"),
        (meta["publicKeySha256"] != sha.as_str(), "publicKeySha256"),
    ];
    if let Some((_, field)) = problems.iter().find(|(bad, _)| *bad) {
        return Err(format!(
            "{}/meta.json: {field} does not match the version",
            version.display()
        ));
    }
    let round = meta["encryptionContext"]["round"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(Some(Linked { generation, round }))
}

/// The links of one output that lead to complete versions, and every problem found.
#[derive(Default)]
struct OutputState {
    links: BTreeMap<&'static str, Linked>,
    problems: Vec<String>,
}

fn check_output(key: &Key, dir: &Path) -> OutputState {
    let mut state = OutputState::default();
    for link in ["current", "previous", "next"] {
        match check_link(key, dir, link) {
            Ok(Some(linked)) => {
                state.links.insert(link, linked);
            }
            Ok(None) if link == "current" => state
                .problems
                .push(format!("{}: no current", dir.display())),
            Ok(None) => {}
            Err(problem) => state.problems.push(problem),
        }
    }
    let generation = |link| state.links.get(link).map(|l: &Linked| l.generation);
    if let (Some(p), Some(c)) = (generation("previous"), generation("current"))
        && p >= c
    {
        state
            .problems
            .push(format!("{}: previous v{p} >= current v{c}", dir.display()));
    }
    if let (Some(c), Some(n)) = (generation("current"), generation("next"))
        && n <= c
    {
        state
            .problems
            .push(format!("{}: next v{n} <= current v{c}", dir.display()));
    }
    state
}

/// Generations each key has been seen to have as `current` (at every check so far).
type History = BTreeMap<String, std::collections::BTreeSet<u32>>;

/// Checks every output of `key` and records its `current` in `history`; a `previous` must be
/// a generation once seen as current (a never-linked version is never adopted as history).
fn inspect(key: &Key, history: &mut History) -> (Vec<OutputState>, Vec<String>) {
    let outputs: Vec<OutputState> = key.dirs.iter().map(|d| check_output(key, d)).collect();
    let seen = history.entry(key.name.clone()).or_default();
    seen.extend(
        outputs
            .iter()
            .filter_map(|o| o.links.get("current"))
            .map(|l| l.generation),
    );
    let mut problems = Vec::new();
    for (dir, output) in key.dirs.iter().zip(&outputs) {
        problems.extend(output.problems.iter().cloned());
        if let Some(previous) = output.links.get("previous")
            && !seen.contains(&previous.generation)
        {
            problems.push(format!(
                "{}: previous -> v{:04}, never current (current was {seen:?})",
                dir.display(),
                previous.generation
            ));
        }
    }
    (outputs, problems)
}

/// The provider calls a restart may make for this key: one generation when no output links
/// a complete version made for the manifest's round; with includePlaintext, one decrypt for
/// each linked generation that another output lacks (it is copied with its plaintext).
fn allowance(key: &Key, outputs: &[OutputState], round: &str) -> (usize, usize) {
    let linked = || {
        outputs
            .iter()
            .flat_map(|o| ["current", "next"].map(|l| (l, o.links.get(l))))
    };
    let generate = !linked().any(|(_, l)| l.is_some_and(|l| l.round == round));
    let mut copies = 0;
    if key.plaintext && outputs.len() > 1 {
        let mut distinct: Vec<(&str, u32)> = linked()
            .filter_map(|(name, l)| l.map(|l| (name, l.generation)))
            .collect();
        distinct.sort();
        distinct.dedup();
        copies = distinct
            .iter()
            .filter(|(name, g)| {
                outputs
                    .iter()
                    .any(|o| o.links.get(name).map(|l| l.generation) != Some(*g))
            })
            .count();
    }
    (usize::from(generate), copies)
}

fn version_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with('v') && name[1..].bytes().all(|b| b.is_ascii_digit())
            })
            .count()
    })
}

/// With `KEYPROV_CRASH_DUMP` set, the links and versions (with their rounds) of each output
/// of the key named by it (of every key with `all`): printed after every kill and around
/// every restart, to replay a failure.
fn dump(keys: &[Key], when: &str) {
    let Ok(name) = std::env::var("KEYPROV_CRASH_DUMP") else {
        return;
    };
    for key in keys.iter().filter(|k| name == "all" || k.name == name) {
        for dir in &key.dirs {
            let mut entries: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let path = e.path();
                            let name = e.file_name().to_string_lossy().into_owned();
                            match std::fs::read_link(&path) {
                                Ok(target) => format!("{name}->{}", target.display()),
                                Err(_) => {
                                    let meta =
                                        std::fs::read(path.join("meta.json")).ok().and_then(|b| {
                                            serde_json::from_slice::<serde_json::Value>(&b).ok()
                                        });
                                    let round = meta
                                        .as_ref()
                                        .map(|m| m["encryptionContext"]["round"].to_string());
                                    format!("{name}(r{})", round.unwrap_or_default())
                                }
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            entries.sort();
            eprintln!("dump {when}: {}: {}", dir.display(), entries.join(" "));
        }
    }
}

/// Figures of one harness run.
#[derive(Default, Debug)]
struct Figures {
    kills: u64,
    finished_before_kill: u64,
    broken: u64,
    restarts: u64,
    restart_failures: u64,
    restart_calls: usize,
    allowed_calls: usize,
    keys_to_generate: usize,
    max_versions_over: usize,
    problems: Vec<String>,
}

impl Figures {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 30 {
            self.problems.push(text);
        }
    }
}

/// A restart after a kill: converges with no more calls than allowed, verify passes, nothing
/// temporary is left, no version piles up, and a second run has nothing to do.
fn restart(
    install: &Install,
    keys: &[Key],
    round: u64,
    history: &mut History,
    figures: &mut Figures,
) {
    let round_text = round.to_string();
    let (mut generate, mut copies) = (0, 0);
    for key in keys {
        let outputs: Vec<OutputState> = key.dirs.iter().map(|d| check_output(key, d)).collect();
        let (g, c) = allowance(key, &outputs, &round_text);
        generate += g;
        copies += c;
    }
    figures.restarts += 1;
    figures.keys_to_generate += generate;
    figures.allowed_calls += generate + copies;
    let failures_before = figures.problems.len();
    let failures_before_count = figures.restart_failures;
    let fail = |figures: &mut Figures, text: String| {
        figures.restart_failures += 1;
        figures.problem(format!("restart {}: {text}", figures.restarts));
    };
    dump(
        keys,
        &format!("before restart {} (round {round})", figures.restarts),
    );
    let run = install.keyprov(&["run", "--once"]);
    dump(keys, &format!("after restart {}", figures.restarts));
    let calls = provider_calls(&run.stdout);
    figures.restart_calls += calls.unwrap_or(0);
    if run.code != 0 {
        fail(
            figures,
            format!("run --once exited {}: {}", run.code, run.all()),
        );
    }
    if calls.is_none_or(|c| c > generate + copies) {
        fail(
            figures,
            format!(
                "{calls:?} provider calls, allowed {} ({generate} keys to generate, {copies} plaintext copies): {}",
                generate + copies,
                run.stdout.trim()
            ),
        );
    }
    let verify = install.keyprov(&["verify"]);
    if verify.code != 0 {
        let all = verify.all();
        let failed: Vec<&str> = all
            .lines()
            .filter(|l| !l.starts_with("ok "))
            .take(5)
            .map(|l| l.trim())
            .collect();
        fail(
            figures,
            format!("verify exited {}: {failed:?}", verify.code),
        );
    }
    let left = leftovers(&install.state());
    if !left.is_empty() {
        fail(
            figures,
            format!("{} leftovers, e.g. {:?}", left.len(), left[0]),
        );
    }
    for key in keys {
        let (outputs, problems) = inspect(key, history);
        for problem in problems {
            fail(figures, format!("after restart: {problem}"));
        }
        for dir in &key.dirs {
            let count = version_count(dir);
            if count > key.max_versions() {
                figures.max_versions_over = figures.max_versions_over.max(count);
                fail(
                    figures,
                    format!(
                        "{}: {count} versions, at most {} expected",
                        dir.display(),
                        key.max_versions()
                    ),
                );
            }
        }
        let target = if key.staged { "next" } else { "current" };
        let wanted: Vec<Option<&Linked>> = outputs.iter().map(|o| o.links.get(target)).collect();
        if wanted
            .iter()
            .any(|l| l.is_none_or(|l| l.round != round_text))
            || wanted.windows(2).any(|w| w[0] != w[1])
        {
            fail(
                figures,
                format!("{}: {target} not converged: {wanted:?}", key.name),
            );
        }
    }
    let again = install.keyprov(&["run", "--once"]);
    if again.code != 0
        || !again
            .stdout
            .contains(" 0 changed, 0 failed, 0 provider calls")
    {
        fail(
            figures,
            format!("a second run was not a no-op: {}", again.all().trim()),
        );
    }
    if let Some(first) = figures.problems.get(failures_before) {
        eprintln!(
            "{first} ({} problems in this restart)",
            figures.restart_failures - failures_before_count
        );
    }
}

#[test]
fn sigkilled_runs_never_break_a_pair_and_a_restart_converges() {
    let kills = env_number("KEYPROV_CRASH_KILLS", 50);
    let key_count = env_number("KEYPROV_CRASH_KEYS", 200);
    let restart_every = env_number("KEYPROV_CRASH_RESTART_EVERY", 2).max(1);
    let (mut rng, seed) = Rng::from_env("KEYPROV_CRASH_SEED");
    eprintln!(
        "crash harness: {kills} kills, {key_count} keys, restart every {restart_every}, KEYPROV_CRASH_SEED={seed}"
    );
    let install = Install::new("log: {level: error}");
    let keys = keys(&install, key_count);
    write_manifests(&install, &keys, 0);
    install.run_once(0);
    let mut history = History::new();
    for key in &keys {
        inspect(key, &mut history);
    }
    let targets = keys
        .iter()
        .flat_map(|k| {
            k.dirs.iter().map(|dir| ReadTarget {
                name: k.name.clone(),
                dir: dir.clone(),
                der: k.der,
                plaintext: k.plaintext,
            })
        })
        .collect();
    let reader = Reader::start(targets, seed ^ 0x5eed);

    // The duration of an unkilled round that changes every key bounds the kill instants
    // (the longer of two: this machine is shared and noisy).
    let mut round = 0;
    let mut full = Duration::ZERO;
    for _ in 0..2 {
        round += 1;
        write_manifests(&install, &keys, round);
        let started = Instant::now();
        install.run_once(0);
        full = full.max(started.elapsed());
        for key in &keys {
            let problems = inspect(key, &mut history).1;
            assert!(problems.is_empty(), "before any kill: {problems:?}");
        }
    }
    eprintln!("an unkilled round over {key_count} keys: {full:?}");

    let mut figures = Figures::default();
    let harness = Instant::now();
    for kill_number in 1..=kills {
        round += 1;
        write_manifests(&install, &keys, round);
        let mut child = install
            .command(&["run", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keyprov starts");
        std::thread::sleep(Duration::from_micros(rng.below(full.as_micros() as u64)));
        if child.try_wait().unwrap().is_some() {
            figures.finished_before_kill += 1;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().unwrap();
        figures.kills += 1;
        dump(&keys, &format!("after kill {kill_number} (round {round})"));
        for key in &keys {
            for problem in inspect(key, &mut history).1 {
                figures.broken += 1;
                figures.problem(format!("kill {kill_number}: {problem}"));
            }
        }
        if kill_number % restart_every == 0 || kill_number == kills {
            restart(&install, &keys, round, &mut history, &mut figures);
        }
        if kill_number % 100 == 0 && kill_number < kills {
            eprintln!(
                "  {kill_number} kills in {:.0?}: {} broken links, {} restart failures",
                harness.elapsed(),
                figures.broken,
                figures.restart_failures
            );
        }
    }
    let read = reader.finish();
    let elapsed = harness.elapsed();
    eprintln!(
        "crash harness: {} kills survived in {elapsed:.0?} ({} finished before the kill), \
         {} broken links after kills, {} restarts, {} restart failures, restart provider calls \
         {} (allowed {}, {} keys to generate), reader {} reads {} failed",
        figures.kills,
        figures.finished_before_kill,
        figures.broken,
        figures.restarts,
        figures.restart_failures,
        figures.restart_calls,
        figures.allowed_calls,
        figures.keys_to_generate,
        read.reads,
        read.failures,
    );
    assert!(
        figures.broken == 0 && figures.restart_failures == 0 && read.failures == 0,
        "seed {seed}: {figures:#?}\nreader: {:#?}",
        read
    );
}
