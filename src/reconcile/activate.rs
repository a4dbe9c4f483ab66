//! The activate phase: every generation published everywhere in this pass (every output and
//! every JWK Set that selects its key) becomes current: `current` on the files, then
//! `AWSCURRENT` on the secrets, last; then the actions planned after it (repairs, prunes).

use super::Pass;
use super::execute;

/// Activates the pass's published generations.
pub(super) async fn activate(pass: &mut Pass<'_>) {
    let activations = std::mem::take(&mut pass.activations);
    if activations.is_empty() {
        return;
    }
    let done = execute::activate(
        pass.provider.clone(),
        pass.stores.clone(),
        &pass.pending.keys,
        activations,
        pass.pending.now,
        super::limits(pass.config),
        super::publish::ledger(pass),
    )
    .await;
    // By name: one activation per key, and a lookup each (not a scan of every outcome, which
    // made a pass creating N keys quadratic).
    let mut at: std::collections::HashMap<String, usize> = pass
        .outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.clone(), i))
        .collect();
    for outcome in done {
        match at.get(&outcome.name) {
            Some(&i) => pass.outcomes[i].result = outcome.result,
            None => {
                at.insert(outcome.name.clone(), pass.outcomes.len());
                pass.outcomes.push(outcome);
            }
        }
    }
}
