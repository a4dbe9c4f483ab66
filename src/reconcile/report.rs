//! The report phase: what the pass did, for the daemon's timer and `run --once`'s summary
//! line and exit code; the key metrics are set from it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::Pass;
use crate::exit::Exit;
use crate::key_events::KeyEvents;

/// The result of one reconcile, for the daemon and for `run --once`.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys considered.
    pub keys: usize,
    /// Keys that had actions.
    pub changed: usize,
    /// Keys that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Provider calls made.
    pub provider_calls: usize,
    /// Some manifest was invalid.
    pub invalid: bool,
    /// The earliest time a rotation or activation falls due (for the daemon's timer).
    pub next_event: Option<std::time::SystemTime>,
    /// The earliest time a rotation is published or a generation activated by the schedule
    /// itself, before any host's turn (fleet offsets delay `next_event`, not a publication
    /// elsewhere): a served JWK Set may be cached until then at most.
    pub next_publication: Option<std::time::SystemTime>,
    /// The earliest time each key wants another pass ([`Report::wake_key`]): the daemon's
    /// due wakes reconcile only the keys due. An event only in `next_event`, tied to no key,
    /// makes the daemon's next pass at that time a full one.
    pub key_events: KeyEvents,
    /// Each key's share of `next_publication`, for the daemon to keep across partial passes.
    pub key_publications: KeyEvents,
    /// The stateDir lock was held by another keyprov and not waited for: nothing was done.
    pub lock_held: Option<String>,
    /// Failed keys the daemon left alone in this pass: their retry time has not come.
    pub waiting: usize,
    /// Something failed that is not a key with a retry record (the stateDir, orphans): the
    /// daemon tries again after `reconcile.retryBackoff`.
    pub failed_outside_keys: bool,
}

impl std::fmt::Display for Report {
    /// One line: `N keys, N changed, N failed, N provider calls[, ...]`, "1 key" for one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::output::count;
        write!(
            f,
            "{}, {} changed, {} failed, {}{}{}",
            count(self.keys, "key"),
            self.changed,
            self.failed.len(),
            count(self.provider_calls, "provider call"),
            if self.waiting > 0 {
                format!(", {} waiting to retry", self.waiting)
            } else {
                String::new()
            },
            if self.invalid {
                ", invalid manifests left untouched"
            } else {
                ""
            }
        )
    }
}

impl Report {
    /// Key `name` wants another pass at `at` (a rotation, a retry, a claim retry, ...).
    pub fn wake_key(&mut self, name: &str, at: std::time::SystemTime) {
        self.key_events.add(name, at);
        self.next_event = self.next_event.into_iter().chain([at]).min();
    }

    /// The exit code this report calls for.
    pub fn exit(&self) -> Exit {
        if self.lock_held.is_some() {
            Exit::LockHeld
        } else if self.invalid {
            Exit::Invalid
        } else if !self.failed.is_empty() {
            Exit::KeyFailed
        } else {
            Exit::Ok
        }
    }
}

/// Ends the pass: the report completed, the key metrics set, the stores' writes waited for.
pub(super) async fn finish(pass: Pass<'_>) -> Report {
    let mut report = pass.report;
    let pending = &pass.pending;
    report.failed.sort();
    // Both JWK Set updates of a pass may report the same failure.
    report.failed.dedup();
    let key_names: HashSet<&str> = pending.keys.iter().map(|k| k.name.as_str()).collect();
    report.failed_outside_keys = report
        .failed
        .iter()
        .any(|(name, _)| !key_names.contains(name.as_str()));
    report.provider_calls = pass.stats.provider_calls.load(Ordering::Relaxed) + pass.proofs;
    if crate::metrics::enabled() && pass.rotate.is_none() {
        let after = &pass.after;
        let observed = |name: &str| after.get(name).or_else(|| pending.observed.get(name));
        let state = super::key_metrics::KeysNow {
            keys: &pending.keys,
            frozen: &pending.frozen,
            file_validity: &pending.file_validity,
            every_key: pass.only.is_none(),
        };
        super::key_metrics::update_key_metrics(
            pass.metrics,
            state,
            observed,
            &report,
            &pass.waiting,
            crate::clock::now(),
        );
    }
    pass.metrics.reconcile_took(pass.started.elapsed());
    pass.metrics.reconciled(pass.only.is_some());
    pass.stores.finish().await;
    report
}
