//! `keyprov run --once`, `keyprov plan` and `keyprov rotate`: load, observe, plan, execute.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::clock;
use crate::config::Config;
use crate::execute::{self, Limits, Stats};
use crate::exit::Exit;
use crate::hooks;
use crate::lock;
use crate::manifest::KeyPair;
use crate::plan::{self, KeyPlan, RotateRequest};
use crate::provider::AnyProvider;
use crate::retry::{self, HookState, Journal, RetryStore};
use crate::store::Stores;

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

/// The stores of one reconcile, their AWS requests paced by `reconcile.maxRequestsPerSecond`
/// (shared with the provider).
pub fn new_stores(config: &Config) -> Stores {
    let limiter = execute::rate_limiter(config.reconcile.max_requests_per_second);
    Stores::new(
        config.aws.clone(),
        config.reconcile.scope.clone(),
        Arc::new(limiter),
    )
}

fn limits(config: &Config) -> Limits {
    Limits {
        concurrency: config.reconcile.concurrency,
        max_requests_per_second: config.reconcile.max_requests_per_second,
    }
}

/// What `plan` shows and `run` executes: the keys considered, their plans, and who could not
/// be planned.
struct Pending {
    invalid: bool,
    keys: Vec<KeyPair>,
    now: std::time::SystemTime,
    plans: Vec<KeyPlan>,
    failed: Vec<(String, String)>,
    /// The earliest next event among keys with nothing to do now.
    next_event: Option<std::time::SystemTime>,
    /// Keys whose manifest did not load.
    frozen: std::collections::BTreeSet<String>,
    /// What each key's outputs held before any change.
    observed: crate::observed::Observed,
    /// Every manifest problem.
    diagnostics: Vec<crate::manifest::Diagnostic>,
    /// Every manifest file read, and whether it is valid.
    file_validity: Vec<(std::path::PathBuf, bool)>,
    /// Every valid key, also when only one is considered (`rotate`): for the JWK Sets.
    all_keys: Vec<KeyPair>,
    /// Versions whose recorded times were not used as they are (see `clock_guard`).
    clock_notes: Vec<crate::clock_guard::Note>,
}

/// Loads, observes and plans every valid key (or only `rotate.name` when rotating).
async fn prepare(config: &Config, stores: &Stores, rotate: Option<&RotateRequest>) -> Pending {
    let started = std::time::Instant::now();
    let mut loaded = super::load_manifests(config);
    tracing::debug!(elapsed = ?started.elapsed(), keys = loaded.keys.len(), "manifests loaded");
    if let Some(problem) = crate::prune_ledger::scope_problem(config, &loaded.keys) {
        // A configuration error: nothing is touched until it is fixed.
        super::report(std::slice::from_ref(&problem));
        loaded.diagnostics.push(problem);
        loaded.keys.clear();
    }
    let mut pending = Pending {
        invalid: !loaded.is_valid(),
        keys: Vec::new(),
        now: clock::now(),
        plans: Vec::new(),
        failed: Vec::new(),
        next_event: None,
        frozen: loaded.frozen.clone(),
        observed: Default::default(),
        diagnostics: loaded.diagnostics.clone(),
        file_validity: loaded.file_validity.clone(),
        all_keys: Vec::new(),
        clock_notes: Vec::new(),
    };
    if !config.jwks.is_empty() {
        pending.all_keys = loaded.keys.clone();
    }
    pending.keys = match rotate {
        Some(request) => match super::find_key(&loaded, &request.name) {
            Ok(key) => vec![key.clone()],
            Err(err) => {
                pending.failed.push((request.name.clone(), err));
                return pending;
            }
        },
        None => loaded.keys,
    };
    let mut observed = stores.observe_all(&pending.keys).await;
    tracing::debug!(elapsed = ?started.elapsed(), "outputs observed");
    for key in &pending.keys {
        let unplannable = match observed.get(&key.name) {
            Some(Ok(outputs)) => plan::unplannable(key, outputs),
            _ => None,
        };
        if let Some(message) = unplannable {
            observed.insert(key.name.clone(), Err(message));
        }
    }
    pending.clock_notes = crate::clock_guard::guard(
        &mut observed,
        &pending.keys,
        pending.now,
        config.reconcile.clock_tolerance,
        &crate::clock_guard::load_anchors(&config.state_dir),
    );
    for (name, result) in &observed {
        if let Err(err) = result {
            let message = if err.starts_with("key ") {
                err.clone()
            } else {
                format!("key {name:?}: cannot read its outputs: {err}")
            };
            pending.failed.push((name.clone(), message));
        }
    }
    pending.plans = plan::plan(&pending.keys, &observed, pending.now, rotate);
    let planned: HashSet<&str> = pending.plans.iter().map(|p| p.name.as_str()).collect();
    let converged = pending
        .keys
        .iter()
        .filter(|key| !planned.contains(key.name.as_str()));
    pending.next_event = next_event(converged, &observed, pending.now);
    tracing::debug!(elapsed = ?started.elapsed(), changed = pending.plans.len(), "planned");
    pending.observed = observed;
    crate::progress::beat();
    pending
}

