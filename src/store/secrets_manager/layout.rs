//! What a keyprov secret holds: the SecretString JSON of a version, the request token of a
//! generation, and keyprov's own staging and tag names.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::store::{StoreError, StoredVersion, VersionMeta, VersionParts, public_key_pem};

/// Staging label of the version in use.
pub const CURRENT: &str = "AWSCURRENT";
/// Staging label Secrets Manager gives the version that was current before.
pub const PREVIOUS: &str = "AWSPREVIOUS";
/// Staging label of a published (staged) generation.
pub const PENDING: &str = "AWSPENDING";
/// Tag marking a secret keyprov created and may write.
pub const MANAGED_TAG: &str = "keyprov:managed";
/// Tag naming the installation (config `reconcile.scope`) a secret belongs to.
pub const SCOPE_TAG: &str = "keyprov:scope";
/// Tag naming the key pair a secret holds.
pub const NAME_TAG: &str = "keyprov:name";
/// Tag recording when the current generation was activated: `keyprov-vNNNN@<RFC 3339>`
/// (an early `rotate --now` activation counts the next rotation from it).
pub const ACTIVATED_TAG: &str = "keyprov:activated";

/// The [`ACTIVATED_TAG`] value for `generation` activated at `at`.
pub fn activated_tag(generation: u32, at: std::time::SystemTime) -> String {
    format!(
        "{}@{}",
        generation_label(generation),
        crate::schedule::format_time(at)
    )
}

/// The generation and time of an [`ACTIVATED_TAG`] value.
pub fn parse_activated_tag(value: &str) -> Option<(u32, std::time::SystemTime)> {
    let (label, at) = value.split_once('@')?;
    let generation = parse_generation_label(label)?;
    Some((generation, crate::schedule::parse_time(at).ok()?))
}
/// Largest SecretString keyprov reads (Secrets Manager's own limit).
pub const MAX_SECRET_STRING: usize = 64 * 1024;
/// Most versions of a secret keyprov considers.
pub const MAX_VERSIONS: usize = 100;

/// Namespace of the request tokens (UUIDv5): fixed forever, so every host and every release
/// derives the same token for the same generation.
const TOKEN_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1b7c3e-2a4d-5e8f-9b0c-1d2e3f4a5b6c");

/// keyprov's staging label of `generation`, held by every kept version (`keyprov-v0003`).
pub fn generation_label(generation: u32) -> String {
    format!("keyprov-{}", crate::store::file::version_name(generation))
}

/// The generation of a `keyprov-vNNNN` label.
pub fn parse_generation_label(label: &str) -> Option<u32> {
    let digits = label.strip_prefix("keyprov-v")?;
    (digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|g| (1..=MAX_GENERATION).contains(g))
}

/// The highest generation keyprov believes a secret can hold (a rotation a minute for almost
/// two years): a label or version claiming more is not keyprov's, and the next generation
/// can always be numbered.
pub const MAX_GENERATION: u32 = 1_000_000;

/// `ClientRequestToken` (= VersionId) of `generation` of key `name`: UUIDv5 of
/// `<name>/<generation>`.
pub fn version_id(name: &str, generation: u32) -> String {
    uuid::Uuid::new_v5(&TOKEN_NAMESPACE, format!("{name}/{generation}").as_bytes()).to_string()
}

/// The generation of each of `ids` that is the request token of a generation of key `name`
/// (see [`version_id`]); other ids (versions keyprov did not write) are left out. A version
/// id is a one-way hash, so generations are tried: first `hints` (those the secret's labels
/// and tags name), then [`MAX_VERSIONS`] around each hint and from 1, which finds versions
/// whose labels were moved or removed by hand. The search is bounded; a converged secret
/// costs one hash per version.
pub fn generations_of<'a>(
    name: &str,
    ids: impl IntoIterator<Item = &'a str>,
    hints: &BTreeSet<u32>,
) -> HashMap<String, u32> {
    let mut unresolved: HashSet<&str> = ids.into_iter().collect();
    let mut found = HashMap::new();
    let mut try_generation = |generation: u32, unresolved: &mut HashSet<&str>| {
        let id = version_id(name, generation);
        if unresolved.remove(id.as_str()) {
            found.insert(id, generation);
        }
    };
    let hints: BTreeSet<u32> = hints
        .iter()
        .copied()
        .filter(|g| (1..=MAX_GENERATION).contains(g))
        .collect();
    let hints = &hints;
    for &hint in hints {
        try_generation(hint, &mut unresolved);
    }
    if unresolved.is_empty() {
        return found;
    }
    let reach = MAX_VERSIONS as u32;
    let mut around: BTreeSet<u32> = (1..=reach).collect();
    for &hint in hints.iter().take(MAX_VERSIONS) {
        around.extend(hint.saturating_sub(reach).max(1)..=hint.saturating_add(reach));
    }
    for generation in around.difference(hints) {
        if unresolved.is_empty() {
            break;
        }
        try_generation(*generation, &mut unresolved);
    }
    found
}

