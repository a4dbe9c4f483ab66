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
use crate::manifest::{KeyPair, Output, SecretsManagerOutput};
use crate::observed::Observed;
use crate::provider::{AnyProvider, ProviderError};
use crate::store::{StoreError, Stores};

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

/// What [`prove_secret_currents`] may do about a version that fails its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run`: refuse it (recorded), move the labels readers follow off it.
    Run,
    /// `plan`: only say what `run --once` would do; nothing is written.
    Plan,
}

/// Proves the current and staged versions of every secret output of `keys` that neither a
/// file output of the key nor an earlier proof vouches for. Returns the keys whose secret fails
/// the proof, with the error naming the secret and version, and how many proofs were made (a
/// Decrypt each). With [`Mode::Run`], a version that fails is refused for good
/// ([`crate::secret_refusal`]) and, when it was current, `AWSCURRENT` moves back to the newest
/// generation that proves.
pub async fn prove_secret_currents(
    state_dir: &std::path::Path,
    provider: &impl crate::provider::Provider,
    stores: &Stores,
    keys: &[&KeyPair],
    observed: &Observed,
    holding: &std::collections::BTreeSet<String>,
    mode: Mode,
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
        let local: Vec<(u32, String)> = key
            .outputs
            .iter()
            .zip(outputs)
            .filter(|(output, _)| !matches!(output, Output::SecretsManager(_)))
            .filter_map(|(_, o)| o.current.as_ref())
            .map(|c| (c.generation, c.public_key_sha256.clone()))
            .collect();
        let mut proof = Proof {
            provider,
            stores,
            key,
            local: &local,
            proven: &mut proven,
            proofs: &mut proofs,
            changed: &mut changed,
        };
        for (index, (output, seen)) in key.outputs.iter().zip(outputs).enumerate() {
            let Output::SecretsManager(secret) = output else {
                continue;
            };
            let linked = [("current", &seen.current), ("staged", &seen.next)];
            for (role, version) in linked {
                let Some(version) = version else { continue };
                let generation = version.generation;
                let held = (generation, version.public_key_sha256.clone());
                if proof.vouched(secret, &held) {
                    continue;
                }
                let Err(Unproven {
                    why,
                    definitive,
                    genuine,
                }) = proof.prove(index, secret, generation).await
                else {
                    continue;
                };
                // A genuine unbound version (an older keyprov's) is never copied anywhere: the
                // plan replaces it with a bound generation (see [`crate::binding`]); a genuine
                // other spec's is a rollout in flight that the fleet holds this key for.
                if genuine && (!version.bound || holding.contains(&key.name)) {
                    continue;
                }
                let origin = binding::origin(key, index, generation);
                let outcome = match mode {
                    // KMS or Secrets Manager could not answer (throttling, outage, access):
                    // nothing is refused on that, the next reconcile proves it again.
                    _ if !definitive => {
                        "it could not be proven now and is proven again by the next reconcile"
                            .to_string()
                    }
                    Mode::Plan => format!(
                        "`keyprov run` refuses it for good{}",
                        if role == "current" {
                            " and moves AWSCURRENT back to the newest generation that proves"
                        } else {
                            ""
                        }
                    ),
                    Mode::Run => {
                        stores.secrets().refuse(key, secret, generation, &why);
                        if role == "current" {
                            proof.restore(index, secret, generation).await
                        } else {
                            stores
                                .secrets()
                                .unstage_refused(key, secret)
                                .await
                                .map_or_else(
                                    |e| format!("it is refused for good ({e})"),
                                    |()| "it is refused for good and never activated".into(),
                                )
                        }
                    }
                };
                failed.push((
                    key.name.clone(),
                    format!(
                        "key {:?}: the {role} version of {origin} is not believed: {why}. \
                         Nothing was copied from it; {outcome}. If keyprov did not write it, \
                         check who can write this secret (secretsmanager:PutSecretValue)",
                        key.name
                    ),
                ));
            }
        }
    }
    if mode == Mode::Run {
        crate::secret_refusal::record(state_dir, stores.secrets().take_refused());
    }
    if changed
        && mode == Mode::Run
        && let Err(err) = ledger.save(&proven)
    {
        // Only costs a proof again next time.
        tracing::warn!("{err}");
    }
    (failed, proofs)
}