/// The earliest [`plan::next_event`] of `keys`.
fn next_event<'a>(
    keys: impl Iterator<Item = &'a KeyPair>,
    observed: &crate::observed::Observed,
    now: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    keys.filter_map(|key| match observed.get(&key.name) {
        Some(Ok(outputs)) => plan::next_event(key, outputs, now),
        _ => None,
    })
    .min()
}

/// Whether a reconcile waits for the stateDir lock held by another keyprov.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Wait, saying so on stderr.
    Wait,
    /// Give up at once (`--no-wait`): the report says who holds it.
    NoWait,
}

/// Who asks for a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run --once`, `rotate`: every key and every pending hook is tried now.
    Once,
    /// The daemon. With `honor_backoff`, failed keys and hooks wait for their retry time
    /// (unless the key's manifest changed). The report's `next_event` covers the keys just
    /// changed too (one more observation of them) and the retries.
    Daemon {
        /// Leave failed keys alone until their retry time.
        honor_backoff: bool,
    },
}

/// Reconciles every valid key once (or only `rotate.name` when rotating), holding the
/// stateDir lock throughout; then runs the `onRotate` hooks that are due.
pub async fn reconcile(
    config: &Config,
    provider: Arc<AnyProvider>,
    rotate: Option<&RotateRequest>,
    mode: Mode,
    wait: LockWait,
) -> Report {
    let state_dir = config.state_dir.clone();
    let wait_for_it = wait == LockWait::Wait;
    let locked = tokio::task::spawn_blocking(move || lock::acquire(&state_dir, wait_for_it)).await;
    let _lock = match locked {
        Ok(Ok(lock)) => lock,
        Ok(Err(err @ lock::LockError::Held { .. })) => {
            return Report {
                lock_held: Some(err.to_string()),
                ..Report::default()
            };
        }
        Ok(Err(err)) => {
            tracing::error!("{err}");
            return Report {
                failed: vec![("stateDir".into(), err.to_string())],
                failed_outside_keys: true,
                ..Report::default()
            };
        }
        Err(err) => {
            tracing::error!("cannot take the stateDir lock: {err}");
            return Report {
                failed: vec![("stateDir".into(), format!("cannot take the lock: {err}"))],
                failed_outside_keys: true,
                ..Report::default()
            };
        }
    };
    crate::progress::beat();
    let started = std::time::Instant::now();
    let warm_up = tokio::spawn({
        let provider = provider.clone();
        async move { provider.warm_up().await }
    });
    let stores = Arc::new(new_stores(config));
    let journal = Arc::new(Journal::load(RetryStore::new(&config.state_dir)));
    let mut pending = prepare(config, &stores, rotate).await;
    // What a prune set aside comes back with its key, before anything is generated for it.
    let restores =
        crate::prune_ledger::restorable(config, &pending.keys, &pending.failed, pending.now);
    let mut refused = Vec::new();
    if !restores.is_empty() {
        refused = crate::prune_ledger::restore(config, stores.secrets(), &restores).await;
        pending = prepare(config, &stores, rotate).await;
        // A key whose copy could not be restored is not regenerated over it.
        pending
            .plans
            .retain(|p| !refused.iter().any(|(name, _)| name == &p.name));
    }
    crate::clock_guard::report(&pending.clock_notes);
    if rotate.is_none()
        && let Err(err) = crate::clock_guard::remember(
            &config.state_dir,
            &pending.clock_notes,
            |name| pending.frozen.contains(name) || pending.failed.iter().any(|(n, _)| n == name),
            pending.now,
        )
    {
        tracing::error!("{err}");
    }
    let waiting = if mode
        == (Mode::Daemon {
            honor_backoff: true,
        }) {
        in_backoff(config, &pending.keys, &journal, pending.now)
    } else {
        BTreeSet::new()
    };
    pending.plans.retain(|p| !waiting.contains(&p.name));
    pending.failed.retain(|(name, _)| !waiting.contains(name));
    let (unproven, proofs) = {
        let considered: Vec<&KeyPair> = pending
            .keys
            .iter()
            .filter(|k| !waiting.contains(&k.name))
            .collect();
        crate::secret_proof::prove_secret_currents(
            &config.state_dir,
            &provider,
            &stores,
            &considered,
            &pending.observed,
        )
        .await
    };
    pending
        .plans
        .retain(|p| !unproven.iter().any(|(name, _)| *name == p.name));
    pending.failed.extend(unproven);
    refused.extend(
        crate::clock_guard::refuse_skewed(&provider, &pending.keys, &mut pending.plans).await,
    );
    for (name, message) in &pending.failed {
        tracing::error!(key = %name, "{message}");
    }
    if pending.plans.is_empty() {
        // Converged: no call will be made, so the client is not worth finishing.
        warm_up.abort();
    }
    let mut report = Report {
        keys: pending.keys.len(),
        changed: pending.plans.len(),
        failed: pending.failed.iter().chain(&refused).cloned().collect(),
        invalid: pending.invalid,
        provider_calls: 0,
        next_event: pending.next_event,
        lock_held: None,
        waiting: waiting.len(),
        failed_outside_keys: false,
    };
    let changed: HashSet<String> = pending.plans.iter().map(|p| p.name.clone()).collect();
    let spec_changes =
        crate::spec_change::collect(&pending.keys, &pending.plans, &pending.observed, &stores)
            .await;
    for (name, change) in &spec_changes {
        tracing::info!(key = %name, "spec changed: {change}");
    }
    let stats = Arc::new(Stats::default());
    let outcomes = execute::execute(
        provider,
        stores.clone(),
        &pending.keys,
        pending.plans,
        pending.now,
        limits(config),
        execute::Ledger {
            stats: stats.clone(),
            journal: journal.clone(),
        },
    )
    .await;
    crate::secret_proof::record_written(&config.state_dir, stores.secrets().take_written());
    let unobserved: Vec<_> = pending.failed.iter().chain(&refused).cloned().collect();
    record_outcomes(config, &pending.keys, &outcomes, &unobserved, &journal).await;
    let seen = Seen {
        keys: &pending.keys,
        observed: &pending.observed,
        failed: &unobserved,
    };
    forget_failures_of_converged(seen, &changed, &waiting, &journal).await;
    // A key whose actions failed is a failed key, not a changed one.
    report.changed = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let metrics = crate::metrics::global();
    for (name, _) in &pending.failed {
        metrics.failure(name, crate::metrics::FailureReason::OutputWriteFailed);
    }
    for name in &pending.frozen {
        metrics.failure(name, crate::metrics::FailureReason::ManifestInvalid);
    }
    report.failed.extend(outcomes.into_iter().filter_map(|o| {
        o.result.err().map(|(err, reason)| {
            metrics.failure(&o.name, reason);
            (o.name, err)
        })
    }));
    if config.reconcile.prune && rotate.is_none() {
        let failures = crate::prune_ledger::prune_orphans(
            config,
            stores.secrets(),
            &pending.keys,
            &pending.frozen,
            pending.invalid,
            clock::now(),
        )
        .await;
        report.failed.extend(failures);
    }
    // What the changed keys hold now, for their hooks and (daemon) their next event.
    let now = clock::now();
    let mut after = crate::observed::Observed::new();
    let with_hooks: HashSet<String> = journal
        .snapshot()
        .into_iter()
        .filter(|(_, r)| !r.hooks.is_empty())
        .map(|(name, _)| name)
        .collect();
    for key in pending.keys.iter().filter(|key| {
        changed.contains(&key.name)
            && (matches!(mode, Mode::Daemon { .. })
                || with_hooks.contains(&key.name)
                || crate::metrics::enabled())
    }) {
        after.insert(key.name.clone(), stores.observe_key(key).await);
        crate::progress::beat();
    }
    crate::clock_guard::guard(
        &mut after,
        &pending.keys,
        now,
        config.reconcile.clock_tolerance,
        &crate::clock_guard::load_anchors(&config.state_dir),
    );
    let by_name: HashMap<&str, &KeyPair> =
        pending.keys.iter().map(|k| (k.name.as_str(), k)).collect();
    for (name, outputs) in &after {
        if let (Ok(outputs), Some(&key)) = (outputs, by_name.get(name.as_str())) {
            report.next_event = report
                .next_event
                .into_iter()
                .chain(plan::next_event(key, outputs, now))
                .min();
        }
    }
    // Publish before activate hooks: a signer reloaded by one must find its kid in the sets.
    let mut unpublished = HashSet::new();
    if !config.jwks.is_empty() {
        // Keys that failed now or wait to retry: their links may be unusable. Under `rotate`
        // the others were not looked at: they lose nothing until a full run.
        let considered: HashSet<&str> = pending.keys.iter().map(|k| k.name.as_str()).collect();
        let failed: HashSet<&str> = report
            .failed
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(waiting.iter().map(String::as_str))
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
        let updated = crate::jwks_aggregate::update_all(
            &config.jwks,
            &pending.all_keys,
            held,
            &config.state_dir,
        );
        report.failed.extend(updated.failures);
        unpublished = updated.unpublished;
    }
    // A key a set could not take keeps its hooks journalled for the next run.
    let hooked: Vec<KeyPair> = pending
        .keys
        .iter()
        .filter(|k| !unpublished.contains(&k.name))
        .cloned()
        .collect();
    let observed = |name: &str| after.get(name).or_else(|| pending.observed.get(name));
    let hook_failures = run_due_hooks(config, &hooked, &journal, mode, observed).await;
    report.failed.extend(hook_failures);
    if rotate.is_none() && !pending.invalid && pending.frozen.is_empty() {
        forget_unknown_keys(&pending.keys, &journal).await;
    }
    if matches!(mode, Mode::Daemon { .. }) {
        let latest = clock::now() + config.reconcile.retry_backoff.max;
        report.next_event = report
            .next_event
            .into_iter()
            .chain(next_retry(&journal).map(|at| at.min(latest)))
            .min();
    }
    report.failed.sort();
    let key_names: HashSet<&str> = pending.keys.iter().map(|k| k.name.as_str()).collect();
    report.failed_outside_keys = report
        .failed
        .iter()
        .any(|(name, _)| !key_names.contains(name.as_str()));
    report.provider_calls = stats.provider_calls.load(Ordering::Relaxed) + proofs;
    if crate::metrics::enabled() && rotate.is_none() {
        let observed = |name: &str| after.get(name).or_else(|| pending.observed.get(name));
        let state = KeysNow {
            keys: &pending.keys,
            frozen: &pending.frozen,
            file_validity: &pending.file_validity,
        };
        update_key_metrics(state, observed, &report, &waiting, now);
    }
    crate::metrics::global().reconcile_took(started.elapsed());
    stores.finish().await;
    report
}

