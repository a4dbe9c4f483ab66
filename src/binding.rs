//! Binds every pair to its key and generation: keyprov's reserved encryption context entries,
//! and the proof a stored version must pass before it is believed.
//!
//! A secret is shared state that anyone with `secretsmanager:PutSecretValue` can write, so
//! nothing it says about itself (KMS key, encryption context) is used to check it: the
//! ciphertext is decrypted with the manifest's KMS key and the manifest's context plus the
//! reserved entries for the name and generation being adopted. A pair made under another key,
//! another context, for another key name, or for another generation (a replayed retired pair)
//! fails to decrypt; a valid ciphertext beside another public key fails the pair check.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use crate::manifest::KeyPair;
use crate::provider::{DecryptRequest, PrivateKey, Provider, ProviderError};
use crate::store::{StoredVersion, VersionMeta};

/// Prefix of the encryption context keys keyprov reserves (a manifest may not set them).
pub const RESERVED_PREFIX: &str = "keyprov:";
/// Reserved context key holding the key pair's `metadata.name`.
pub const NAME_KEY: &str = "keyprov:name";
/// Reserved context key holding the generation number, in decimal without leading zeros.
pub const GENERATION_KEY: &str = "keyprov:generation";
/// Reserved context key holding the installation's `reconcile.scope`, present only when the
/// scope is not `default`: a version copied from another installation's secret (another scope,
/// same key name and KMS key) does not decrypt here.
pub const SCOPE_KEY: &str = "keyprov:scope";

/// The scope every pair of this process is bound to (`None`: the scope `default`, unbound, so
/// that default-scope installations keep the versions they wrote before scopes were bound).
fn scope_cell() -> &'static Mutex<Option<String>> {
    static SCOPE: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    SCOPE.get_or_init(Mutex::default)
}

/// Binds the pairs of this process to the configuration's `reconcile.scope` (called whenever a
/// configuration is loaded). Process-wide, like the clock tolerance: every context keyprov
/// builds, whichever command builds it, must agree on it.
pub fn set_scope(scope: &str) {
    *scope_cell().lock().expect("never poisoned") = (scope != "default").then(|| scope.into());
}

/// The bound scope (see [`set_scope`]).
fn bound_scope() -> Option<String> {
    scope_cell().lock().expect("never poisoned").clone()
}

/// The encryption context of generation `generation` of key `name`: the manifest's entries plus
/// the reserved ones (the scope's with an explicit scope, see [`set_scope`]). Sent on every
/// GenerateDataKeyPair and Decrypt, and recorded in meta.json.
pub fn context(
    manifest: &BTreeMap<String, String>,
    name: &str,
    generation: u32,
) -> BTreeMap<String, String> {
    context_in(manifest, name, generation, bound_scope().as_deref())
}

/// [`context`] for an explicit `scope` (`None`: the scope `default`).
pub fn context_in(
    manifest: &BTreeMap<String, String>,
    name: &str,
    generation: u32,
    scope: Option<&str>,
) -> BTreeMap<String, String> {
    let mut context = manifest.clone();
    context.insert(NAME_KEY.into(), name.into());
    context.insert(GENERATION_KEY.into(), generation.to_string());
    if let Some(scope) = scope {
        context.insert(SCOPE_KEY.into(), scope.into());
    }
    context
}

/// The manifest's part of a recorded encryption context (the reserved entries left out).
pub fn manifest_part(recorded: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    recorded
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a version records the reserved entries of its own name and generation, and of this
/// installation's scope (versions written before keyprov bound its pairs, or before an
/// explicit scope was bound, do not; nor do versions of another scope).
pub fn is_bound(meta: &VersionMeta) -> bool {
    is_bound_in(meta, bound_scope().as_deref())
}

/// [`is_bound`] for an explicit `scope` (`None`: the scope `default`).
pub fn is_bound_in(meta: &VersionMeta, scope: Option<&str>) -> bool {
    meta.encryption_context.get(NAME_KEY) == Some(&meta.name)
        && meta.encryption_context.get(GENERATION_KEY) == Some(&meta.generation.to_string())
        && meta.encryption_context.get(SCOPE_KEY).map(String::as_str) == scope
}

/// What a version written before the binding gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbound {
    /// Refused: a version read from a secret (shared, writable by others) must be bound.
    Refuse,
    /// Local files (keyprov's own state): a version written before the upgrade is decrypted
    /// with the manifest's key and context alone (it stays until the key rotates), and one
    /// made under an earlier spec of the key with what it records.
    Accept,
}

