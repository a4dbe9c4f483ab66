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
    for outcome in done {
        match pass.outcomes.iter_mut().find(|o| o.name == outcome.name) {
            Some(published) => published.result = outcome.result,
            None => pass.outcomes.push(outcome),
        }
    }
}
