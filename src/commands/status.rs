//! `keyprov status`: every key's generation, spec, age, next rotation and outputs, and the
//! orphans whose manifest is gone.

use std::time::SystemTime;

use serde::Serialize;

use crate::clock;
use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::{KeyPair, Output};
use crate::observed::ObservedOutput;
use crate::plan;
use crate::schedule::format_time;
use crate::store::file;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyStatus {
    name: String,
    generation: Option<u32>,
    key_pair_spec: String,
    kms_key_arn: Option<String>,
    created_at: Option<String>,
    next_rotation: Option<String>,
    /// When the next scheduled generation is published (`nextRotation` − publishAhead;
    /// `publish` hooks run then); null when the key never rotates. While one is staged
    /// (`next`), both count from its activation (`nextActivatesAt`).
    next_publish_at: Option<String>,
    next: Option<u32>,
    /// When the staged generation (`next`) becomes current.
    next_activates_at: Option<String>,
    state: &'static str,
    /// A current generation exists and every output holds it (as `keyprov_key_ready`).
    ready: bool,
    error: Option<String>,
    outputs: Vec<OutputStatus>,
    /// The key's retry record: its last failure and the daemon's next attempt, and hooks
    /// that have not succeeded yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<crate::retry::RetryRecord>,
    /// Versions whose recorded times were not used as they are: a clock was wrong (see
    /// `clock_guard`).
    clock_warnings: Vec<String>,
    /// Versions its secrets hold that keyprov refused (forged, replayed, not keyprov's): not
    /// used, listed until someone removes them.
    refused: Vec<String>,
}

impl KeyStatus {
    /// A key in `state` about which nothing has been observed yet.
    fn unknown(name: &str, spec: &str, state: &'static str) -> Self {
        KeyStatus {
            name: name.to_string(),
            generation: None,
            key_pair_spec: spec.into(),
            kms_key_arn: None,
            created_at: None,
            next_rotation: None,
            next_publish_at: None,
            next: None,
            next_activates_at: None,
            state,
            ready: false,
            error: None,
            outputs: Vec::new(),
            retry: None,
            clock_warnings: Vec::new(),
            refused: Vec::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputStatus {
    kind: &'static str,
    location: String,
    generation: Option<u32>,
}

#[derive(Serialize)]
struct Status {
    keys: Vec<KeyStatus>,
    orphans: Vec<OrphanStatus>,
    /// This host's `fleet.role`.
    fleet: crate::fleet::RoleStatus,
}

fn key_status(
    key: &KeyPair,
    observed: &Result<Vec<ObservedOutput>, String>,
    secret_meta: Option<crate::store::VersionMeta>,
    now: SystemTime,
) -> KeyStatus {
    let mut status = KeyStatus::unknown(&key.name, key.spec.as_str(), "failed");
    status.outputs = key
        .outputs
        .iter()
        .map(|o| OutputStatus {
            kind: o.kind(),
            location: o.location(),
            generation: None,
        })
        .collect();
    let outputs = match observed {
        Ok(outputs) => outputs,
        Err(err) => {
            status.error = Some(err.clone());
            return status;
        }
    };
    for (slot, output) in status.outputs.iter_mut().zip(outputs) {
        slot.generation = output.current.as_ref().map(|c| c.generation);
        status.refused.extend(output.refused.iter().map(|r| {
            format!(
                "{}:{} version {}{} was refused (forged, replayed or not keyprov's) and is not \
                 used; remove it once you know who wrote it",
                slot.kind,
                slot.location,
                r.version_id,
                r.generation
                    .map(|g| format!(" (generation {g}'s version id)"))
                    .unwrap_or_default()
            )
        }));
    }
    let (current, next) = plan::authoritative(outputs);
    status.next = next.map(|n| n.generation);
    status.next_activates_at = next.map(|n| format_time(n.activates_at));
    if let Some(current) = current {
        status.generation = Some(current.generation);
        status.created_at = Some(format_time(current.created_at));
        // As `plan` and the metrics count it (and `run` acts): from the staged generation
        // when one waits.
        let due = plan::upcoming(key, outputs).rotation;
        status.next_rotation = due.map(|d| format_time(d.activate_at));
        status.next_publish_at = due.map(|d| format_time(d.publish_at));
        let meta = key
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::File(f) => file::read_meta(&f.dir, current.generation).ok(),
                Output::SecretsManager(_) => None,
            })
            .or(secret_meta);
        if let Some(meta) = meta {
            status.key_pair_spec = meta.key_pair_spec;
            status.kms_key_arn = Some(meta.kms_key_arn);
        }
    }
    status.ready = status.generation.is_some()
        && status
            .outputs
            .iter()
            .all(|o| o.generation == status.generation);
    status.state = if plan::plan_key(key, outputs, now, None).is_empty() {
        "converged"
    } else {
        "pending"
    };
    status
}

/// The meta of the current version of a key without file outputs, read from its secret (a
/// key with a file output reads its meta.json instead).
async fn secret_only_meta(
    stores: &crate::store::Stores,
    key: &KeyPair,
    observed: &Result<Vec<ObservedOutput>, String>,
) -> Option<crate::store::VersionMeta> {
    if key.outputs.iter().any(|o| matches!(o, Output::File(_))) {
        return None;
    }
    let current = plan::authoritative(observed.as_ref().ok()?).0?.generation;
    for index in 0..key.outputs.len() {
        if let Ok(version) = stores.read_version(key, index, current).await {
            return Some(version.meta);
        }
    }
    None
}

/// An orphan as `status --json` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrphanStatus {
    kind: &'static str,
    location: String,
    /// With `reconcile.prune`: when a reconcile prunes it (`reconcile.pruneAfter` after it was
    /// first seen orphaned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pruned_after: Option<String>,
}

