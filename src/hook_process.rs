//! A hook run that cannot outlive keyprov unnoticed: started recorded, killed with keyprov,
//! and its leftovers killed by the next keyprov before the hook runs again.
//!
//! - The hook is forked by one thread that lives as long as keyprov ([`spawner`]), and asks
//!   the kernel for SIGKILL when that thread (keyprov) dies (`PR_SET_PDEATHSIG`; the kernel
//!   ties it to the forking *thread*, so a tokio worker that may exit cannot be the parent).
//! - Before `exec`, the child hands its pid to keyprov and waits: keyprov first records the run
//!   as started ([`RunningHook`]: process group, boot id, start time) in the retry journal,
//!   durably, and only then lets it run. No instruction of a hook runs unrecorded.
//! - The death signal reaches the group leader only; what it left in its group is killed by the
//!   next keyprov ([`end_leftovers`]) before any hook of that key runs again, once the group is
//!   proven to be that run's (same boot, same user, started no earlier than the recorded
//!   leader, and the leader's pid not taken by a newer process).

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long [`end_leftovers`] waits for a killed group to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A hook run recorded as started: enough to find its process group again, and to tell it from
/// an unrelated group that got the same id after a reboot or a pid wrap-around.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunningHook {
    /// [`crate::hooks::hook_id`] of the hook.
    pub hook: String,
    /// Its process group id (the pid of the hook's first process, the group leader).
    pub pgid: i32,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// The leader's start time, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub start_ticks: u64,
    /// The user it ran as.
    pub uid: u32,
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread every hook is forked from: it never exits, so the death signal of a hook fires
/// only when keyprov itself dies.
fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("keyprov-hook-spawner".into())
            .spawn(move || {
                for job in receive {
                    job();
                }
            })
            .expect("cannot start the hook spawner thread");
        send
    })
}

/// Starts `command` (already given its program, arguments, environment and stdio) in its own
/// process group, dying with keyprov; `record` is awaited with the run's [`RunningHook`] before
/// the hook's program is executed. When `record` fails, the program never runs.
pub async fn spawn<F>(
    mut command: tokio::process::Command,
    hook: String,
    record: impl FnOnce(RunningHook) -> F,
) -> Result<tokio::process::Child, String>
where
    F: Future<Output = Result<(), String>>,
{
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot start: {e}"));
    let (pid_read, pid_write) = pipe()?;
    let (gate_read, gate_write) = pipe()?;
    let fds = ChildFds {
        parent: std::process::id() as libc::pid_t,
        pid_write: pid_write.as_raw_fd(),
        gate_read: gate_read.as_raw_fd(),
        pid_read: pid_read.as_raw_fd(),
        gate_write: gate_write.as_raw_fd(),
    };
    command.process_group(0);
    // SAFETY: `gate` only makes async-signal-safe calls (prctl, getppid, getpid, read, write,
    // close) and does not allocate.
    unsafe {
        command.pre_exec(move || fds.gate());
    }
    let runtime = tokio::runtime::Handle::current();
    let (done, spawned) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // Blocks until the child executed its program or failed: after the gate opened.
        let child = {
            let _runtime = runtime.enter();
            command.spawn()
        };
        drop((pid_write, gate_read));
        let _ = done.send(child);
    });
    spawner()
        .send(job)
        .map_err(|_| "cannot start: the hook spawner thread is gone".to_string())?;
    let spawn_result = async {
        match spawned.await {
            Ok(Ok(child)) => Ok(child),
            Ok(Err(err)) => Err(format!("cannot start: {err}")),
            Err(_) => Err("cannot start: the hook spawner thread is gone".to_string()),
        }
    };
    let pid = match read_pid(pid_read).await {
        Some(pid) => pid,
        // The child failed before it could say its pid; the spawn says why.
        None => {
            drop(gate_write);
            return spawn_result.await.and(Err("cannot start".into()));
        }
    };
    let recorded = match identify(pid) {
        Ok(running) => record(RunningHook { hook, ..running }).await,
        Err(err) => Err(err),
    };
    match recorded {
        Ok(()) => {
            let mut gate = File::from(gate_write);
            let opened = gate.write_all(b"1");
            drop(gate);
            let child = spawn_result.await?;
            opened.map_err(|e| format!("cannot start: {e}"))?;
            Ok(child)
        }
        Err(err) => {
            // The child reads end-of-file and exits without executing anything.
            drop(gate_write);
            let _ = spawn_result.await;
            Err(format!("not started: cannot record its start: {err}"))
        }
    }
}

/// The descriptors the child uses before `exec` (all close-on-exec).
#[derive(Clone, Copy)]
struct ChildFds {
    parent: libc::pid_t,
    pid_write: RawFd,
    gate_read: RawFd,
    pid_read: RawFd,
    gate_write: RawFd,
}

impl ChildFds {
    /// In the child, before `exec`: dies with the spawner thread, says its pid, and waits
    /// until keyprov recorded the run (a byte) or gave up (end of file).
    fn gate(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on descriptors this child owns.
        unsafe {
            libc::close(self.pid_read);
            libc::close(self.gate_write);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // keyprov died between the fork and the prctl: no signal will come.
            if libc::getppid() != self.parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(self.pid_write, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(self.pid_write);
            let mut byte = 0u8;
            loop {
                match libc::read(self.gate_read, (&raw mut byte).cast(), 1) {
                    1 => break,
                    n if n < 0 && *libc::__errno_location() == libc::EINTR => continue,
                    _ => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
                }
            }
            libc::close(self.gate_read);
        }
        Ok(())
    }
}

/// The pid the child wrote, or `None` when it exited before.
async fn read_pid(pid_read: OwnedFd) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = [0u8; 4];
        File::from(pid_read).read_exact(&mut bytes).ok()?;
        Some(i32::from_ne_bytes(bytes))
    })
    .await
    .ok()
    .flatten()
}

