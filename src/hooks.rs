//! onRotate hooks: the manifest's commands, run without a shell, in their own process group,
//! with a minimal environment and a time limit, their output captured (capped) into the log.
//!
//! Lifetime of a hook: it is the process group it starts in, recorded as started in the retry
//! journal before it runs and killed with keyprov ([`crate::hook_process`]). When the time limit passes, the
//! whole group is killed (SIGKILL), so `sleep 777 &` inside a hook does not outlive it. When
//! the hook itself exits, whatever it left in its group gets [`LINGER`] to finish writing and
//! is then killed too: a hook is a notification, not a way to start services (hand those to
//! the service manager, e.g. `systemctl`). A background process that keeps the hook's stdout
//! or stderr open therefore cannot make keyprov wait past `LINGER`. The leader is reaped only
//! after its group was killed, so the group id cannot be reused by an unrelated process group
//! in between.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::hook_process::RunningHook;
use crate::manifest::{Hook, KeyPair, Output};

/// `PATH` of every hook (list `PATH` in the config's `hooks.env` to pass keyprov's own
/// instead): fixed, so that what a hook runs does not depend on how keyprov was started.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bytes of each stream (stdout, stderr) kept for the log; the rest is read and counted.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// How long the rest of a hook's process group may keep running (and holding its output
/// open) after the hook itself exited, before the group is killed.
pub const LINGER: Duration = Duration::from_secs(1);

/// What happened to a generation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    /// A staged generation was published as next.
    Publish,
    /// A generation became current.
    Activate,
}

impl HookEvent {
    /// `publish` or `activate`, as hooks see it in `KEYPROV_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Publish => "publish",
            HookEvent::Activate => "activate",
        }
    }

    fn selects(self, hook: &Hook) -> bool {
        match self {
            HookEvent::Publish => hook.on_publish,
            HookEvent::Activate => hook.on_activate,
        }
    }
}

/// Identifies one hook of a key's `onRotate` list across runs: its position and command.
pub fn hook_id(index: usize, hook: &Hook) -> String {
    format!("{index}:{}", hook.command.join(" "))
}

/// Whether `key` has a hook listening to `event`.
pub fn listens(key: &KeyPair, event: HookEvent) -> bool {
    key.on_rotate.iter().any(|h| event.selects(h))
}

/// Records a hook run as started before the hook runs: the run, and the [`hook_id`]s of the
/// hooks of the same event that already succeeded in this run (not run again after a crash).
pub type Recorder<'a> = dyn Fn(RunningHook, Vec<String>) -> futures_util::future::BoxFuture<'a, Result<(), String>>
    + Send
    + Sync
    + 'a;

/// What [`run`] did.
#[derive(Debug)]
pub struct HookRun {
    /// [`hook_id`]s of the hooks that succeeded in this run.
    pub succeeded: Vec<String>,
    /// `Err` naming the first hook that failed (the ones after it did not run).
    pub result: Result<(), String>,
}

/// Runs every hook of `key` that listens to `event`, in order, except those whose
/// [`hook_id`] is in `done` (they succeeded in an earlier run); stops at the first failure.
/// Each hook is recorded as started with `record` before it runs; one whose start cannot be
/// recorded does not run (a failure).
///
/// Hooks see `PATH` ([`DEFAULT_PATH`]), the `KEYPROV_*` variables, and the variables named in
/// `extra_env` (the config's `hooks.env`) that are set in keyprov's own environment; nothing else.
pub async fn run(
    key: &KeyPair,
    event: HookEvent,
    generation: u32,
    extra_env: &[String],
    done: &[String],
    record: &Recorder<'_>,
) -> HookRun {
    let dirs: Vec<String> = key
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::File(file) => Some(file.dir.display().to_string()),
            Output::SecretsManager(_) => None,
        })
        .collect();
    let keyprov = [
        ("KEYPROV_NAME", key.name.clone()),
        ("KEYPROV_GENERATION", generation.to_string()),
        ("KEYPROV_EVENT", event.as_str().to_string()),
        ("KEYPROV_OUTPUT_DIRS", dirs.join(":")),
    ];
    let env = environment(&keyprov, extra_env, |name| std::env::var_os(name));
    let mut succeeded = Vec::new();
    for (index, hook) in key.on_rotate.iter().enumerate() {
        let id = hook_id(index, hook);
        if !event.selects(hook) || done.contains(&id) {
            continue;
        }
        // A hook may run up to its time limit without keyprov making a step.
        let quiet =
            crate::progress::allow_quiet(hook.timeout + LINGER + std::time::Duration::from_secs(2));
        let result = run_one(key, (&id, hook), event, generation, &env, |running| {
            record(running, succeeded.clone())
        })
        .await;
        drop(quiet);
        if let Err(err) = result {
            return HookRun {
                succeeded,
                result: Err(err),
            };
        }
        succeeded.push(id);
    }
    HookRun {
        succeeded,
        result: Ok(()),
    }
}

/// The whole environment of a hook: `PATH`, the names of `extra_env` that `lookup` finds, and
/// `keyprov`'s variables, which win over both.
fn environment(
    keyprov: &[(&str, String)],
    extra_env: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> BTreeMap<String, OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.into());
    for name in extra_env {
        if let Some(value) = lookup(name) {
            env.insert(name.clone(), value);
        }
    }
    for (name, value) in keyprov {
        env.insert(name.to_string(), value.into());
    }
    env
}