/// Prints the status table, or JSON with `--json`. Exit 2 when a manifest is invalid, else 1
/// when any key is failed (cannot be observed) or failing (see [`is_failing`]).
pub async fn status(config: &Config, json: bool) -> Exit {
    let loaded = super::load_manifests(config);
    let now = clock::now();
    let stores = std::sync::Arc::new(crate::reconcile::new_stores(config));
    let mut observed = stores.observe_all(&loaded.keys).await;
    let clock_notes = crate::clock_guard::guard(
        &mut observed,
        &loaded.keys,
        now,
        config.reconcile.clock_tolerance,
        &crate::clock_guard::load_anchors(&config.state_dir),
    );
    let mut failed_orphans = None;
    let orphans =
        match crate::orphans::find(config, &loaded.keys, &loaded.frozen, stores.secrets()).await {
            Ok(found) => crate::prune_ledger::schedule(
                found,
                &crate::prune_ledger::load(config),
                now,
                config.reconcile.prune_after,
            )
            .into_iter()
            .map(|p| OrphanStatus {
                kind: p.orphan.kind(),
                location: p.orphan.location(),
                pruned_after: p.prunes_at(config.reconcile.prune).map(format_time),
            })
            .collect(),
            Err(err) => {
                failed_orphans = Some(format!("cannot list orphan secrets: {err}"));
                Vec::new()
            }
        };
    let mut retries = crate::retry::RetryStore::new(&config.state_dir).load_all();
    let mut keys = Vec::with_capacity(loaded.keys.len());
    for key in &loaded.keys {
        let secret_meta = secret_only_meta(&stores, key, &observed[&key.name]).await;
        let mut status = key_status(key, &observed[&key.name], secret_meta, now);
        status.retry = retries.remove(&key.name);
        status.clock_warnings = crate::clock_guard::notes_of(&clock_notes, &key.name)
            .map(ToString::to_string)
            .collect();
        keys.push(status);
    }
    // Keys of invalid manifests stay visible: left exactly as they are, never orphans.
    for name in &loaded.frozen {
        if keys.iter().any(|k| &k.name == name) {
            continue;
        }
        let at = loaded.invalid_at.get(name).cloned().unwrap_or_default();
        let mut status = KeyStatus::unknown(name, "-", "invalid");
        status.error = Some(format!(
            "its manifest is invalid ({at}): the key is left exactly as it is until it is \
             fixed (keyprov validate)"
        ));
        keys.push(status);
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    let status = Status {
        orphans,
        keys,
        fleet: crate::fleet::RoleStatus::of(&config.fleet),
    };
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        print_table(&status, now, config.reconcile.prune);
        status.fleet.print();
    }
    let mut exit = if loaded.is_valid() {
        Exit::Ok
    } else {
        Exit::Invalid
    };
    if status
        .keys
        .iter()
        .any(|k| k.state == "failed" || is_failing(k))
    {
        exit = exit.max(Exit::KeyFailed);
    }
    if let Some(err) = failed_orphans {
        crate::output::error(err);
        exit = exit.max(Exit::KeyFailed);
    }
    exit
}

/// A key whose last reconcile failed, or with an `onRotate` hook that failed and waits for its
/// next attempt: what the table prints as `failing` / `failed N time(s)` under it.
fn is_failing(key: &KeyStatus) -> bool {
    key.retry.as_ref().is_some_and(|retry| {
        retry.failure.is_some() || retry.hooks.iter().any(|h| h.last_error.is_some())
    })
}

