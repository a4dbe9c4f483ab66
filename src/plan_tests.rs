use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::manifest::{FileOutput, Format, Output, Rotation};
use crate::spec::KeyPairSpec;

const HOUR: Duration = Duration::from_secs(3600);

/// `t(days)` plus the rotation spread of the test key (`k`, every 90 days).
fn due(days: u64) -> SystemTime {
    t(days) + crate::schedule::spread("k", Duration::from_secs(90 * 86_400))
}

fn t(days: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_secs(days * 86_400)
}

fn key(every: Option<u64>, ahead: Option<u64>, keep: u32, outputs: usize) -> KeyPair {
    KeyPair {
        name: "k".into(),
        labels: BTreeMap::new(),
        spec: KeyPairSpec::EccNistP256,
        kms_key_id: "alias/k".into(),
        encryption_context: BTreeMap::new(),
        grant_tokens: vec![],
        include_plaintext: false,
        rotation: Rotation {
            every: every.map(|d| Duration::from_secs(d * 86_400)),
            publish_ahead: ahead.map(|d| Duration::from_secs(d * 86_400)),
            keep,
        },
        outputs: (0..outputs)
            .map(|i| {
                Output::File(FileOutput {
                    root: PathBuf::from("/s"),
                    dir: PathBuf::from(format!("/s/{i}")),
                    format: Format::Pem,
                    mode: 0o640,
                    public_formats: Vec::new(),
                    private_formats: Vec::new(),
                    owner: None,
                    group: None,
                })
            })
            .collect(),
        on_rotate: vec![],
        source: PathBuf::from("m.yaml"),
    }
}

fn version(key: &KeyPair, generation: u32, activated_day: u64) -> ObservedVersion {
    ObservedVersion {
        generation,
        spec_fingerprint: key.spec_fingerprint(),
        created_at: t(activated_day),
        activates_at: t(activated_day),
        public_key_sha256: format!("pair {generation}"),
        key_pair_spec: "ECC_NIST_P256".into(),
        kms_key_arn: "arn:test".into(),
        bound: true,
    }
}

/// An output whose `current` is the last of `versions`, `previous` the one before.
fn output(key: &KeyPair, versions: &[u32], activated_day: u64) -> ObservedOutput {
    let last = versions.last().copied();
    ObservedOutput {
        current: last.map(|g| version(key, g, activated_day)),
        next: None,
        previous: versions.len().checked_sub(2).map(|i| versions[i]),
        versions: versions.to_vec(),
        drift: vec![],
        damaged: vec![],
        prunable: true,
        refused: vec![],
        linked_jwks: None,
    }
}

fn generate(generation: u32, activates_at: SystemTime, staged: bool, reason: Reason) -> Action {
    Action::Generate {
        generation,
        activates_at,
        staged,
        reason,
    }
}

