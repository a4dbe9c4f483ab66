//! The `previous` of a key's outputs: what each output has been through, and the generation
//! they all keep as previous (copied into a file output that lacks it).

use std::collections::BTreeSet;

use super::garbage;
use crate::manifest::{KeyPair, Output};
use crate::observed::ObservedOutput;

/// The versions output `output` holds once the plan ran (its garbage gone, `current` and
/// `next` in it), and of those the ones that were ever in use (its history, `previous`'s
/// candidates).
pub(super) fn history(
    output: &ObservedOutput,
    current: u32,
    next: Option<u32>,
) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let garbage = garbage(output);
    let mut present: BTreeSet<u32> = output
        .versions
        .iter()
        .copied()
        .filter(|v| !garbage.contains(v))
        .collect();
    present.insert(current);
    present.extend(next);
    // A `next` that neither stays next nor becomes current (a new generation replaced it)
    // was never in use: it goes, and never becomes `previous`.
    let superseded = output
        .next
        .as_ref()
        .map(|n| n.generation)
        .filter(|&n| n < current && next != Some(n));
    let mut history = present.clone();
    if let Some(superseded) = superseded {
        history.remove(&superseded);
    }
    (present, history)
}

/// The `previous` every output agrees on (the newest generation below `current` any output
/// keeps, when `rotation.keep` keeps one), and the file outputs that lack it and get a copy:
/// a host that joined after a rotation, or whose copy was deleted, still trusts the key
/// signers used a moment ago. Copied after `current`; a copy from a secret is proven like
/// current's (and, refused, fails the key naming it).
pub(super) fn previous_copy(
    key: &KeyPair,
    outputs: &[ObservedOutput],
    current: u32,
    next: Option<u32>,
) -> (Option<u32>, Vec<usize>) {
    if key.rotation.keep == 0 {
        return (None, Vec::new());
    }
    let histories: Vec<_> = outputs.iter().map(|o| history(o, current, next)).collect();
    let own = |i: usize| histories[i].1.range(..current).next_back().copied();
    let Some(shared) = (0..outputs.len()).filter_map(own).max() else {
        return (None, Vec::new());
    };
    // An output may hold it already: as garbage (removed first, then copied anew), or as a
    // `next` a newer generation replaced (kept and linked: another output used it).
    let copied = (0..outputs.len())
        .filter(|&i| matches!(key.outputs.get(i), Some(Output::File(_))) && own(i) < Some(shared))
        .collect();
    (Some(shared), copied)
}
