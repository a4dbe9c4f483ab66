//! One host calls KMS per generation: in the daemon, a writer claims each generation it is
//! about to make through the key's secret (see [`crate::store::secrets_manager::claim`])
//! right before the pass executes. The host that wins generates; a host that finds another's
//! fresh claim leaves the key alone in this pass and looks again a little later (10 to 20 s,
//! jittered per host and key), when the re-check ([`super::recheck`]) finds the generation
//! made and adopts it, or the claim has gone stale and this host claims the next attempt.
//!
//! Only generations of keys whose secret already holds a generation are claimed: a key's first
//! generation creates the secret, and `CreateSecret` plus the generation's own request token
//! arbitrate that race. A claim that cannot be made (Secrets Manager failing) is no reason to
//! hold a rotation back: the key generates, and the version's token still settles the race.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::FleetSettings;
use crate::manifest::{KeyPair, Output, SecretsManagerOutput};
use crate::observed::Observed;
use crate::plan::{Action, KeyPlan};
use crate::store::Stores;
use crate::store::secrets_manager::claim::Claim;

/// Default `fleet.claimTimeout`: a claim older than this is stale (well over twice the
/// slowest generate-and-publish, the SDK's retries included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Shortest wait before a host that lost a claim looks again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Spread added to [`RETRY_AFTER`], per host and key, so the losers do not come back at once.
pub const RETRY_SPREAD: Duration = Duration::from_secs(10);
/// Claims in flight at once (each is one or two Secrets Manager requests, paced by the
/// process's rate limiter).
const CONCURRENCY: usize = 16;

/// What claiming did to a pass.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Keys whose generation another host holds: not planned in this pass.
    pub lost: BTreeSet<String>,
    /// When each of them is looked at again.
    pub retry: crate::key_events::KeyEvents,
    /// Claims this host won in this pass.
    pub won: usize,
}

/// The generation `plan` makes, if any.
fn generation_made(plan: &KeyPlan) -> Option<u32> {
    plan.actions.iter().find_map(|a| match a {
        Action::Generate { generation, .. } => Some(*generation),
        _ => None,
    })
}

/// When this host looks again at key `name` after losing its claim at `now`.
pub fn retry_at(host: &str, name: &str, generation: u32, now: SystemTime) -> SystemTime {
    let jitter = super::offset::offset(host, &format!("claim/{name}/{generation}"), RETRY_SPREAD);
    crate::schedule::add(now, RETRY_AFTER + jitter)
}

/// Claims every generation `plans` make for keys with a secret that holds a generation
/// already (several keys at once); the plans of keys another host holds are emptied (the
/// caller drops them).
pub async fn claim_generations(
    settings: &FleetSettings,
    stores: &Stores,
    keys: &[KeyPair],
    observed: &Observed,
    plans: &mut [KeyPlan],
    now: SystemTime,
) -> Claimed {
    use futures_util::StreamExt;
    // Claims name the host by its digest: other hosts (consumers too) read them.
    let host = super::host_digest(&settings.host_id());
    let timeout = settings.claim_timeout();
    let wanted: Vec<(usize, &KeyPair, &SecretsManagerOutput, u32)> = plans
        .iter()
        .enumerate()
        .filter_map(|(at, plan)| {
            let generation = generation_made(plan)?;
            let key = keys.iter().find(|k| k.name == plan.name)?;
            let (index, output) = key.outputs.iter().enumerate().find_map(|(i, o)| match o {
                Output::SecretsManager(output) => Some((i, output)),
                Output::File(_) => None,
            })?;
            let holds_a_generation = matches!(observed.get(&key.name),
                Some(Ok(outputs)) if outputs.get(index).is_some_and(|o| !o.versions.is_empty()));
            holds_a_generation.then_some((at, key, output, generation))
        })
        .collect();
    let host = host.as_str();
    let results: Vec<_> = futures_util::stream::iter(wanted)
        .map(|(at, key, output, generation)| async move {
            let claim = stores
                .secrets()
                .claim(key, output, generation, host, timeout)
                .await;
            (at, key, generation, claim)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut claimed = Claimed::default();
    for (at, key, generation, claim) in results {
        match claim {
            Ok(Claim::Won { attempt }) => {
                tracing::info!(key = %key.name, generation, attempt,
                    "claimed generation {generation}: this host makes it");
                claimed.won += 1;
            }
            Ok(Claim::Held {
                host: holder,
                attempt,
                stale_in,
            }) => {
                let again = retry_at(host, &key.name, generation, now);
                tracing::info!(key = %key.name, generation, attempt,
                    holder = holder.as_deref().unwrap_or("another host"),
                    stale_in = %humantime::format_duration(Duration::from_secs(stale_in.as_secs())),
                    at = %crate::schedule::format_time(again),
                    "another host claimed generation {generation}: leaving it to that host; looking \
                     again later to copy it (or to claim it once the claim is stale)");
                plans[at].actions.clear();
                claimed.lost.insert(key.name.clone());
                claimed.retry.add(&key.name, again);
            }
            Err(err) => {
                tracing::warn!(key = %key.name, generation,
                    "cannot claim generation {generation} ({err}): making it anyway; the \
                     version's own request token settles a race");
            }
        }
    }
    claimed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losers_look_again_within_ten_to_twenty_seconds_spread_per_host() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let waits: BTreeSet<Duration> = (0..50)
            .map(|i| {
                retry_at(&format!("host-{i}"), "k", 2, now)
                    .duration_since(now)
                    .unwrap()
            })
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| (RETRY_AFTER..RETRY_AFTER + RETRY_SPREAD).contains(w))
        );
        assert!(waits.len() > 40, "spread: {waits:?}");
        assert_eq!(retry_at("h", "k", 2, now), retry_at("h", "k", 2, now));
    }
}
