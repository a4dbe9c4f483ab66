//! No flip-flop between two manifest versions. While a change of `keyPairSpec`, `kmsKeyId` or
//! `encryptionContext` rolls out, hosts with the old manifest and hosts with the new one share
//! one secret; each would regenerate over the other's generation, forever.
//!
//! The rule: **a host does not regenerate for a spec change when the secret's current
//! generation was made for another spec after the last generation this host saw or made for its
//! own manifest's spec: another manifest version superseded it. It waits until its own manifest
//! changes again** (the rollout reaches it, or is reverted where the newer generation came
//! from). Such a key is *held*: nothing of it changes on this host, its files keep the
//! generation of its spec (a generation of another spec cannot be proven under this host's
//! manifest), a warning says why, and it is not failed.
//!
//! What this host saw or made is remembered per key in `<stateDir>/ledger/specs.json`: the
//! manifest's spec fingerprint and the newest generation of that spec (current or about to be
//! made). A host with no record (new, or its record of another spec) may regenerate once: at
//! most one extra generation per disagreement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::KeyPair;
use crate::observed::Observed;
use crate::plan::{self, Action, KeyPlan};

/// Name of the record under `<stateDir>/ledger/`.
const RECORD: &str = "specs";

/// The spec fingerprint of a key's manifest and the newest generation of it this host saw as
/// current or made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// `specFingerprint` of the manifest.
    pub fingerprint: String,
    /// The newest generation of that spec.
    pub generation: u32,
}

/// Per key name: the record, read once per pass ([`Marks::load`]).
#[derive(Debug, Default)]
pub struct Marks(BTreeMap<String, Mark>);

impl Marks {
    /// The record under `state_dir` (empty when there is none).
    pub fn load(state_dir: &Path) -> Self {
        Marks(crate::ledger::Ledger::new(state_dir, RECORD).load())
    }
}

/// Whether a key whose manifest has `fingerprint`, marked `mark`, is held while its current
/// generation is `current` of spec `current_fingerprint`.
pub fn superseded(
    fingerprint: &str,
    mark: Option<&Mark>,
    current: u32,
    current_fingerprint: &str,
) -> bool {
    mark.is_some_and(|m| {
        m.fingerprint == fingerprint && current > m.generation && current_fingerprint != fingerprint
    })
}

/// The keys held by the rule (see the module's doc), among `keys`, given what was observed.
pub fn held(marks: &Marks, keys: &[KeyPair], observed: &Observed) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for key in keys {
        let Some(Ok(outputs)) = observed.get(&key.name) else {
            continue;
        };
        let Some(current) = plan::authoritative(outputs).0 else {
            continue;
        };
        let fingerprint = key.spec_fingerprint();
        let mark = marks.0.get(&key.name);
        if superseded(
            &fingerprint,
            mark,
            current.generation,
            &current.spec_fingerprint,
        ) {
            tracing::warn!(key = %key.name,
                "generation {} was made for another spec (another version of this key's \
                 manifest, spec fingerprint {}) after generation {} of this host's manifest: \
                 not regenerating over it, nor copying it, until this host's manifest changes \
                 (finish or revert the rollout so that every host has the same manifest)",
                current.generation, current.spec_fingerprint,
                mark.map_or(0, |m| m.generation));
            held.insert(key.name.clone());
        }
    }
    held
}

/// Drops the plans of `held` keys (a spec change and the copies and repairs around it).
pub fn hold(plans: &mut Vec<KeyPlan>, held: &BTreeSet<String>) {
    plans.retain(|p| !held.contains(&p.name));
}

/// Records, per key, the newest generation of its manifest's spec: the one about to be made,
/// else the current one when it is of that spec (`marks` as [`Marks::load`] read them).
pub fn remember(
    state_dir: &Path,
    marks: Marks,
    keys: &[KeyPair],
    observed: &Observed,
    plans: &[KeyPlan],
) {
    let Marks(mut marks) = marks;
    let mut changed = false;
    // Each key's plans, looked up by name (a scan of every plan per key made a pass creating
    // N keys quadratic).
    let mut plans_of: std::collections::HashMap<&str, Vec<&KeyPlan>> =
        std::collections::HashMap::new();
    for plan in plans {
        plans_of.entry(plan.name.as_str()).or_default().push(plan);
    }
    for key in keys {
        let fingerprint = key.spec_fingerprint();
        let made = plans_of
            .get(key.name.as_str())
            .into_iter()
            .flatten()
            .flat_map(|p| &p.actions)
            .find_map(|a| match a {
                Action::Generate { generation, .. } => Some(*generation),
                _ => None,
            });
        let seen = match observed.get(&key.name) {
            Some(Ok(outputs)) => plan::authoritative(outputs)
                .0
                .filter(|c| c.spec_fingerprint == fingerprint)
                .map(|c| c.generation),
            _ => None,
        };
        let Some(generation) = made.or(seen) else {
            continue;
        };
        let mark = Mark {
            fingerprint,
            generation,
        };
        let newer = marks
            .get(&key.name)
            .is_none_or(|m| m.fingerprint != mark.fingerprint || m.generation < mark.generation);
        if newer {
            marks.insert(key.name.clone(), mark);
            changed = true;
        }
    }
    if changed && let Err(err) = crate::ledger::Ledger::new(state_dir, RECORD).save(&marks) {
        // Costs at most one extra generation if another manifest version disagrees.
        tracing::warn!("{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(fingerprint: &str, generation: u32) -> Mark {
        Mark {
            fingerprint: fingerprint.into(),
            generation,
        }
    }

    #[test]
    fn a_spec_change_is_held_only_over_a_newer_generation_of_another_spec() {
        // Host A made generation 3 for spec a; host B regenerated 4 for spec b: A holds.
        assert!(superseded("a", Some(&mark("a", 3)), 4, "b"));
        // A's manifest changed since (to c): its change is its own, it regenerates.
        assert!(!superseded("c", Some(&mark("a", 3)), 4, "b"));
        // B, whose manifest went back to a after making 4 for b: regenerates (reverted).
        assert!(!superseded("a", Some(&mark("b", 4)), 4, "b"));
        // No record (a new host): one regeneration at most.
        assert!(!superseded("a", None, 4, "b"));
        // The current generation is of this host's spec: nothing to hold.
        assert!(!superseded("a", Some(&mark("a", 3)), 4, "a"));
        // A's own spec change over an older generation of another spec.
        assert!(!superseded("a", Some(&mark("a", 5)), 4, "b"));
    }
}
