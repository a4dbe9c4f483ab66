//! `fleet.role: consumer`: a host that never generates nor writes a secret (least privilege:
//! `secretsmanager:GetSecretValue`/`DescribeSecret` and `kms:Decrypt`). Its plans keep only what
//! reads a secret and writes this host's own files: copies of the generations the secrets
//! hold (proven with Decrypt), and the file outputs' repairs and prunes. A key that needs a new
//! generation waits for a writer; a due rotation is left to the writers.

use crate::manifest::{KeyPair, Output};
use crate::observed::Observed;
use crate::plan::{Action, KeyPlan, Link};

/// Restricts `plans` to what a consumer may do.
pub fn restrict(keys: &[KeyPair], observed: &Observed, plans: &mut Vec<KeyPlan>) {
    for plan in plans.iter_mut() {
        let Some(key) = keys.iter().find(|k| k.name == plan.name) else {
            continue;
        };
        if super::offset::rotates(plan)
            && let Some(Ok(outputs)) = observed.get(&key.name)
            && let Some((due, _)) =
                super::offset::release_time(&Default::default(), "", key, outputs)
        {
            plan.actions = super::offset::plan_before_due(key, outputs, due);
        }
        if let Some(generation) = plan.actions.iter().find_map(|a| match a {
            Action::Generate { generation, .. } => Some(*generation),
            _ => None,
        }) {
            tracing::info!(key = %key.name, generation,
                "needs generation {generation}; this host is a consumer (fleet.role: consumer): \
                 waiting for a writer to make it");
            plan.actions.clear();
            continue;
        }
        let secret = |i: usize| matches!(key.outputs.get(i), Some(Output::SecretsManager(_)));
        let files: Vec<usize> = (0..key.outputs.len()).filter(|&i| !secret(i)).collect();
        plan.actions = std::mem::take(&mut plan.actions)
            .into_iter()
            .filter_map(|action| match action {
                // The secret's labels move on a writer; this host's files follow it now.
                Action::Activate { generation } => (!files.is_empty()).then(|| Action::Copy {
                    generation,
                    outputs: files.clone(),
                    link: Link::Current,
                }),
                Action::Copy {
                    generation,
                    outputs,
                    link,
                } => {
                    let outputs: Vec<usize> = outputs.into_iter().filter(|&i| !secret(i)).collect();
                    (!outputs.is_empty()).then_some(Action::Copy {
                        generation,
                        outputs,
                        link,
                    })
                }
                Action::Repair { output, .. } | Action::Prune { output, .. } if secret(output) => {
                    None
                }
                other => Some(other),
            })
            .collect();
    }
    plans.retain(|p| !p.actions.is_empty());
}
