//! One reconcile pass as explicit phases over one value, the [`Pass`]: [`lock`] → [`load`]
//! (manifests, outputs observed, plans) → [`decide`] (what this pass may do) → [`publish`]
//! (every new generation written to every output and added to every JWK Set) → [`activate`]
//! (`current`/AWSCURRENT move, only for a generation published everywhere) → [`after`]
//! (retry journal, orphans, JWK Set removals, hooks, metrics) → [`Report`].
//!
//! The order is the invariant verifiers rely on: no signer can read a key as current before
//! the key's `jwks.json` and every aggregate that selects it trust it, and no `activate` hook
//! runs before that either (the shape of Secrets Manager's rotation: createSecret, setSecret,
//! testSecret, then finishSecret moves AWSCURRENT).

mod activate;
mod after;
mod decide;
mod due_keys;
pub mod execute;
mod hooks_due;
mod journal;
mod key_metrics;
pub mod load;
mod lock;
pub mod metered;
mod publish;
mod report;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use crate::config::Config;
use crate::manifest::Loaded;
use crate::metrics::Metrics;
use crate::plan::RotateRequest;
use crate::provider::AnyProvider;
use crate::retry::Journal;
use crate::store::Stores;
use execute::{Activation, KeyOutcome, Limits, Stats};
use load::Pending;
use metered::Metered;
pub use report::Report;

/// The stores of one reconcile, their AWS requests paced by `reconcile.maxRequestsPerSecond`
/// (shared with the provider).
pub fn new_stores(config: &Config) -> Stores {
    let limiter = crate::fleet::limiter::shared(config.reconcile.max_requests_per_second);
    let stores = Stores::new(config.aws.clone(), config.reconcile.scope.clone(), limiter)
        .with_sweep(&config.state_dir)
        .with_beacon(crate::store::secrets_manager::BeaconSettings::of(config));
    crate::secret_refusal::seed(&config.state_dir, stores.secrets());
    stores
}

fn limits(config: &Config) -> Limits {
    Limits {
        concurrency: config.reconcile.concurrency,
        max_requests_per_second: config.reconcile.max_requests_per_second,
    }
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

/// One reconcile pass: what each phase reads, and what it leaves for the next.
struct Pass<'a> {
    config: &'a Config,
    rotate: Option<&'a RotateRequest>,
    /// The daemon's due wake: only these keys (see [`reconcile_due`]).
    only: Option<&'a BTreeSet<String>>,
    mode: Mode,
    started: std::time::Instant,
    /// The provider's client getting ready (aborted when nothing is to be generated).
    warm_up: tokio::task::JoinHandle<()>,
    /// The provider, reporting to `metrics`.
    provider: Arc<Metered>,
    stores: Arc<Stores>,
    journal: Arc<Journal>,
    /// Where this pass reports what it did (the process's registry, reached only here).
    metrics: &'static Metrics,
    /// Counters of the executor.
    stats: Arc<Stats>,
    /// Manifests, observations and plans.
    pending: Pending,
    /// Failed keys left alone until their retry time.
    waiting: BTreeSet<String>,
    /// Keys refused before anything was done (restore refused, clock skew).
    refused: Vec<(String, String)>,
    /// Provider calls made to prove secrets' current versions.
    proofs: usize,
    /// Keys with a plan in this pass.
    changed: HashSet<String>,
    /// What publish and activate did to each planned key.
    outcomes: Vec<KeyOutcome>,
    /// Generations published in this pass that wait to become current.
    activations: Vec<Activation>,
    /// Keys a JWK Set could not take: their `activate` hooks wait.
    unpublished: HashSet<String>,
    /// What the changed keys hold after the pass.
    after: crate::observed::Observed,
    report: Report,
}

impl Pass<'_> {
    /// Whether this pass considers every valid key (not `rotate`'s one, not a due wake's few):
    /// only such a pass may prune, forget records or drop series of keys it did not see.
    fn every_key(&self) -> bool {
        self.rotate.is_none() && self.only.is_none()
    }
}

/// Reconciles every valid key once, holding the stateDir lock throughout, phase by phase (see
/// the module's documentation).
pub async fn reconcile(
    config: &Config,
    provider: Arc<AnyProvider>,
    mode: Mode,
    wait: LockWait,
) -> Report {
    run(config, provider, None, None, None, mode, wait).await
}

/// `keyprov rotate`: reconciles only `request.name` ([`reconcile`]'s pass), from `manifests`,
/// the manifests the command read to check the name before the lock. They are read again
/// when the lock was waited for: the keyprov that held it may have acted on newer ones (added
/// a key to a JWK Set, say) that this pass must not undo.
pub async fn rotate(
    config: &Config,
    provider: Arc<AnyProvider>,
    request: &RotateRequest,
    manifests: Loaded,
    wait: LockWait,
) -> Report {
    let mode = Mode::Once;
    run(
        config,
        provider,
        Some(request),
        None,
        Some(manifests),
        mode,
        wait,
    )
    .await
}

/// The daemon's due wake: reconciles only the keys in `due` (their JWK Sets and hooks
/// included), honouring backoff; no other key is observed, no secret listed, nothing pruned.
pub async fn reconcile_due(
    config: &Config,
    provider: Arc<AnyProvider>,
    due: &BTreeSet<String>,
    wait: LockWait,
) -> Report {
    let mode = Mode::Daemon {
        honor_backoff: true,
    };
    run(config, provider, None, Some(due), None, mode, wait).await
}

/// One pass; `manifests`, when given, were read before the lock (see [`rotate`]).
async fn run(
    config: &Config,
    provider: Arc<AnyProvider>,
    rotate: Option<&RotateRequest>,
    only: Option<&BTreeSet<String>>,
    manifests: Option<Loaded>,
    mode: Mode,
    wait: LockWait,
) -> Report {
    let lock = match lock::lock(config, wait).await {
        Ok(lock) => lock,
        Err(report) => return report,
    };
    let manifests = manifests.filter(|_| !lock.waited());
    let metrics = crate::metrics::global();
    let provider = Arc::new(Metered::new(provider, metrics));
    let mut pass = load::load(config, provider, metrics, rotate, only, manifests, mode).await;
    decide::decide(&mut pass).await;
    publish::publish(&mut pass).await;
    activate::activate(&mut pass).await;
    after::after_effects(&mut pass).await;
    report::finish(pass).await
}