async fn run_one<F>(
    key: &KeyPair,
    (id, hook): (&str, &Hook),
    event: HookEvent,
    generation: u32,
    env: &BTreeMap<String, OsString>,
    record: impl FnOnce(RunningHook) -> F,
) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let program = &hook.command[0];
    let mut command = tokio::process::Command::new(program);
    command
        .args(&hook.command[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = crate::hook_process::spawn(command, id.to_string(), record)
        .await
        .map_err(|err| format!("onRotate {program}: {err}"))?;
    let pid = child
        .id()
        .map(|id| Pid::from_raw(id as i32))
        .ok_or_else(|| format!("onRotate {program}: exited before it could be watched"))?;
    // Declared after `child`, so dropped before it: a cancelled hook loses its whole group.
    let group = Group(pid);
    let (stop, stopped) = watch::channel(false);
    let stdout = tokio::spawn(capture(child.stdout.take(), stopped.clone()));
    let stderr = tokio::spawn(capture(child.stderr.take(), stopped));
    let exited = tokio::task::spawn_blocking(move || wait_exited(pid));

    let timed_out = tokio::time::timeout(hook.timeout, exited).await.is_err();
    let mut readers = Box::pin(async { (stdout.await, stderr.await) });
    let mut outputs = None;
    let mut lingered = false;
    if !timed_out {
        match tokio::time::timeout(LINGER, &mut readers).await {
            Ok(done) => outputs = Some(done),
            Err(_) => lingered = true,
        }
    }
    group.kill_and_release();
    // The group is dead; its pipes close unless a process left the group (setsid) with them.
    let (stdout, stderr) = match outputs {
        Some(done) => done,
        None => match tokio::time::timeout(LINGER, &mut readers).await {
            Ok(done) => done,
            Err(_) => {
                let _ = stop.send(true);
                readers.await
            }
        },
    };
    let status = child
        .wait()
        .await
        .map_err(|err| format!("onRotate {program}: {err}"))?;

    for (stream, captured) in [("stdout", stdout), ("stderr", stderr)] {
        let captured = captured.unwrap_or_default();
        for line in String::from_utf8_lossy(&captured.kept).lines() {
            tracing::info!(key = %key.name, hook = %program, stream, "{line}");
        }
        if captured.dropped > 0 {
            tracing::info!(key = %key.name, hook = %program, stream, "... {} more bytes truncated", captured.dropped);
        }
        if let Some(err) = captured.error {
            tracing::warn!(key = %key.name, hook = %program, stream, "cannot read the hook's output: {err}");
        }
    }
    if timed_out {
        return Err(format!(
            "onRotate {program}: killed (with its process group) after its timeout of {}",
            humantime::format_duration(hook.timeout)
        ));
    }
    if lingered {
        tracing::warn!(key = %key.name, hook = %program,
            "the hook exited but processes it started kept its output open; killed its process group");
    }
    if status.success() {
        tracing::info!(key = %key.name, hook = %program, event = event.as_str(), generation, "onRotate succeeded");
        Ok(())
    } else {
        Err(format!("onRotate {program} failed with {status}"))
    }
}

/// A hook's process group (its id is the hook's pid); killed on drop, in case the hook's
/// future is cancelled.
struct Group(Pid);

impl Group {
    fn kill(&self) {
        // ESRCH: the group is already empty. The leader is not reaped yet, so the id is ours.
        let _ = killpg(self.0, Signal::SIGKILL);
    }

    /// Kills the group for the last time. Once the leader is reaped, its id may become another
    /// process group's, so nothing may signal it after that.
    fn kill_and_release(self) {
        self.kill();
        std::mem::forget(self);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Blocks until `pid` has exited, without reaping it (`WNOWAIT`): its process group id stays
/// reserved until the caller reaps it.
fn wait_exited(pid: Pid) {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// A stream's output: the first [`OUTPUT_CAP`] bytes, and how many more were read.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
    error: Option<std::io::Error>,
}

/// Reads `stream` to its end (or until `stop` turns true), keeping at most [`OUTPUT_CAP`] bytes.
async fn capture(
    stream: Option<impl AsyncRead + Unpin>,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buffer) => read,
            _ = stop.wait_for(|stop| *stop) => return captured,
        };
        match read {
            Ok(0) => return captured,
            Ok(n) => {
                let room = OUTPUT_CAP - captured.kept.len();
                let keep = n.min(room);
                captured.kept.extend_from_slice(&buffer[..keep]);
                captured.dropped += (n - keep) as u64;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                captured.error = Some(err);
                return captured;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_path_keyprov_and_the_listed_names_that_are_set() {
        let keyprov = [("KEYPROV_NAME", "alpha".to_string())];
        let extra: Vec<String> = ["LANG", "UNSET", "PATH", "KEYPROV_NAME"]
            .map(String::from)
            .to_vec();
        let env = environment(&keyprov, &extra, |name| match name {
            "LANG" => Some("C.UTF-8".into()),
            "PATH" => Some("/opt/bin".into()),
            "KEYPROV_NAME" => Some("spoofed".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".into()),
            _ => None,
        });
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("KEYPROV_NAME", "alpha"),
                ("LANG", "C.UTF-8"),
                ("PATH", "/opt/bin"),
            ]
        );
        let default = environment(&[], &[], |_| Some("x".into()));
        assert_eq!(default.len(), 1);
        assert_eq!(default["PATH"], DEFAULT_PATH);
    }
}