/// What identifies the run whose leader is `pid` (our unreaped child, so `pid` is its own).
fn identify(pid: i32) -> Result<RunningHook, String> {
    let start_ticks = match read_stat(pid) {
        Some(stat) => stat.start_ticks,
        None => started_about_now(pid)?,
    };
    Ok(RunningHook {
        hook: String::new(),
        pgid: pid,
        boot_id: boot_id()?,
        start_ticks,
        uid: nix::unistd::geteuid().as_raw(),
    })
}

/// A start time no later than the one of the child `pid` just forked, when its
/// `/proc/<pid>/stat` cannot be read: keyprov is not dumpable, so until `exec` its child's
/// `/proc` entries belong to root, which systemd's `ProtectProc=invisible` with
/// `PrivateUsers=yes` (the shipped unit) hides. One second before now, in clock ticks since
/// boot: leftovers are the group's processes started no earlier (see [`leftovers`]).
fn started_about_now(pid: i32) -> Result<u64, String> {
    use nix::time::{ClockId, clock_gettime};
    let cannot = |e: String| format!("cannot read /proc/{pid}/stat nor the clock: {e}");
    let up = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(|e| cannot(e.to_string()))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)
        .unwrap_or(100) as u64;
    let ticks = up.tv_sec() as u64 * hz + up.tv_nsec() as u64 * hz / 1_000_000_000;
    Ok(ticks.saturating_sub(hz))
}

/// The kernel's boot id; where `/proc/sys` is hidden (systemd's `ProcSubset=pid`, which the
/// shipped unit sets), the moment of boot from the clocks (CLOCK_REALTIME − CLOCK_BOOTTIME, to
/// the minute): a clock step can only make a leftover look like another boot's, which leaves
/// it alone, never kills a stranger.
fn boot_id() -> Result<String, String> {
    if let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        return Ok(id.trim().to_string());
    }
    use nix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::CLOCK_REALTIME).map_err(|e| format!("clock: {e}"))?;
    let up = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(|e| format!("clock: {e}"))?;
    let booted = now.tv_sec() - up.tv_sec();
    Ok(format!("booted-at-minute:{}", booted / 60))
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and parentheses, so fields are
/// counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The live processes of `run`'s group that are provably its own (see the module comment).
fn leftovers(run: &RunningHook) -> Vec<i32> {
    if boot_id().ok().as_deref() != Some(run.boot_id.as_str()) {
        return Vec::new(); // A reboot ended it.
    }
    if read_stat(run.pgid).is_some_and(|leader| leader.start_ticks != run.start_ticks) {
        // The id belongs to a newer process: it could only be reused once the group was empty.
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = read_stat(pid)?;
            let alive = !matches!(stat.state, 'Z' | 'X');
            let ours = stat.pgrp == run.pgid
                && stat.start_ticks >= run.start_ticks
                && entry.metadata().ok()?.uid() == run.uid;
            (alive && ours).then_some(pid)
        })
        .collect()
}

/// Kills what is left of `run` (a run recorded as started whose end nobody saw) and waits until
/// it is gone. Returns how many processes were left; an error when they would not die.
pub async fn end_leftovers(run: RunningHook) -> Result<usize, String> {
    tokio::task::spawn_blocking(move || {
        let left = leftovers(&run).len();
        if left == 0 {
            return Ok(0);
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let _ = killpg(Pid::from_raw(run.pgid), Signal::SIGKILL);
            if leftovers(&run).is_empty() {
                return Ok(left);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "process group {} of an earlier run of onRotate {:?} does not die",
                    run.pgid, run.hook
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a) b (c) S 1 4240 4240 0 -1 4194560 98 0 0 0 0 0 0 0 20 0 1 0 \
                    123456 2453504 172 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 4240,
                start_ticks: 123456
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_is_recorded_before_it_starts_and_its_leftovers_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = format!("touch {}; sleep 30 & wait", marker.display());
        let command = || {
            let mut command = tokio::process::Command::new("/bin/sh");
            command.args(["-c", &script]);
            command
        };
        // A failed record: the program never runs.
        let refused = spawn(command(), "0:sh".into(), |_| async {
            Err("disk full".into())
        })
        .await;
        assert!(refused.unwrap_err().contains("disk full"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists(), "ran without its record");

        let seen = std::sync::Mutex::new(None);
        let mut child = spawn(command(), "0:sh".into(), |running| {
            let exists = marker.exists();
            *seen.lock().unwrap() = Some((running, exists));
            async { Ok(()) }
        })
        .await
        .unwrap();
        let (running, ran_before_record) = seen.lock().unwrap().clone().unwrap();
        assert!(!ran_before_record);
        assert_eq!(running.pgid, child.id().unwrap() as i32);
        assert_eq!(running.hook, "0:sh");
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The shell and its `sleep`: both ours.
        let mut left = leftovers(&running);
        for _ in 0..100 {
            if left.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = leftovers(&running);
        }
        assert_eq!(left.len(), 2, "{left:?}");
        let stranger = RunningHook {
            start_ticks: running.start_ticks + 1_000_000,
            ..running.clone()
        };
        assert!(
            leftovers(&stranger).is_empty(),
            "a newer leader is not ours"
        );
        let other_boot = RunningHook {
            boot_id: "another boot".into(),
            ..running.clone()
        };
        assert!(leftovers(&other_boot).is_empty());
        assert_eq!(end_leftovers(running.clone()).await, Ok(2));
        child.wait().await.unwrap();
        assert!(leftovers(&running).is_empty());
        assert_eq!(end_leftovers(running).await, Ok(0));
    }
}
