//! The load, observe and plan phases: manifests loaded and validated, every output of the
//! considered keys observed (clock readings guarded), and their plans made ([`Pending`], also
//! what `keyprov plan` shows).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::metered::Metered;
use super::{Mode, Pass, Report};
use crate::clock;
use crate::config::Config;
use crate::key_events::KeyEvents;
use crate::manifest::{CacheUse, KeyPair, Loaded};
use crate::metrics::Metrics;
use crate::plan::{self, KeyPlan, RotateRequest};
use crate::retry::{Journal, RetryStore};
use crate::store::Stores;

/// Starts a pass: loads, observes and plans (see [`prepare`]); the provider's client warms up
/// meanwhile.
pub(super) async fn load<'a>(
    config: &'a Config,
    provider: Arc<Metered>,
    metrics: &'static Metrics,
    rotate: Option<&'a RotateRequest>,
    only: Option<&'a BTreeSet<String>>,
    manifests: Option<Loaded>,
    mode: Mode,
) -> Pass<'a> {
    let started = std::time::Instant::now();
    let warm_up = tokio::spawn({
        let provider = provider.clone();
        async move { provider.warm_up().await }
    });
    let stores = super::new_stores(config).with_fingerprints(&config.state_dir);
    let stores = Arc::new(match mode {
        Mode::Daemon { .. } => stores.with_turns(&config.fleet),
        Mode::Once => stores,
    });
    let journal = Arc::new(Journal::load(RetryStore::new(&config.state_dir)));
    let pending = prepare_some(
        config,
        &stores,
        rotate,
        only,
        manifests,
        Problems::Report,
        CacheUse::Write,
    )
    .await;
    // Every key observed, none held: the stamps of derived files this pass does not touch
    // belong to no key any more.
    if only.is_none()
        && rotate.is_none()
        && !pending.invalid
        && pending.frozen.is_empty()
        && pending.failed.is_empty()
        && let Some(fingerprints) = stores.fingerprints()
    {
        fingerprints.looked_at_everything();
    }
    Pass {
        config,
        rotate,
        only,
        mode,
        started,
        warm_up,
        provider,
        stores,
        journal,
        metrics,
        stats: Arc::default(),
        pending,
        waiting: Default::default(),
        refused: Vec::new(),
        proofs: 0,
        changed: HashSet::new(),
        outcomes: Vec::new(),
        activations: Vec::new(),
        unpublished: HashSet::new(),
        after: Default::default(),
        report: Report::default(),
    }
}

/// What `plan` shows and `run` executes: the keys considered, their plans, and who could not
/// be planned.
pub struct Pending {
    pub invalid: bool,
    pub keys: Vec<KeyPair>,
    pub now: std::time::SystemTime,
    pub plans: Vec<KeyPlan>,
    pub failed: Vec<(String, String)>,
    /// The earliest next event among keys with nothing to do now.
    pub next_event: Option<std::time::SystemTime>,
    /// The next event of each key with nothing to do now.
    pub key_events: KeyEvents,
    /// Keys whose manifest did not load.
    pub frozen: std::collections::BTreeSet<String>,
    /// What each key's outputs held before any change.
    pub observed: crate::observed::Observed,
    /// Every manifest problem.
    pub diagnostics: Vec<crate::manifest::Diagnostic>,
    /// Every manifest file read, and whether it is valid.
    pub file_validity: Vec<(std::path::PathBuf, bool)>,
    /// Every valid key, also when only one is considered (`rotate`): for the JWK Sets.
    pub all_keys: Vec<KeyPair>,
    /// Versions whose recorded times were not used as they are (see `clock_guard`).
    pub clock_notes: Vec<crate::clock_guard::Note>,
}

/// Loads, observes and plans every valid key (or only `rotate.name` when rotating).
pub async fn prepare(config: &Config, stores: &Stores, rotate: Option<&RotateRequest>) -> Pending {
    prepare_some(
        config,
        stores,
        rotate,
        None,
        None,
        Problems::Report,
        CacheUse::Read,
    )
    .await
}

/// Whether a pass prints the manifests' problems (and the "invalid manifests" warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problems {
    /// Print them: the first reading of the manifests in this pass.
    Report,
    /// Already told: the pass reads them again after a restore.
    Quiet,
}

/// [`prepare`], of only the keys named in `only` when given (the daemon's due wakes): those are
/// observed one by one, the scope's secrets never listed. `manifests`, when given, were read
/// already (by `rotate`, before the lock); otherwise they are read here, with the parse cache
/// used as `cache` says (written only by a pass, which holds the stateDir lock).
pub(super) async fn prepare_some(
    config: &Config,
    stores: &Stores,
    rotate: Option<&RotateRequest>,
    only: Option<&BTreeSet<String>>,
    manifests: Option<Loaded>,
    problems: Problems,
    cache: CacheUse,
) -> Pending {
    let started = std::time::Instant::now();
    // A due wake follows a full pass that told the manifests' problems, and any change to
    // the manifests makes a full pass of its own: told again at every due wake, each invalid
    // manifest was logged once per rotation of every other key.
    let told = problems == Problems::Quiet || only.is_some();
    let mut loaded = manifests.unwrap_or_else(|| {
        crate::manifest::load_with(&config.manifests, &config.manifest_context(), cache)
    });
    if !told {
        crate::commands::tell_manifest_problems(&loaded);
    }
    tracing::debug!(elapsed = ?started.elapsed(), keys = loaded.keys.len(), "manifests loaded");
    if let Some(problem) = crate::prune_ledger::scope_problem(config, &loaded.keys) {
        // A configuration error: nothing is touched until it is fixed.
        if !told {
            crate::commands::report(std::slice::from_ref(&problem));
        }
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
        key_events: KeyEvents::default(),
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
        Some(request) => match crate::commands::find_key(&loaded, &request.name) {
            Ok(key) => vec![key.clone()],
            Err(err) => {
                pending.failed.push((request.name.clone(), err));
                return pending;
            }
        },
        None => loaded.keys,
    };
    if let Some(only) = only {
        pending.keys.retain(|key| only.contains(&key.name));
    }
    let mut observed = match only {
        None => stores.observe_all(&pending.keys).await,
        Some(_) => super::due_keys::observe_each(stores, &pending.keys).await,
    };
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
    pending.key_events = next_events(converged, &observed, pending.now);
    pending.next_event = pending.key_events.earliest();
    tracing::debug!(elapsed = ?started.elapsed(), changed = pending.plans.len(), "planned");
    pending.observed = observed;
    crate::progress::beat();
    pending
}

/// The [`plan::next_event`] of each of `keys`.
fn next_events<'a>(
    keys: impl Iterator<Item = &'a KeyPair>,
    observed: &crate::observed::Observed,
    now: std::time::SystemTime,
) -> KeyEvents {
    let mut events = KeyEvents::default();
    for key in keys {
        if let Some(Ok(outputs)) = observed.get(&key.name)
            && let Some(at) = plan::next_event(key, outputs, now)
        {
            events.add(&key.name, at);
        }
    }
    events
}