#[test]
fn transitions() {
    let plain = key(None, None, 1, 1);
    let rotating = key(Some(90), None, 1, 1);
    let staged_key = key(Some(90), Some(7), 1, 1);
    let mut changed = plain.clone();
    changed.spec = KeyPairSpec::Rsa2048;
    let mut with_next = output(&staged_key, &[1, 2], 0);
    with_next.current = Some(version(&staged_key, 1, 0));
    with_next.previous = None;
    with_next.next = Some(ObservedVersion {
        activates_at: t(90),
        ..version(&staged_key, 2, 83)
    });
    let mut stale_next = with_next.clone();
    stale_next.next.as_mut().unwrap().spec_fingerprint = "sha256:old".into();
    let mut unbound = output(&staged_key, &[1], 0);
    unbound.current.as_mut().unwrap().bound = false;
    let mut unbound_above = output(&plain, &[1, 2], 0);
    unbound_above.current.as_mut().unwrap().bound = false;
    let mut unbound_next = with_next.clone();
    unbound_next.next.as_mut().unwrap().bound = false;
    let mut drifted = output(&plain, &[1], 0);
    drifted.drift = vec!["public.pem mode 0644, want 0640".into()];
    let mut wrong_previous = output(&plain, &[1, 2], 0);
    wrong_previous.previous = None;
    let rotate = RotateRequest {
        name: "k".into(),
        now: false,
    };
    let rotate_now = RotateRequest {
        name: "k".into(),
        now: true,
    };

    #[rustfmt::skip]
    type Case<'a> = (&'a str, KeyPair, Vec<ObservedOutput>, SystemTime, Option<&'a RotateRequest>, Vec<Action>);
    let cases: Vec<Case> = vec![
        (
            "missing key is created",
            plain.clone(),
            vec![ObservedOutput {
                prunable: true,
                ..Default::default()
            }],
            t(0),
            None,
            vec![generate(1, t(0), false, Reason::Create)],
        ),
        (
            "converged key does nothing",
            plain.clone(),
            vec![output(&plain, &[1], 0)],
            t(500),
            None,
            vec![],
        ),
        (
            "spec change regenerates",
            changed.clone(),
            vec![output(&plain, &[1], 0)],
            t(1),
            None,
            vec![generate(2, t(1), false, Reason::SpecChanged)],
        ),
        (
            "rotation not yet due",
            rotating.clone(),
            vec![output(&rotating, &[1], 0)],
            t(89),
            None,
            vec![],
        ),
        (
            "rotation due",
            rotating.clone(),
            vec![output(&rotating, &[1], 0)],
            due(90),
            None,
            vec![generate(2, due(90), false, Reason::RotationDue)],
        ),
        (
            "staged rotation not yet publishing",
            staged_key.clone(),
            vec![output(&staged_key, &[1], 0)],
            t(82),
            None,
            vec![],
        ),
        (
            "staged rotation publishes ahead",
            staged_key.clone(),
            vec![output(&staged_key, &[1], 0)],
            due(83),
            None,
            vec![generate(2, due(90), true, Reason::RotationDue)],
        ),
        (
            "late publication keeps the full window",
            staged_key.clone(),
            vec![output(&staged_key, &[1], 0)],
            t(95),
            None,
            vec![generate(2, t(102), true, Reason::RotationDue)],
        ),
        (
            "staged generation waits",
            staged_key.clone(),
            vec![with_next.clone()],
            t(89),
            None,
            vec![],
        ),
        (
            "staged generation activates",
            staged_key.clone(),
            vec![with_next.clone()],
            t(90),
            None,
            vec![Action::Activate { generation: 2 }],
        ),
        (
            "stale staged generation is replaced and pruned",
            staged_key.clone(),
            vec![stale_next],
            t(85),
            None,
            vec![
                Action::Prune {
                    output: 0,
                    generations: vec![2],
                },
                generate(3, t(92), true, Reason::RotationDue),
            ],
        ),
        (
            "rotate request is staged",
            staged_key.clone(),
            vec![output(&staged_key, &[1], 0)],
            t(10),
            Some(&rotate),
            vec![generate(2, t(17), true, Reason::Requested)],
        ),
        (
            "a current generation from before the binding is rotated, staged",
            staged_key.clone(),
            vec![unbound],
            t(10),
            None,
            vec![generate(2, t(17), true, Reason::Unbound { generation: 1 })],
        ),
        (
            "an unbound generation only one output claims is copied (and proven), not rotated over",
            key(None, None, 1, 2),
            vec![output(&plain, &[1], 0), unbound_above.clone()],
            t(10),
            None,
            vec![Action::Copy {
                generation: 2,
                outputs: vec![0],
                link: Link::Current,
            }],
        ),
        (
            "a staged generation from before the binding is replaced, never activated",
            staged_key.clone(),
            vec![unbound_next],
            t(85),
            None,
            vec![
                Action::Prune {
                    output: 0,
                    generations: vec![2],
                },
                generate(3, t(92), true, Reason::RotationDue),
            ],
        ),
        (
            "rotate --now activates at once",
            staged_key.clone(),
            vec![output(&staged_key, &[1], 0)],
            t(10),
            Some(&rotate_now),
            vec![generate(2, t(10), false, Reason::Requested)],
        ),
        (
            "rotate --now makes a fresh pair, never activating one staged before it",
            staged_key.clone(),
            vec![with_next.clone()],
            t(85),
            Some(&rotate_now),
            vec![
                Action::Prune {
                    output: 0,
                    generations: vec![2],
                },
                generate(3, t(85), false, Reason::Requested),
            ],
        ),
        (
            "rotate (no --now) while one is staged leaves it to activate on time",
            staged_key.clone(),
            vec![with_next.clone()],
            t(85),
            Some(&rotate),
            vec![],
        ),
        (
            "rotate without publishAhead is immediate",
            plain.clone(),
            vec![output(&plain, &[1], 0)],
            t(3),
            Some(&rotate),
            vec![generate(2, t(3), false, Reason::Requested)],
        ),
        (
            "output lacking current gets a copy",
            key(None, None, 1, 2),
            vec![
                output(&plain, &[1], 0),
                ObservedOutput {
                    prunable: true,
                    ..Default::default()
                },
            ],
            t(1),
            None,
            vec![Action::Copy {
                generation: 1,
                outputs: vec![1],
                link: Link::Current,
            }],
        ),
        (
            "output behind the others catches up",
            key(None, None, 1, 2),
            vec![output(&plain, &[1, 2], 0), output(&plain, &[1], 0)],
            t(1),
            None,
            vec![Action::Copy {
                generation: 2,
                outputs: vec![1],
                link: Link::Current,
            }],
        ),
        (
            "output lacking the staged version gets a copy",
            key(Some(90), Some(7), 1, 2),
            vec![with_next.clone(), output(&staged_key, &[1], 0)],
            t(85),
            None,
            vec![Action::Copy {
                generation: 2,
                outputs: vec![1],
                link: Link::Next,
            }],
        ),
        (
            "metadata drift is repaired in place",
            plain.clone(),
            vec![drifted],
            t(1),
            None,
            vec![Action::Repair {
                output: 0,
                reasons: vec!["public.pem mode 0644, want 0640".into()],
                previous: None,
                damaged: vec![],
            }],
        ),
        (
            "wrong previous link is repaired",
            plain.clone(),
            vec![wrong_previous],
            t(1),
            None,
            vec![Action::Repair {
                output: 0,
                reasons: vec!["previous should point at generation 1".into()],
                previous: Some(1),
                damaged: vec![],
            }],
        ),
        (
            "versions beyond keep are pruned",
            plain.clone(),
            vec![output(&plain, &[1, 2, 3], 0)],
            t(1),
            None,
            vec![Action::Prune {
                output: 0,
                generations: vec![1],
            }],
        ),
        (
            "keep 0 prunes the old generation after rotation",
            key(Some(90), None, 0, 1),
            vec![output(&rotating, &[1], 0)],
            due(90),
            None,
            vec![
                generate(2, due(90), false, Reason::RotationDue),
                Action::Prune {
                    output: 0,
                    generations: vec![1],
                },
            ],
        ),
        (
            "keep 2 keeps two",
            key(Some(90), None, 2, 1),
            vec![output(&rotating, &[1, 2, 3], 0)],
            due(90),
            None,
            vec![
                generate(4, due(90), false, Reason::RotationDue),
                Action::Prune {
                    output: 0,
                    generations: vec![1],
                },
            ],
        ),
    ];
    for (name, key, outputs, now, request, want) in cases {
        assert_eq!(plan_key(&key, &outputs, now, request), want, "{name}");
    }
}