/// The keys and manifest files of a reconcile, for [`update_key_metrics`].
struct KeysNow<'a> {
    keys: &'a [KeyPair],
    frozen: &'a BTreeSet<String>,
    file_validity: &'a [(std::path::PathBuf, bool)],
}

/// Sets every key's state series from what its outputs hold after this reconcile, the
/// manifests' validity, and drops the series of keys no manifest defines any more (those of
/// invalid manifests stay as they were).
fn update_key_metrics<'a>(
    pending: KeysNow<'_>,
    observed: impl Fn(&str) -> Option<&'a Result<Vec<crate::observed::ObservedOutput>, String>>,
    report: &Report,
    waiting: &BTreeSet<String>,
    now: SystemTime,
) {
    let metrics = crate::metrics::global();
    let failed: HashSet<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
    for key in pending.keys {
        match observed(&key.name) {
            Some(Ok(outputs)) => {
                let previous = outputs
                    .iter()
                    .find_map(|o| o.previous)
                    .and_then(|generation| {
                        key.outputs.iter().find_map(|output| match output {
                            crate::manifest::Output::File(file) => {
                                crate::store::file::read_meta(&file.dir, generation).ok()
                            }
                            crate::manifest::Output::SecretsManager(_) => None,
                        })
                    });
                let converged = !failed.contains(key.name.as_str()) && !waiting.contains(&key.name);
                metrics.key_state(key, outputs, previous.as_ref(), converged.then_some(now));
            }
            _ => metrics.key_unreadable(&key.name),
        }
    }
    let files: Vec<(String, bool)> = pending
        .file_validity
        .iter()
        .map(|(path, valid)| (path.display().to_string(), *valid))
        .collect();
    metrics.manifests(&files);
    let keep: BTreeSet<String> = pending
        .keys
        .iter()
        .map(|k| k.name.clone())
        .chain(pending.frozen.iter().cloned())
        .collect();
    metrics.forget_keys(&keep);
}

