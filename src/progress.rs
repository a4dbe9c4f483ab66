//! Liveness of the work, for the systemd watchdog: the reconcile reports each step it
//! finishes ([`beat`]), and an operation that may legitimately take long without a step (a
//! hook under its time limit) announces how long ([`allow_quiet`]). The daemon pings the
//! watchdog during a reconcile only while [`stalled`] is false, so a reconcile stuck on
//! something unbounded (a lock never released, a call that never returns) stops the pings and
//! systemd restarts keyprov.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since [`epoch`] of the last step.
static LAST_BEAT: AtomicU64 = AtomicU64::new(0);
/// Milliseconds since [`epoch`] until which silence is expected, while [`QUIET_HOLDERS`] > 0.
static QUIET_UNTIL: AtomicU64 = AtomicU64::new(0);
/// Operations within their declared quiet time right now.
static QUIET_HOLDERS: AtomicUsize = AtomicUsize::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// Records that the work made a step just now.
pub fn beat() {
    LAST_BEAT.fetch_max(millis(Instant::now()), Ordering::Relaxed);
}

/// An operation's declared quiet time; it ends (with a step) when this is dropped.
#[derive(Debug)]
#[must_use = "the quiet time ends when the guard is dropped"]
pub struct QuietGuard(());

impl Drop for QuietGuard {
    fn drop(&mut self) {
        beat();
        if QUIET_HOLDERS.fetch_sub(1, Ordering::Relaxed) == 1 {
            QUIET_UNTIL.store(0, Ordering::Relaxed);
        }
    }
}

/// Declares that the work may make no step for up to `quiet` from now (an operation bounded
/// by its own time limit, such as a hook), until the returned guard is dropped; records a step.
pub fn allow_quiet(quiet: Duration) -> QuietGuard {
    let now = Instant::now();
    LAST_BEAT.fetch_max(millis(now), Ordering::Relaxed);
    QUIET_HOLDERS.fetch_add(1, Ordering::Relaxed);
    QUIET_UNTIL.fetch_max(millis(now + quiet), Ordering::Relaxed);
    QuietGuard(())
}

/// True when no step was made within `limit` and no declared quiet time is running.
pub fn stalled(limit: Duration) -> bool {
    let now = millis(Instant::now());
    let last = LAST_BEAT.load(Ordering::Relaxed);
    let quiet =
        QUIET_HOLDERS.load(Ordering::Relaxed) > 0 && now <= QUIET_UNTIL.load(Ordering::Relaxed);
    !quiet && now.saturating_sub(last) > limit.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a stall of `limit` is seen within a few tries: other unit tests of this process
    /// make steps too (the state is process-wide), which can only postpone a stall.
    fn stall_seen(limit: Duration) -> bool {
        (0..50).any(|_| {
            std::thread::sleep(limit * 3);
            stalled(limit)
        })
    }

    #[test]
    fn a_beat_or_a_declared_quiet_time_is_not_a_stall() {
        beat();
        assert!(!stalled(Duration::from_secs(60)));
        assert!(stall_seen(Duration::from_millis(10)));
        let quiet = allow_quiet(Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!stalled(Duration::from_millis(10)), "within the quiet time");
        std::thread::sleep(Duration::from_millis(200));
        assert!(stall_seen(Duration::from_millis(10)), "past the quiet time");
        let again = allow_quiet(Duration::from_secs(3600));
        drop(again);
        drop(quiet);
        assert!(
            stall_seen(Duration::from_millis(10)),
            "a finished operation's quiet time ends with it"
        );
    }
}
