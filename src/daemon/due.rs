//! What the daemon's next pass covers: every key (the resync, a manifest or configuration
//! change, an event tied to no key) or only the keys whose event came (a due wake). The
//! [`Schedule`] keeps every key's next event across passes: a pass over due keys reports only
//! its own keys, so it replaces theirs and keeps the others'.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::key_events::KeyEvents;
use crate::reconcile::Report;

/// Every key's next event and next publication, and any event that calls for a full pass.
#[derive(Debug, Default)]
pub struct Schedule {
    events: KeyEvents,
    publications: KeyEvents,
    /// An event tied to no key (a manifest changed during a pass, a failure outside any key,
    /// the stateDir lock held): a full pass when it comes.
    whole: Option<SystemTime>,
}

/// What a timer wake does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A full pass: every key, the sweep, prune.
    Full,
    /// Only these keys.
    Keys(BTreeSet<String>),
    /// Nothing has come yet (the wall clock is a little behind the timer): sleep again.
    Nothing,
}

impl Schedule {
    /// Takes in the report of a pass over `considered` keys (`None`: every key); `retry_whole`
    /// is when the daemon wants a full pass for a reason of its own.
    pub fn record(
        &mut self,
        considered: Option<&BTreeSet<String>>,
        report: &Report,
        retry_whole: Option<SystemTime>,
    ) {
        self.events.merge_pass(considered, &report.key_events);
        self.publications
            .merge_pass(considered, &report.key_publications);
        let unattributed = report
            .next_event
            .filter(|at| report.key_events.earliest().is_none_or(|known| at < &known));
        let kept = if considered.is_some() {
            self.whole
        } else {
            None
        };
        self.whole = kept
            .into_iter()
            .chain(unattributed)
            .chain(retry_whole)
            .min();
    }

    /// The earliest event, of any key or of none.
    pub fn earliest(&self) -> Option<SystemTime> {
        self.events.earliest().into_iter().chain(self.whole).min()
    }

    /// The earliest time a key's event or publication comes (a served JWK Set is cached until
    /// then at most).
    pub fn publication(&self) -> Option<SystemTime> {
        self.events
            .earliest()
            .into_iter()
            .chain(self.publications.earliest())
            .min()
    }

    /// What a timer wake at `now` does; `resync_due` when the resync has come.
    pub fn wake(&self, now: SystemTime, resync_due: bool) -> Wake {
        if resync_due || self.whole.is_some_and(|at| at <= now) {
            return Wake::Full;
        }
        let due = self.events.due(now);
        if due.is_empty() {
            Wake::Nothing
        } else {
            Wake::Keys(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn report(events: &[(&str, u64)], next_event: Option<u64>) -> Report {
        let mut report = Report::default();
        for (name, at) in events {
            report.wake_key(name, t(*at));
            report.key_publications.add(name, t(*at - 1));
        }
        if let Some(at) = next_event {
            report.next_event = report.next_event.into_iter().chain([t(at)]).min();
        }
        report
    }

    fn keys(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_due_wake_takes_only_the_due_keys_and_keeps_the_others_schedule() {
        let mut schedule = Schedule::default();
        schedule.record(None, &report(&[("a", 10), ("b", 50)], None), None);
        assert_eq!(schedule.earliest(), Some(t(10)));
        assert_eq!(schedule.wake(t(9), false), Wake::Nothing);
        assert_eq!(schedule.wake(t(10), false), Wake::Keys(keys(&["a"])));
        // The pass over "a" moves it to 100; "b" keeps 50 though the pass never saw it.
        schedule.record(Some(&keys(&["a"])), &report(&[("a", 100)], None), None);
        assert_eq!(schedule.earliest(), Some(t(50)));
        assert_eq!(schedule.publication(), Some(t(49)));
        assert_eq!(schedule.wake(t(60), false), Wake::Keys(keys(&["b"])));
        assert_eq!(schedule.wake(t(200), false), Wake::Keys(keys(&["a", "b"])));
        // The resync is a full pass whatever is due.
        assert_eq!(schedule.wake(t(60), true), Wake::Full);
        // A key converged for good (no event) leaves the schedule.
        schedule.record(Some(&keys(&["b"])), &report(&[], None), None);
        assert_eq!(schedule.earliest(), Some(t(100)));
    }

    #[test]
    fn an_event_tied_to_no_key_makes_a_full_pass() {
        let mut schedule = Schedule::default();
        // A manifest changed during a pass (next_event "now", no key), or a failure outside keys.
        schedule.record(None, &report(&[("a", 50)], Some(5)), None);
        assert_eq!(schedule.earliest(), Some(t(5)));
        assert_eq!(schedule.wake(t(5), false), Wake::Full);
        // A pass over due keys keeps a pending full pass.
        schedule.record(Some(&keys(&["a"])), &report(&[("a", 60)], None), None);
        assert_eq!(schedule.wake(t(5), false), Wake::Full);
        // The full pass that follows clears it.
        schedule.record(None, &report(&[("a", 60)], None), None);
        assert_eq!(schedule.wake(t(5), false), Wake::Nothing);
        // The daemon's own retry (the stateDir lock held).
        schedule.record(None, &report(&[("a", 60)], None), Some(t(30)));
        assert_eq!(schedule.wake(t(30), false), Wake::Full);
        // An event at the same time as a key's is that key's.
        schedule.record(None, &report(&[("a", 60)], Some(60)), None);
        assert_eq!(schedule.wake(t(60), false), Wake::Keys(keys(&["a"])));
    }
}
