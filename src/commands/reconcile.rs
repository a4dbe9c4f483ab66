//! `keyprov run --once`, `keyprov plan` and `keyprov rotate`: parse what was asked, run the
//! pass ([`crate::reconcile`]) or show its plan, print, choose the exit code.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::KeyPair;
use crate::plan::{self, KeyPlan, RotateRequest};
use crate::provider::AnyProvider;
pub use crate::reconcile::LockWait;
use crate::reconcile::load::{Pending, prepare};
use crate::reconcile::{Mode, new_stores, reconcile};

/// `keyprov run --once`: reconcile and print a summary line.
pub async fn run_once(config: &Config, wait: LockWait) -> Exit {
    let provider = Arc::new(AnyProvider::from_config(config));
    summary(reconcile(config, provider, Mode::Once, wait).await)
}

/// Prints what a pass of `run --once` or `rotate` did; its exit code.
fn summary(report: crate::reconcile::Report) -> Exit {
    if let Some(held) = &report.lock_held {
        crate::output::error(held);
        return report.exit();
    }
    // Every failure was logged once where it happened; the summary counts them.
    crate::outln!("keyprov: {report}");
    report.exit()
}

/// `keyprov rotate NAME`: a name no manifest defines is a usage error (64), told before the
/// stateDir lock is waited for; otherwise the pass of [`run_once`] for that key, from the
/// manifests read for that check.
pub async fn rotate(config: &Config, request: &RotateRequest, wait: LockWait) -> Exit {
    // Read without reporting: the pass that follows reports the manifests' problems once.
    let loaded = crate::manifest::load_with(
        &config.manifests,
        &config.manifest_context(),
        crate::manifest::CacheUse::Read,
    );
    if let Some(message) = super::unknown_key(&loaded, &request.name) {
        crate::output::error(format_args!("rotate {}: {message}", request.name));
        return Exit::Usage;
    }
    let provider = Arc::new(AnyProvider::from_config(config));
    summary(crate::reconcile::rotate(config, provider, request, loaded, wait).await)
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
    let unproven =
        crate::secret_proof::plan_proofs(config, &stores, &pending.keys, &pending.observed).await;
    pending
        .plans
        .retain(|p| !unproven.iter().any(|(n, _)| *n == p.name));
    pending.failed.extend(unproven);
    let mut unobserved = 0;
    for (_, err) in &pending.failed {
        // A key whose outputs cannot be read is not planned, and `run --once` would fail it:
        // the exit says so too (1), so that a CI gate on `plan` never passes what `run`
        // fails. Missing credentials are told apart in the summary: the usual cause.
        if err.contains(crate::store::secrets_manager::NO_CREDENTIALS) {
            crate::output::error(format_args!("not planned: {err}"));
            unobserved += 1;
        } else {
            crate::output::error(err);
        }
        exit = exit.max(Exit::KeyFailed);
    }
    // A consumer does only what it can copy: the generations it would make wait for a writer.
    let held =
        super::consumer::restrict(config, &pending.keys, &pending.observed, &mut pending.plans);
    let never_made = held
        .iter()
        .filter(|(_, h)| *h == super::consumer::Held::NeverMade)
        .count();
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
        - restore_lines.len()
        - held.len();
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
                    "neverManagedHere": !p.managed_here,
                }))
                .collect::<Vec<_>>(),
            "converged": converged,
            "consumer": super::consumer::is_consumer(config),
            "waitingForWriter": held.iter()
                .filter_map(|(key, h)| match h {
                    super::consumer::Held::Waiting { generation } =>
                        Some(serde_json::json!({"key": key, "generation": generation})),
                    super::consumer::Held::NeverMade => None,
                })
                .collect::<Vec<_>>(),
            "neverMadeHere": held.iter()
                .filter(|(_, h)| *h == super::consumer::Held::NeverMade)
                .map(|(key, h)| serde_json::json!({"key": key, "reason": h.to_string()}))
                .collect::<Vec<_>>(),
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
                .map(|NextRotation { name, staged, due, spread }| serde_json::json!({
                    "key": name,
                    "dueAt": crate::schedule::format_time(due.activate_at),
                    "publishAt": crate::schedule::format_time(due.publish_at),
                    "spreadSeconds": spread.as_secs(),
                    "staged": staged.map(|(generation, at)| serde_json::json!({
                        "generation": generation,
                        "activatesAt": crate::schedule::format_time(at),
                    })),
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
    for (key, why) in &held {
        crate::outln!("{key}: {why}");
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
            "{unobserved} not planned for lack of AWS credentials (see the errors above)"
        ));
    }
    let waiting = held.len() - never_made;
    if waiting > 0 {
        summary.push(format!(
            "{} waiting for a writer (this host is a consumer)",
            crate::output::count(waiting, "key")
        ));
    }
    if never_made > 0 {
        summary.push(format!(
            "{} never made on this consumer (see above)",
            crate::output::count(never_made, "key")
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
    let clean = failed.is_empty() && !pending.invalid && held.is_empty();
    if to_change == 0 && due_prunes == 0 && clean {
        crate::outln!(
            "No changes: {} converged.",
            crate::output::count(converged, "key")
        );
    } else {
        let head = if to_change == 0 && due_prunes == 0 && !failed.is_empty() {
            "Not planned".to_string()
        } else if to_change == 0 && due_prunes == 0 {
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

/// A converged key's schedule as `plan` prints it.
struct NextRotation {
    name: String,
    /// The staged generation and when it activates.
    staged: Option<(u32, std::time::SystemTime)>,
    due: crate::schedule::Due,
    spread: Duration,
}

/// For each converged key that rotates: its [`plan::Upcoming`] events (a staged generation's
/// activation, and when the next rotation is published and activated, counted from that
/// activation) and the spread ([`crate::schedule::spread`]) included in those times.
fn next_rotations(pending: &Pending) -> Vec<NextRotation> {
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
        let upcoming = plan::upcoming(key, outputs);
        let Some(due) = upcoming.rotation else {
            continue;
        };
        found.push(NextRotation {
            name: key.name.clone(),
            staged: upcoming.staged,
            due,
            spread: crate::schedule::spread(&key.name, every),
        });
    }
    found
}

fn print_next_rotations(pending: &Pending) {
    for NextRotation {
        name,
        staged,
        due,
        spread,
    } in next_rotations(pending)
    {
        let every = pending
            .keys
            .iter()
            .find(|k| k.name == name)
            .and_then(|k| k.rotation.every)
            .unwrap_or_default();
        let staged = staged
            .map(|(generation, at)| {
                format!(
                    "generation {generation} staged, activates {}; ",
                    humantime::format_rfc3339_seconds(at)
                )
            })
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
            "{name}: no change; {staged}next rotation due {}{published} (spread +{} of up to {})",
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
            let change = match action {
                plan::Action::Generate {
                    reason: plan::Reason::SpecChanged,
                    ..
                } => changes
                    .get(&plan.name)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            // Outputs by what the manifest calls them (a directory, a secret id).
            let action = match key {
                Some(key) => action.describe(key).to_string(),
                None => action.to_string(),
            };
            lines.push((plan.name.clone(), format!("{action}{change}")));
        }
    }
    lines
}