/// The SecretString of a version: meta.json's fields, `publicKeyPem`, `privateKeyCiphertext`
/// (base64) and, only when the version carries it, `privateKeyPem`. Zeroized on drop.
pub fn secret_string(version: &StoredVersion) -> Result<Zeroizing<String>, StoreError> {
    use base64::Engine;
    let meta = serde_json::to_string(&version.meta)
        .map_err(|e| StoreError::Config(format!("cannot encode the version: {e}")))?;
    let mut out = Zeroizing::new(String::with_capacity(meta.len() + 4096));
    out.push_str(meta.strip_suffix('}').unwrap_or(&meta));
    let quote = |s: &str| serde_json::to_string(s).expect("a string always encodes");
    out.push_str(",\"publicKeyPem\":");
    out.push_str(&quote(&public_key_pem(&version.public_key_der)));
    out.push_str(",\"privateKeyCiphertext\":");
    out.push_str(&quote(
        &base64::engine::general_purpose::STANDARD.encode(&version.private_key_ciphertext),
    ));
    if let Some(private) = &version.private_key {
        let pem = private.to_pem();
        let quoted = Zeroizing::new(quote(&pem));
        out.push_str(",\"privateKeyPem\":");
        out.push_str(&quoted);
    }
    out.push('}');
    Ok(out)
}

/// The fields of a SecretString besides the meta.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Keys {
    public_key_pem: Option<String>,
    private_key_ciphertext: Option<String>,
    /// Never kept: only whether it is there.
    private_key_pem: Option<serde::de::IgnoredAny>,
}

/// The parts of a SecretString, each checked on its own; `Err` when it is not JSON at all.
pub fn parse(text: &str, location: &str, generation: u32) -> Result<VersionParts, StoreError> {
    use base64::Engine;
    let corrupt = |message: String| StoreError::Corrupt {
        path: format!("{location} (generation {generation})"),
        message,
    };
    if text.len() > MAX_SECRET_STRING {
        return Err(corrupt(format!(
            "the secret value is over {MAX_SECRET_STRING} bytes: not written by keyprov"
        )));
    }
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| corrupt(format!("the secret value is not JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| corrupt("the secret value is not a JSON object".into()))?;
    for field in ["publicKeyPem", "privateKeyCiphertext", "privateKeyPem"] {
        if field == "privateKeyPem" {
            // The plaintext is dropped from the parsed copy at once.
            if let Some(serde_json::Value::String(s)) = object.get_mut(field) {
                zeroize::Zeroize::zeroize(s);
            }
        }
    }
    let keys: Keys = serde_json::from_value(value.clone())
        .map_err(|e| corrupt(format!("the secret value is not keyprov's: {e}")))?;
    let _ = keys.private_key_pem;
    if let Some(object) = value.as_object_mut() {
        for field in ["publicKeyPem", "privateKeyCiphertext", "privateKeyPem"] {
            object.remove(field);
        }
    }
    let meta = serde_json::from_value::<VersionMeta>(value)
        .map_err(|e| corrupt(format!("the meta fields are not keyprov's: {e}")))
        .and_then(|meta| {
            if meta.generation == generation {
                Ok(meta)
            } else {
                Err(corrupt(format!(
                    "it records generation {}, not {generation}",
                    meta.generation
                )))
            }
        });
    let public_key_der = keys
        .public_key_pem
        .ok_or_else(|| corrupt("publicKeyPem is missing".into()))
        .and_then(|text| {
            pem::parse(text.as_bytes())
                .ok()
                .filter(|p| p.tag() == "PUBLIC KEY")
                .map(|p| p.into_contents())
                .ok_or_else(|| corrupt("publicKeyPem is not a PEM public key".into()))
        });
    let private_key_ciphertext = keys
        .private_key_ciphertext
        .ok_or_else(|| corrupt("privateKeyCiphertext is missing".into()))
        .and_then(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| corrupt(format!("privateKeyCiphertext is not base64: {e}")))
        });
    Ok(VersionParts {
        meta,
        public_key_der,
        private_key_ciphertext,
    })
}

/// Whether a SecretString carries `privateKeyPem`.
pub fn has_plaintext(text: &str) -> bool {
    serde_json::from_str::<Keys>(text).is_ok_and(|k| k.private_key_pem.is_some())
}