#[test]
fn failed_observations_are_skipped() {
    let k = key(None, None, 1, 1);
    let observed: Observed = [("k".to_string(), Err("unreadable".to_string()))].into();
    assert!(plan(&[k], &observed, t(0), None).is_empty());
}

/// Applies `actions` to a model of the stores, with the executor's semantics.
fn apply(key: &KeyPair, outputs: &mut [ObservedOutput], actions: &[Action], now: SystemTime) {
    fn link_current(o: &mut ObservedOutput, v: ObservedVersion) {
        if !o.versions.contains(&v.generation) {
            o.versions.push(v.generation);
            o.versions.sort();
        }
        let g = v.generation;
        if let Some(old) = o
            .current
            .as_ref()
            .map(|c| c.generation)
            .filter(|&old| old < g)
        {
            o.previous = Some(old);
        }
        o.current = Some(v);
        if o.next.as_ref().is_some_and(|n| n.generation <= g) {
            o.next = None;
        }
    }
    fn link_next(o: &mut ObservedOutput, v: ObservedVersion) {
        if !o.versions.contains(&v.generation) {
            o.versions.push(v.generation);
            o.versions.sort();
        }
        o.next = Some(v);
    }
    let find = |outputs: &[ObservedOutput], g: u32| {
        outputs
            .iter()
            .flat_map(|o| [o.current.clone(), o.next.clone()])
            .flatten()
            .find(|v| v.generation == g)
            .expect("copied version exists")
    };
    for action in actions {
        match action {
            Action::Generate {
                generation,
                activates_at,
                staged,
                ..
            } => {
                let v = ObservedVersion {
                    generation: *generation,
                    spec_fingerprint: key.spec_fingerprint(),
                    created_at: now,
                    activates_at: *activates_at,
                    public_key_sha256: format!("pair {generation}"),
                    key_pair_spec: "ECC_NIST_P256".into(),
                    kms_key_arn: "arn:test".into(),
                    bound: true,
                };
                for o in outputs.iter_mut() {
                    if *staged {
                        link_next(o, v.clone())
                    } else {
                        link_current(o, v.clone())
                    }
                }
            }
            Action::Activate { generation } => {
                let v = find(outputs, *generation);
                for o in outputs.iter_mut() {
                    link_current(o, v.clone());
                }
            }
            Action::Copy {
                generation,
                outputs: to,
                link,
            } => {
                if *link == Link::Previous {
                    for &i in to {
                        let o = &mut outputs[i];
                        if !o.versions.contains(generation) {
                            o.versions.push(*generation);
                            o.versions.sort();
                        }
                        o.previous = Some(*generation);
                        if o.next.as_ref().is_some_and(|n| n.generation <= *generation) {
                            o.next = None;
                        }
                    }
                    continue;
                }
                let v = find(outputs, *generation);
                for &i in to {
                    match link {
                        Link::Current => link_current(&mut outputs[i], v.clone()),
                        Link::Next => link_next(&mut outputs[i], v.clone()),
                        Link::Previous => unreachable!("handled above"),
                    }
                }
            }
            Action::Repair {
                output, previous, ..
            } => {
                let o = &mut outputs[*output];
                o.drift.clear();
                o.damaged.clear();
                if o.current.is_some() {
                    o.previous = previous.filter(|p| o.versions.contains(p));
                }
            }
            Action::Prune {
                output,
                generations,
            } => {
                let o = &mut outputs[*output];
                o.versions.retain(|g| !generations.contains(g));
                if o.previous.is_some_and(|p| generations.contains(&p)) {
                    o.previous = None;
                }
                if o.next
                    .as_ref()
                    .is_some_and(|n| generations.contains(&n.generation))
                {
                    o.next = None;
                }
            }
        }
    }
}