/// Why a version is not believed.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The version records another key name or generation than the one asked for.
    #[error("it records key {name:?} generation {recorded}, not generation {wanted}")]
    Mislabelled {
        /// Recorded name.
        name: String,
        /// Recorded generation.
        recorded: u32,
        /// Generation asked for.
        wanted: u32,
    },
    /// Made for another keyPairSpec, kmsKeyId or encryptionContext than the manifest's.
    #[error(
        "it was made for another keyPairSpec, kmsKeyId or encryptionContext (spec fingerprint \
         {recorded}, the manifest's is {wanted})"
    )]
    OtherSpec {
        /// Recorded fingerprint.
        recorded: String,
        /// The manifest's.
        wanted: String,
    },
    /// Written before keyprov bound its pairs, where that is not accepted.
    #[error(
        "it predates keyprov's key binding (its encryption context does not bind it with \
         {NAME_KEY}, {GENERATION_KEY} and, with an explicit reconcile.scope, {SCOPE_KEY}), so \
         it cannot be proven to be this key's generation"
    )]
    Unbound,
    /// Bound to another installation's scope: copied from another installation's secret.
    #[error(
        "it is bound to keyprov scope {recorded}, not this installation's {wanted} \
         (reconcile.scope): a version copied from another installation is never adopted"
    )]
    OtherScope {
        /// The scope it records (`"default"` when none).
        recorded: String,
        /// This installation's.
        wanted: String,
    },
    /// The ciphertext does not decrypt with the manifest's key and bound context.
    #[error(
        "its private key does not decrypt with the manifest's KMS key {kms_key} and encryption \
         context for this name and generation ({source})"
    )]
    Decrypt {
        /// The manifest's kmsKeyId.
        kms_key: String,
        /// The provider's failure.
        source: ProviderError,
    },
    /// The private key is not the one of the version's public key.
    #[error("its public key is not the one of its private key")]
    OtherPair,
}

impl ProofError {
    /// The provider failure behind it, if any (for the failure reason of metrics).
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            ProofError::Decrypt { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The Decrypt request of a ciphertext of `key` under `context`, pinned to the manifest's KMS
/// key (`KeyId` on Decrypt): a ciphertext of another KMS key fails, whatever it records.
pub fn decrypt_request<'a>(
    key: &'a KeyPair,
    ciphertext: &'a [u8],
    context: &'a BTreeMap<String, String>,
) -> DecryptRequest<'a> {
    DecryptRequest {
        name: &key.name,
        ciphertext,
        kms_key_arn: &key.kms_key_id,
        encryption_context: context,
        grant_tokens: &key.grant_tokens,
    }
}

/// Where version `generation` of output `index` of `key` is, for messages: a secret's id and
/// the version id keyprov writes that generation under, or a version directory.
pub fn origin(key: &KeyPair, index: usize, generation: u32) -> String {
    match &key.outputs[index] {
        crate::manifest::Output::SecretsManager(secret) => format!(
            "secret {} version {} (generation {generation})",
            secret.secret_id,
            crate::store::secrets_manager::layout::version_id(&key.name, generation)
        ),
        output => format!("{output} generation {generation}"),
    }
}

/// Opens the private key of a version recorded as `meta`, claimed to be generation
/// `generation` of `key`: it must record that name and generation and the manifest's spec
/// fingerprint, and its ciphertext must decrypt with the manifest's KMS key and the manifest's
/// context bound to that name and generation. Nothing `meta` says about KMS keys or contexts
/// is used.
pub async fn open<P: Provider>(
    provider: &P,
    key: &KeyPair,
    meta: &VersionMeta,
    ciphertext: &[u8],
    generation: u32,
    unbound: Unbound,
) -> Result<PrivateKey, ProofError> {
    if meta.name != key.name || meta.generation != generation {
        return Err(ProofError::Mislabelled {
            name: meta.name.clone(),
            recorded: meta.generation,
            wanted: generation,
        });
    }
    let fingerprint = key.spec_fingerprint();
    if meta.spec_fingerprint != fingerprint {
        if unbound == Unbound::Accept
            && let Ok(private) = open_as_recorded(provider, key, meta, ciphertext).await
        {
            return Ok(private);
        }
        return Err(ProofError::OtherSpec {
            recorded: meta.spec_fingerprint.clone(),
            wanted: fingerprint,
        });
    }
    let scope = bound_scope();
    let recorded_scope = meta.encryption_context.get(SCOPE_KEY);
    // Files are this host's own state (written under an earlier scope, at worst); a secret's
    // version of another scope is another installation's.
    if unbound == Unbound::Refuse && recorded_scope.is_some_and(|s| Some(s) != scope.as_ref()) {
        return Err(ProofError::OtherScope {
            recorded: format!("{:?}", recorded_scope.map_or("default", String::as_str)),
            wanted: format!("{:?}", scope.as_deref().unwrap_or("default")),
        });
    }
    let context = match (is_bound_in(meta, scope.as_deref()), unbound) {
        (true, _) => context_in(
            &key.encryption_context,
            &key.name,
            generation,
            scope.as_deref(),
        ),
        (false, Unbound::Accept) => accepted_context(key, meta)?,
        (false, Unbound::Refuse) => return Err(ProofError::Unbound),
    };
    provider
        .decrypt(&decrypt_request(key, ciphertext, &context))
        .await
        .map_err(|source| ProofError::Decrypt {
            kms_key: key.kms_key_id.clone(),
            source,
        })
}

