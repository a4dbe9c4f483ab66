//! `keyprov run --once`, `keyprov plan` and `keyprov rotate`: load, observe, plan, execute.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::clock;
use crate::config::Config;
use crate::execute::{self, Limits, Stats};
use crate::exit::Exit;
use crate::lock;
use crate::manifest::KeyPair;
use crate::plan::{self, KeyPlan, RotateRequest};
use crate::provider::AnyProvider;
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
}

impl std::fmt::Display for Report {
    /// One line: `N keys, N changed, N failed, N provider calls[, invalid manifests ...]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} keys, {} changed, {} failed, {} provider calls{}",
            self.keys,
            self.changed,
            self.failed.len(),
            self.provider_calls,
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
        hooks_env: config.hooks_env.clone().into(),
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
}

/// Loads, observes and plans every valid key (or only `rotate.name` when rotating).
async fn prepare(config: &Config, stores: &Stores, rotate: Option<&RotateRequest>) -> Pending {
    let started = std::time::Instant::now();
    let loaded = super::load_manifests(config);
    tracing::debug!(elapsed = ?started.elapsed(), keys = loaded.keys.len(), "manifests loaded");
    let mut pending = Pending {
        invalid: !loaded.is_valid(),
        keys: Vec::new(),
        now: clock::now(),
        plans: Vec::new(),
        failed: Vec::new(),
        next_event: None,
        frozen: loaded.frozen.clone(),
    };
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
    for (name, result) in &observed {
        if let Err(err) = result {
            let message = if err.starts_with("key ") {
                err.clone()
            } else {
                format!("key {name:?}: cannot read its outputs: {err}")
            };
            tracing::error!(key = %name, "{message}");
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

/// Reconciles every valid key once (or only `rotate.name` when rotating), holding the
/// stateDir lock throughout. With `schedule`, the report's `next_event` also covers the keys
/// just changed (one more observation of them).
pub async fn reconcile(
    config: &Config,
    provider: Arc<AnyProvider>,
    rotate: Option<&RotateRequest>,
    schedule: bool,
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
            return Report {
                failed: vec![("stateDir".into(), err.to_string())],
                ..Report::default()
            };
        }
        Err(err) => {
            return Report {
                failed: vec![("stateDir".into(), format!("cannot take the lock: {err}"))],
                ..Report::default()
            };
        }
    };
    let warm_up = tokio::spawn({
        let provider = provider.clone();
        async move { provider.warm_up().await }
    });
    let stores = Arc::new(new_stores(config));
    let pending = prepare(config, &stores, rotate).await;
    if pending.plans.is_empty() {
        // Converged: no call will be made, so the client is not worth finishing.
        warm_up.abort();
    }
    let mut report = Report {
        keys: pending.keys.len(),
        changed: pending.plans.len(),
        failed: pending.failed,
        invalid: pending.invalid,
        provider_calls: 0,
        next_event: pending.next_event,
        lock_held: None,
    };
    // Only the daemon's timer needs to know which keys to look at again afterwards.
    let changed: HashSet<String> = if schedule {
        pending.plans.iter().map(|p| p.name.clone()).collect()
    } else {
        HashSet::new()
    };
    let stats = Arc::new(Stats::default());
    let outcomes = execute::execute(
        provider,
        stores.clone(),
        &pending.keys,
        pending.plans,
        pending.now,
        limits(config),
        stats.clone(),
    )
    .await;
    report.failed.extend(
        outcomes
            .into_iter()
            .filter_map(|o| o.result.err().map(|e| (o.name, e))),
    );
    if config.reconcile.prune && rotate.is_none() {
        prune_orphans(
            config,
            &stores,
            &pending.keys,
            &pending.frozen,
            pending.invalid,
            &mut report,
        )
        .await;
    }
    report.failed.sort();
    report.provider_calls = stats.provider_calls.load(Ordering::Relaxed);
    // What the changed keys wait for next can only be read after their changes.
    let now = clock::now();
    let mut after = None;
    for key in pending
        .keys
        .iter()
        .filter(|key| changed.contains(&key.name))
    {
        if let Ok(outputs) = stores.observe_key(key).await {
            after = after
                .into_iter()
                .chain(plan::next_event(key, &outputs, now))
                .min();
        }
    }
    stores.finish().await;
    report.next_event = report.next_event.into_iter().chain(after).min();
    report
}

/// `reconcile.prune`: removes the orphans, unless some manifest did not load (its keys might
/// look like orphans).
async fn prune_orphans(
    config: &Config,
    stores: &Stores,
    keys: &[KeyPair],
    frozen: &std::collections::BTreeSet<String>,
    invalid: bool,
    report: &mut Report,
) {
    if invalid || !frozen.is_empty() {
        tracing::warn!(
            "reconcile.prune skipped: a manifest failed to load, so its keys could look like orphans; fix it first"
        );
        return;
    }
    let orphans = match crate::orphans::find(config, keys, frozen, stores.secrets()).await {
        Ok(orphans) => orphans,
        Err(err) => {
            report
                .failed
                .push(("orphans".into(), format!("cannot list orphans: {err}")));
            return;
        }
    };
    for (orphan, result) in crate::orphans::prune(config, &orphans, stores.secrets()).await {
        match result {
            Ok(()) => tracing::info!(%orphan, "pruned an orphan (no manifest defines its key)"),
            Err(err) => report.failed.push((
                orphan.to_string(),
                format!("cannot prune orphan {orphan}: {err}"),
            )),
        }
    }
}

/// `keyprov run --once` / `keyprov rotate`: reconcile and print a summary line.
pub async fn run_once(config: &Config, rotate: Option<&RotateRequest>, wait: LockWait) -> Exit {
    let provider = Arc::new(AnyProvider::from_config(config));
    let report = reconcile(config, provider, rotate, false, wait).await;
    if let Some(held) = &report.lock_held {
        crate::errln!("error: {held}");
        return report.exit();
    }
    for (_, err) in &report.failed {
        crate::errln!("error: {err}");
    }
    crate::outln!("keyprov: {report}");
    report.exit()
}

/// `keyprov plan`: print what `run --once` would do. Exit 3 when changes are pending.
pub async fn plan(config: &Config) -> Exit {
    let stores = Arc::new(new_stores(config));
    let pending = prepare(config, &stores, None).await;
    let mut exit = if pending.invalid {
        Exit::Invalid
    } else {
        Exit::Ok
    };
    let mut unobserved = 0;
    for (_, err) in &pending.failed {
        // A plan needs no credentials: keys whose secrets cannot be read without them are
        // shown as not planned, not as failures.
        if err.contains(crate::store::secrets_manager::NO_CREDENTIALS) {
            crate::errln!("note: not planned: {err}");
            unobserved += 1;
        } else {
            crate::errln!("error: {err}");
            exit = exit.max(Exit::KeyFailed);
        }
    }
    print_plans(&pending.keys, &pending.plans);
    let failed: HashSet<&str> = pending.failed.iter().map(|(n, _)| n.as_str()).collect();
    let converged = pending
        .keys
        .iter()
        .filter(|k| !failed.contains(k.name.as_str()))
        .count()
        - pending.plans.len();
    let not_planned = if failed.is_empty() {
        String::new()
    } else {
        format!(
            ", {} not planned ({unobserved} for lack of AWS credentials)",
            failed.len()
        )
    };
    if pending.plans.is_empty() {
        crate::outln!("No changes: {converged} keys converged{not_planned}.");
    } else {
        crate::outln!(
            "{} keys to change, {converged} converged{not_planned}.",
            pending.plans.len()
        );
        exit = exit.max(Exit::ChangesPending);
    }
    exit
}

fn print_plans(keys: &[KeyPair], plans: &[KeyPlan]) {
    let by_name: std::collections::HashMap<&str, &KeyPair> =
        keys.iter().map(|k| (k.name.as_str(), k)).collect();
    for plan in plans {
        let key = by_name.get(plan.name.as_str());
        for action in &plan.actions {
            let target = match action {
                plan::Action::Repair { output, .. } | plan::Action::Prune { output, .. } => key
                    .and_then(|k| k.outputs.get(*output))
                    .map(|o| format!(" [{o}]"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            crate::outln!("{}: {action}{target}", plan.name);
        }
    }
}
