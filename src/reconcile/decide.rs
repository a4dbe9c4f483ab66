//! The decide phase: what this pass may do of the plans. Keys a prune set aside are restored
//! first (and planned again); keys waiting out their backoff, whose secret's current version
//! is not proven, or under a skewed clock are left out; the report is started.

use super::{Mode, Pass, Report};
use crate::manifest::KeyPair;

/// Narrows the pass's plans to what may be done now.
pub(super) async fn decide(pass: &mut Pass<'_>) {
    let (config, rotate) = (pass.config, pass.rotate);
    // What a prune set aside comes back with its key, before anything is generated for it.
    let restores = crate::prune_ledger::restorable(
        config,
        &pass.pending.keys,
        &pass.pending.failed,
        pass.pending.now,
    );
    if !restores.is_empty() {
        pass.refused = crate::prune_ledger::restore(config, pass.stores.secrets(), &restores).await;
        pass.pending = super::load::prepare_some(
            config,
            &pass.stores,
            rotate,
            pass.only,
            None,
            super::load::Problems::Quiet,
            crate::manifest::CacheUse::Write,
        )
        .await;
        // A key whose copy could not be restored is not regenerated over it.
        let refused = &pass.refused;
        pass.pending
            .plans
            .retain(|p| !refused.iter().any(|(name, _)| name == &p.name));
    }
    let pending = &mut pass.pending;
    crate::clock_guard::report(&pending.clock_notes);
    if rotate.is_none()
        && let Err(err) = crate::clock_guard::remember(
            &config.state_dir,
            &pending.clock_notes,
            |name| {
                pending.frozen.contains(name)
                    || pending.failed.iter().any(|(n, _)| n == name)
                    || pass.only.is_some_and(|only| !only.contains(name))
            },
            pending.now,
        )
    {
        tracing::error!("{err}");
    }
    if pass.mode
        == (Mode::Daemon {
            honor_backoff: true,
        })
    {
        pass.waiting =
            super::journal::in_backoff(config, &pending.keys, &pass.journal, pending.now);
    }
    let waiting = &pass.waiting;
    pending.plans.retain(|p| !waiting.contains(&p.name));
    pending.failed.retain(|(name, _)| !waiting.contains(name));
    let daemon = matches!(pass.mode, Mode::Daemon { .. });
    let settled = crate::fleet::settle(
        config,
        daemon,
        &pass.stores,
        &pending.keys,
        &mut pending.observed,
        &mut pending.plans,
        pending.now,
    )
    .await;
    let (next_publication, key_publications) = (pending.next_event, pending.key_events.clone());
    pending.key_events = settled.key_events(std::mem::take(&mut pending.key_events));
    pending.next_event = pending.key_events.earliest();
    let (unproven, proofs) = {
        let considered: Vec<&KeyPair> = pending
            .keys
            .iter()
            .filter(|k| !waiting.contains(&k.name))
            .collect();
        crate::secret_proof::prove_secret_currents(
            &config.state_dir,
            &super::execute::paced_outside_actions(pass.provider.clone(), &pass.stores),
            &pass.stores,
            &considered,
            &pending.observed,
            &settled.held,
            crate::secret_proof::Mode::Run,
        )
        .await
    };
    pass.proofs = proofs;
    pending
        .plans
        .retain(|p| !unproven.iter().any(|(name, _)| *name == p.name));
    pending.failed.extend(unproven);
    pass.refused.extend(
        crate::clock_guard::refuse_skewed(pass.provider.inner(), &pending.keys, &mut pending.plans)
            .await,
    );
    for (name, message) in &pending.failed {
        tracing::error!(key = %name, "{message}");
    }
    if pending.plans.is_empty() {
        // Converged: no call will be made, so the client is not worth finishing.
        pass.warm_up.abort();
    }
    pass.report = Report {
        keys: pending.keys.len(),
        changed: pending.plans.len(),
        failed: pending
            .failed
            .iter()
            .chain(&pass.refused)
            .cloned()
            .collect(),
        invalid: pending.invalid,
        provider_calls: 0,
        next_event: pending.next_event,
        next_publication,
        key_events: pending.key_events.clone(),
        key_publications,
        lock_held: None,
        waiting: waiting.len(),
        failed_outside_keys: false,
    };
    pass.changed = pending.plans.iter().map(|p| p.name.clone()).collect();
    let spec_changes = crate::spec_change::collect(
        &pending.keys,
        &pending.plans,
        &pending.observed,
        &pass.stores,
    )
    .await;
    for (name, change) in &spec_changes {
        tracing::info!(key = %name, "spec changed: {change}");
    }
}