/// Versions 1..=9, each with one fingerprint and time: the same generation is the same
/// pair on every output.
fn arb_universe(fingerprint: String) -> impl Strategy<Value = Vec<ObservedVersion>> {
    proptest::collection::vec((any::<bool>(), 0u64..400), 9).prop_map(move |specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (fresh, day))| ObservedVersion {
                generation: i as u32 + 1,
                spec_fingerprint: if fresh {
                    fingerprint.clone()
                } else {
                    "sha256:old".into()
                },
                created_at: t(day),
                activates_at: t(day),
                public_key_sha256: format!("pair {}", i + 1),
                key_pair_spec: "ECC_NIST_P256".into(),
                kms_key_arn: "arn:test".into(),
                bound: true,
            })
            .collect()
    })
}

fn arb_output(universe: Vec<ObservedVersion>) -> impl Strategy<Value = ObservedOutput> {
    (
        proptest::collection::btree_set(1u32..8, 0..5),
        proptest::option::of(1u32..8),
        proptest::option::of(1u32..10),
        proptest::option::of(1u32..8),
        any::<bool>(),
    )
        .prop_map(move |(versions, current, next, previous, drift)| {
            let pick = |g: u32| universe[g as usize - 1].clone();
            let mut versions: Vec<u32> = versions.into_iter().collect();
            versions.extend(current.iter().chain(next.iter()).copied());
            versions.sort();
            versions.dedup();
            ObservedOutput {
                current: current.map(pick),
                next: next.map(pick),
                previous,
                versions,
                drift: if drift { vec!["mode".into()] } else { vec![] },
                damaged: vec![],
                prunable: true,
                refused: vec![],
                linked_jwks: None,
            }
        })
}

