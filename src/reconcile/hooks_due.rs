//! The hooks after a pass: every key's journalled `onRotate` runs whose event happened and
//! whose retry time came, keys in parallel, each key's in order, never two of one key at once
//! (a run cut off by a crash is ended first).

use std::sync::Arc;

use super::Mode;
use super::journal::retry_later;
use crate::clock;
use crate::config::Config;
use crate::hooks;
use crate::manifest::KeyPair;
use crate::plan;
use crate::retry::{HookState, Journal};

/// Runs the hooks of every key whose recorded event happened and whose retry time has come
/// (at once outside the daemon's backoff); drops the superseded ones. Keys run in parallel,
/// each key's hooks in order. Returns the failures.
pub(super) async fn run_due_hooks<'a>(
    config: &Config,
    keys: &[KeyPair],
    journal: &Arc<Journal>,
    mode: Mode,
    metrics: &'static crate::metrics::Metrics,
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
