//! The systemd watchdog: when systemd sets `WATCHDOG_USEC` (`WatchdogSec=` in the unit),
//! keyprov sends `WATCHDOG=1` every half of it, from the loop that does the work. Between
//! reconciles the loop pings whenever its ping falls due; during a reconcile it pings only
//! while the reconcile makes progress ([`crate::progress`]), so a stuck one stops the pings and
//! systemd restarts keyprov.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

/// The pinging schedule of one daemon.
#[derive(Debug)]
pub struct Watchdog {
    /// `WATCHDOG_USEC`: systemd's patience.
    period: Duration,
    /// How long a reconcile may go without a step before it counts as stuck.
    stall_limit: Duration,
    /// When the next ping is due.
    next: Instant,
    /// Whether the last due ping was withheld (logged once per stall).
    withheld: bool,
}

impl Watchdog {
    /// The watchdog systemd asked for, if any. `slowest_step` is the longest a single step of
    /// a reconcile may take (an AWS operation's time limit): the stall limit is the longer of
    /// it and the watchdog period.
    pub fn from_env(slowest_step: Duration) -> Option<Self> {
        let period = sd_notify::watchdog_enabled()?.max(Duration::from_millis(2));
        Some(Watchdog {
            period,
            stall_limit: period.max(slowest_step),
            next: Instant::now(),
            withheld: false,
        })
    }

    /// Half the period: the ping interval.
    pub fn interval(&self) -> Duration {
        self.period / 2
    }

    /// The period systemd waits for a ping.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Updates the stall limit after a configuration reload.
    pub fn set_slowest_step(&mut self, slowest_step: Duration) {
        self.stall_limit = self.period.max(slowest_step);
    }

    /// When the next ping is due.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Pings if a ping is due: the loop is alive and idle (or between steps).
    pub fn ping_if_due(&mut self) {
        if Instant::now() >= self.next {
            self.ping();
        }
    }

    /// During a reconcile: pings if due and the reconcile made progress within the stall
    /// limit; otherwise withholds the ping (systemd will restart keyprov if it stays stuck).
    pub fn ping_if_progressing(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        if crate::progress::stalled(self.stall_limit) {
            if !self.withheld {
                tracing::error!(
                    "the reconcile made no progress for {}: withholding the watchdog ping \
                     (systemd restarts keyprov if this lasts)",
                    humantime::format_duration(self.stall_limit)
                );
            }
            self.withheld = true;
            self.next = Instant::now() + self.interval();
            return;
        }
        if self.withheld {
            tracing::info!("the reconcile makes progress again: watchdog pings resume");
        }
        self.ping();
    }

    fn ping(&mut self) {
        self.withheld = false;
        if let Err(err) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!("sd_notify WATCHDOG=1 failed: {err}");
        }
        self.next = Instant::now() + self.interval();
    }
}
