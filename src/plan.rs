//! The planner: desired key pairs + observed stores + now -> actions. Pure: no I/O, no clock.

use std::collections::BTreeSet;
use std::fmt;
use std::time::SystemTime;

use crate::manifest::KeyPair;
use crate::observed::{Observed, ObservedOutput, ObservedVersion};
use crate::schedule::{self, format_time};
use previous::{history, previous_copy};

#[path = "plan_previous.rs"]
mod previous;

/// Why a new generation is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The key has no generation yet.
    Create,
    /// keyPairSpec, kmsKeyId or encryptionContext changed.
    SpecChanged,
    /// `rotation.every` has elapsed.
    RotationDue,
    /// `keyprov rotate`.
    Requested,
    /// The current generation was written before keyprov bound its pairs to their key and
    /// generation (see [`crate::binding`]): rotated once.
    Unbound {
        /// The unbound current generation.
        generation: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Create => "new key",
            Reason::SpecChanged => "spec changed",
            Reason::RotationDue => "rotation due",
            Reason::Requested => "rotation requested",
            Reason::Unbound { generation } => {
                return write!(f, "generation {generation} predates keyprov's key binding");
            }
        })
    }
}

/// Which link a copied version gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `current` / AWSCURRENT.
    Current,
    /// `next` / AWSPENDING.
    Next,
    /// `previous` / AWSPREVIOUS: the generation in use before `current`, still trusted by
    /// verifiers (tokens signed a moment before a rotation).
    Previous,
}

/// One step of reconciling a key. Outputs are indexes into the manifest's `outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Generate a pair, write it as `generation` to every output, and make it current (when
    /// `activates_at <= now`) or publish it as next.
    Generate {
        /// New generation number.
        generation: u32,
        /// When it becomes current.
        activates_at: SystemTime,
        /// Staged (published as next) rather than current at once.
        staged: bool,
        /// Why.
        reason: Reason,
    },
    /// Make the staged `generation` current on every output (copying it where missing).
    Activate {
        /// The staged generation.
        generation: u32,
    },
    /// Copy the stored `generation` from an output holding it to `outputs`, and link it.
    Copy {
        /// Generation to copy.
        generation: u32,
        /// Outputs that lack it.
        outputs: Vec<usize>,
        /// Link it gets there.
        link: Link,
    },
    /// Repair an output in place: modes, owners, format files, leftovers, damaged files of
    /// linked versions (rewritten from an intact copy in another output), the previous link.
    Repair {
        /// Output index.
        output: usize,
        /// What is wrong.
        reasons: Vec<String>,
        /// What `previous` must point at afterwards.
        previous: Option<u32>,
        /// Linked generations whose files are damaged here.
        damaged: Vec<u32>,
    },
    /// Remove old versions beyond `rotation.keep`.
    Prune {
        /// Output index.
        output: usize,
        /// Generations to remove.
        generations: Vec<u32>,
    },
}

/// The actions of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// Key pair name.
    pub name: String,
    /// Steps, in the order they run.
    pub actions: Vec<Action>,
}

/// A rotation asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateRequest {
    /// Key pair name.
    pub name: String,
    /// `--now`: a fresh generation, activated at once, skipping publishAhead (a staged one
    /// waiting is superseded, never activated).
    pub now: bool,
}

/// Plans every desired key. Keys whose observation failed are skipped (the caller reports
/// them); keys already converged get no plan.
pub fn plan(
    desired: &[KeyPair],
    observed: &Observed,
    now: SystemTime,
    rotate: Option<&RotateRequest>,
) -> Vec<KeyPlan> {
    desired
        .iter()
        .filter_map(|key| {
            let outputs = observed.get(&key.name)?.as_ref().ok()?;
            let request = rotate.filter(|r| r.name == key.name);
            let actions = plan_key(key, outputs, now, request);
            (!actions.is_empty()).then(|| KeyPlan {
                name: key.name.clone(),
                actions,
            })
        })
        .collect()
}