proptest! {
    /// Applying a plan and planning again yields no action.
    #[test]
    fn plan_is_idempotent(
        every in proptest::option::of(2u64..200),
        ahead in proptest::option::of(1u64..100),
        keep in 0u32..3,
        now_day in 0u64..600,
        outputs in arb_universe(key(None, None, 1, 1).spec_fingerprint())
            .prop_flat_map(|universe| proptest::collection::vec(arb_output(universe), 1..3)),
        request in proptest::option::of(any::<bool>()),
    ) {
        let ahead = ahead.filter(|a| every.is_none_or(|e| *a < e));
        let k = key(every, ahead, keep, outputs.len());
        let now = t(now_day);
        // A daemon that was down for longer than a whole period rotates once per reconcile
        // until it catches up; that is the one case where a second plan has work.
        let (current, staged) = authoritative(&outputs);
        if let (Some(s), Some(every)) = (staged, k.rotation.every) {
            prop_assume!(s.activates_at + every > now + ahead.map(|a| Duration::from_secs(a * 86_400)).unwrap_or_default());
        }
        let _ = current;
        let request = request.map(|now| RotateRequest { name: "k".into(), now });
        let mut state = outputs.clone();
        let actions = plan_key(&k, &state, now, request.as_ref());
        apply(&k, &mut state, &actions, now);
        let again = plan_key(&k, &state, now, None);
        prop_assert!(again.is_empty(), "first: {actions:?}\nstate: {state:?}\nsecond: {again:?}");
    }
}

#[test]
fn activation_waits_for_its_time_even_after_restarts() {
    let k = key(Some(90), Some(7), 1, 1);
    let mut state = vec![output(&k, &[1], 0)];
    let actions = plan_key(&k, &state, t(83) + HOUR, None);
    apply(&k, &mut state, &actions, t(83) + HOUR);
    assert_eq!(state[0].next.as_ref().map(|n| n.generation), Some(2));
    assert!(plan_key(&k, &state, t(90), None).is_empty());
    let actions = plan_key(&k, &state, t(90) + HOUR, None);
    assert_eq!(actions, vec![Action::Activate { generation: 2 }]);
}

#[test]
fn next_events() {
    let plain = key(None, None, 1, 1);
    let rotating = key(Some(90), None, 1, 1);
    let staged_key = key(Some(90), Some(7), 1, 1);
    assert_eq!(next_event(&plain, &[output(&plain, &[1], 0)], t(5)), None);
    assert_eq!(next_event(&plain, &[ObservedOutput::default()], t(5)), None);
    assert_eq!(
        next_event(&rotating, &[output(&rotating, &[1], 0)], t(5)),
        Some(due(90))
    );
    assert_eq!(
        next_event(&staged_key, &[output(&staged_key, &[1], 0)], t(5)),
        Some(due(83)),
        "publication starts publishAhead before the due time"
    );
    assert_eq!(
        next_event(&rotating, &[output(&rotating, &[1], 0)], due(90)),
        None,
        "already due: the plan acts now, there is nothing to wait for"
    );
    let mut with_next = output(&staged_key, &[1, 2], 0);
    with_next.current = Some(version(&staged_key, 1, 0));
    with_next.next = Some(ObservedVersion {
        activates_at: t(90),
        ..version(&staged_key, 2, 83)
    });
    assert_eq!(
        next_event(&staged_key, &[with_next], t(84)),
        Some(t(90)),
        "a staged generation waits for its activation"
    );
    // Whatever next_event says, nothing is planned before it and something is planned at it.
    let out = [output(&staged_key, &[1], 0)];
    let at = next_event(&staged_key, &out, t(5)).unwrap();
    assert!(plan_key(&staged_key, &out, at - HOUR, None).is_empty());
    assert!(!plan_key(&staged_key, &out, at, None).is_empty());
}

