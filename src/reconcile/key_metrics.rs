//! Key metrics after a pass: every key's state series from what its outputs hold, the
//! manifests' validity, and the series of keys no manifest defines any more dropped.

use std::collections::{BTreeSet, HashSet};
use std::time::SystemTime;

use super::Report;
use crate::manifest::KeyPair;

/// The keys and manifest files of a reconcile, for [`update_key_metrics`].
pub(super) struct KeysNow<'a> {
    pub(super) keys: &'a [KeyPair],
    pub(super) frozen: &'a BTreeSet<String>,
    pub(super) file_validity: &'a [(std::path::PathBuf, bool)],
    /// `keys` are every valid key (not a due wake's few): the series of the others go.
    pub(super) every_key: bool,
}

/// Sets every key's state series from what its outputs hold after this reconcile, the
/// manifests' validity, and drops the series of keys no manifest defines any more (those of
/// invalid manifests stay as they were).
pub(super) fn update_key_metrics<'a>(
    metrics: &crate::metrics::Metrics,
    pending: KeysNow<'_>,
    observed: impl Fn(&str) -> Option<&'a Result<Vec<crate::observed::ObservedOutput>, String>>,
    report: &Report,
    waiting: &BTreeSet<String>,
    now: SystemTime,
) {
    let failed: HashSet<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
    for key in pending.keys {
        match observed(&key.name) {
            Some(Ok(outputs)) => {
                let previous = outputs
                    .iter()
                    .find_map(|o| o.previous)
                    .and_then(|generation| {
                        key.outputs.iter().find_map(|output| match output {
                            crate::manifest::Output::File(file) => {
                                crate::store::file::read_meta(&file.dir, generation).ok()
                            }
                            crate::manifest::Output::SecretsManager(_) => None,
                        })
                    });
                let converged = !failed.contains(key.name.as_str()) && !waiting.contains(&key.name);
                metrics.key_state(key, outputs, previous.as_ref(), converged.then_some(now));
            }
            _ => metrics.key_unreadable(&key.name),
        }
    }
    let files: Vec<(String, bool)> = pending
        .file_validity
        .iter()
        .map(|(path, valid)| (path.display().to_string(), *valid))
        .collect();
    metrics.manifests(&files);
    if !pending.every_key {
        return;
    }
    let keep: BTreeSet<String> = pending
        .keys
        .iter()
        .map(|k| k.name.clone())
        .chain(pending.frozen.iter().cloned())
        .collect();
    metrics.forget_keys(&keep);
}