/// The authoritative current and staged versions across outputs (the highest wins, so every
/// output converges on the same version).
pub fn authoritative(
    outputs: &[ObservedOutput],
) -> (Option<&ObservedVersion>, Option<&ObservedVersion>) {
    // Of one generation, the earliest activation any output saw (a file output knows when an
    // early `rotate --now` activated it).
    let current = outputs
        .iter()
        .filter_map(|o| o.current.as_ref())
        .max_by_key(|v| (v.generation, std::cmp::Reverse(v.activates_at)));
    let next = outputs
        .iter()
        .filter_map(|o| o.next.as_ref())
        .filter(|n| current.is_none_or(|c| n.generation > c.generation))
        .max_by_key(|v| v.generation);
    (current, next)
}

/// The rotation schedule of a key whose current generation activated at
/// `current_activates_at`, its [`schedule::spread`] included.
pub fn rotation_due(key: &KeyPair, current_activates_at: SystemTime) -> Option<schedule::Due> {
    let every = key.rotation.every?;
    schedule::due(
        current_activates_at,
        Some(every),
        key.rotation.publish_ahead,
        schedule::spread(&key.name, every),
    )
}

/// What a key's schedule holds from now on, as `run` will carry it out. The one place the
/// next publication and activation are computed: `status`, `plan`, the metrics and the
/// daemon's timer all read them here, so they agree with each other and with the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upcoming {
    /// The staged generation that will become current, and when (`next`/AWSPENDING). A staged
    /// generation the plan replaces instead (stale spec, unbound) is not counted.
    pub staged: Option<(u32, SystemTime)>,
    /// The next scheduled rotation: counted from the staged generation's activation when one
    /// waits (it is current by then), else from the current generation's. `None` when the key
    /// never rotates or has no generation yet.
    pub rotation: Option<schedule::Due>,
}

/// The [`Upcoming`] events of `key` whose outputs hold `outputs`.
pub fn upcoming(key: &KeyPair, outputs: &[ObservedOutput]) -> Upcoming {
    let fingerprint = key.spec_fingerprint();
    let (current, staged) = authoritative(outputs);
    let staged = staged
        .filter(|s| s.spec_fingerprint == fingerprint && s.bound)
        .map(|s| (s.generation, s.activates_at));
    let counted_from = staged.map(|(_, at)| at).or(current.map(|c| c.activates_at));
    Upcoming {
        staged,
        rotation: counted_from.and_then(|at| rotation_due(key, at)),
    }
}

/// The next time after `now` at which [`plan_key`] would act on this key without anything
/// else changing: a staged generation's activation, or the start of the next rotation
/// (publication when publishAhead is set). `None` when the key never rotates and nothing waits.
pub fn next_event(
    key: &KeyPair,
    outputs: &[ObservedOutput],
    now: SystemTime,
) -> Option<SystemTime> {
    let upcoming = upcoming(key, outputs);
    let at = match upcoming.staged {
        Some((_, activates_at)) => activates_at,
        None => upcoming.rotation?.publish_at,
    };
    (at > now).then_some(at)
}