#[test]
fn the_next_rotation_counts_from_a_staged_generation() {
    // `keyprov rotate` on day 10 staged generation 2 to activate on day 17: the next
    // rotation is 90 days after that, published 7 days before, not 90 days after day 0.
    let staged_key = key(Some(90), Some(7), 1, 1);
    let mut with_next = output(&staged_key, &[1, 2], 0);
    with_next.current = Some(version(&staged_key, 1, 0));
    with_next.previous = None;
    with_next.next = Some(ObservedVersion {
        activates_at: t(17),
        ..version(&staged_key, 2, 10)
    });
    let outputs = [with_next];
    let first = upcoming(&staged_key, &outputs);
    assert_eq!(first.staged, Some((2, t(17))));
    let rotation = first.rotation.unwrap();
    assert_eq!(rotation.activate_at, due(107));
    assert_eq!(rotation.publish_at, due(100));
    assert_eq!(next_event(&staged_key, &outputs, t(11)), Some(t(17)));
    // Once it activated, the plan acts at exactly that publication time.
    let mut state = outputs.to_vec();
    let actions = plan_key(&staged_key, &state, t(17), None);
    assert_eq!(actions, vec![Action::Activate { generation: 2 }]);
    apply(&staged_key, &mut state, &actions, t(17));
    assert_eq!(upcoming(&staged_key, &state).rotation, Some(rotation));
    assert_eq!(next_event(&staged_key, &state, t(17)), Some(due(100)));
    assert!(plan_key(&staged_key, &state, due(100) - HOUR, None).is_empty());
    assert!(matches!(
        plan_key(&staged_key, &state, due(100), None)[..],
        [Action::Generate { activates_at, staged: true, .. }, ..] if activates_at == due(107)
    ));
    // A staged generation the plan replaces (its spec is stale) does not count.
    let mut stale = outputs.to_vec();
    stale[0].next.as_mut().unwrap().spec_fingerprint = "sha256:old".into();
    let replaced = upcoming(&staged_key, &stale);
    assert_eq!(replaced.staged, None);
    assert_eq!(replaced.rotation.unwrap().activate_at, due(90));
}

#[test]
fn a_version_never_linked_is_removed_first_and_never_becomes_previous() {
    // v0002 was renamed in but never linked (a crash), and rotation is due again.
    let k = key(Some(90), None, 1, 1);
    let mut crashed = output(&k, &[1], 0);
    crashed.versions = vec![1, 2];
    let actions = plan_key(&k, std::slice::from_ref(&crashed), t(100), None);
    assert_eq!(
        actions[0],
        Action::Prune {
            output: 0,
            generations: vec![2]
        },
        "{actions:?}"
    );
    assert!(matches!(actions[1], Action::Generate { generation: 3, .. }));
    let mut state = vec![crashed];
    apply(&k, &mut state, &actions, t(100));
    assert_eq!(state[0].current.as_ref().map(|c| c.generation), Some(3));
    assert_eq!(
        state[0].previous,
        Some(1),
        "the key that was in use stays previous"
    );
    assert_eq!(state[0].versions, vec![1, 3]);
}

#[test]
fn a_published_next_replaced_by_a_newer_generation_never_becomes_previous() {
    // A run published v0002 as `next` (not yet current) and was cut off; then the spec changed.
    let old = key(Some(90), None, 1, 1);
    let mut new = old.clone();
    new.spec = KeyPairSpec::EccNistP384;
    let mut published = output(&old, &[1], 0);
    published.next = Some(version(&old, 2, 10));
    published.versions = vec![1, 2];
    let actions = plan_key(&new, std::slice::from_ref(&published), t(10), None);
    assert!(
        matches!(
            actions[1],
            Action::Generate {
                generation: 3,
                staged: false,
                ..
            }
        ),
        "{actions:?}"
    );
    assert!(
        actions.contains(&Action::Prune {
            output: 0,
            generations: vec![2]
        }),
        "{actions:?}"
    );
    let mut state = vec![published];
    apply(&new, &mut state, &actions, t(10));
    assert_eq!(state[0].current.as_ref().map(|c| c.generation), Some(3));
    assert_eq!(state[0].previous, Some(1), "the key that was in use");
    assert_eq!(state[0].versions, vec![1, 3]);
}

#[test]
fn a_link_move_cut_short_keeps_the_old_current_as_previous() {
    // current moved to v9, the crash came before previous moved from v7 to v8.
    let k = key(Some(90), None, 1, 1);
    let mut cut = output(&k, &[7, 8, 9], 0);
    cut.previous = Some(7);
    let actions = plan_key(&k, std::slice::from_ref(&cut), t(1), None);
    assert_eq!(
        actions,
        vec![
            Action::Repair {
                output: 0,
                reasons: vec!["previous should point at generation 8".into()],
                previous: Some(8),
                damaged: vec![],
            },
            Action::Prune {
                output: 0,
                generations: vec![7]
            },
        ]
    );
}