/// The context of a local file version written before the binding it lacks: the manifest's
/// context plus the reserved entries it records (none before keyprov bound its pairs; name and
/// generation before an explicit scope was bound), which must name this key and generation.
fn accepted_context(
    key: &KeyPair,
    meta: &VersionMeta,
) -> Result<BTreeMap<String, String>, ProofError> {
    let mut context = key.encryption_context.clone();
    for (entry, wanted) in [
        (NAME_KEY, meta.name.clone()),
        (GENERATION_KEY, meta.generation.to_string()),
    ] {
        if let Some(recorded) = meta.encryption_context.get(entry) {
            if *recorded != wanted {
                return Err(ProofError::Mislabelled {
                    name: meta.name.clone(),
                    recorded: meta.generation,
                    wanted: meta.generation,
                });
            }
            context.insert(entry.into(), wanted);
        }
    }
    if let Some(scope) = meta.encryption_context.get(SCOPE_KEY) {
        context.insert(SCOPE_KEY.into(), scope.clone());
    }
    Ok(context)
}

/// Opens a local file version made under an earlier spec of its key (the `current` of a
/// staged spec change, a kept `previous`) with the KMS key and context it records: files are
/// keyprov's own local state, never copied from a secret under another spec (copies are
/// proven with [`Unbound::Refuse`]). A recorded context that binds must bind this name and
/// generation ([`open`] checked them against `meta`).
async fn open_as_recorded<P: Provider>(
    provider: &P,
    key: &KeyPair,
    meta: &VersionMeta,
    ciphertext: &[u8],
) -> Result<PrivateKey, ProofError> {
    let recorded_name = meta.encryption_context.get(NAME_KEY);
    let recorded_generation = meta.encryption_context.get(GENERATION_KEY);
    if recorded_name.is_some_and(|n| *n != key.name)
        || recorded_generation.is_some_and(|g| *g != meta.generation.to_string())
    {
        return Err(ProofError::Mislabelled {
            name: recorded_name.cloned().unwrap_or_default(),
            recorded: meta.generation,
            wanted: meta.generation,
        });
    }
    let request = DecryptRequest {
        name: &key.name,
        ciphertext,
        kms_key_arn: &meta.kms_key_arn,
        encryption_context: &meta.encryption_context,
        grant_tokens: &key.grant_tokens,
    };
    provider
        .decrypt(&request)
        .await
        .map_err(|source| ProofError::Decrypt {
            kms_key: meta.kms_key_arn.clone(),
            source,
        })
}

/// Proves that `version` is generation `generation` of `key` ([`open`]) and that its private
/// key is the one of its public key. Returns the private key.
pub async fn prove<P: Provider>(
    provider: &P,
    key: &KeyPair,
    version: &StoredVersion,
    generation: u32,
    unbound: Unbound,
) -> Result<PrivateKey, ProofError> {
    let private = open(
        provider,
        key,
        &version.meta,
        &version.private_key_ciphertext,
        generation,
        unbound,
    )
    .await?;
    let derived = crate::provider::local::public_key_of(key.spec, private.der());
    if derived.as_deref().ok() != Some(version.public_key_der.as_slice()) {
        return Err(ProofError::OtherPair);
    }
    Ok(private)
}

/// What a version that cannot be adopted under this manifest (made for another spec, or
/// before the binding) really is, judged by a Decrypt with the manifest's KMS key.
#[derive(Debug)]
pub enum Provenance {
    /// It decrypts with the manifest's KMS key and the context it records, to the private key
    /// of its public key: a keyprov host holding this key's KMS rights made it (another
    /// version of the manifest in a rollout, or an older keyprov).
    Genuine,
    /// KMS says it was made under another KMS key: a rollout to a new `kmsKeyId`, or a
    /// forgery; this host cannot tell which.
    OtherKmsKey(ProviderError),
    /// What it holds refutes it: it does not decrypt under the context it records, or to its
    /// own public key, or it claims another name, generation or scope.
    Forged(ProofError),
    /// The provider could not answer (throttling, outage, access): judged again next time.
    Unknown(ProviderError),
}