/// `keyprov plan`'s proofs ([`Mode::Plan`]): the keys whose secret holds a version that
/// `run --once` would refuse, each with what it would do. Nothing is written.
pub async fn plan_proofs(
    config: &crate::config::Config,
    stores: &Stores,
    keys: &[KeyPair],
    observed: &Observed,
) -> Vec<(String, String)> {
    let provider = crate::reconcile::execute::paced_outside_actions(
        std::sync::Arc::new(AnyProvider::from_config(config)),
        stores,
    );
    let keys: Vec<&KeyPair> = keys.iter().collect();
    let (failed, _) = prove_secret_currents(
        &config.state_dir,
        &provider,
        stores,
        &keys,
        observed,
        &Default::default(),
        Mode::Plan,
    )
    .await;
    failed
}

/// Proofs of one key's secret versions.
struct Proof<'a, P: crate::provider::Provider> {
    provider: &'a P,
    stores: &'a Stores,
    key: &'a KeyPair,
    /// (generation, public key SHA-256) of the key's file outputs' currents.
    local: &'a [(u32, String)],
    proven: &'a mut Proven,
    proofs: &'a mut usize,
    changed: &'a mut bool,
}

/// Whether `err` refutes the version for good. Not when a provider failed to answer, nor when
/// the version was made for another spec or before the binding: during a rolling deploy or a
/// fleet upgrade another host may rightly hold another manifest or an older keyprov, and
/// refusing its generation would fight it (the key fails, nothing is moved, and it is proven
/// again next time).
fn refutes(err: &binding::ProofError) -> bool {
    match err {
        binding::ProofError::OtherSpec { .. } | binding::ProofError::Unbound => false,
        err => err
            .provider_error()
            // A ciphertext the provider cannot even parse is refuted by what it holds too.
            .is_none_or(|p| {
                matches!(
                    p,
                    ProviderError::DecryptMismatch { .. } | ProviderError::Crypto(_)
                )
            }),
    }
}

/// Why a version was not proven.
struct Unproven {
    why: String,
    /// What the version holds refutes it (as opposed to a provider or store that could not
    /// answer): only then is it refused.
    definitive: bool,
    /// It is another spec's or an older keyprov's, made with this key's KMS rights
    /// ([`binding::Provenance::Genuine`]): a rollout in flight, not a forgery.
    genuine: bool,
}

/// Older generations tried when the current one is refused (a Decrypt each at most).
const FALLBACKS: usize = 3;

