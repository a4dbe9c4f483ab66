//! A wrong clock, here or on another host sharing a secret, must not suspend rotation.
//!
//! - A version whose `createdAt`/`activatesAt` lies further ahead of now than
//!   `reconcile.clockTolerance` was stamped by a clock running ahead. Its times are not used
//!   as they are: its rotation is scheduled from the earlier of its times and the moment this
//!   host first saw it ahead (an anchor kept in `<stateDir>/ledger/clock-anchors.json`, so that
//!   the schedule does not slide with every run).
//! - A staged version activates no later than its `createdAt` + `publishAhead`: an
//!   `activatesAt` of 9999 in a secret or a meta.json cannot hold a rotation back.
//! - With `provider: aws`, the local clock is compared with AWS's (the `Date` of its responses,
//!   see [`crate::aws_clock`]); a key is neither generated nor activated while they differ by
//!   more than the tolerance.
//!
//! Every such finding is a [`Note`]: logged, counted (`keyprov_clock_warnings_total`) and shown
//! by `status`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::ledger::Ledger;
use crate::manifest::KeyPair;
use crate::observed::{Observed, ObservedOutput, ObservedVersion};
use crate::plan::{Action, KeyPlan};
use crate::schedule::{add, format_time};

/// `reconcile.clockTolerance` when unset.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(600);

/// An activation later than `createdAt + publishAhead` by less than this is left alone
/// (times are recorded to the microsecond; this is no clock problem).
const CAP_SLACK: Duration = Duration::from_secs(1);

/// What was wrong with a version's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteKind {
    /// Its times lie ahead of now by more than the tolerance.
    FutureTime,
    /// Its staged activation lay beyond createdAt + publishAhead.
    ActivationCapped,
}

impl NoteKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::FutureTime => "future_time",
            NoteKind::ActivationCapped => "activation_capped",
        }
    }
}

/// A version whose recorded times were not used as they are.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// Key pair name.
    pub key: String,
    /// Generation concerned.
    pub generation: u32,
    /// What was wrong.
    pub kind: NoteKind,
    /// The time it records.
    pub recorded: SystemTime,
    /// The time used instead.
    pub used: SystemTime,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            NoteKind::FutureTime => write!(
                f,
                "generation {} records {}, ahead of this host's clock by more than \
                 reconcile.clockTolerance (a clock was wrong when it was written): its rotation \
                 is scheduled from {} instead",
                self.generation,
                format_time(self.recorded),
                format_time(self.used)
            ),
            NoteKind::ActivationCapped => write!(
                f,
                "staged generation {} records activatesAt {}, later than its createdAt + \
                 publishAhead: it activates at {} instead",
                self.generation,
                format_time(self.recorded),
                format_time(self.used)
            ),
        }
    }
}

/// Since when this host has seen each version ahead of its clock: `name/generation` -> time.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchors(BTreeMap<String, String>);

impl Anchors {
    fn key(name: &str, generation: u32) -> String {
        format!("{name}/{generation}")
    }

    /// When this host first saw `name`'s `generation` ahead of its clock.
    pub fn since(&self, name: &str, generation: u32) -> Option<SystemTime> {
        let text = self.0.get(&Self::key(name, generation))?;
        crate::schedule::parse_time(text).ok()
    }
}

fn anchors_ledger(state_dir: &Path) -> Ledger {
    Ledger::new(state_dir, "clock-anchors")
}

/// The anchors recorded under `state_dir`.
pub fn load_anchors(state_dir: &Path) -> Anchors {
    anchors_ledger(state_dir).load()
}

/// Applies the rules of this module to what the outputs of every key hold, in place, and says
/// what it changed. Pure: `anchors` are read, never written (see [`remember`]).
pub fn guard(
    observed: &mut Observed,
    keys: &[KeyPair],
    now: SystemTime,
    tolerance: Duration,
    anchors: &Anchors,
) -> Vec<Note> {
    let mut notes = Vec::new();
    for key in keys {
        if let Some(Ok(outputs)) = observed.get_mut(&key.name) {
            notes.extend(guard_key(key, outputs, now, tolerance, anchors));
        }
    }
    notes
}

/// [`guard`] for one key.
pub fn guard_key(
    key: &KeyPair,
    outputs: &mut [ObservedOutput],
    now: SystemTime,
    tolerance: Duration,
    anchors: &Anchors,
) -> Vec<Note> {
    let limit = add(now, tolerance);
    let mut notes = Vec::new();
    for output in outputs.iter_mut() {
        for (version, staged) in [
            (output.current.as_mut(), false),
            (output.next.as_mut(), true),
        ] {
            let Some(version) = version else { continue };
            let since = anchors.since(&key.name, version.generation).unwrap_or(now);
            notes.extend(guard_version(key, version, staged, limit, since.min(now)));
        }
    }
    notes.sort();
    notes.dedup();
    notes
}