/// An age in its two largest units: `20s`, `5m 3s`, `4h 12m`, `12d 3h`.
fn age(elapsed: std::time::Duration) -> String {
    let seconds = elapsed.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|(size, _)| seconds >= *size) else {
        return "0s".into();
    };
    units[first..]
        .iter()
        .take(2)
        .scan(seconds, |left, (size, unit)| {
            let amount = *left / size;
            *left %= size;
            Some(format!("{amount}{unit}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lines under a key with something to retry.
fn print_retry(retry: &crate::retry::RetryRecord, width: usize) {
    if let Some(failure) = &retry.failure {
        crate::outln!(
            "{:width$}  failing: {} attempt(s) in a row, last at {}; the daemon tries again at {}: {}",
            "",
            failure.attempts,
            failure.last_attempt,
            failure.next_attempt,
            failure.last_error
        );
    }
    for hook in &retry.hooks {
        let state = match &hook.last_error {
            None => "pending".to_string(),
            Some(err) => format!(
                "failed {} time(s), next attempt at {}: {err}",
                hook.attempts, hook.next_attempt
            ),
        };
        crate::outln!(
            "{:width$}  onRotate {} hooks of generation {}: {state}",
            "",
            hook.event.as_str(),
            hook.generation
        );
    }
}

/// A moment as the table shows it: relative and absolute to the minute, `in 29d 23h
/// (2026-12-25 09:45Z)`, or `overdue 3h 2m (...)` when past.
fn when(text: &str, now: SystemTime) -> String {
    let Ok(at) = crate::schedule::parse_time(text) else {
        return text.to_string();
    };
    let rfc = humantime::format_rfc3339_seconds(at).to_string();
    let short = format!("{} {}Z", &rfc[..10], &rfc[11..16]);
    match at.duration_since(now) {
        Ok(left) => format!("in {} ({short})", age(left)),
        Err(past) => format!("overdue {} ({short})", age(past.duration())),
    }
}

/// Prints rows of cells as columns, each as wide as its widest cell (the last one unpadded).
fn print_columns(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                // Numbers right-aligned, text left-aligned.
                let pad = widths[c] - cell.chars().count();
                if c == 1 {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
        }
        crate::outln!("{}", line.trim_end());
    }
}

fn print_table(status: &Status, now: SystemTime, prune: bool) {
    let width = status
        .keys
        .iter()
        .map(|k| k.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let header = [
        "NAME",
        "GEN",
        "SPEC",
        "AGE",
        "NEXT ROTATION",
        "STAGED",
        "STATE",
        "OUTPUTS",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for key in &status.keys {
        let age = key
            .created_at
            .as_deref()
            .and_then(|c| crate::schedule::parse_time(c).ok())
            .and_then(|c| now.duration_since(c).ok())
            .map(age)
            .unwrap_or_else(|| "-".into());
        let generation = key.generation.map_or("-".into(), |g| g.to_string());
        let next_rotation = match (&key.next_rotation, key.generation) {
            // With publishAhead, the publication (publish hooks, `next`) comes first.
            (Some(at), _) => match &key.next_publish_at {
                Some(publish) if publish != at => {
                    format!("{} (published {})", when(at, now), when(publish, now))
                }
                _ => when(at, now),
            },
            (None, Some(_)) => "never".into(),
            (None, None) => "-".into(),
        };
        let staged = match (key.next, &key.next_activates_at) {
            (Some(n), Some(at)) => format!("gen {n} {}", when(at, now)),
            (Some(n), None) => format!("gen {n}"),
            (None, _) => "-".into(),
        };
        let outputs: Vec<String> = key
            .outputs
            .iter()
            .map(|o| {
                format!(
                    "{}:{}@{}",
                    o.kind,
                    o.location,
                    o.generation.map_or("-".into(), |g| g.to_string())
                )
            })
            .collect();
        rows.push(vec![
            key.name.clone(),
            generation,
            key.key_pair_spec.clone(),
            age,
            next_rotation,
            staged,
            key.state.to_string(),
            outputs.join(", "),
        ]);
    }
    // Rows first, then each key's notes under the table, so the columns stay readable.
    print_columns(&rows);
    for key in &status.keys {
        if key.error.is_none()
            && key.retry.is_none()
            && key.clock_warnings.is_empty()
            && key.refused.is_empty()
        {
            continue;
        }
        crate::outln!("{}:", key.name);
        if let Some(err) = &key.error {
            crate::outln!("{:width$}  error: {err}", "");
        }
        for warning in &key.clock_warnings {
            crate::outln!("{:width$}  clock: {warning}", "");
        }
        for refused in &key.refused {
            crate::outln!("{:width$}  refused: {refused}", "");
        }
        if let Some(retry) = &key.retry {
            print_retry(retry, width);
        }
    }
    for orphan in &status.orphans {
        crate::outln!(
            "{}:{}: orphan (no manifest defines its key; {})",
            orphan.kind,
            orphan.location,
            match (&orphan.pruned_after, prune) {
                (Some(after), true) => format!("reconcile.prune removes it after {after}"),
                _ => "left in place".to_string(),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_shown_in_their_two_largest_units() {
        let s = std::time::Duration::from_secs;
        assert_eq!(age(s(0)), "0s");
        assert_eq!(age(s(20)), "20s");
        assert_eq!(age(s(303)), "5m 3s");
        assert_eq!(age(s(4 * 3600 + 12 * 60 + 9)), "4h 12m");
        assert_eq!(age(s(12 * 86_400 + 3 * 3600)), "12d 3h");
        assert_eq!(age(s(86_400)), "1d 0h");
    }
}
