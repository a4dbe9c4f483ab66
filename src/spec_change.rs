//! What a "spec changed" regeneration changes: which of keyPairSpec, kmsKeyId and
//! encryptionContext differ between the current version's meta and the manifest, and how.

use std::collections::{BTreeMap, HashMap};

use crate::manifest::KeyPair;
use crate::observed::Observed;
use crate::plan::{self, KeyPlan};
use crate::spec::KeyPairSpec;
use crate::store::{Stores, VersionMeta};

/// Longest context value shown; values are not secret, but a line stays readable.
const MAX_VALUE: usize = 40;

/// For each key about to be regenerated because its spec changed: what changed, read from the
/// current version's meta (keys whose meta cannot be read are left out).
pub async fn collect(
    keys: &[KeyPair],
    plans: &[KeyPlan],
    observed: &Observed,
    stores: &Stores,
) -> HashMap<String, String> {
    let mut changes = HashMap::new();
    for plan in plans {
        let changed = plan.actions.iter().any(|a| {
            matches!(
                a,
                plan::Action::Generate {
                    reason: plan::Reason::SpecChanged,
                    ..
                }
            )
        });
        if !changed {
            continue;
        }
        let Some(key) = keys.iter().find(|k| k.name == plan.name) else {
            continue;
        };
        let Some(Ok(outputs)) = observed.get(&key.name) else {
            continue;
        };
        let Some(current) = plan::authoritative(outputs).0 else {
            continue;
        };
        for index in 0..key.outputs.len() {
            if let Ok(version) = stores.read_version(key, index, current.generation).await {
                changes.insert(key.name.clone(), describe(&version.meta, key));
                break;
            }
        }
    }
    changes
}

/// What differs between the version `recorded` describes and the manifest's `key`, e.g.
/// `keyPairSpec ECC_NIST_P256 -> RSA_2048; encryptionContext: added team=pay`.
pub fn describe(recorded: &VersionMeta, key: &KeyPair) -> String {
    let mut parts = Vec::new();
    if recorded.key_pair_spec != key.spec.as_str() {
        parts.push(format!(
            "keyPairSpec {} -> {}",
            recorded.key_pair_spec,
            key.spec.as_str()
        ));
    }
    // The reserved `keyprov:` entries differ per generation by design: never a change.
    let context = crate::binding::manifest_part(&recorded.encryption_context);
    let kms_changed = kms_key_changed(recorded, &context, key);
    if kms_changed != Some(false) {
        // The meta records the ARN KMS answered with, not the manifest's spelling of the key,
        // so the old side is named by the ARN the current generation was made with.
        parts.push(format!(
            "kmsKeyId -> {} (generation {} was made with {})",
            key.kms_key_id, recorded.generation, recorded.kms_key_arn
        ));
    }
    if let Some(diff) = context_diff(&context, &key.encryption_context) {
        parts.push(format!("encryptionContext: {diff}"));
    }
    parts.join("; ")
}

/// Whether the manifest's kmsKeyId differs from the one the version was made for: the recorded
/// fingerprint covers the manifest's kmsKeyId, so it is recomputed with the recorded spec and
/// context and the manifest's kmsKeyId. `None` when the recorded spec is unknown.
fn kms_key_changed(
    recorded: &VersionMeta,
    context: &BTreeMap<String, String>,
    key: &KeyPair,
) -> Option<bool> {
    let mut probe = key.clone();
    probe.spec = recorded.key_pair_spec.parse::<KeyPairSpec>().ok()?;
    probe.encryption_context = context.clone();
    Some(probe.spec_fingerprint() != recorded.spec_fingerprint)
}

