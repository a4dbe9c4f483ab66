//! The pass's side of the retry journal: which failed keys wait for their retry time, each
//! key's outcome recorded (its backoff grows or is forgotten), records of keys gone dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use super::execute;
use crate::clock;
use crate::config::Config;
use crate::manifest::KeyPair;
use crate::retry::{self, Journal};

/// Whether a retry at `at` is still to come at `now`. A time further ahead than the longest
/// backoff was recorded under a clock that was wrong (far in the future): it is due now.
pub(super) fn retry_later(at: SystemTime, now: SystemTime, config: &Config) -> bool {
    at > now && at <= now + config.reconcile.retry_backoff.max
}

/// Failed keys whose retry time has not come and whose manifest did not change since.
pub(super) fn in_backoff(
    config: &Config,
    keys: &[KeyPair],
    journal: &Journal,
    now: SystemTime,
) -> BTreeSet<String> {
    keys.iter()
        .filter(|key| {
            journal.get(&key.name).failure.is_some_and(|f| {
                retry_later(f.next_attempt(), now, config)
                    && f.manifest_digest == retry::manifest_digest(key)
            })
        })
        .map(|key| key.name.clone())
        .collect()
}

/// Records each key's success (its failure is forgotten) or failure (its backoff grows).
pub(super) async fn record_outcomes(
    config: &Config,
    keys: &[KeyPair],
    outcomes: &[execute::KeyOutcome],
    unobserved: &[(String, String)],
    journal: &Journal,
) {
    let now = clock::now();
    let backoff = config.reconcile.retry_backoff;
    let by_name: HashMap<&str, &KeyPair> = keys.iter().map(|k| (k.name.as_str(), k)).collect();
    let results = outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.result.as_ref().err().map(|(e, _)| e)))
        .chain(
            unobserved
                .iter()
                .map(|(name, err)| (name.as_str(), Some(err))),
        );
    for (name, error) in results {
        let Some(key) = by_name.get(name) else {
            continue;
        };
        let recorded = journal
            .update(name, |record| match error {
                None => record.failure = None,
                Some(error) => record.fail(key, error, now, &backoff),
            })
            .await;
        if let Err(err) = recorded {
            tracing::error!(key = %name, "{err}");
        }
    }
}

/// What a pass observed of its keys before acting.
pub(super) struct Seen<'a> {
    pub(super) keys: &'a [KeyPair],
    pub(super) observed: &'a crate::observed::Observed,
    pub(super) failed: &'a [(String, String)],
}

/// Forgets the failure of every key seen converged in this pass (observed, nothing planned,
/// not waiting for its retry): another host, or a hand, repaired what had failed. Without this,
/// its past retry time would stay the daemon's next event and the daemon would spin.
pub(super) async fn forget_failures_of_converged(
    seen: Seen<'_>,
    changed: &HashSet<String>,
    waiting: &BTreeSet<String>,
    journal: &Journal,
) {
    let records = journal.snapshot();
    for key in seen.keys {
        let name = key.name.as_str();
        let converged = matches!(seen.observed.get(name), Some(Ok(_)))
            && !changed.contains(name)
            && !waiting.contains(name)
            && !seen.failed.iter().any(|(n, _)| n == name);
        if !converged || records.get(name).is_none_or(|r| r.failure.is_none()) {
            continue;
        }
        tracing::info!(key = %name, "converged again: its failure record is cleared");
        if let Err(err) = journal.update(name, |record| record.failure = None).await {
            tracing::error!(key = %name, "{err}");
        }
    }
}

/// Removes the retry records of keys no manifest defines any more.
pub(super) async fn forget_unknown_keys(keys: &[KeyPair], journal: &Journal) {
    let known: HashSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    for name in journal.snapshot().into_keys() {
        if !known.contains(name.as_str())
            && let Err(err) = journal.update(&name, |r| *r = Default::default()).await
        {
            tracing::error!(key = %name, "{err}");
        }
    }
}

/// The earliest retry of a failed key or hook of each of `keys` (a key a pass cannot look at,
/// its manifest invalid, is not worth a wake).
pub(super) fn retries(journal: &Journal, keys: &[KeyPair]) -> Vec<(String, SystemTime)> {
    let records = journal.snapshot();
    keys.iter()
        .filter_map(|key| {
            let record = records.get(&key.name)?;
            let failure = record.failure.as_ref().map(retry::Failure::next_attempt);
            let hooks = record
                .hooks
                .iter()
                .filter(|h| h.attempts > 0)
                .map(retry::PendingHook::next_attempt);
            let at = failure.into_iter().chain(hooks).min()?;
            Some((key.name.clone(), at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_retry_recorded_under_a_clock_far_ahead_is_due_now() {
        let config = Config::from_bytes(
            std::path::Path::new("c.yaml"),
            b"manifests: [m]\nstateDir: s\n",
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert!(retry_later(now + Duration::from_secs(60), now, &config));
        assert!(!retry_later(now, now, &config));
        assert!(!retry_later(
            now + Duration::from_secs(86_400 * 365 * 70),
            now,
            &config
        ));
    }
}
