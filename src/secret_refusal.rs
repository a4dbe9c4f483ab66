//! The record of secret versions keyprov refused (`<stateDir>/ledger/refused.json`): a forged or
//! replayed version, or one that is not keyprov's at all, found in a key's secret. A refused
//! version is never proven, adopted or counted as a generation again on this host (its
//! generation number stays taken), even if its labels are put back; every reconcile that sees
//! it in the secret logs a warning and `status` lists it, until someone who can write the
//! secret removes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::secrets_manager::{Refusal, SecretsManagerStore};

/// Name of the record under `<stateDir>/ledger/`.
const RECORD: &str = "refused";

/// Refusals remembered per secret (the newest are kept).
const REMEMBERED: usize = 32;

/// Per key, per secret, per version id: why it was refused.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Refused(BTreeMap<String, BTreeMap<String, BTreeMap<String, Entry>>>);

/// One refused version.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    /// The generation whose request token its id is, if any.
    generation: Option<u32>,
    /// Why it was refused.
    why: String,
    /// When (RFC 3339).
    refused_at: String,
}

/// Makes `store` treat every version this host refused before as refused.
pub fn seed(state_dir: &std::path::Path, store: &SecretsManagerStore) {
    let refused: Refused = crate::ledger::Ledger::new(state_dir, RECORD).load();
    for by_secret in refused.0.values() {
        for (secret, versions) in by_secret {
            for id in versions.keys() {
                store.refuse_known(secret, id);
            }
        }
    }
}

/// Records `refusals` (the versions refused in this reconcile).
pub fn record(state_dir: &std::path::Path, refusals: Vec<Refusal>) {
    if refusals.is_empty() {
        return;
    }
    let ledger = crate::ledger::Ledger::new(state_dir, RECORD);
    let mut refused: Refused = ledger.load();
    let at = crate::schedule::format_time(crate::clock::now());
    for r in refusals {
        tracing::warn!(
            key = %r.key,
            secret = %r.secret,
            version = %r.version_id,
            "refused version {} of secret {}: {}; it is never used",
            r.version_id,
            r.secret,
            r.why
        );
        let versions = refused
            .0
            .entry(r.key)
            .or_default()
            .entry(r.secret)
            .or_default();
        versions.insert(
            r.version_id,
            Entry {
                generation: r.generation,
                why: r.why,
                refused_at: at.clone(),
            },
        );
        while versions.len() > REMEMBERED {
            let oldest = versions
                .iter()
                .min_by(|a, b| a.1.refused_at.cmp(&b.1.refused_at))
                .map(|(id, _)| id.clone())
                .expect("not empty");
            versions.remove(&oldest);
        }
    }
    if let Err(err) = ledger.save(&refused) {
        // The version is refused again (and proven again) next time: nothing is adopted.
        tracing::warn!("{err}");
    }
}