/// Judges a version that [`prove`] rejected as [`ProofError::OtherSpec`] or
/// [`ProofError::Unbound`], so that lying in two JSON fields (the spec fingerprint, the
/// recorded context) does not spare a forgery its refusal: Decrypt, pinned to the manifest's
/// KMS key, with the manifest part of the context the version records plus the reserved
/// entries that must name this key, generation and scope.
pub async fn provenance<P: Provider>(
    provider: &P,
    key: &KeyPair,
    version: &StoredVersion,
    generation: u32,
) -> Provenance {
    let meta = &version.meta;
    if meta.name != key.name || meta.generation != generation {
        return Provenance::Forged(ProofError::Mislabelled {
            name: meta.name.clone(),
            recorded: meta.generation,
            wanted: generation,
        });
    }
    let scope = bound_scope();
    let recorded_scope = meta.encryption_context.get(SCOPE_KEY);
    if recorded_scope.is_some_and(|s| Some(s) != scope.as_ref()) {
        return Provenance::Forged(ProofError::OtherScope {
            recorded: format!("{:?}", recorded_scope.map_or("default", String::as_str)),
            wanted: format!("{:?}", scope.as_deref().unwrap_or("default")),
        });
    }
    let mut context = manifest_part(&meta.encryption_context);
    for (entry, wanted) in [
        (NAME_KEY, key.name.clone()),
        (GENERATION_KEY, generation.to_string()),
    ] {
        match meta.encryption_context.get(entry) {
            Some(recorded) if *recorded != wanted => {
                return Provenance::Forged(ProofError::Mislabelled {
                    name: meta.name.clone(),
                    recorded: meta.generation,
                    wanted: generation,
                });
            }
            Some(_) => {
                context.insert(entry.into(), wanted);
            }
            None => {}
        }
    }
    if let Some(scope) = recorded_scope {
        context.insert(SCOPE_KEY.into(), scope.clone());
    }
    let request = decrypt_request(key, &version.private_key_ciphertext, &context);
    match provider.decrypt(&request).await {
        Ok(private) => {
            let spec = meta.key_pair_spec.parse::<crate::spec::KeyPairSpec>().ok();
            let derived =
                spec.map(|spec| crate::provider::local::public_key_of(spec, private.der()));
            match derived {
                Some(Ok(der)) if der == version.public_key_der => Provenance::Genuine,
                _ => Provenance::Forged(ProofError::OtherPair),
            }
        }
        Err(
            err @ ProviderError::DecryptMismatch {
                other_key: true, ..
            },
        ) => Provenance::OtherKmsKey(err),
        Err(err @ (ProviderError::DecryptMismatch { .. } | ProviderError::Crypto(_))) => {
            Provenance::Forged(ProofError::Decrypt {
                kms_key: key.kms_key_id.clone(),
                source: err,
            })
        }
        Err(err) => Provenance::Unknown(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_entries_join_the_manifests_context() {
        let manifest = BTreeMap::from([("service".to_string(), "pay".to_string())]);
        let bound = context(&manifest, "pay-signing", 12);
        assert_eq!(
            crate::provider::canonical_context(&bound),
            r#"{"keyprov:generation":"12","keyprov:name":"pay-signing","service":"pay"}"#
        );
    }

    #[test]
    fn an_explicit_scope_is_bound_and_the_default_scope_is_not() {
        let manifest = BTreeMap::from([("service".to_string(), "pay".to_string())]);
        let prod = context_in(&manifest, "k", 2, Some("prod"));
        assert_eq!(
            crate::provider::canonical_context(&prod),
            r#"{"keyprov:generation":"2","keyprov:name":"k","keyprov:scope":"prod","service":"pay"}"#
        );
        let meta = |context: BTreeMap<String, String>| VersionMeta {
            api_version: crate::manifest::API_VERSION.into(),
            name: "k".into(),
            generation: 2,
            key_pair_spec: "ECC_NIST_P256".into(),
            kms_key_arn: "alias/k".into(),
            encryption_context: context,
            grant_tokens: vec![],
            spec_fingerprint: String::new(),
            created_at: String::new(),
            activates_at: String::new(),
            public_key_sha256: String::new(),
            private_key_ciphertext_sha256: None,
        };
        let unscoped = context_in(&manifest, "k", 2, None);
        for (context, scope, bound) in [
            (prod.clone(), Some("prod"), true),
            (prod.clone(), Some("staging"), false),
            (prod, None, false),
            (unscoped.clone(), None, true),
            // Written before the explicit scope was bound: bound once more (rotated).
            (unscoped, Some("prod"), false),
        ] {
            assert_eq!(is_bound_in(&meta(context), scope), bound, "{scope:?}");
        }
    }
}
