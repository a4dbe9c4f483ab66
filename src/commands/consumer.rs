//! What a consumer host (`fleet.role: consumer`) does with each key, in the words `validate`
//! and `plan` use: a consumer never generates, it copies what a key's secret holds into its
//! files, so a new generation waits for a writer, and a key without a secretsManager output
//! is never made on this host at all.

use std::path::Path;

use crate::config::Config;
use crate::fleet::Role;
use crate::manifest::{KeyPair, Output};
use crate::observed::Observed;
use crate::plan::{Action, KeyPlan};

/// Why a consumer leaves a key's new generation alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A writer makes `generation` into the key's secret; this host copies it from there.
    Waiting {
        /// The generation a writer is to make.
        generation: u32,
    },
    /// The key has no secretsManager output: nothing this host can ever copy it from.
    NeverMade,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Waiting { generation } => write!(
                f,
                "no change on this host: generation {generation} is made by a writer; this \
                 consumer copies it from the secret once it is there"
            ),
            Held::NeverMade => f.write_str(NEVER_MADE),
        }
    }
}

/// Why a key with only file outputs is never made on a consumer, and what to do.
const NEVER_MADE: &str = "never made on this host: a consumer (fleet.role: consumer) never \
    generates, it copies from a key's secretsManager output, and this key has none; give it a \
    secretsManager output (a writer makes the secret, this host copies it into its files), or \
    leave the key to writer hosts";

/// Whether `config` makes this host a consumer.
pub fn is_consumer(config: &Config) -> bool {
    config.fleet.role == Role::Consumer
}

/// Whether a consumer can ever have `key`: only through a secretsManager output.
fn copyable(key: &KeyPair) -> bool {
    key.outputs
        .iter()
        .any(|o| matches!(o, Output::SecretsManager(_)))
}

/// `validate`'s warnings on a consumer: one per key it never makes (only file outputs), as
/// `file: key "name": why`. A warning, not an error: the manifests are shared by the fleet, and
/// a key meant for the writers alone is valid there.
pub fn warnings(config: &Config, keys: &[KeyPair]) -> Vec<String> {
    if !is_consumer(config) {
        return Vec::new();
    }
    keys.iter()
        .filter(|key| !copyable(key))
        .map(|key| {
            format!(
                "{}: key {:?}: {NEVER_MADE} (consumer per {})",
                display(&key.source),
                key.name,
                display(&config.path)
            )
        })
        .collect()
}

fn display(path: &Path) -> String {
    crate::manifest::display_path(path).display().to_string()
}

/// On a consumer, narrows `plans` to what `run` does there ([`crate::fleet::consumer::restrict`])
/// and returns the keys whose new generation it leaves alone, with why. A writer's plans are
/// left as they are.
pub fn restrict(
    config: &Config,
    keys: &[KeyPair],
    observed: &Observed,
    plans: &mut Vec<KeyPlan>,
) -> Vec<(String, Held)> {
    if !is_consumer(config) {
        return Vec::new();
    }
    let generating: Vec<(String, u32)> = plans
        .iter()
        .filter_map(|plan| {
            plan.actions.iter().find_map(|action| match action {
                Action::Generate { generation, .. } => Some((plan.name.clone(), *generation)),
                _ => None,
            })
        })
        .collect();
    // The restriction logs (at info) what the run logs; plan says it in its own lines.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        crate::fleet::consumer::restrict(keys, observed, plans)
    });
    generating
        .into_iter()
        .filter(|(name, _)| !plans.iter().any(|p| &p.name == name))
        .map(|(name, generation)| {
            let key = keys.iter().find(|k| k.name == name);
            let held = if key.is_some_and(copyable) {
                Held::Waiting { generation }
            } else {
                Held::NeverMade
            };
            (name, held)
        })
        .collect()
}
