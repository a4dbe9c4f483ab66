//! When each key next wants a reconcile pass: its rotation, publication or activation (at this
//! host's turn in a fleet), its retry or a hook's retry. The daemon keeps one of these across
//! passes and, when its timer fires, reconciles only the keys that fell due.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// The earliest time each key wants a pass, by key name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyEvents(BTreeMap<String, SystemTime>);

impl KeyEvents {
    /// Records that key `name` wants a pass at `at`; an earlier time already recorded stays.
    pub fn add(&mut self, name: &str, at: SystemTime) {
        match self.0.get_mut(name) {
            Some(known) => *known = (*known).min(at),
            None => {
                self.0.insert(name.to_string(), at);
            }
        }
    }

    /// Every event of `other` added (the earliest per key stays).
    pub fn extend(&mut self, other: &KeyEvents) {
        for (name, at) in &other.0 {
            self.add(name, *at);
        }
    }

    /// The earliest event of any key.
    pub fn earliest(&self) -> Option<SystemTime> {
        self.0.values().min().copied()
    }

    /// Key `name`'s event.
    pub fn get(&self, name: &str) -> Option<SystemTime> {
        self.0.get(name).copied()
    }

    /// The keys whose event has come at `now`.
    pub fn due(&self, now: SystemTime) -> BTreeSet<String> {
        self.0
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Takes in what a pass reported: a full pass (`considered` is `None`) knows every key, so
    /// its events replace all of them; a pass over `considered` keys only replaces theirs (a
    /// key it considered and reported nothing for has no event any more) and keeps every other
    /// key's.
    pub fn merge_pass(&mut self, considered: Option<&BTreeSet<String>>, reported: &KeyEvents) {
        match considered {
            None => *self = reported.clone(),
            Some(keys) => {
                self.0.retain(|name, _| !keys.contains(name));
                self.extend(reported);
            }
        }
    }

    /// Number of keys with an event.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no key has an event.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn events(list: &[(&str, u64)]) -> KeyEvents {
        let mut events = KeyEvents::default();
        for (name, at) in list {
            events.add(name, t(*at));
        }
        events
    }

    /// Events before, keys of the pass (`None`: every key), events reported, events after.
    type Case<'a> = (
        &'a [(&'a str, u64)],
        Option<&'a [&'a str]>,
        &'a [(&'a str, u64)],
        &'a [(&'a str, u64)],
    );

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_key_keeps_its_earliest_event() {
        let mut e = events(&[("a", 50), ("b", 70), ("a", 30), ("a", 40)]);
        assert_eq!(e.get("a"), Some(t(30)));
        assert_eq!(e.earliest(), Some(t(30)));
        e.extend(&events(&[("b", 60), ("c", 90)]));
        assert_eq!(e, events(&[("a", 30), ("b", 60), ("c", 90)]));
        assert_eq!(KeyEvents::default().earliest(), None);
    }

    #[test]
    fn only_the_keys_whose_event_came_are_due() {
        let e = events(&[("a", 10), ("b", 20), ("c", 30)]);
        assert_eq!(e.due(t(5)), set(&[]));
        assert_eq!(e.due(t(10)), set(&["a"]), "an event at now is due");
        assert_eq!(e.due(t(25)), set(&["a", "b"]));
        assert_eq!(e.due(t(99)), set(&["a", "b", "c"]));
    }

    #[test]
    fn a_partial_pass_replaces_only_its_own_keys_events() {
        // Table: (before, considered, reported, after).
        let cases: &[Case] = &[
            // A full pass knows every key: what it did not report has no event.
            (&[("a", 10), ("b", 20)], None, &[("b", 25)], &[("b", 25)]),
            // The due key moves on; the other keeps its schedule.
            (
                &[("a", 10), ("b", 20)],
                Some(&["a"]),
                &[("a", 100)],
                &[("a", 100), ("b", 20)],
            ),
            // A key that reported nothing (converged, no rotation) loses its event, the
            // others keep theirs: a past event is never kept to wake the daemon again.
            (&[("a", 10), ("b", 20)], Some(&["a"]), &[], &[("b", 20)]),
            // A later event reported for a key is taken, not the earlier one it had.
            (&[("a", 10)], Some(&["a"]), &[("a", 40)], &[("a", 40)]),
            // An event reported for a key outside the pass is added, the earliest kept.
            (
                &[("a", 10), ("b", 20)],
                Some(&["a"]),
                &[("a", 50), ("b", 15)],
                &[("a", 50), ("b", 15)],
            ),
            (
                &[("a", 10), ("b", 20)],
                Some(&["a"]),
                &[("b", 30)],
                &[("b", 20)],
            ),
            // A key the partial pass considered but no manifest defines any more goes.
            (
                &[("gone", 10), ("b", 20)],
                Some(&["gone"]),
                &[],
                &[("b", 20)],
            ),
        ];
        for (before, considered, reported, after) in cases {
            let mut e = events(before);
            let considered = considered.map(set);
            e.merge_pass(considered.as_ref(), &events(reported));
            assert_eq!(
                e,
                events(after),
                "{before:?} + pass over {considered:?} reporting {reported:?}"
            );
        }
    }
}