impl<P: crate::provider::Provider> Proof<'_, P> {
    /// Whether a file output or an earlier proof vouches for `held` in `secret`.
    fn vouched(&self, secret: &SecretsManagerOutput, held: &(u32, String)) -> bool {
        self.local.contains(held)
            || self
                .proven
                .contains(&self.key.name, &secret.secret_id, held)
    }

    /// Proves `generation` of the secret of output `index` (a Decrypt); remembers it proven.
    async fn prove(
        &mut self,
        index: usize,
        secret: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<(), Unproven> {
        let version = self
            .stores
            .read_version(self.key, index, generation)
            .await
            .map_err(|e| Unproven {
                definitive: matches!(e, StoreError::Corrupt { .. }),
                why: e.to_string(),
                genuine: false,
            })?;
        let held = (generation, version.meta.public_key_sha256.clone());
        if self.vouched(secret, &held) {
            return Ok(());
        }
        *self.proofs += 1;
        let proved = binding::prove(
            self.provider,
            self.key,
            &version,
            generation,
            Unbound::Refuse,
        )
        .await;
        match proved {
            Ok(_) => {}
            Err(e @ (binding::ProofError::OtherSpec { .. } | binding::ProofError::Unbound)) => {
                return Err(self.judge(&version, generation, e).await);
            }
            Err(e) => {
                return Err(Unproven {
                    definitive: refutes(&e),
                    why: e.to_string(),
                    genuine: false,
                });
            }
        }
        self.proven.insert(&self.key.name, &secret.secret_id, held);
        *self.changed = true;
        Ok(())
    }

    /// Why a version that is not this manifest's (`rejected`: another spec, or unbound) is not
    /// adopted, after a Decrypt with the manifest's KMS key tells a rollout in flight from a
    /// forgery that lies about its spec or context ([`binding::provenance`]).
    async fn judge(
        &mut self,
        version: &crate::store::StoredVersion,
        generation: u32,
        rejected: binding::ProofError,
    ) -> Unproven {
        // The Decrypt the rejection spared is made here (counted by the caller).
        match binding::provenance(self.provider, self.key, version, generation).await {
            binding::Provenance::Genuine => Unproven {
                why: rejected.to_string(),
                definitive: false,
                genuine: true,
            },
            binding::Provenance::Forged(err) => Unproven {
                why: format!("{rejected}, and {err}"),
                definitive: true,
                genuine: false,
            },
            binding::Provenance::OtherKmsKey(err) => Unproven {
                why: format!(
                    "{rejected}, under another KMS key than the manifest's {} ({err}): if a \
                     rollout to a new kmsKeyId is under way this clears when this host's \
                     manifest has it; otherwise it is forged (`keyprov rotate {} --now` \
                     replaces it)",
                    self.key.kms_key_id, self.key.name
                ),
                definitive: false,
                genuine: false,
            },
            binding::Provenance::Unknown(err) => Unproven {
                why: format!("{rejected}; it could not be judged now ({err})"),
                definitive: false,
                genuine: false,
            },
        }
    }

    /// After the current `refused` generation of the secret of output `index` was refused:
    /// moves `AWSCURRENT` to the newest generation that a file output or a proof vouches for
    /// (refusing those that fail on the way). Says what happened.
    async fn restore(
        &mut self,
        index: usize,
        secret: &SecretsManagerOutput,
        refused: u32,
    ) -> String {
        let secrets = self.stores.secrets();
        let held = match secrets.held_generations(self.key, secret).await {
            Ok(held) => held,
            Err(err) => return format!("AWSCURRENT could not be moved off it ({err})"),
        };
        let mut target = None;
        for generation in held.into_iter().filter(|g| *g != refused).take(FALLBACKS) {
            match self.prove(index, secret, generation).await {
                Ok(()) => {
                    target = Some(generation);
                    break;
                }
                Err(Unproven {
                    why,
                    definitive: true,
                    ..
                }) => secrets.refuse(self.key, secret, generation, &why),
                Err(Unproven { why, .. }) => {
                    return format!(
                        "AWSCURRENT stays until generation {generation} can be proven ({why})"
                    );
                }
            }
        }
        let Some(target) = target else {
            return "no generation of the secret proves, so the next reconcile makes a new \
                    generation above every version it holds"
                .into();
        };
        match secrets.restore_current(self.key, secret, target).await {
            Ok(()) => {
                tracing::warn!(
                    key = %self.key.name,
                    secret = %secret.secret_id,
                    "AWSCURRENT of secret {} moved off refused generation {refused} back to \
                     generation {target}, the newest that proves",
                    secret.secret_id
                );
                format!("AWSCURRENT is back on generation {target}, the newest that proves")
            }
            Err(err) => {
                format!("AWSCURRENT could not be moved back to generation {target} ({err})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::ProofError;

    #[test]
    fn only_what_a_version_holds_refutes_it() {
        let decrypt = |source| ProofError::Decrypt {
            kms_key: "k".into(),
            source,
        };
        let kms = |code: &str, transient| ProviderError::Kms {
            code: code.into(),
            message: "m".into(),
            transient,
        };
        let cases = [
            (ProofError::OtherPair, true),
            (
                ProofError::Mislabelled {
                    name: "k".into(),
                    recorded: 1,
                    wanted: 2,
                },
                true,
            ),
            (
                decrypt(ProviderError::DecryptMismatch {
                    name: "k".into(),
                    context: "{}".into(),
                    kms_key: "k".into(),
                    other_key: false,
                }),
                true,
            ),
            (decrypt(ProviderError::Crypto("not local".into())), true),
            (decrypt(kms("ThrottlingException", true)), false),
            (decrypt(kms("AccessDeniedException", false)), false),
            (decrypt(kms("DisabledException", false)), false),
            (
                ProofError::OtherSpec {
                    recorded: "a".into(),
                    wanted: "b".into(),
                },
                false,
            ),
            (ProofError::Unbound, false),
        ];
        for (err, refuted) in cases {
            assert_eq!(refutes(&err), refuted, "{err}");
        }
    }
}