/// Plans one key.
pub fn plan_key(
    key: &KeyPair,
    outputs: &[ObservedOutput],
    now: SystemTime,
    request: Option<&RotateRequest>,
) -> Vec<Action> {
    let fingerprint = key.spec_fingerprint();
    let ahead = key.rotation.publish_ahead;
    let (current, staged) = authoritative(outputs);
    let highest = outputs
        .iter()
        .flat_map(|o| o.versions.iter().copied())
        .chain(current.map(|c| c.generation))
        .chain(staged.map(|s| s.generation))
        .max()
        .unwrap_or(0);
    // A refused version's number is taken (its version id cannot be written again), so the next
    // generation skips it; but a forger's number far above does not push the count towards its
    // ceiling: only the numbers right above the highest real generation are skipped.
    let taken: BTreeSet<u32> = outputs
        .iter()
        .flat_map(|o| o.refused.iter().filter_map(|r| r.generation))
        .collect();
    let next_free = (1..=taken.len() as u32 + 1)
        .map(|step| highest.saturating_add(step))
        .find(|g| !taken.contains(g))
        .unwrap_or(u32::MAX);
    // A staged generation that predates the binding is never activated: a bound one replaces it.
    let staged_valid = staged.filter(|s| s.spec_fingerprint == fingerprint && s.bound);
    let mut actions = Vec::new();
    // Versions a crash left between being renamed in and being linked go first, before any
    // new generation is linked above them (see [`garbage`]).
    for (i, output) in outputs.iter().enumerate() {
        let garbage = garbage(output);
        if output.prunable && !garbage.is_empty() {
            actions.push(Action::Prune {
                output: i,
                generations: garbage.into_iter().collect(),
            });
        }
    }
    let before_generation = actions.len();
    let mut generate = |reason: Reason, activates_at: SystemTime| {
        // Saturating: a store claiming generation u32::MAX must not crash the whole pass (the
        // write of that generation then fails for this key only).
        let generation = next_free;
        let staged = activates_at > now;
        actions.push(Action::Generate {
            generation,
            activates_at,
            staged,
            reason,
        });
        if staged {
            (current.map(|c| c.generation), Some(generation))
        } else {
            (Some(generation), None)
        }
    };
    let force_now = request.is_some_and(|r| r.now);
    let (final_current, final_next) = match (current, staged_valid) {
        (None, None) => generate(Reason::Create, now),
        (None, Some(s)) => {
            // Every current link was lost: the staged generation is the best there is.
            actions.push(Action::Activate {
                generation: s.generation,
            });
            (Some(s.generation), None)
        }
        // `rotate --now` is the emergency path (a suspected compromise): it never activates a
        // pair made before it, but a fresh one; the staged generation is superseded (never
        // `previous`: it was never in use) and goes.
        (Some(_), Some(_)) if force_now => generate(Reason::Requested, now),
        (Some(_), Some(s)) if now >= s.activates_at => {
            actions.push(Action::Activate {
                generation: s.generation,
            });
            (Some(s.generation), None)
        }
        (Some(c), Some(s)) => (Some(c.generation), Some(s.generation)),
        (Some(c), None) => {
            let due = rotation_due(key, c.activates_at);
            let when = |due_at| {
                if force_now {
                    now
                } else {
                    schedule::activation_time(now, due_at, ahead)
                }
            };
            if c.spec_fingerprint != fingerprint {
                generate(Reason::SpecChanged, when(None))
            } else if !c.bound
                // Only where every output agrees: an unbound version that only a secret claims
                // as newer is not keyprov's doing to rotate over, but a copy its proof refuses.
                && outputs
                    .iter()
                    .filter_map(|o| o.current.as_ref())
                    .all(|o| o.generation == c.generation)
            {
                let reason = Reason::Unbound {
                    generation: c.generation,
                };
                generate(reason, when(None))
            } else if request.is_some() {
                generate(Reason::Requested, when(None))
            } else if let Some(due) = due.filter(|d| now >= d.publish_at) {
                generate(Reason::RotationDue, when(Some(due.activate_at)))
            } else {
                (Some(c.generation), None)
            }
        }
    };
    // A staged `next` a fresh generation replaces (`rotate --now`, a spec change) was never in
    // use: it goes before the fresh one is made. Pruned after the activation instead, a crash
    // between its labels' removals (`next` first) would leave it unlinked between `previous`
    // and `current`, where it would be taken for a cut-short link move and made `previous`.
    let mut superseded = BTreeSet::new();
    if let Some(fresh_current) = final_current {
        let mut early = Vec::new();
        for (i, output) in outputs.iter().enumerate() {
            let Some(next) = output.next.as_ref().map(|n| n.generation) else {
                continue;
            };
            let replaced = next < fresh_current.max(final_next.unwrap_or(0))
                && final_next != Some(next)
                && fresh_current != next;
            if replaced && output.prunable {
                superseded.insert((i, next));
                early.push(Action::Prune {
                    output: i,
                    generations: vec![next],
                });
            }
        }
        actions.splice(before_generation..before_generation, early);
    }
    let fresh: BTreeSet<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Generate { generation, .. } | Action::Activate { generation } => {
                Some(*generation)
            }
            _ => None,
        })
        .collect();
    for (generation, link, on_output) in [
        (
            final_current,
            Link::Current,
            (|o: &ObservedOutput| o.current.as_ref().map(|v| v.generation))
                as fn(&ObservedOutput) -> Option<u32>,
        ),
        (final_next, Link::Next, |o: &ObservedOutput| {
            o.next.as_ref().map(|v| v.generation)
        }),
    ] {
        let Some(generation) = generation.filter(|g| !fresh.contains(g)) else {
            continue;
        };
        let lacking: Vec<usize> = outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| on_output(o) != Some(generation))
            .map(|(i, _)| i)
            .collect();
        if !lacking.is_empty() {
            actions.push(Action::Copy {
                generation,
                outputs: lacking,
                link,
            });
        }
    }
    let Some(final_current) = final_current else {
        return actions;
    };
    let (shared_previous, copied) = previous_copy(key, outputs, final_current, final_next);
    if let Some(generation) = shared_previous.filter(|_| !copied.is_empty()) {
        actions.push(Action::Copy {
            generation,
            outputs: copied.clone(),
            link: Link::Previous,
        });
    }
    for (i, output) in outputs.iter().enumerate() {
        let (mut present, mut history) = history(output, final_current, final_next);
        if copied.contains(&i) {
            present.extend(shared_previous);
            history.extend(shared_previous);
        }
        let kept = kept_versions(&history, final_current, final_next, key.rotation.keep);
        let expected_previous = kept.range(..final_current).next_back().copied();
        let mut reasons = output.drift.clone();
        let doomed: Vec<u32> = present
            .difference(&kept)
            .copied()
            .filter(|&g| !superseded.contains(&(i, g)))
            .collect();
        // What `previous` will be once the links have moved (it takes the old current) and
        // the doomed versions are gone.
        let old_current = output.current.as_ref().map(|c| c.generation);
        let moved_previous = match old_current {
            _ if copied.contains(&i) => shared_previous,
            Some(old) if old < final_current => Some(old),
            _ => output.previous,
        };
        let moved_previous = moved_previous.filter(|p| !doomed.contains(p));
        if moved_previous != expected_previous {
            reasons.push(match expected_previous {
                Some(p) => format!("previous should point at generation {p}"),
                None => "previous should be removed".into(),
            });
        }
        // Damage matters where the version stays linked and is not about to be written anew.
        let damaged: Vec<u32> = output
            .damaged
            .iter()
            .filter(|d| {
                !fresh.contains(&d.generation)
                    && (d.generation == final_current || Some(d.generation) == final_next)
            })
            .map(|d| {
                reasons.extend(d.problems.iter().cloned());
                d.generation
            })
            .collect();
        if !reasons.is_empty() {
            actions.push(Action::Repair {
                output: i,
                reasons,
                previous: expected_previous,
                damaged,
            });
        }
        if output.prunable && !doomed.is_empty() {
            actions.push(Action::Prune {
                output: i,
                generations: doomed,
            });
        }
    }
    actions
}

