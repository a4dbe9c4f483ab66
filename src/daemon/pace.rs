//! When the daemon's next pass starts: at the next due event, or at the next resync, whichever
//! comes first, and never back to back.
//!
//! Resyncs (full passes that pick up what other hosts and hands changed) come every
//! `resyncEvery`, less up to 10 % of random jitter so that the daemons of a fleet started
//! together drift apart; a pass for a due rotation, activation or retry does not move them.
//!
//! Whatever the state, passes are at least `debounce` apart, and while they keep falling due at
//! once the gap doubles, up to `retryBackoff`: a state that makes every pass want another one at
//! once (a bug, or two writers fighting over a label) costs a bounded, falling rate of passes,
//! never a busy loop.

use std::time::Duration;

use tokio::time::Instant;

/// Share of `resyncEvery` a resync may come early by.
const RESYNC_JITTER: f64 = 0.1;
/// Passes in a row that fell due at once before a warning says the daemon is pacing itself.
const WARN_AFTER: u32 = 3;

/// The daemon's schedule of passes.
#[derive(Debug)]
pub struct Pace {
    resync_every: Duration,
    next_resync: Instant,
    floor: Duration,
    cap: Duration,
    streak: u32,
}

impl Pace {
    /// The schedule of `config`, its first resync one jittered period after `now`.
    pub fn new(config: &crate::config::Config, now: Instant) -> Self {
        let mut pace = Pace {
            resync_every: config.reconcile.resync_every,
            next_resync: now,
            floor: Duration::ZERO,
            cap: Duration::ZERO,
            streak: 0,
        };
        pace.reconfigure(config, now);
        pace
    }

    /// Applies a reloaded configuration: its resync period starts over from `now`.
    pub fn reconfigure(&mut self, config: &crate::config::Config, now: Instant) {
        self.resync_every = config.reconcile.resync_every;
        self.floor = config.reconcile.debounce.max(Duration::from_millis(50));
        self.cap = config.reconcile.retry_backoff.initial.max(self.floor);
        self.next_resync = now + jittered(self.resync_every, random());
    }

    /// Whether the resync has come: the next pass is a full one.
    pub fn resync_due(&self, now: Instant) -> bool {
        now >= self.next_resync
    }

    /// A full pass ended at `now`: when it was the resync (or stood in for it), the next one
    /// comes a jittered period later. A pass over due keys never moves the resync.
    pub fn full_pass_ended(&mut self, now: Instant) {
        if now >= self.next_resync {
            self.next_resync = now + jittered(self.resync_every, random());
        }
    }

    /// How long to sleep until `wanted` or the resync, whichever comes first, with no pacing:
    /// for a wake that found nothing due yet (the wall clock ran a little behind the timer).
    pub fn until(&self, wanted: Duration, now: Instant) -> Duration {
        wanted.min(self.next_resync.saturating_duration_since(now))
    }

    /// How long to sleep after a pass that ended at `now`, when the pass itself wants the next
    /// one after `wanted` (its next due event, retry or `resyncEvery`).
    pub fn wait(&mut self, wanted: Duration, now: Instant) -> Duration {
        let wait = self.until(wanted, now);
        if wait >= self.floor {
            self.streak = 0;
            return wait;
        }
        self.streak += 1;
        let paced = self
            .floor
            .checked_mul(1u32 << (self.streak - 1).min(20))
            .unwrap_or(self.cap)
            .min(self.cap)
            .max(wait);
        if self.streak == WARN_AFTER {
            tracing::warn!(
                "{} passes in a row wanted another one at once: pacing them (next in {})",
                self.streak,
                humantime::format_duration(paced)
            );
        }
        paced
    }
}

/// `period` less `jitter` (0.0..1.0) of [`RESYNC_JITTER`] of it: how the daemon's resyncs and
/// the change beacon's full listings spread a fleet's hosts.
pub fn jittered(period: Duration, jitter: f64) -> Duration {
    period.saturating_sub(period.mul_f64(jitter.clamp(0.0, 1.0) * RESYNC_JITTER))
}

/// A random number in `0.0..1.0`.
pub fn random() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(resync: Duration) -> Pace {
        paced_from(Instant::now(), resync)
    }

    fn paced_from(now: Instant, resync: Duration) -> Pace {
        Pace {
            resync_every: resync,
            next_resync: now + resync,
            floor: Duration::from_millis(300),
            cap: Duration::from_secs(30),
            streak: 0,
        }
    }

    #[test]
    fn passes_wanted_at_once_are_paced_ever_further_apart_up_to_the_cap() {
        let mut pace = pace(Duration::from_secs(3600));
        let now = Instant::now();
        let waits: Vec<u64> = (0..10)
            .map(|_| pace.wait(Duration::ZERO, now).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [300, 600, 1200, 2400, 4800, 9600, 19200, 30000, 30000, 30000]
        );
        // A pass that wants the next one later ends the streak.
        assert_eq!(
            pace.wait(Duration::from_secs(5), now),
            Duration::from_secs(5)
        );
        assert_eq!(pace.wait(Duration::ZERO, now), Duration::from_millis(300));
        // In 90 s of a state that wants a pass at once: a handful of passes, not thousands.
        let mut pace = self::pace(Duration::from_secs(3600));
        let (mut elapsed, mut passes) = (Duration::ZERO, 0);
        while elapsed < Duration::from_secs(90) {
            elapsed += pace.wait(Duration::ZERO, now);
            passes += 1;
        }
        assert!(passes <= 10, "{passes} passes in 90 s");
    }

    #[test]
    fn due_wakes_do_not_move_the_resync() {
        let start = Instant::now();
        let mut pace = paced_from(start, Duration::from_secs(120));
        // A pass for a due event 30 s in: the resync stays 120 s after the start.
        assert_eq!(
            pace.wait(Duration::from_secs(600), start + Duration::from_secs(30)),
            Duration::from_secs(90)
        );
        // A pass over due keys that ends after the resync time does not stand in for it: the
        // next pass, at once, is the resync.
        let at = start + Duration::from_secs(120);
        assert!(pace.resync_due(at));
        assert_eq!(pace.until(Duration::from_secs(600), at), Duration::ZERO);
        // The resync pass schedules the next one, jittered by at most 10 %.
        pace.full_pass_ended(at);
        assert!(!pace.resync_due(at));
        let next = pace.wait(Duration::from_secs(600), at);
        assert!(
            next <= Duration::from_secs(120) && next >= Duration::from_secs(108),
            "{next:?}"
        );
        assert_eq!(
            jittered(Duration::from_secs(100), 1.0),
            Duration::from_secs(90)
        );
        assert_eq!(
            jittered(Duration::from_secs(100), 0.0),
            Duration::from_secs(100)
        );
    }
}