/// A whole version from its parts, checked: the public key and ciphertext match the meta's
/// hashes and the meta names `name`.
pub fn whole(parts: VersionParts, name: &str, location: &str) -> Result<StoredVersion, StoreError> {
    let meta = parts.meta?;
    let corrupt = |message: &str| StoreError::Corrupt {
        path: format!("{location} (generation {})", meta.generation),
        message: message.into(),
    };
    if meta.name != name {
        return Err(corrupt("it holds another key pair (its name differs)"));
    }
    let public_key_der = parts.public_key_der?;
    if crate::store::public_key_sha256(&public_key_der) != meta.public_key_sha256 {
        return Err(corrupt("its public key does not match publicKeySha256"));
    }
    let private_key_ciphertext = parts.private_key_ciphertext?;
    if !meta.ciphertext_matches(&private_key_ciphertext) {
        return Err(corrupt(
            "its private key ciphertext does not match privateKeyCiphertextSha256",
        ));
    }
    Ok(StoredVersion {
        meta,
        public_key_der,
        private_key_ciphertext,
        private_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn version(plaintext: bool) -> StoredVersion {
        let public_key_der = vec![0x30, 0x59, 1, 2, 3];
        let private_key_ciphertext = vec![9, 8, 7];
        StoredVersion {
            meta: VersionMeta {
                api_version: "keyprov/v1".into(),
                name: "k".into(),
                generation: 3,
                key_pair_spec: "ECC_NIST_P256".into(),
                kms_key_arn: "arn:k".into(),
                encryption_context: BTreeMap::new(),
                grant_tokens: vec![],
                spec_fingerprint: "f".into(),
                created_at: "2026-01-01T00:00:00.000000Z".into(),
                activates_at: "2026-01-01T00:00:00.000000Z".into(),
                public_key_sha256: crate::store::public_key_sha256(&public_key_der),
                private_key_ciphertext_sha256: Some(crate::store::public_key_sha256(
                    &private_key_ciphertext,
                )),
            },
            public_key_der,
            private_key_ciphertext,
            private_key: plaintext
                .then(|| crate::key_material::PrivateKey::from_der(vec![0x30, 1])),
        }
    }

    #[test]
    fn a_version_round_trips_through_its_secret_string() {
        for plaintext in [false, true] {
            let text = secret_string(&version(plaintext)).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["generation"], 3);
            assert_eq!(value["privateKeyCiphertext"], "CQgH");
            assert!(
                value["publicKeyPem"]
                    .as_str()
                    .unwrap()
                    .starts_with("-----BEGIN PUBLIC KEY-----\n")
            );
            assert_eq!(value.get("privateKeyPem").is_some(), plaintext);
            assert_eq!(has_plaintext(&text), plaintext);
            let back = whole(parse(&text, "s", 3).unwrap(), "k", "s").unwrap();
            assert_eq!(back.meta, version(false).meta);
            assert_eq!(back.public_key_der, version(false).public_key_der);
            assert!(back.private_key.is_none());
        }
    }

    #[test]
    fn a_tampered_secret_string_is_refused_part_by_part() {
        let text = secret_string(&version(false)).unwrap();
        let swapped = text.replace("CQgH", "AAAA");
        let parts = parse(&swapped, "s", 3).unwrap();
        assert!(parts.meta.is_ok() && parts.public_key_der.is_ok());
        let err = whole(parts, "k", "s").unwrap_err().to_string();
        assert!(err.contains("ciphertext"), "{err}");
        assert!(whole(parse(&text, "s", 3).unwrap(), "other", "s").is_err());
        assert!(
            parse(&text, "s", 4).unwrap().meta.is_err(),
            "generation checked"
        );
        assert!(parse("not json", "s", 3).is_err());
        assert!(parse(&"x".repeat(MAX_SECRET_STRING + 1), "s", 3).is_err());
    }

    #[test]
    fn generations_come_from_version_ids_whatever_the_labels_say() {
        let ids: Vec<String> = [1, 2, 3, 250]
            .iter()
            .map(|g| version_id("k", *g))
            .chain(["3f6c0c2e-0000-4000-8000-000000000000".to_string()])
            .collect();
        let id_refs = || ids.iter().map(String::as_str);
        // Labels name 2 and 3 only (1's label removed, 250's label moved by hand).
        let found = generations_of("k", id_refs(), &BTreeSet::from([2, 3]));
        assert_eq!(
            found.len(),
            3,
            "a version not keyprov's is left out: {found:?}"
        );
        for g in [1, 2, 3] {
            assert_eq!(found[&version_id("k", g)], g);
        }
        // Far from every hint: found only around a hint that names it.
        let found = generations_of("k", id_refs(), &BTreeSet::from([200]));
        assert_eq!(found[&version_id("k", 250)], 250);
        assert!(generations_of("other", id_refs(), &BTreeSet::from([1, 2, 3])).is_empty());
    }

    #[test]
    fn tokens_and_labels_are_stable() {
        assert_eq!(version_id("k", 3), version_id("k", 3));
        assert_ne!(version_id("k", 3), version_id("k", 4));
        assert_ne!(version_id("k", 3), version_id("l", 3));
        assert_eq!(generation_label(3), "keyprov-v0003");
        assert_eq!(parse_generation_label("keyprov-v0003"), Some(3));
        assert_eq!(parse_generation_label("keyprov-v12345"), Some(12345));
        assert_eq!(parse_generation_label("AWSCURRENT"), None);
        assert_eq!(parse_generation_label("keyprov-v3"), None);
    }
}