/// The versions an output keeps: current, next, and the `keep` newest below current.
/// Versions of an output that were never in use: a crash left them between being renamed in
/// and being linked. They are removed before anything else, never adopted as history.
///
/// Links move `current` first, then `previous` to the version that was current, and garbage
/// is removed before a new generation is linked above it. So an unlinked version above the
/// highest link was never linked; one between `previous` and `current` was current until a
/// crash cut the link move short, and is the real previous. An output with no link at all
/// has only garbage.
pub fn garbage(output: &ObservedOutput) -> BTreeSet<u32> {
    let linked = [
        output.current.as_ref().map(|c| c.generation),
        output.next.as_ref().map(|n| n.generation),
        output.previous,
    ];
    // Without `current` nothing is known to be garbage: the link may have been lost (see
    // [`unplannable`]); a key directory keyprov creates appears only with its `current`.
    let Some(top) = output.current.as_ref().map(|c| c.generation) else {
        return BTreeSet::new();
    };
    output
        .versions
        .iter()
        .copied()
        .filter(|v| !linked.contains(&Some(*v)) && *v > top)
        .collect()
}

/// Why a key must not be planned at all, when its outputs contradict each other or lost what
/// keyprov relies on: acting would risk deleting or replacing the pair in use. The key fails
/// with this message and nothing is changed.
pub fn unplannable(key: &KeyPair, outputs: &[ObservedOutput]) -> Option<String> {
    let name = &key.name;
    let (current, staged) = authoritative(outputs);
    if current.is_none() && staged.is_none() {
        let orphaned: Vec<String> = key
            .outputs
            .iter()
            .zip(outputs)
            .filter(|(_, o)| !o.versions.is_empty())
            .map(|(output, o)| {
                let last = o.versions.last().copied().unwrap_or_default();
                format!("{output} holds versions up to {last}")
            })
            .collect();
        if !orphaned.is_empty() {
            return Some(format!(
                "key {name:?}: {} but no usable `current` link: it was removed or replaced \
                 outside keyprov. Nothing was changed. Point `current` at the version in use \
                 (a directory: ln -sfn vNNNN current in it; a secret: move AWSCURRENT back \
                 to the version labelled keyprov-vNNNN with aws secretsmanager \
                 update-secret-version-stage), or move the directory away to start afresh",
                orphaned.join(", ")
            ));
        }
    }
    for pick in [
        (|o: &ObservedOutput| o.current.as_ref())
            as fn(&ObservedOutput) -> Option<&ObservedVersion>,
        |o: &ObservedOutput| o.next.as_ref(),
    ] {
        let mut seen: Vec<&ObservedVersion> = Vec::new();
        for version in outputs.iter().filter_map(pick) {
            if let Some(other) = seen.iter().find(|s| {
                s.generation == version.generation
                    && s.public_key_sha256 != version.public_key_sha256
            }) {
                return Some(format!(
                    "key {name:?}: its outputs hold different key pairs as generation {} \
                     (public keys {} and {}): one was replaced outside keyprov. Nothing was \
                     changed. Move the wrong copy away (`keyprov verify` names both); keyprov \
                     then copies the right one back",
                    version.generation,
                    &other.public_key_sha256[..other.public_key_sha256.len().min(12)],
                    &version.public_key_sha256[..version.public_key_sha256.len().min(12)],
                ));
            }
            seen.push(version);
        }
    }
    None
}

