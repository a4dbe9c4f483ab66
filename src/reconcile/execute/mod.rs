//! The executor: runs each key's actions, keys in parallel (bounded), provider calls paced by
//! one shared rate limit, new versions written in batches by one writer ([`GroupCommit`]).
//! It runs in two steps of the pass: [`publish`] (every action up to the new generation,
//! written everywhere but not current) and [`activate`] (`current`/AWSCURRENT move, then the
//! rest). A failing key never stops the others.
//!
//! [`GroupCommit`]: crate::group_commit

mod copy;
mod key;
mod paced;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::manifest::KeyPair;
use crate::metrics::{FailureReason, Metrics};
use crate::plan::{Action, KeyPlan};
use crate::provider::Provider;
use crate::retry::Journal;
use crate::store::Stores;
use key::KeyContext;
use paced::Paced;

/// How hard the executor may push.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Provider requests in flight at once.
    pub concurrency: usize,
    /// Provider requests per second across all keys.
    pub max_requests_per_second: f64,
}

/// Where the executor keeps account: call counters, the retry records of the keys, and the
/// metrics the pass reports to.
#[derive(Clone)]
pub struct Ledger {
    /// Counters of this execution.
    pub stats: Arc<Stats>,
    /// Retry records; hooks are recorded here before their event happens.
    pub journal: Arc<Journal>,
    /// Where generations are counted.
    pub metrics: &'static Metrics,
}

/// A generation a key published in this pass that becomes current once every JWK Set holds
/// it, and the actions planned after it.
#[derive(Debug, Clone)]
pub struct Activation {
    /// Key name.
    pub name: String,
    /// The published generation.
    pub generation: u32,
    /// Outputs whose `current` moves to it (secrets last).
    pub outputs: Vec<usize>,
    /// It was copied (a generation made and activated elsewhere, adopted here: a consumer
    /// following its writer, an output catching up), not made current by this host.
    pub copied: bool,
    /// What the plan does once it is current (repairs, prunes).
    pub rest: Vec<Action>,
}

/// What happened to one key.
#[derive(Debug)]
pub struct KeyOutcome {
    /// Key name.
    pub name: String,
    /// `Err` with a message naming the key and what to do, and why, for metrics.
    pub result: Result<(), (String, FailureReason)>,
    /// After [`publish`]: the generation waiting for the activate step.
    pub activation: Option<Activation>,
}

/// Counters of one execution.
#[derive(Debug, Default)]
pub struct Stats {
    /// Provider calls made (generate and decrypt).
    pub provider_calls: AtomicUsize,
}

/// One key's work in one step.
enum Work {
    Publish(Vec<Action>),
    Activate(Activation),
}

/// The publish step: runs each plan up to its new generation, published on every output
/// (files `next`, secrets under their own label) and not current; returns one outcome per
/// planned key, with the [`Activation`] it waits for.
pub async fn publish<P: Provider>(
    provider: Arc<P>,
    stores: Arc<Stores>,
    keys: &[KeyPair],
    plans: Vec<KeyPlan>,
    now: SystemTime,
    limits: Limits,
    ledger: Ledger,
) -> Vec<KeyOutcome> {
    let work = plans
        .into_iter()
        .map(|p| (p.name, Work::Publish(p.actions)))
        .collect();
    run(provider, stores, keys, work, now, limits, ledger).await
}

/// The activate step: moves `current`/AWSCURRENT of each activation (files first, secrets
/// last), then runs the actions planned after it.
pub async fn activate<P: Provider>(
    provider: Arc<P>,
    stores: Arc<Stores>,
    keys: &[KeyPair],
    activations: Vec<Activation>,
    now: SystemTime,
    limits: Limits,
    ledger: Ledger,
) -> Vec<KeyOutcome> {
    let work = activations
        .into_iter()
        .map(|a| (a.name.clone(), Work::Activate(a)))
        .collect();
    run(provider, stores, keys, work, now, limits, ledger).await
}

