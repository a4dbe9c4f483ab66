//! The publish phase: every planned key's actions run up to its new generation, which is
//! written to every output without becoming current (files link it `next`, secrets hold it
//! under its own label); then every config `jwks:` aggregate takes it. A generation a set
//! could not take is not activated in this pass.

use std::collections::HashSet;

use super::Pass;
use super::execute;
use crate::metrics::FailureReason;

/// Publishes the new generations of the pass.
pub(super) async fn publish(pass: &mut Pass<'_>) {
    let plans = std::mem::take(&mut pass.pending.plans);
    let mut outcomes = execute::publish(
        pass.provider.clone(),
        pass.stores.clone(),
        &pass.pending.keys,
        plans,
        pass.pending.now,
        super::limits(pass.config),
        ledger(pass),
    )
    .await;
    pass.activations = outcomes
        .iter_mut()
        .filter_map(|o| o.activation.take())
        .collect();
    if pass.activations.is_empty() || pass.config.jwks.is_empty() {
        pass.outcomes = outcomes;
        return;
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name.clone())
        .collect();
    let updated = update_sets(pass, failed.iter().map(String::as_str));
    pass.report.failed.extend(updated.failures);
    // Published on every output, but a set that selects the key could not take it: its
    // signers keep the current generation until a run publishes it there too.
    let (withheld, ready): (Vec<_>, Vec<_>) = std::mem::take(&mut pass.activations)
        .into_iter()
        .partition(|a| updated.unpublished.contains(&a.name));
    pass.activations = ready;
    for activation in withheld {
        if let Some(outcome) = outcomes.iter_mut().find(|o| o.name == activation.name) {
            outcome.result = Err((
                format!(
                    "key {:?}: generation {} is published on every output but not activated: a \
                     JWK Set that selects the key could not take it (see its error); the next \
                     run activates it once the set holds it",
                    activation.name, activation.generation
                ),
                FailureReason::OutputWriteFailed,
            ));
        }
    }
    pass.outcomes = outcomes;
}

/// Where the executor keeps account in this pass.
pub(super) fn ledger(pass: &Pass<'_>) -> execute::Ledger {
    execute::Ledger {
        stats: pass.stats.clone(),
        journal: pass.journal.clone(),
        metrics: pass.metrics,
    }
}

/// Brings every config `jwks:` aggregate up to date with what the keys' links hold. Keys in
/// `failed`, those waiting for their retry and (under `rotate`) those not looked at keep the
/// entries they last had, plus what their links hold.
pub(super) fn update_sets<'a>(
    pass: &'a Pass<'_>,
    failed: impl Iterator<Item = &'a str>,
) -> crate::jwks_aggregate::Updated {
    let pending = &pass.pending;
    let considered: HashSet<&str> = pending.keys.iter().map(|k| k.name.as_str()).collect();
    let failed: HashSet<&str> = failed
        .chain(pass.report.failed.iter().map(|(n, _)| n.as_str()))
        .chain(pass.waiting.iter().map(String::as_str))
        .chain(
            pending
                .all_keys
                .iter()
                .map(|k| k.name.as_str())
                .filter(|n| !considered.contains(n)),
        )
        .collect();
    let held = crate::jwks_aggregate::Held {
        failed: &failed,
        frozen: &pending.frozen,
        invalid: pending.invalid,
    };
    // What this pass observed of a key, while nothing changed it (the after phase observes
    // some changed keys again).
    let observed = |name: &str, index: usize| {
        let outputs = if pass.changed.contains(name) {
            pass.after.get(name)
        } else {
            pending.observed.get(name)
        };
        match outputs {
            Some(Ok(outputs)) => outputs.get(index)?.linked_jwks.as_ref(),
            _ => None,
        }
    };
    crate::jwks_aggregate::update_all(
        &pass.config.jwks,
        &pending.all_keys,
        held,
        &pass.config.state_dir,
        &observed,
        pass.stores.fingerprints(),
    )
}