pub fn kept_versions(
    present: &BTreeSet<u32>,
    current: u32,
    next: Option<u32>,
    keep: u32,
) -> BTreeSet<u32> {
    let mut kept: BTreeSet<u32> = present
        .range(..current)
        .rev()
        .take(keep as usize)
        .copied()
        .collect();
    kept.insert(current);
    kept.extend(next);
    kept
}

impl Action {
    /// The action in the user's words: outputs named by what the manifest says (`file:DIR`,
    /// `secretsManager:SECRET-ID`), not by their index in `outputs`.
    pub fn describe<'a>(&'a self, key: &'a KeyPair) -> impl fmt::Display + 'a {
        Described { action: self, key }
    }
}

/// [`Action::describe`].
struct Described<'a> {
    action: &'a Action,
    key: &'a KeyPair,
}

impl Described<'_> {
    fn output(&self, index: usize) -> String {
        self.key
            .outputs
            .get(index)
            .map_or_else(|| format!("output {index}"), ToString::to_string)
    }
}

/// `1`, or `1, 2` with the noun's plural.
fn generations_list(generations: &[u32]) -> String {
    let list: Vec<String> = generations.iter().map(u32::to_string).collect();
    match list.len() {
        1 => format!("generation {}", list[0]),
        _ => format!("generations {}", list.join(", ")),
    }
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            Action::Copy {
                generation,
                outputs,
                link,
            } => {
                let to: Vec<String> = outputs.iter().map(|&i| self.output(i)).collect();
                write!(
                    f,
                    "copy generation {generation} as {} to {}",
                    link_name(*link),
                    to.join(", ")
                )
            }
            Action::Repair {
                output, reasons, ..
            } => write!(f, "repair {}: {}", self.output(*output), reasons.join("; ")),
            Action::Prune {
                output,
                generations,
            } => write!(
                f,
                "prune {} from {}",
                generations_list(generations),
                self.output(*output)
            ),
            other => other.fmt(f),
        }
    }
}

fn link_name(link: Link) -> &'static str {
    match link {
        Link::Current => "current",
        Link::Next => "next",
        Link::Previous => "previous",
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Generate {
                generation,
                activates_at,
                staged,
                reason,
            } => {
                write!(f, "generate generation {generation} ({reason})")?;
                if *staged {
                    write!(
                        f,
                        ", published as next, activates at {}",
                        format_time(*activates_at)
                    )?;
                }
                Ok(())
            }
            Action::Activate { generation } => write!(f, "activate staged generation {generation}"),
            Action::Copy {
                generation,
                outputs,
                link,
            } => {
                let link = link_name(*link);
                write!(
                    f,
                    "copy generation {generation} as {link} to outputs {outputs:?}"
                )
            }
            Action::Repair {
                output, reasons, ..
            } => {
                write!(f, "repair output {output}: {}", reasons.join("; "))
            }
            Action::Prune {
                output,
                generations,
            } => {
                write!(f, "prune generations {generations:?} from output {output}")
            }
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
