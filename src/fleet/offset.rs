//! Per-host offsets of scheduled generations: every daemon of a fleet sees a key fall due at
//! the same moment (the due time and its spread are the same everywhere), so each waits a
//! stable offset of its own, derived from its host id and the key's name, within the key's
//! generate window. The host with the smallest offset generates; the others find the new
//! generation in the secret when their turn comes and copy it.

use std::time::{Duration, SystemTime};

use super::FleetSettings;
use crate::key_events::KeyEvents;
use crate::manifest::KeyPair;
use crate::observed::{Observed, ObservedOutput};
use crate::plan::{self, Action, KeyPlan, Reason};

/// Longest default generate window.
pub const MAX_DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// The default generate window of a key rotating `every`: 5 % of it, at most 10 minutes.
pub fn default_window(every: Duration) -> Duration {
    (every / 20).min(MAX_DEFAULT_WINDOW)
}

/// The stable offset of `host`'s generations of key `name` within `window`: the same on every
/// pass and restart, uniformly spread over the window across hosts.
pub fn offset(host: &str, name: &str, window: Duration) -> Duration {
    let window_micros = window.as_micros() as u64;
    if window_micros == 0 {
        return Duration::ZERO;
    }
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"keyprov generate offset\0");
    context.update(host.as_bytes());
    context.update(b"\0");
    context.update(name.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    Duration::from_micros(u64::from_be_bytes(first) % window_micros)
}

/// When this host makes the scheduled generation of `key` whose current generation is
/// `outputs`' authoritative one: its publication time plus the host's offset. `None` when the
/// key does not rotate or has no current generation.
pub fn release_time(
    settings: &FleetSettings,
    host: &str,
    key: &KeyPair,
    outputs: &[ObservedOutput],
) -> Option<(SystemTime, SystemTime)> {
    let every = key.rotation.every?;
    let current = plan::authoritative(outputs).0?;
    let due = plan::rotation_due(key, current.activates_at)?;
    let window = settings.generate_window.unwrap_or(default_window(every));
    let at = crate::schedule::add(due.publish_at, offset(host, &key.name, window));
    Some((due.publish_at, at))
}

/// When this host's daemon looks at the scheduled rotation of `key` (`outputs` its
/// observation): `(due, turn)`, the publication time and this host's turn, a writer's at its
/// offset ([`release_time`]), a consumer's once the whole window has passed (when the writers
/// are done). `None` when the key does not rotate or has no current generation.
pub fn turn(
    settings: &FleetSettings,
    host: &str,
    consumer: bool,
    key: &KeyPair,
    outputs: &[ObservedOutput],
) -> Option<(SystemTime, SystemTime)> {
    let (due, release) = release_time(settings, host, key, outputs)?;
    if !consumer {
        return Some((due, release));
    }
    let every = key.rotation.every.unwrap_or_default();
    let window = settings.generate_window.unwrap_or(default_window(every));
    Some((due, crate::schedule::add(due, window)))
}

/// The plan of `key` as it was just before its rotation fell due: repairs, copies and prunes,
/// no new generation.
pub fn plan_before_due(
    key: &KeyPair,
    outputs: &[ObservedOutput],
    publish_at: SystemTime,
) -> Vec<Action> {
    let before = publish_at
        .checked_sub(Duration::from_micros(1))
        .unwrap_or(publish_at);
    plan::plan_key(key, outputs, before, None)
}

/// Whether `plan` makes a scheduled generation.
pub fn rotates(plan: &KeyPlan) -> bool {
    plan.actions.iter().any(|a| {
        matches!(
            a,
            Action::Generate {
                reason: Reason::RotationDue,
                ..
            }
        )
    })
}