fn guard_version(
    key: &KeyPair,
    version: &mut ObservedVersion,
    staged: bool,
    limit: SystemTime,
    since: SystemTime,
) -> Vec<Note> {
    let mut notes = Vec::new();
    // A staged version's activation lies ahead by design; only its creation cannot.
    let ahead = version.created_at > limit || (!staged && version.activates_at > limit);
    if ahead {
        let recorded = if staged {
            version.created_at
        } else {
            version.created_at.max(version.activates_at)
        };
        version.created_at = version.created_at.min(since);
        if !staged {
            version.activates_at = version.activates_at.min(version.created_at);
        }
        notes.push(Note {
            key: key.name.clone(),
            generation: version.generation,
            kind: NoteKind::FutureTime,
            recorded,
            used: since,
        });
    }
    if staged {
        let cap = add(
            version.created_at,
            key.rotation.publish_ahead.unwrap_or_default(),
        );
        if version.activates_at > add(cap, CAP_SLACK) {
            notes.push(Note {
                key: key.name.clone(),
                generation: version.generation,
                kind: NoteKind::ActivationCapped,
                recorded: version.activates_at,
                used: cap,
            });
            version.activates_at = cap;
        }
    }
    notes
}

/// Keeps the anchors of this reconcile's [`NoteKind::FutureTime`] notes (the first sighting
/// stays) and of the keys it could not look at (`unseen`: observation failed, manifest
/// invalid), and forgets every other, so the record holds at most two entries per key.
/// Written only when it changed.
pub fn remember(
    state_dir: &Path,
    notes: &[Note],
    unseen: impl Fn(&str) -> bool,
    now: SystemTime,
) -> Result<(), String> {
    let ledger = anchors_ledger(state_dir);
    let before: Anchors = ledger.load();
    let mut after = Anchors(
        before
            .0
            .iter()
            .filter(|(key, _)| key.rsplit_once('/').is_some_and(|(name, _)| unseen(name)))
            .map(|(key, since)| (key.clone(), since.clone()))
            .collect(),
    );
    for note in notes.iter().filter(|n| n.kind == NoteKind::FutureTime) {
        let key = Anchors::key(&note.key, note.generation);
        let since = before
            .0
            .get(&key)
            .cloned()
            .unwrap_or_else(|| format_time(now));
        after.0.insert(key, since);
    }
    if after == before {
        return Ok(());
    }
    ledger.save(&after)
}

/// Logs and counts each note.
pub fn report(notes: &[Note]) {
    for note in notes {
        tracing::warn!(key = %note.key, "{note}");
        crate::metrics::global().clock_warning(&note.key, note.kind.as_str());
    }
}

/// The notes of one key, as `status` shows them.
pub fn notes_of<'a>(notes: &'a [Note], name: &'a str) -> impl Iterator<Item = &'a Note> + 'a {
    notes.iter().filter(move |n| n.key == name)
}

/// Whether a plan activates a staged generation (a generation made by this run is checked
/// by the provider, against the `Date` of the very response that made it).
fn activates(plan: &KeyPlan) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::Activate { .. }))
}