#[test]
fn versions_without_a_current_link_are_never_planned() {
    // keyprov creates a key directory only with its `current`: versions without one mean the
    // link was lost, and the version in use is unknown.
    let k = key(None, None, 1, 1);
    let mut lost = output(&k, &[], 0);
    lost.versions = vec![1, 2];
    let message = crate::plan::unplannable(&k, &[lost]).unwrap();
    assert!(message.contains("no usable `current` link"), "{message}");
    assert!(crate::plan::unplannable(&k, &[output(&k, &[1, 2], 0)]).is_none());
}

#[test]
fn outputs_holding_different_pairs_of_a_generation_are_never_planned() {
    let k = key(None, None, 1, 2);
    let mut other = output(&k, &[1], 0);
    other.current.as_mut().unwrap().public_key_sha256 = "another pair".into();
    let message = crate::plan::unplannable(&k, &[output(&k, &[1], 0), other]).unwrap();
    assert!(message.contains("different key pairs"), "{message}");
}

#[test]
fn an_output_that_joined_after_a_rotation_gets_previous_too() {
    let k = key(None, None, 1, 2);
    let rotated = output(&k, &[2, 3], 0);
    let actions = plan_key(
        &k,
        &[rotated.clone(), ObservedOutput::default()],
        t(0),
        None,
    );
    assert_eq!(
        actions,
        vec![
            Action::Copy {
                generation: 3,
                outputs: vec![1],
                link: Link::Current,
            },
            Action::Copy {
                generation: 2,
                outputs: vec![1],
                link: Link::Previous,
            },
        ]
    );
    // Its previous deleted by hand: copied back.
    let lost = output(&k, &[3], 0);
    let actions = plan_key(&k, &[rotated.clone(), lost.clone()], t(0), None);
    assert_eq!(
        actions,
        vec![Action::Copy {
            generation: 2,
            outputs: vec![1],
            link: Link::Previous,
        }]
    );
    // With `keep: 0` no output keeps a previous.
    let k = key(None, None, 0, 2);
    let actions = plan_key(&k, &[output(&k, &[3], 0), lost], t(0), None);
    assert_eq!(actions, vec![]);
}

#[test]
fn a_superseded_staged_generation_goes_before_the_fresh_one_is_made() {
    // `rotate --now` (or a spec change) while v0002 is staged. Were v0002 pruned after v0003
    // was activated, a crash between its `next` link's removal and its own (a secret: between
    // AWSPENDING's and keyprov-v2's) would leave it between `previous` and `current`, and the
    // next run would make it `previous`.
    let k = key(Some(90), Some(7), 1, 2);
    let mut staged = output(&k, &[1, 2], 0);
    staged.previous = None;
    staged.current = Some(version(&k, 1, 0));
    staged.next = Some(ObservedVersion {
        activates_at: t(90),
        ..version(&k, 2, 83)
    });
    let outputs = vec![staged.clone(), staged];
    let now = RotateRequest {
        name: "k".into(),
        now: true,
    };
    let mut changed = k.clone();
    changed.spec = KeyPairSpec::EccNistP384;
    for (key, request) in [(&k, Some(&now)), (&changed, None)] {
        let actions = plan_key(key, &outputs, t(85), request);
        let made = actions
            .iter()
            .position(|a| matches!(a, Action::Generate { generation: 3, .. }))
            .expect("a fresh generation");
        for i in 0..2 {
            let pruned = actions.iter().position(|a| {
                matches!(a, Action::Prune { output, generations } if *output == i && generations.contains(&2))
            });
            assert!(pruned.is_some_and(|p| p < made), "output {i}: {actions:?}");
        }
        let mut state = outputs.clone();
        apply(key, &mut state, &actions, t(85));
        for o in &state {
            assert!(!o.versions.contains(&2), "{o:?}");
            assert_ne!(o.previous, Some(2));
        }
    }
    // Cut off after the early prune: v0002 is above `current`, never linked: garbage, never
    // `previous`.
    let mut cut = output(&k, &[1, 2], 0);
    cut.previous = None;
    cut.current = Some(version(&k, 1, 0));
    let actions = plan_key(&k, std::slice::from_ref(&cut), t(85), Some(&now));
    let mut state = vec![cut];
    apply(&k, &mut state, &actions, t(85));
    assert_eq!(state[0].current.as_ref().map(|c| c.generation), Some(3));
    assert_eq!(state[0].previous, Some(1));
}