/// Holds back every scheduled generation whose time has not come for this host (its other
/// actions stay); returns when each of them is released.
pub fn hold_back(
    settings: &FleetSettings,
    keys: &[KeyPair],
    observed: &Observed,
    plans: &mut Vec<KeyPlan>,
    now: SystemTime,
) -> KeyEvents {
    let host = settings.host_id();
    let mut released = KeyEvents::default();
    for plan in plans.iter_mut().filter(|p| rotates(p)) {
        let Some(key) = keys.iter().find(|k| k.name == plan.name) else {
            continue;
        };
        let Some(Ok(outputs)) = observed.get(&key.name) else {
            continue;
        };
        let Some((due, release)) = release_time(settings, &host, key, outputs) else {
            continue;
        };
        if now >= release {
            continue;
        }
        tracing::debug!(key = %key.name, due = %crate::schedule::format_time(due),
            at = %crate::schedule::format_time(release),
            "rotation due: this host generates at its offset unless another host did first");
        plan.actions = plan_before_due(key, outputs, due);
        released.add(&key.name, release);
    }
    plans.retain(|p| !p.actions.is_empty());
    released
}

/// When each key with no plan wants a pass, as [`plan::next_event`] says, except that
/// a rotation is looked at when this host's turn comes: a writer at its offset, a consumer
/// (`consumer`) once the whole window has passed, when the writers are done. So the daemons of
/// a fleet do not all wake at the instant a key falls due. Keys in `skip` (another host
/// claimed their generation) have their own time.
pub fn next_events(
    settings: &FleetSettings,
    consumer: bool,
    keys: &[KeyPair],
    observed: &Observed,
    plans: &[KeyPlan],
    skip: &std::collections::BTreeSet<String>,
    now: SystemTime,
) -> KeyEvents {
    let host = settings.host_id();
    let mut events = KeyEvents::default();
    let turns = keys
        .iter()
        .filter(|key| !plans.iter().any(|p| p.name == key.name) && !skip.contains(&key.name))
        .filter_map(|key| {
            let Some(Ok(outputs)) = observed.get(&key.name) else {
                return None;
            };
            let at = plan::next_event(key, outputs, now)?;
            let turn = turn(settings, &host, consumer, key, outputs)
                .filter(|(due, _)| *due == at)
                .map(|(_, turn)| turn);
            Some((key, turn.unwrap_or(at)))
        });
    for (key, at) in turns {
        events.add(&key.name, at);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn offsets_are_stable_spread_and_inside_the_window() {
        let window = 10 * MINUTE;
        assert_eq!(offset("h1", "k", window), offset("h1", "k", window));
        let offsets: Vec<Duration> = (0..1000)
            .map(|i| offset(&format!("host-{i}"), "k", window))
            .collect();
        assert!(offsets.iter().all(|o| *o < window));
        // Uniform: each tenth of the window holds about a tenth of the hosts.
        for tenth in 0..10 {
            let n = offsets
                .iter()
                .filter(|o| (o.as_secs() / 60) as u32 == tenth)
                .count();
            assert!((60..=140).contains(&n), "tenth {tenth}: {n}");
        }
        assert_ne!(offset("h1", "a", window), offset("h1", "b", window));
        assert_eq!(offset("h1", "k", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_default_window_is_five_percent_capped_at_ten_minutes() {
        assert_eq!(
            default_window(Duration::from_secs(100)),
            Duration::from_secs(5)
        );
        assert_eq!(default_window(90 * 24 * 60 * MINUTE), 10 * MINUTE);
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;
    use crate::observed::ObservedVersion;
    use std::path::Path;

    fn key(rotation: &str) -> KeyPair {
        let text = format!(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {{name: k}}\nspec: \
             {{keyPairSpec: ECC_NIST_P256, kmsKeyId: alias/k, rotation: {rotation}, \
             outputs: [{{file: {{}}}}]}}\n"
        );
        let ctx = crate::manifest::Context {
            state_dir: Path::new("/tmp/s"),
            output_roots: &[],
            hooks_allowed: &[],
            check_hooks_allowed: true,
        };
        let loaded = crate::manifest::load_bytes(Path::new("m.yaml"), text.as_bytes(), &ctx);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        loaded.keys[0].clone()
    }

    fn converged(key: &KeyPair, activated: SystemTime) -> Vec<ObservedOutput> {
        let version = ObservedVersion {
            generation: 1,
            spec_fingerprint: key.spec_fingerprint(),
            created_at: activated,
            activates_at: activated,
            public_key_sha256: "ab".into(),
            key_pair_spec: "ECC_NIST_P256".into(),
            kms_key_arn: "arn".into(),
            bound: true,
        };
        vec![ObservedOutput {
            current: Some(version),
            next: None,
            previous: None,
            versions: vec![1],
            drift: Vec::new(),
            damaged: Vec::new(),
            refused: Vec::new(),
            prunable: true,
            linked_jwks: None,
        }]
    }

    #[test]
    fn a_due_rotation_waits_for_the_host_offset_then_goes() {
        let key = key("{every: 1000s}");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let outputs = converged(&key, t0);
        let observed: Observed = [("k".to_string(), Ok(outputs.clone()))].into();
        let settings = FleetSettings {
            host_id: Some("h".into()),
            ..Default::default()
        };
        let (due, release) = release_time(&settings, "h", &key, &outputs).unwrap();
        assert_eq!(release, due + offset("h", "k", Duration::from_secs(50)));
        let plan_at = |now| {
            let mut plans = plan::plan(std::slice::from_ref(&key), &observed, now, None);
            let next = hold_back(
                &settings,
                std::slice::from_ref(&key),
                &observed,
                &mut plans,
                now,
            );
            (plans, next)
        };
        // Due, but before this host's turn: nothing now, a wake at its turn.
        let (plans, next) = plan_at(due);
        assert!(plans.is_empty(), "{plans:?}");
        assert_eq!(next.get("k"), Some(release));
        // Its turn: the generation goes ahead.
        let (plans, next) = plan_at(release);
        assert!(rotates(&plans[0]), "{plans:?}");
        assert_eq!(next.earliest(), None);
    }

    #[test]
    fn a_listed_key_is_settled_near_its_due_time_until_seconds_before_this_hosts_turn() {
        use crate::store::secrets_manager::settled;
        const MINUTE: Duration = Duration::from_secs(60);
        let key = key("{every: 1000s}");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let outputs = converged(&key, t0);
        let window = 10 * MINUTE;
        let settings = FleetSettings {
            generate_window: Some(window),
            ..Default::default()
        };
        // A host whose turn comes at least 3 minutes after the due time.
        let host = (0..)
            .map(|i| format!("h{i}"))
            .find(|h| offset(h, "k", window) > 3 * MINUTE)
            .unwrap();
        let (due, at) = turn(&settings, &host, false, &key, &outputs).unwrap();
        assert_eq!(at, due + offset(&host, "k", window));
        let turn_of = Some((due, at));
        let secs = Duration::from_secs;
        // Far from the due time: settled either way.
        assert!(settled(&key, &outputs, due - 2 * MINUTE, None));
        // Within a minute of it: observed directly unless this host's turn is later.
        assert!(!settled(&key, &outputs, due - secs(30), None));
        assert!(settled(&key, &outputs, due - secs(30), turn_of));
        // Due (only the scheduled generation to do, held until the turn): still settled.
        assert!(!settled(&key, &outputs, due + secs(10), None));
        assert!(settled(&key, &outputs, due + secs(10), turn_of));
        // Up to seconds before the turn: settled (the wake at the turn looks directly).
        assert!(settled(&key, &outputs, at - secs(30), turn_of));
        // Within seconds of the turn, at it and past it: observed directly.
        assert!(!settled(&key, &outputs, at - secs(3), turn_of));
        assert!(!settled(&key, &outputs, at, turn_of));
        assert!(!settled(&key, &outputs, at + secs(30), turn_of));
        // A consumer's turn is the end of the window.
        assert_eq!(
            turn(&settings, &host, true, &key, &outputs),
            Some((due, due + window))
        );
    }
}
