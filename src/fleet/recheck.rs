//! The last look before a scheduled generation: one `DescribeSecret` of the key's secret. When
//! another host made the generation since this pass observed the key, the key is observed
//! again from that description (no second one) and planned from it: the generation is copied
//! (after its proof), not made twice.

use std::time::SystemTime;

use crate::manifest::{KeyPair, Output};
use crate::observed::Observed;
use crate::plan::{self, Action, KeyPlan};
use crate::store::Stores;

/// The generation `plan` is about to make on schedule.
fn scheduled_generation(plan: &KeyPlan) -> Option<u32> {
    plan.actions.iter().find_map(|a| match a {
        Action::Generate {
            generation,
            reason: plan::Reason::RotationDue,
            ..
        } => Some(*generation),
        _ => None,
    })
}

/// Re-checks each scheduled generation against the key's first secret and replans the keys
/// whose secret already holds it.
pub async fn adopt_made_elsewhere(
    stores: &Stores,
    keys: &[KeyPair],
    observed: &mut Observed,
    plans: &mut [KeyPlan],
    now: SystemTime,
) {
    for plan in plans.iter_mut() {
        let Some(generation) = scheduled_generation(plan) else {
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.name == plan.name) else {
            continue;
        };
        let Some(output) = key.outputs.iter().find_map(|o| match o {
            Output::SecretsManager(output) => Some(output),
            Output::File(_) => None,
        }) else {
            continue;
        };
        // A failed check is no evidence: the write's own race check still stands.
        if !stores
            .secrets()
            .has_version_now(key, output, generation)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        match stores.observe_key(key).await {
            Ok(outputs) => {
                tracing::info!(key = %key.name, generation,
                    "another host made generation {generation} meanwhile: copying it instead");
                plan.actions = plan::plan_key(key, &outputs, now, None);
                observed.insert(key.name.clone(), Ok(outputs));
            }
            Err(err) => {
                tracing::debug!(key = %key.name, "cannot observe again: {err}");
            }
        }
    }
}