/// With `provider: aws`: when the local clock (the one `now` came from) and AWS's differ by
/// more than `reconcile.clockTolerance`, removes every plan that activates a staged generation
/// and returns those keys' failures, naming both times. Without a fresh reading of AWS's clock
/// one cheap KMS request is made first; without any (the network is down) nothing is refused
/// here. Generating is refused by the provider itself (see `provider::AnyProvider`).
pub async fn refuse_skewed(
    provider: &crate::provider::AnyProvider,
    keys: &[KeyPair],
    plans: &mut Vec<KeyPlan>,
) -> Vec<(String, String)> {
    let crate::provider::AnyProvider::Aws(aws) = provider else {
        return Vec::new();
    };
    let Some(first) = plans.iter().find(|p| activates(p)) else {
        return Vec::new();
    };
    if crate::aws_clock::fresh_reading().is_none()
        && let Some(key) = keys.iter().find(|k| k.name == first.name)
    {
        aws.probe_clock(&key.kms_key_id).await;
    }
    let mut refused = Vec::new();
    plans.retain(|plan| {
        let refusal = activates(plan).then(crate::aws_clock::refusal).flatten();
        let Some(refusal) = refusal else {
            return true;
        };
        let message = format!("key {:?}: {refusal}", plan.name);
        tracing::error!(key = %plan.name, "{message}");
        crate::metrics::global().clock_warning(&plan.name, "aws_skew");
        crate::metrics::global().failure(&plan.name, crate::metrics::FailureReason::ClockSkew);
        refused.push((plan.name.clone(), message));
        false
    });
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_time;

    const DAY: Duration = Duration::from_secs(86_400);

    fn key(publish_ahead: Option<Duration>) -> KeyPair {
        KeyPair {
            name: "k".into(),
            labels: BTreeMap::new(),
            spec: crate::spec::KeyPairSpec::EccNistP256,
            kms_key_id: "alias/k".into(),
            encryption_context: BTreeMap::new(),
            grant_tokens: vec![],
            include_plaintext: false,
            rotation: crate::manifest::Rotation {
                every: Some(30 * DAY),
                publish_ahead,
                keep: 1,
            },
            outputs: vec![],
            on_rotate: vec![],
            source: "m.yaml".into(),
        }
    }

    fn version(generation: u32, created: SystemTime, activates: SystemTime) -> ObservedVersion {
        ObservedVersion {
            generation,
            spec_fingerprint: String::new(),
            created_at: created,
            activates_at: activates,
            public_key_sha256: String::new(),
            key_pair_spec: String::new(),
            kms_key_arn: String::new(),
            bound: true,
        }
    }

    #[test]
    fn a_current_version_from_the_future_is_scheduled_from_its_first_sighting() {
        let now = parse_time("2026-12-01T00:00:00Z").unwrap();
        let future = parse_time("2036-12-01T00:00:00Z").unwrap();
        let key = key(None);
        let mut outputs = vec![ObservedOutput {
            current: Some(version(2, future, future)),
            ..Default::default()
        }];
        let notes = guard_key(
            &key,
            &mut outputs,
            now,
            DEFAULT_TOLERANCE,
            &Anchors::default(),
        );
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].kind, NoteKind::FutureTime);
        assert_eq!(outputs[0].current.as_ref().unwrap().activates_at, now);
        // A day later, with the anchor recorded: the schedule does not slide.
        let mut anchors = Anchors::default();
        anchors.0.insert("k/2".into(), format_time(now));
        let mut outputs = vec![ObservedOutput {
            current: Some(version(2, future, future)),
            ..Default::default()
        }];
        guard_key(&key, &mut outputs, now + DAY, DEFAULT_TOLERANCE, &anchors);
        assert_eq!(outputs[0].current.as_ref().unwrap().activates_at, now);
        // Within the tolerance: left alone.
        let mut outputs = vec![ObservedOutput {
            current: Some(version(2, now + Duration::from_secs(60), now)),
            ..Default::default()
        }];
        assert!(guard_key(&key, &mut outputs, now, DEFAULT_TOLERANCE, &anchors).is_empty());
    }

    #[test]
    fn anchors_keep_the_first_sighting_and_only_what_is_still_ahead_or_unseen() {
        let tmp = tempfile::tempdir().unwrap();
        let t = parse_time("2026-12-01T00:00:00Z").unwrap();
        let note = |key: &str| Note {
            key: key.into(),
            generation: 2,
            kind: NoteKind::FutureTime,
            recorded: t + 3650 * DAY,
            used: t,
        };
        remember(tmp.path(), &[note("a"), note("b")], |_| false, t).unwrap();
        remember(tmp.path(), &[note("a")], |name| name == "b", t + DAY).unwrap();
        let anchors = load_anchors(tmp.path());
        assert_eq!(anchors.since("a", 2), Some(t), "first sighting kept");
        assert_eq!(anchors.since("b", 2), Some(t), "unseen: kept as it was");
        remember(tmp.path(), &[], |_| false, t + 2 * DAY).unwrap();
        assert_eq!(load_anchors(tmp.path()), Anchors::default());
    }

    #[test]
    fn a_staged_activation_is_capped_at_created_plus_publish_ahead() {
        let now = parse_time("2026-12-01T00:00:00Z").unwrap();
        let never = crate::schedule::max_time();
        let key = key(Some(7 * DAY));
        let mut outputs = vec![ObservedOutput {
            current: Some(version(1, now - 40 * DAY, now - 40 * DAY)),
            next: Some(version(2, now - 8 * DAY, never)),
            ..Default::default()
        }];
        let notes = guard_key(
            &key,
            &mut outputs,
            now,
            DEFAULT_TOLERANCE,
            &Anchors::default(),
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].kind, NoteKind::ActivationCapped);
        assert_eq!(outputs[0].next.as_ref().unwrap().activates_at, now - DAY);
        // A normal staged version (activates at created + publishAhead) is left alone.
        let mut outputs = vec![ObservedOutput {
            next: Some(version(2, now, now + 7 * DAY)),
            ..Default::default()
        }];
        assert!(
            guard_key(
                &key,
                &mut outputs,
                now,
                DEFAULT_TOLERANCE,
                &Anchors::default()
            )
            .is_empty()
        );
    }
}
