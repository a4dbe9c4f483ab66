//! The config's JWK Set aggregates (`jwks: [{path, selector: {labels}}]`): one `jwks.json` for
//! one issuer, merging the next, current and previous public keys of every key whose labels
//! match, taken from their file outputs. Rewritten atomically when it changes, never while a
//! manifest is invalid (a key left out of the set would stop verifying).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::manifest::{KeyPair, Output};
use crate::spec::KeyPairSpec;

/// One aggregate of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksAggregate {
    /// Absolute path of the set, inside stateDir or an outputRoot.
    pub path: PathBuf,
    /// Keys whose labels include all of these are in the set.
    pub labels: BTreeMap<String, String>,
}

impl JwksAggregate {
    /// Whether `key` belongs in this set.
    pub fn selects(&self, key: &KeyPair) -> bool {
        self.labels
            .iter()
            .all(|(name, value)| key.labels.get(name) == Some(value))
    }
}

/// The set's contents for `keys` (sorted by name, each key's keys next first).
fn contents(aggregate: &JwksAggregate, keys: &[KeyPair]) -> Result<Vec<u8>, String> {
    let mut jwks = Vec::new();
    for key in keys.iter().filter(|k| aggregate.selects(k)) {
        if key.spec == KeyPairSpec::Sm2 {
            tracing::warn!(key = %key.name, path = %aggregate.path.display(),
                "SM2 keys have no JWK form: left out of the JWK Set");
            continue;
        }
        let Some(output) = key.outputs.iter().find_map(|o| match o {
            Output::File(file) => Some(file),
            Output::SecretsManager(_) => None,
        }) else {
            tracing::warn!(key = %key.name, path = %aggregate.path.display(),
                "the key has no file output: left out of the JWK Set");
            continue;
        };
        let mut linked = crate::store::file::linked_jwks(output)
            .map_err(|e| format!("key {:?}: {e}", key.name))?;
        jwks.append(&mut linked);
    }
    Ok(crate::public_formats::jwks(&jwks))
}

/// Brings every aggregate up to date with `keys` (all valid keys of the manifests). Returns
/// the failures, by path. A set already up to date is not touched (its mtime stays).
pub fn update_all(aggregates: &[JwksAggregate], keys: &[KeyPair]) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    for aggregate in aggregates {
        let path = aggregate.path.display().to_string();
        let inside_a_key = keys.iter().find_map(|key| {
            key.outputs.iter().find_map(|o| match o {
                Output::File(file) if aggregate.path.starts_with(&file.dir) => {
                    Some(key.name.as_str())
                }
                _ => None,
            })
        });
        let result = match inside_a_key {
            Some(name) => Err(format!(
                "is inside the key directory of {name:?}, which only keyprov's versions and \
                 links may hold: choose another path"
            )),
            None => contents(aggregate, keys),
        }
        .and_then(|bytes| {
            if std::fs::read(&aggregate.path).is_ok_and(|old| old == bytes) {
                return Ok(());
            }
            if let Some(parent) = aggregate.path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            crate::durable::write_atomically(&aggregate.path, &bytes, 0o644)
                .map_err(|e| format!("cannot write: {e}"))?;
            tracing::info!(path = %path, "JWK Set updated");
            Ok(())
        });
        if let Err(err) = result {
            let message = format!("JWK Set {path}: {err}");
            tracing::error!("{message}");
            failures.push((format!("jwks:{path}"), message));
        }
    }
    failures
}