/// The manifest context entries added, removed and changed, or `None` when they are equal.
fn context_diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Option<String> {
    let mut parts = Vec::new();
    for (name, value) in new {
        match old.get(name) {
            None => parts.push(format!("added {name}={}", short(value))),
            Some(was) if was != value => {
                parts.push(format!("changed {name} {} -> {}", short(was), short(value)))
            }
            Some(_) => {}
        }
    }
    for (name, value) in old {
        if !new.contains_key(name) {
            parts.push(format!("removed {name}={}", short(value)));
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A context value as shown: quoted when empty or spaced, cut at [`MAX_VALUE`] characters.
fn short(value: &str) -> String {
    let cut: String = value.chars().take(MAX_VALUE).collect();
    let cut = if cut.len() < value.len() {
        format!("{cut}…")
    } else {
        cut
    };
    if cut.is_empty() || cut.contains(char::is_whitespace) {
        format!("{cut:?}")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &str, kms: &str, context: &[(&str, &str)]) -> KeyPair {
        KeyPair {
            name: "k".into(),
            labels: BTreeMap::new(),
            spec: spec.parse().expect("test spec"),
            kms_key_id: kms.into(),
            encryption_context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            grant_tokens: vec![],
            include_plaintext: false,
            rotation: Default::default(),
            outputs: vec![],
            on_rotate: vec![],
            source: "m.yaml".into(),
        }
    }

    fn meta_of(key: &KeyPair) -> VersionMeta {
        VersionMeta {
            api_version: "keyprov/v1".into(),
            name: key.name.clone(),
            generation: 3,
            key_pair_spec: key.spec.as_str().into(),
            kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/old".into(),
            encryption_context: crate::binding::context(&key.encryption_context, &key.name, 3),
            grant_tokens: Vec::new(),
            spec_fingerprint: key.spec_fingerprint(),
            created_at: "2026-01-01T00:00:00Z".into(),
            activates_at: "2026-01-01T00:00:00Z".into(),
            public_key_sha256: String::new(),
            private_key_ciphertext_sha256: None,
        }
    }

    #[test]
    fn an_unchanged_key_describes_nothing_and_reserved_entries_are_no_change() {
        let k = key("ECC_NIST_P256", "alias/a", &[("service", "pay")]);
        assert_eq!(describe(&meta_of(&k), &k), "");
    }

    #[test]
    fn each_field_is_named_with_old_and_new() {
        let old = key(
            "ECC_NIST_P256",
            "alias/a",
            &[("service", "pay"), ("env", "prod"), ("team", "x")],
        );
        let new = key(
            "RSA_2048",
            "alias/b",
            &[("service", "billing"), ("env", "prod"), ("zone", "eu 1")],
        );
        assert_eq!(
            describe(&meta_of(&old), &new),
            "keyPairSpec ECC_NIST_P256 -> RSA_2048; kmsKeyId -> alias/b (generation 3 was made \
             with arn:aws:kms:us-east-1:000000000000:key/old); encryptionContext: changed service \
             pay -> billing, added zone=\"eu 1\", removed team=x"
        );
    }

    #[test]
    fn a_spec_change_alone_does_not_blame_the_kms_key() {
        let old = key("ECC_NIST_P256", "alias/a", &[]);
        let new = key("ECC_NIST_P384", "alias/a", &[]);
        assert_eq!(
            describe(&meta_of(&old), &new),
            "keyPairSpec ECC_NIST_P256 -> ECC_NIST_P384"
        );
    }

    #[test]
    fn a_kms_key_change_alone_is_named() {
        let old = key("ECC_NIST_P256", "alias/a", &[("a", "1")]);
        let new = key("ECC_NIST_P256", "alias/b", &[("a", "1")]);
        assert_eq!(
            describe(&meta_of(&old), &new),
            "kmsKeyId -> alias/b (generation 3 was made with \
             arn:aws:kms:us-east-1:000000000000:key/old)"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = "v".repeat(60);
        let old = key("ECC_NIST_P256", "alias/a", &[]);
        let new = key("ECC_NIST_P256", "alias/a", &[("x", long.as_str())]);
        assert_eq!(
            describe(&meta_of(&old), &new),
            format!("encryptionContext: added x={}…", "v".repeat(40))
        );
    }
}
