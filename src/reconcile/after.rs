//! The after-effects phase, once every new generation is current: the retry journal learns
//! each key's outcome, orphans are pruned, the changed keys are observed again, every JWK
//! Set drops what left every key's links, and the `onRotate` hooks that are due run.

use std::collections::HashSet;

use super::journal::{self, Seen};
use super::{Mode, Pass};
use crate::clock;
use crate::manifest::KeyPair;
use crate::plan;

/// Runs the after-effects of the pass.
pub(super) async fn after_effects(pass: &mut Pass<'_>) {
    let config = pass.config;
    crate::secret_proof::record_written(&config.state_dir, pass.stores.secrets().take_written());
    record(pass).await;
    crate::prune_ledger::record_managed(
        config,
        pass.stores.secrets(),
        &pass.pending.keys,
        &pass.report.failed,
        &pass.waiting,
    );
    if config.reconcile.prune && pass.every_key() {
        let pending = &pass.pending;
        let failures = crate::prune_ledger::prune_orphans(
            config,
            pass.stores.secrets(),
            &pending.keys,
            &pending.frozen,
            pending.invalid,
            clock::now(),
        )
        .await;
        pass.report.failed.extend(failures);
    }
    observe_changed(pass).await;
    // The sets lose what left every link only now; a key a set could not take keeps its
    // hooks journalled for the next run.
    if !config.jwks.is_empty() {
        let updated = super::publish::update_sets(pass, std::iter::empty());
        pass.report.failed.extend(updated.failures);
        pass.unpublished.extend(updated.unpublished);
    }
    let pending = &pass.pending;
    let hooked: Vec<KeyPair> = pending
        .keys
        .iter()
        .filter(|k| !pass.unpublished.contains(&k.name))
        .cloned()
        .collect();
    let after = &pass.after;
    let observed = |name: &str| after.get(name).or_else(|| pending.observed.get(name));
    let hook_failures = super::hooks_due::run_due_hooks(
        config,
        &hooked,
        &pass.journal,
        pass.mode,
        pass.metrics,
        observed,
    )
    .await;
    pass.report.failed.extend(hook_failures);
    if pass.every_key() && !pending.invalid && pending.frozen.is_empty() {
        journal::forget_unknown_keys(&pending.keys, &pass.journal).await;
    }
    if matches!(pass.mode, Mode::Daemon { .. }) {
        let latest = clock::now() + config.reconcile.retry_backoff.max;
        for (name, at) in journal::retries(&pass.journal, &pass.pending.keys) {
            pass.report.wake_key(&name, at.min(latest));
        }
    }
}

/// Records each key's outcome in the retry journal, metrics and the report.
async fn record(pass: &mut Pass<'_>) {
    let pending = &pass.pending;
    let unobserved: Vec<_> = pending
        .failed
        .iter()
        .chain(&pass.refused)
        .cloned()
        .collect();
    journal::record_outcomes(
        pass.config,
        &pending.keys,
        &pass.outcomes,
        &unobserved,
        &pass.journal,
    )
    .await;
    let seen = Seen {
        keys: &pending.keys,
        observed: &pending.observed,
        failed: &unobserved,
    };
    journal::forget_failures_of_converged(seen, &pass.changed, &pass.waiting, &pass.journal).await;
    // A key whose actions failed is a failed key, not a changed one.
    pass.report.changed = pass.outcomes.iter().filter(|o| o.result.is_ok()).count();
    let metrics = pass.metrics;
    for (name, _) in &pending.failed {
        metrics.failure(name, crate::metrics::FailureReason::OutputWriteFailed);
    }
    for name in &pending.frozen {
        metrics.failure(name, crate::metrics::FailureReason::ManifestInvalid);
    }
    let outcomes = std::mem::take(&mut pass.outcomes);
    pass.report
        .failed
        .extend(outcomes.into_iter().filter_map(|o| {
            o.result.err().map(|(err, reason)| {
                metrics.failure(&o.name, reason);
                (o.name, err)
            })
        }));
}

/// What the changed keys hold now, for their hooks and (daemon) their next event.
async fn observe_changed(pass: &mut Pass<'_>) {
    let config = pass.config;
    let pending = &pass.pending;
    let now = clock::now();
    let with_hooks: HashSet<String> = pass
        .journal
        .snapshot()
        .into_iter()
        .filter(|(_, r)| !r.hooks.is_empty())
        .map(|(name, _)| name)
        .collect();
    for key in pending.keys.iter().filter(|key| {
        pass.changed.contains(&key.name)
            && (matches!(pass.mode, Mode::Daemon { .. })
                || with_hooks.contains(&key.name)
                || crate::metrics::enabled())
    }) {
        pass.after
            .insert(key.name.clone(), pass.stores.observe_key(key).await);
        crate::progress::beat();
    }
    crate::clock_guard::guard(
        &mut pass.after,
        &pending.keys,
        now,
        config.reconcile.clock_tolerance,
        &crate::clock_guard::load_anchors(&config.state_dir),
    );
    let by_name: std::collections::HashMap<&str, &KeyPair> =
        pending.keys.iter().map(|k| (k.name.as_str(), k)).collect();
    // The next rotation is looked at when this host's turn comes, as for the keys without a
    // plan (`fleet::settle`): waking at the publication time found it held back until the
    // host's offset, and woke again then, two passes for one rotation.
    let turns = crate::fleet::offset::next_events(
        &config.fleet,
        config.fleet.role == crate::fleet::Role::Consumer,
        &pending.keys,
        &pass.after,
        &[],
        &Default::default(),
        now,
    );
    for (name, outputs) in &pass.after {
        if let (Ok(outputs), Some(&key)) = (outputs, by_name.get(name.as_str())) {
            let at = plan::next_event(key, outputs, now);
            let report = &mut pass.report;
            if let Some(at) = at {
                report.wake_key(name, turns.get(name).unwrap_or(at));
                report.key_publications.add(name, at);
            }
            report.next_publication = report.next_publication.into_iter().chain(at).min();
        }
    }
}