/// Whether a retry at `at` is still to come at `now`. A time further ahead than the longest
/// backoff was recorded under a clock that was wrong (far in the future): it is due now.
fn retry_later(at: SystemTime, now: SystemTime, config: &Config) -> bool {
    at > now && at <= now + config.reconcile.retry_backoff.max
}

/// Failed keys whose retry time has not come and whose manifest did not change since.
fn in_backoff(
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
async fn record_outcomes(
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
struct Seen<'a> {
    keys: &'a [KeyPair],
    observed: &'a crate::observed::Observed,
    failed: &'a [(String, String)],
}

/// Forgets the failure of every key seen converged in this pass (observed, nothing planned,
/// not waiting for its retry): another host, or a hand, repaired what had failed. Without this,
/// its past retry time would stay the daemon's next event and the daemon would spin.
async fn forget_failures_of_converged(
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

/// Runs the hooks of every key whose recorded event happened and whose retry time has come
/// (at once outside the daemon's backoff); drops the superseded ones. Keys run in parallel,
/// each key's hooks in order. Returns the failures.
async fn run_due_hooks<'a>(
    config: &Config,
    keys: &[KeyPair],
    journal: &Arc<Journal>,
    mode: Mode,
    observed: impl Fn(&str) -> Option<&'a Result<Vec<crate::observed::ObservedOutput>, String>>,
) -> Vec<(String, String)> {
    let now = clock::now();
    let honor_backoff = mode
        == (Mode::Daemon {
            honor_backoff: true,
        });
    let records = journal.snapshot();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        config.reconcile.concurrency.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let Some(record) = records.get(&key.name).filter(|r| !r.hooks.is_empty()) else {
            continue;
        };
        let Some(Ok(outputs)) = observed(&key.name) else {
            continue;
        };
        let (current, next) = plan::authoritative(outputs);
        let (current, next) = (current.map(|v| v.generation), next.map(|v| v.generation));
        let mut due = Vec::new();
        let mut superseded = Vec::new();
        for hook in &record.hooks {
            match hook.state(current, next) {
                HookState::Superseded => superseded.push((hook.event, hook.generation)),
                HookState::Due
                    if !honor_backoff || !retry_later(hook.next_attempt(), now, config) =>
                {
                    due.push(hook.clone())
                }
                HookState::Due | HookState::Waiting => {}
            }
        }
        let cut_off = record.hooks.iter().any(|h| h.running.is_some());
        if superseded.is_empty() && due.is_empty() && !cut_off {
            continue;
        }
        let (key, journal, slots) = (key.clone(), journal.clone(), slots.clone());
        let (backoff, hooks_env) = (config.reconcile.retry_backoff, config.hooks_env.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            let mut failures = Vec::new();
            // A run cut off by a crash may still be running: never beside its next run.
            if let Err(err) = journal.end_leftovers(&key.name).await {
                tracing::error!(key = %key.name, "{err}");
                return vec![(key.name.clone(), err)];
            }
            let dropped = journal
                .update(&key.name, |r| {
                    r.hooks
                        .retain(|h| !superseded.contains(&(h.event, h.generation)))
                })
                .await;
            if let Err(err) = dropped {
                tracing::error!(key = %key.name, "{err}");
            }
            for hook in due {
                let record = journal.recorder(&key.name, hook.event, hook.generation);
                let ran = hooks::run(
                    &key,
                    hook.event,
                    hook.generation,
                    &hooks_env,
                    &hook.done,
                    &*record,
                )
                .await;
                let metrics = crate::metrics::global();
                for _ in &ran.succeeded {
                    metrics.hook_run(&key.name, hook.event.as_str(), true);
                }
                if ran.result.is_err() {
                    metrics.hook_run(&key.name, hook.event.as_str(), false);
                    metrics.failure(&key.name, crate::metrics::FailureReason::HookFailed);
                }
                let attempts = hook.attempts + 1;
                let retry_at = clock::now() + backoff.jittered(attempts);
                let message = ran.result.as_ref().err().map(|err| {
                    format!(
                        "key {:?}: generation {} is in place, but {err} (attempt {attempts}; \
                         the daemon retries from {}, `run --once` at once)",
                        key.name,
                        hook.generation,
                        humantime::format_rfc3339_seconds(retry_at),
                    )
                });
                let recorded = journal
                    .update(&key.name, |r| {
                        let Some(entry) = r
                            .hooks
                            .iter_mut()
                            .find(|h| h.event == hook.event && h.generation == hook.generation)
                        else {
                            return;
                        };
                        match &ran.result {
                            Ok(()) => {
                                r.hooks.retain(|h| {
                                    !(h.event == hook.event && h.generation == hook.generation)
                                });
                            }
                            Err(err) => {
                                entry.attempts = attempts;
                                entry.running = None;
                                entry.done.extend(ran.succeeded.iter().cloned());
                                entry.done.sort();
                                entry.done.dedup();
                                entry.last_error = Some(err.clone());
                                entry.next_attempt = crate::schedule::format_time(retry_at);
                            }
                        }
                    })
                    .await;
                if let Err(err) = recorded {
                    tracing::error!(key = %key.name, "{err}");
                }
                match message {
                    Some(message) => {
                        tracing::error!(key = %key.name, "{message}");
                        failures.push((key.name.clone(), message));
                        break;
                    }
                    None => tracing::debug!(
                        key = %key.name,
                        event = hook.event.as_str(),
                        generation = hook.generation,
                        "onRotate hooks of the event done"
                    ),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(mut failed) => failures.append(&mut failed),
            Err(err) => {
                tracing::error!("a hook task failed: {err}");
                failures.push(("hooks".into(), format!("a hook task failed: {err}")));
            }
        }
    }
    failures
}

/// Removes the retry records of keys no manifest defines any more.
async fn forget_unknown_keys(keys: &[KeyPair], journal: &Journal) {
    let known: HashSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    for name in journal.snapshot().into_keys() {
        if !known.contains(name.as_str())
            && let Err(err) = journal.update(&name, |r| *r = Default::default()).await
        {
            tracing::error!(key = %name, "{err}");
        }
    }
}

/// The earliest retry of a failed key or hook.
fn next_retry(journal: &Journal) -> Option<SystemTime> {
    journal
        .snapshot()
        .values()
        .flat_map(|record| {
            let failure = record.failure.as_ref().map(retry::Failure::next_attempt);
            let hooks = record
                .hooks
                .iter()
                .filter(|h| h.attempts > 0)
                .map(retry::PendingHook::next_attempt);
            failure.into_iter().chain(hooks)
        })
        .min()
}

/// `keyprov run --once` / `keyprov rotate`: reconcile and print a summary line.
pub async fn run_once(config: &Config, rotate: Option<&RotateRequest>, wait: LockWait) -> Exit {
    let provider = Arc::new(AnyProvider::from_config(config));
    let report = reconcile(config, provider, rotate, Mode::Once, wait).await;
    if let Some(held) = &report.lock_held {
        crate::output::error(held);
        return report.exit();
    }
    // Every failure was logged once where it happened; the summary counts them.
    crate::outln!("keyprov: {report}");
    report.exit()
}

/// `keyprov plan`: print what `run --once` would do (with `json`, one JSON document on
/// stdout). Exit 3 when changes are pending.
pub async fn plan(config: &Config, json: bool) -> Exit {
    crate::output::set_json_stdout(json);
    let stores = Arc::new(new_stores(config));
    let mut pending = prepare(config, &stores, None).await;
    let mut exit = if pending.invalid {
        Exit::Invalid
    } else {
        Exit::Ok
    };
    // A key a prune set aside is restored, not generated anew (nor failed for its secret
    // scheduled for deletion): its plan is made afterwards.
    let restores =
        crate::prune_ledger::restorable(config, &pending.keys, &pending.failed, pending.now);
    pending
        .plans
        .retain(|p| !restores.iter().any(|r| r.key() == p.name));
    pending
        .failed
        .retain(|(name, _)| !restores.iter().any(|r| r.key() == name));
    let mut unobserved = 0;
    for (_, err) in &pending.failed {
        // A plan needs no credentials: keys whose secrets cannot be read without them are
        // shown as not planned, not as failures.
        if err.contains(crate::store::secrets_manager::NO_CREDENTIALS) {
            crate::output::note(format!("not planned: {err}"));
            unobserved += 1;
        } else {
            crate::output::error(err);
            exit = exit.max(Exit::KeyFailed);
        }
    }
    let changes =
        crate::spec_change::collect(&pending.keys, &pending.plans, &pending.observed, &stores)
            .await;

    let mut restore_lines: Vec<(String, String)> = restores
        .iter()
        .map(|r| (r.key().to_string(), r.to_string()))
        .collect();
    restore_lines.dedup_by(|a, b| a.0 == b.0);
    let prunes = crate::prune_ledger::planned(
        config,
        stores.secrets(),
        &pending.keys,
        &pending.frozen,
        pending.invalid,
        pending.now,
    )
    .await
    .unwrap_or_else(|err| {
        if err.contains(crate::store::secrets_manager::NO_CREDENTIALS) {
            crate::output::note(format!("orphans not planned: {err}"));
        } else {
            crate::output::error(&err);
            exit = exit.max(Exit::KeyFailed);
        }
        Vec::new()
    });
    let due_prunes = prunes.iter().filter(|p| p.due(pending.now)).count();
    let failed: HashSet<&str> = pending.failed.iter().map(|(n, _)| n.as_str()).collect();
    let converged = pending
        .keys
        .iter()
        .filter(|k| !failed.contains(k.name.as_str()))
        .count()
        - pending.plans.len()
        - restore_lines.len();
    let to_change = pending.plans.len() + restore_lines.len();
    if to_change > 0 || due_prunes > 0 {
        exit = exit.max(Exit::ChangesPending);
    }
    if json {
        let is_unobserved = |err: &str| err.contains(crate::store::secrets_manager::NO_CREDENTIALS);
        let document = serde_json::json!({
            "changes": restore_lines.iter().cloned()
                .chain(plan_lines(&pending.keys, &pending.plans, &changes))
                .map(|(key, action)| serde_json::json!({"key": key, "action": action}))
                .collect::<Vec<_>>(),
            "prunes": prunes.iter().map(|p| serde_json::json!({
                    "kind": p.orphan.kind(),
                    "location": p.orphan.location(),
                    "orphanedSince": crate::schedule::format_time(p.since),
                    "prunedAfter": crate::schedule::format_time(p.after),
                    "due": p.due(pending.now),
                }))
                .collect::<Vec<_>>(),
            "converged": converged,
            "failed": pending.failed.iter().filter(|(_, e)| !is_unobserved(e))
                .map(|(key, error)| serde_json::json!({"key": key, "error": error}))
                .collect::<Vec<_>>(),
            "notPlanned": pending.failed.iter().filter(|(_, e)| is_unobserved(e))
                .map(|(key, error)| serde_json::json!({"key": key, "reason": error}))
                .collect::<Vec<_>>(),
            "invalid": pending.invalid,
            "problems": pending.diagnostics.iter().map(super::diagnostic_json).collect::<Vec<_>>(),
            "nextRotations": next_rotations(&pending)
                .into_iter()
                .map(|(key, due, spread)| serde_json::json!({
                    "key": key,
                    "dueAt": crate::schedule::format_time(due.activate_at),
                    "publishAt": crate::schedule::format_time(due.publish_at),
                    "spreadSeconds": spread.as_secs(),
                }))
                .collect::<Vec<_>>(),
            "exitCode": exit.code(),
        });
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&document).expect("plan serializes")
        );
        return exit;
    }
    for (key, action) in
        restore_lines
            .iter()
            .cloned()
            .chain(plan_lines(&pending.keys, &pending.plans, &changes))
    {
        crate::outln!("{key}: {action}");
    }
    for prune in &prunes {
        crate::outln!("{}", prune.line(pending.now, config.reconcile.prune_after));
    }
    print_next_rotations(&pending);
    let mut summary = vec![format!("{converged} converged")];
    let failed_count = failed.len() - unobserved;
    if failed_count > 0 {
        summary.push(format!("{failed_count} failed (see the errors above)"));
    }
    if unobserved > 0 {
        summary.push(format!(
            "{unobserved} not planned for lack of AWS credentials"
        ));
    }
    if pending.invalid {
        summary.push("invalid manifests: their keys are left as they are (see above)".into());
    }
    if due_prunes > 0 {
        summary.push(format!(
            "{} to prune",
            crate::output::count(due_prunes, "orphan")
        ));
    }
    let clean = failed.is_empty() && !pending.invalid;
    if to_change == 0 && due_prunes == 0 && clean {
        crate::outln!(
            "No changes: {} converged.",
            crate::output::count(converged, "key")
        );
    } else {
        let head = if to_change == 0 && due_prunes == 0 {
            "No changes planned".to_string()
        } else if to_change == 0 {
            "Orphans to prune".to_string()
        } else {
            format!("{} to change", crate::output::count(to_change, "key"))
        };
        crate::outln!("{head}: {}.", summary.join(", "));
    }
    exit
}

