//! `keyprov run --once`, `keyprov plan` and `keyprov rotate`: load, observe, plan, execute.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::clock;
use crate::config::Config;
use crate::execute::{self, Limits, Stats};
use crate::exit::Exit;
use crate::manifest::KeyPair;
use crate::plan::{self, KeyPlan, RotateRequest};
use crate::provider::AnyProvider;
use crate::store;

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
}

impl Report {
    /// The exit code this report calls for.
    pub fn exit(&self) -> Exit {
        if self.invalid {
            Exit::Invalid
        } else if !self.failed.is_empty() {
            Exit::KeyFailed
        } else {
            Exit::Ok
        }
    }
}

fn limits(config: &Config) -> Limits {
    Limits {
        concurrency: config.reconcile.concurrency,
        max_requests_per_second: config.reconcile.max_requests_per_second,
    }
}

/// Reconciles every valid key once (or only `rotate.name` when rotating).
pub async fn reconcile(
    config: &Config,
    provider: Arc<AnyProvider>,
    rotate: Option<&RotateRequest>,
) -> Report {
    let started = std::time::Instant::now();
    let loaded = super::load_manifests(config);
    tracing::debug!(elapsed = ?started.elapsed(), keys = loaded.keys.len(), "manifests loaded");
    let mut report = Report {
        invalid: !loaded.is_valid(),
        ..Default::default()
    };
    let keys: Vec<KeyPair> = match rotate {
        Some(request) => match super::find_key(&loaded, &request.name) {
            Ok(key) => vec![key.clone()],
            Err(err) => {
                report.failed.push((request.name.clone(), err));
                return report;
            }
        },
        None => loaded.keys,
    };
    report.keys = keys.len();
    let now = clock::now();
    let observed = store::observe_all(&keys);
    tracing::debug!(elapsed = ?started.elapsed(), "outputs observed");
    for (name, result) in &observed {
        if let Err(err) = result {
            let message = format!("key {name:?}: cannot read its outputs: {err}");
            tracing::error!(key = %name, "{message}");
            report.failed.push((name.clone(), message));
        }
    }
    let plans = plan::plan(&keys, &observed, now, rotate);
    tracing::debug!(elapsed = ?started.elapsed(), changed = plans.len(), "planned");
    report.changed = plans.len();
    let stats = Arc::new(Stats::default());
    let outcomes =
        execute::execute(provider, &keys, plans, now, limits(config), stats.clone()).await;
    report.failed.extend(
        outcomes
            .into_iter()
            .filter_map(|o| o.result.err().map(|e| (o.name, e))),
    );
    report.failed.sort();
    report.provider_calls = stats.provider_calls.load(Ordering::Relaxed);
    report
}

/// `keyprov run --once` / `keyprov rotate`: reconcile and print a summary line.
pub async fn run_once(config: &Config, rotate: Option<&RotateRequest>) -> Exit {
    let provider = Arc::new(AnyProvider::from_config(config));
    let report = reconcile(config, provider, rotate).await;
    for (_, err) in &report.failed {
        eprintln!("error: {err}");
    }
    println!(
        "keyprov: {} keys, {} changed, {} failed, {} provider calls{}",
        report.keys,
        report.changed,
        report.failed.len(),
        report.provider_calls,
        if report.invalid {
            ", invalid manifests left untouched"
        } else {
            ""
        }
    );
    report.exit()
}

/// `keyprov plan`: print what `run --once` would do. Exit 3 when changes are pending.
pub fn plan(config: &Config) -> Exit {
    let loaded = super::load_manifests(config);
    let now = clock::now();
    let observed = store::observe_all(&loaded.keys);
    let mut exit = if loaded.is_valid() {
        Exit::Ok
    } else {
        Exit::Invalid
    };
    for (name, result) in &observed {
        if let Err(err) = result {
            eprintln!("error: {name}: cannot observe: {err}");
            exit = exit.max(Exit::KeyFailed);
        }
    }
    let plans = plan::plan(&loaded.keys, &observed, now, None);
    print_plans(&loaded.keys, &plans);
    let converged = loaded.keys.len() - plans.len();
    if plans.is_empty() {
        println!("No changes: {converged} keys converged.");
    } else {
        println!("{} keys to change, {converged} converged.", plans.len());
        exit = exit.max(Exit::ChangesPending);
    }
    exit
}

fn print_plans(keys: &[KeyPair], plans: &[KeyPlan]) {
    for plan in plans {
        let key = keys.iter().find(|k| k.name == plan.name);
        for action in &plan.actions {
            let target = match action {
                plan::Action::Repair { output, .. } | plan::Action::Prune { output, .. } => key
                    .and_then(|k| k.outputs.get(*output))
                    .map(|o| format!(" [{o}]"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            println!("{}: {action}{target}", plan.name);
        }
    }
}
