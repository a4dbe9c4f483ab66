//! Debouncing of manifest changes: a burst of file events (an editor's save, a `git pull`)
//! becomes one reconcile, `quiet` after the last event of the burst, and never later than
//! [`MAX_WAIT_FACTOR`] × `quiet` after the first, so a directory that never stops changing
//! still gets reconciled. Purely a timer computation: nothing ticks while nothing changed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

/// A burst is cut after this many `quiet` periods.
pub const MAX_WAIT_FACTOR: u32 = 10;

/// Changed paths waiting for the quiet time to pass.
#[derive(Debug)]
pub struct Debounce {
    quiet: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    paths: BTreeSet<PathBuf>,
}

impl Debounce {
    /// An empty debounce that waits `quiet` after the last change.
    pub fn new(quiet: Duration) -> Self {
        Debounce {
            quiet,
            first: None,
            last: None,
            paths: BTreeSet::new(),
        }
    }

    /// Adds changed paths seen at `now`.
    pub fn add(&mut self, paths: impl IntoIterator<Item = PathBuf>, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.paths.extend(paths);
    }

    /// When the waiting changes are due, `None` when nothing changed.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.quiet * MAX_WAIT_FACTOR))
    }

    /// The changed paths if they are due at `now` (and the debounce empties).
    pub fn take_if_due(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        if self.deadline()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.paths).into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(300);

    #[test]
    fn a_burst_is_due_quiet_after_its_last_event() {
        let t0 = Instant::now();
        let mut debounce = Debounce::new(QUIET);
        assert_eq!(debounce.deadline(), None, "nothing changed: no timer");
        debounce.add([PathBuf::from("/m/a.yaml")], t0);
        debounce.add(
            [PathBuf::from("/m/b.yaml")],
            t0 + Duration::from_millis(200),
        );
        assert_eq!(debounce.deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(debounce.take_if_due(t0 + Duration::from_millis(499)), None);
        let paths = debounce
            .take_if_due(t0 + Duration::from_millis(500))
            .unwrap();
        assert_eq!(paths, [PathBuf::from("/m/a.yaml"), "/m/b.yaml".into()]);
        assert_eq!(debounce.deadline(), None, "emptied");
    }

    #[test]
    fn an_endless_burst_is_cut() {
        let t0 = Instant::now();
        let mut debounce = Debounce::new(QUIET);
        for i in 0..100 {
            debounce.add(
                [PathBuf::from("/m/a.yaml")],
                t0 + Duration::from_millis(100 * i),
            );
        }
        assert_eq!(debounce.deadline(), Some(t0 + QUIET * MAX_WAIT_FACTOR));
    }
}