/// Runs `work`, keys in parallel; one outcome per key, sorted by name.
async fn run<P: Provider>(
    provider: Arc<P>,
    stores: Arc<Stores>,
    keys: &[KeyPair],
    work: Vec<(String, Work)>,
    now: SystemTime,
    limits: Limits,
    ledger: Ledger,
) -> Vec<KeyOutcome> {
    let Ledger {
        stats,
        journal,
        metrics,
    } = ledger;
    let by_name: HashMap<&str, &KeyPair> = keys.iter().map(|k| (k.name.as_str(), k)).collect();
    // Only provider requests are bounded here: new versions queue for the one writer, so keys
    // waiting on the disk never leave the provider idle.
    let provider = Arc::new(Paced {
        inner: provider,
        requests: Arc::new(Semaphore::new(limits.concurrency.max(1))),
        limiter: stores.limiter().clone(),
        stats,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    for (name, work) in work {
        let Some(key) = by_name.get(name.as_str()) else {
            continue;
        };
        let key = (*key).clone();
        let (provider, stores, journal) = (provider.clone(), stores.clone(), journal.clone());
        let task_name = key.name.clone();
        let handle = tasks.spawn(async move {
            let ctx = KeyContext {
                key: &key,
                provider: &*provider,
                stores: &stores,
                journal: &journal,
                metrics,
                now,
                failure: std::sync::Mutex::new(None),
            };
            let done = match &work {
                Work::Publish(actions) => ctx.publish(actions).await,
                Work::Activate(activation) => ctx.activate(activation).await.map(|()| None),
            };
            let (result, activation) = match done {
                Ok(activation) => (Ok(()), activation),
                Err(err) => {
                    // Failures not from the provider are the outputs' (stores, retry records).
                    let reason = ctx.failure.lock().ok().and_then(|mut f| f.take());
                    (
                        Err((err, reason.unwrap_or(FailureReason::OutputWriteFailed))),
                        None,
                    )
                }
            };
            // A key with a generation to activate is reconciled once it is current.
            match (&result, &work, &activation) {
                (Ok(()), Work::Publish(actions), None) => {
                    tracing::info!(key = %key.name, actions = actions.len(), "reconciled")
                }
                (Ok(()), Work::Activate(a), _) => {
                    tracing::info!(key = %key.name, actions = a.rest.len() + 1, "reconciled")
                }
                (Ok(()), ..) => {}
                (Err((err, _)), ..) => tracing::error!(key = %key.name, "{err}"),
            }
            KeyOutcome {
                name: key.name,
                result,
                activation,
            }
        });
        names.insert(handle.id(), task_name);
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((id, outcome)) => {
                names.remove(&id);
                outcomes.push(outcome);
            }
            Err(err) => {
                // A panic is a bug, and the key it hit failed: never counted as success.
                let name = names.remove(&err.id()).unwrap_or_default();
                tracing::error!(key = %name, "the reconcile of this key panicked: {err}");
                outcomes.push(KeyOutcome {
                    result: Err((
                        format!(
                            "key {name:?}: internal error (the task panicked: {err}); nothing \
                             after the failing step was done. Please report this bug"
                        ),
                        FailureReason::Other,
                    )),
                    name,
                    activation: None,
                });
            }
        }
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    outcomes
}

/// `provider` for the requests a pass makes outside the key actions (the proofs of secret
/// versions, [`crate::secret_proof`]): each one that goes out waits for the process's rate
/// limit of `stores` like the actions' requests, one at a time; an answer the provider
/// remembers takes no token. Not counted among the pass's provider calls (proofs are
/// reported on their own).
pub fn paced_outside_actions<P: Provider>(provider: Arc<P>, stores: &Stores) -> impl Provider {
    Paced {
        inner: provider,
        requests: Arc::new(Semaphore::new(1)),
        limiter: stores.limiter().clone(),
        stats: Arc::new(Stats::default()),
    }
}

/// A token bucket of one second's worth of requests.
pub fn rate_limiter(per_second: f64) -> DefaultDirectRateLimiter {
    let per_second = per_second.clamp(0.001, 1_000_000.0);
    let burst = NonZeroU32::new(per_second.ceil() as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
        .expect("period is positive")
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{DecryptRequest, GenerateRequest, PrivateKey};
    use std::path::Path;

    #[test]
    fn rate_limiter_allows_one_second_of_burst_then_paces() {
        let limiter = rate_limiter(5.0);
        for i in 0..5 {
            assert!(limiter.check().is_ok(), "request {i} of the burst");
        }
        assert!(
            limiter.check().is_err(),
            "the sixth request within the same instant waits"
        );
        let slow = rate_limiter(0.5);
        assert!(slow.check().is_ok());
        assert!(
            slow.check().is_err(),
            "below one per second the burst is one"
        );
    }

    /// The one key named `name` (a P-256 pair with a file output), `state` its stateDir.
    fn one_key(state: &Path, name: &str) -> KeyPair {
        let manifest = format!(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {{name: {name}}}\n\
             spec: {{keyPairSpec: ECC_NIST_P256, kmsKeyId: alias/k, outputs: [{{file: {{}}}}]}}\n"
        );
        let ctx = crate::manifest::Context {
            state_dir: state,
            output_roots: &[],
            hooks_allowed: &[],
            check_hooks_allowed: true,
        };
        let loaded = crate::manifest::load_bytes(Path::new("m.yaml"), manifest.as_bytes(), &ctx);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        loaded.keys.into_iter().next().unwrap()
    }

    /// Stores of a default configuration, their AWS requests paced by `limiter`.
    fn stores(limiter: Arc<DefaultDirectRateLimiter>) -> Stores {
        let config = crate::config::Config::from_bytes(
            Path::new("c.yaml"),
            b"manifests: [m]\nstateDir: /tmp/s\n",
        )
        .unwrap();
        Stores::new(config.aws, "default".into(), limiter)
    }

    /// A provider with a bug: every call panics.
    struct PanickingProvider;

    impl Provider for PanickingProvider {
        fn name(&self) -> &'static str {
            "panicking"
        }

        async fn generate(
            &self,
            _: &GenerateRequest<'_>,
        ) -> Result<crate::provider::GeneratedPair, crate::provider::ProviderError> {
            panic!("a bug in the provider")
        }

        async fn decrypt(
            &self,
            _: &DecryptRequest<'_>,
        ) -> Result<PrivateKey, crate::provider::ProviderError> {
            panic!("a bug in the provider")
        }
    }

    #[tokio::test]
    async fn a_panicking_key_task_is_a_failed_key() {
        let state = tempfile::tempdir().unwrap();
        let keys = vec![one_key(state.path(), "boom")];
        let stores = Arc::new(stores(Arc::new(rate_limiter(100.0))));
        let observed = stores.observe_all(&keys).await;
        let now = SystemTime::now();
        let plans = crate::plan::plan(&keys, &observed, now, None);
        let limits = Limits {
            concurrency: 2,
            max_requests_per_second: 100.0,
        };
        let ledger = Ledger {
            metrics: crate::metrics::global(),
            stats: Arc::default(),
            journal: Arc::new(crate::retry::Journal::load(crate::retry::RetryStore::new(
                state.path(),
            ))),
        };
        let outcomes = publish(
            Arc::new(PanickingProvider),
            stores,
            &keys,
            plans,
            now,
            limits,
            ledger,
        )
        .await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].name, "boom");
        let (err, reason) = outcomes[0].result.as_ref().unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        assert_eq!(*reason, FailureReason::Other);
    }

    /// A Decrypt the pass already made (the decide phase's proof of a secret's version) and
    /// the copy asks again is answered from the pass's cache: not a provider call, and no
    /// token of the rate limit.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_decrypt_answered_from_the_pass_cache_is_neither_counted_nor_paced() {
        let state = tempfile::tempdir().unwrap();
        let key = one_key(state.path(), "copied");
        let local = crate::provider::local::LocalProvider::new(state.path().join("keyring"));
        let provider = Arc::new(crate::reconcile::metered::Metered::new(
            Arc::new(crate::provider::AnyProvider::Local(local)),
            crate::metrics::global(),
        ));
        // Two tokens in all, none back within the test.
        let limiter = Arc::new(RateLimiter::direct(
            Quota::with_period(Duration::from_secs(3600))
                .unwrap()
                .allow_burst(NonZeroU32::new(2).unwrap()),
        ));
        let stores = stores(limiter.clone());
        let stats = Arc::new(Stats::default());
        let journal = Journal::load(crate::retry::RetryStore::new(state.path()));
        let paced = Paced {
            inner: provider.clone(),
            requests: Arc::new(Semaphore::new(1)),
            limiter: limiter.clone(),
            stats: stats.clone(),
        };
        let ctx = KeyContext {
            key: &key,
            provider: &paced,
            stores: &stores,
            journal: &journal,
            metrics: crate::metrics::global(),
            now: SystemTime::now(),
            failure: std::sync::Mutex::new(None),
        };
        // Generation 1 (a provider call), then the decide phase's proof of it: one Decrypt,
        // remembered for the pass.
        let version = ctx.generate(1, ctx.now).await.unwrap();
        let refuse = crate::binding::Unbound::Refuse;
        crate::binding::prove(&*provider, &key, &version, 1, refuse)
            .await
            .unwrap();
        // The copy proves the same version again before it writes it.
        ctx.prove(version, 1, "the secret").await.unwrap();
        assert_eq!(
            stats
                .provider_calls
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the generation only: a cached answer is not a provider call"
        );
        assert!(
            limiter.check().is_ok(),
            "a cached answer takes no token of the rate limit"
        );
    }

    /// The proofs of secret versions (made outside the key actions) wait for the same rate
    /// limit: a Decrypt that goes out takes a token, one the pass remembers takes none.
    #[tokio::test(flavor = "multi_thread")]
    async fn proofs_outside_the_actions_take_the_rate_limit_tokens_of_their_requests() {
        let state = tempfile::tempdir().unwrap();
        let key = one_key(state.path(), "proven");
        let local = crate::provider::local::LocalProvider::new(state.path().join("keyring"));
        let provider = Arc::new(crate::reconcile::metered::Metered::new(
            Arc::new(crate::provider::AnyProvider::Local(local)),
            crate::metrics::global(),
        ));
        // Two tokens in all, none back within the test.
        let limiter = Arc::new(RateLimiter::direct(
            Quota::with_period(Duration::from_secs(3600))
                .unwrap()
                .allow_burst(NonZeroU32::new(2).unwrap()),
        ));
        let stores = stores(limiter.clone());
        let journal = Journal::load(crate::retry::RetryStore::new(state.path()));
        let unpaced = Paced {
            inner: provider.clone(),
            requests: Arc::new(Semaphore::new(1)),
            limiter: Arc::new(rate_limiter(1000.0)),
            stats: Arc::default(),
        };
        let ctx = KeyContext {
            key: &key,
            provider: &unpaced,
            stores: &stores,
            journal: &journal,
            metrics: crate::metrics::global(),
            now: SystemTime::now(),
            failure: std::sync::Mutex::new(None),
        };
        let version = ctx.generate(1, ctx.now).await.unwrap();
        let proofs = paced_outside_actions(provider.clone(), &stores);
        let refuse = crate::binding::Unbound::Refuse;
        crate::binding::prove(&proofs, &key, &version, 1, refuse)
            .await
            .unwrap();
        assert!(limiter.check().is_ok(), "one of two tokens left");
        assert!(
            limiter.check().is_err(),
            "the proof's Decrypt took the other"
        );
        // Asked again, the answer is remembered: no token needed (none is left).
        crate::binding::prove(&proofs, &key, &version, 1, refuse)
            .await
            .unwrap();
    }
}
