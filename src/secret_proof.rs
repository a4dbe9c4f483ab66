//! Proving what a secret holds as current before keyprov treats the key as converged.
//!
//! A secret is shared state that anyone with `secretsmanager:PutSecretValue` can write. Its
//! current version is believed without a Decrypt only when a file output of the key holds the
//! very same generation and pair (files are this host's own state, and what was copied into them
//! was proven then), or when this host proved that version before (recorded in
//! `<stateDir>/ledger/proven.json`). Otherwise it is proven once ([`crate::binding::prove`]):
//! a forged or replayed current version of a key whose only output is its secret fails that key,
//! named, instead of being reported as converged. One GetSecretValue and one Decrypt per new
//! current version per host; nothing for a converged key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::binding::{self, Unbound};
use crate::manifest::{KeyPair, Output};
use crate::observed::Observed;
use crate::store::Stores;

/// Name of the record under `<stateDir>/ledger/`.
const RECORD: &str = "proven";

/// A version this process wrote into a secret and read back whole: its own, needing no proof.
#[derive(Debug, Clone)]
pub struct Written {
    /// Key name.
    pub key: String,
    /// Secret id.
    pub secret: String,
    /// Generation.
    pub generation: u32,
    /// Public key SHA-256 of the pair written.
    pub public_key_sha256: String,
}

/// Records `written` as proven (the versions this process wrote itself).
pub fn record_written(state_dir: &std::path::Path, written: Vec<Written>) {
    if written.is_empty() {
        return;
    }
    let ledger = crate::ledger::Ledger::new(state_dir, RECORD);
    let mut proven: Proven = ledger.load();
    for w in written {
        proven.insert(&w.key, &w.secret, (w.generation, w.public_key_sha256));
    }
    if let Err(err) = ledger.save(&proven) {
        tracing::warn!("{err}");
    }
}

/// Per key, per secret: the newest versions proven or written (generation, public key SHA-256).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Proven(BTreeMap<String, BTreeMap<String, Vec<(u32, String)>>>);

/// Versions remembered per secret: current, next and a previous or two.
const REMEMBERED: usize = 4;

impl Proven {
    fn contains(&self, key: &str, secret: &str, version: &(u32, String)) -> bool {
        self.0
            .get(key)
            .and_then(|by_secret| by_secret.get(secret))
            .is_some_and(|versions| versions.contains(version))
    }

    fn insert(&mut self, key: &str, secret: &str, version: (u32, String)) {
        let versions = self
            .0
            .entry(key.to_string())
            .or_default()
            .entry(secret.to_string())
            .or_default();
        if !versions.contains(&version) {
            versions.push(version);
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            versions.truncate(REMEMBERED);
        }
    }
}

/// Proves the current version of every secret output of `keys` that neither a file output of
/// the key nor an earlier proof vouches for. Returns the keys whose secret fails the proof,
/// with the error naming the secret and version, and how many proofs were made (a Decrypt
/// each).
pub async fn prove_secret_currents(
    state_dir: &std::path::Path,
    provider: &impl crate::provider::Provider,
    stores: &Stores,
    keys: &[&KeyPair],
    observed: &Observed,
) -> (Vec<(String, String)>, usize) {
    let ledger = crate::ledger::Ledger::new(state_dir, RECORD);
    let mut proofs = 0;
    let mut proven: Proven = ledger.load();
    let mut changed = false;
    let mut failed = Vec::new();
    for key in keys {
        let Some(Ok(outputs)) = observed.get(&key.name) else {
            continue;
        };
        let local: Vec<(u32, &str)> = key
            .outputs
            .iter()
            .zip(outputs)
            .filter(|(output, _)| !matches!(output, Output::SecretsManager(_)))
            .filter_map(|(_, o)| o.current.as_ref())
            .map(|c| (c.generation, c.public_key_sha256.as_str()))
            .collect();
        for (index, (output, seen)) in key.outputs.iter().zip(outputs).enumerate() {
            let (Output::SecretsManager(secret), Some(current)) = (output, &seen.current) else {
                continue;
            };
            let held = (current.generation, current.public_key_sha256.clone());
            let known = proven.contains(&key.name, &secret.secret_id, &held);
            // An unbound version (written before the binding) is never copied anywhere: the
            // plan replaces it with a bound generation (see [`crate::binding`]).
            if !current.bound || local.contains(&(held.0, held.1.as_str())) || known {
                continue;
            }
            let origin = binding::origin(key, index, held.0);
            proofs += 1;
            let proof = match stores.read_version(key, index, held.0).await {
                Ok(version) => binding::prove(provider, key, &version, held.0, Unbound::Refuse)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match proof {
                Ok(()) => {
                    proven.insert(&key.name, &secret.secret_id, held);
                    changed = true;
                }
                Err(why) => failed.push((
                    key.name.clone(),
                    format!(
                        "key {:?}: the current version of {origin} is not believed: {why}. \
                         Nothing was copied from it; if keyprov did not write it, move \
                         AWSCURRENT back to the last generation keyprov made, or replace the \
                         pair with `keyprov rotate {} --now`",
                        key.name, key.name
                    ),
                )),
            }
        }
    }
    if changed && let Err(err) = ledger.save(&proven) {
        // Only costs a proof again next time.
        tracing::warn!("{err}");
    }
    (failed, proofs)
}