/// For each converged key that rotates: when its next generation is published and activated,
/// and the spread ([`crate::schedule::spread`]) included in those times.
fn next_rotations(pending: &Pending) -> Vec<(String, crate::schedule::Due, Duration)> {
    let planned: HashSet<&str> = pending.plans.iter().map(|p| p.name.as_str()).collect();
    let mut found = Vec::new();
    for key in pending
        .keys
        .iter()
        .filter(|k| !planned.contains(k.name.as_str()))
    {
        let (Some(every), Some(Ok(outputs))) =
            (key.rotation.every, pending.observed.get(&key.name))
        else {
            continue;
        };
        let Some(current) = plan::authoritative(outputs).0 else {
            continue;
        };
        let Some(due) = plan::rotation_due(key, current.activates_at) else {
            continue;
        };
        found.push((
            key.name.clone(),
            due,
            crate::schedule::spread(&key.name, every),
        ));
    }
    found
}

fn print_next_rotations(pending: &Pending) {
    for (name, due, spread) in next_rotations(pending) {
        let every = pending
            .keys
            .iter()
            .find(|k| k.name == name)
            .and_then(|k| k.rotation.every)
            .unwrap_or_default();
        // With publishAhead, the publication (publish hooks, `next`) comes first.
        let published = if due.publish_at != due.activate_at {
            format!(
                ", published {}",
                humantime::format_rfc3339_seconds(due.publish_at)
            )
        } else {
            String::new()
        };
        crate::outln!(
            "{name}: no change; next rotation due {}{published} (spread +{} of up to {})",
            humantime::format_rfc3339_seconds(due.activate_at),
            humantime::format_duration(Duration::from_secs(spread.as_secs())),
            humantime::format_duration((every / 100).min(crate::schedule::MAX_SPREAD)),
        );
    }
}

/// One line per planned action, as `(key, action)`.
fn plan_lines(
    keys: &[KeyPair],
    plans: &[KeyPlan],
    changes: &HashMap<String, String>,
) -> Vec<(String, String)> {
    let by_name: std::collections::HashMap<&str, &KeyPair> =
        keys.iter().map(|k| (k.name.as_str(), k)).collect();
    let mut lines = Vec::new();
    for plan in plans {
        let key = by_name.get(plan.name.as_str());
        for action in &plan.actions {
            let target = match action {
                plan::Action::Repair { output, .. } | plan::Action::Prune { output, .. } => key
                    .and_then(|k| k.outputs.get(*output))
                    .map(|o| format!(" [{o}]"))
                    .unwrap_or_default(),
                plan::Action::Generate {
                    reason: plan::Reason::SpecChanged,
                    ..
                } => changes
                    .get(&plan.name)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            lines.push((plan.name.clone(), format!("{action}{target}")));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

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
