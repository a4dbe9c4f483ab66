//! Copies of a stored generation: read whole (or put together from intact parts) from an
//! output holding it, proven when it comes from a secret, written where it is missing or
//! damaged.

use std::collections::HashMap;
use std::sync::Arc;

use super::key::KeyContext;
use crate::metrics::FailureReason;
use crate::plan::Link;
use crate::provider::Provider;
use crate::store::{RepairInput, StoredVersion, VersionMeta, VersionParts};

/// A whole version of key `name` from the intact files of several outputs, if they add up to
/// one.
fn assemble(name: &str, parts: &[VersionParts]) -> Option<StoredVersion> {
    let meta = parts
        .iter()
        .filter_map(|p| p.meta.as_ref().ok())
        .find(|m| m.name == name)?;
    let agree = |m: &VersionMeta| m.public_key_sha256 == meta.public_key_sha256;
    if parts
        .iter()
        .filter_map(|p| p.meta.as_ref().ok())
        .any(|m| !agree(m))
    {
        return None;
    }
    let public_key_der = parts
        .iter()
        .filter_map(|p| p.public_key_der.as_ref().ok())
        .find(|der| crate::store::public_key_sha256(der) == meta.public_key_sha256)?;
    let private_key_ciphertext = parts
        .iter()
        .filter_map(|p| p.private_key_ciphertext.as_ref().ok())
        .find(|c| meta.ciphertext_matches(c))?;
    Some(StoredVersion {
        meta: meta.clone(),
        public_key_der: public_key_der.clone(),
        private_key_ciphertext: private_key_ciphertext.clone(),
        private_key: None,
    })
}

impl<P: Provider> KeyContext<'_, P> {
    /// Proves a version read from a secret (see [`crate::binding::prove`]): only a pair that
    /// decrypts with the manifest's KMS key and context bound to this name and `generation`,
    /// and whose private key is the one of its public key, is believed. A version forged by
    /// someone who can write the secret, or a retired pair replayed as a new generation, is
    /// refused, naming `origin`. Keeps the plaintext when the key includes it.
    pub(super) async fn prove(
        &self,
        mut version: StoredVersion,
        generation: u32,
        origin: &str,
    ) -> Result<StoredVersion, String> {
        let proof = crate::binding::prove(
            self.provider,
            self.key,
            &version,
            generation,
            crate::binding::Unbound::Refuse,
        )
        .await;
        let private = proof.map_err(|err| {
            self.failing(
                err.provider_error()
                    .map_or(FailureReason::InvalidCiphertext, FailureReason::of_provider),
            );
            format!(
                "key {name:?}: {origin} is not believed: {err}. Nothing was copied from it; \
                 if keyprov did not write it, remove it from the secret (or move its labels \
                 back), or replace the pair with `keyprov rotate {name} --now`",
                name = self.key.name
            )
        })?;
        if self.key.include_plaintext {
            version.private_key = Some(private);
        }
        Ok(version)
    }

    /// Proves `generation` in every secret among `outputs` that already holds it (not in
    /// `lacking`) before a label moves onto it there: a staged or unlinked version in a secret
    /// may have been put by anyone who can write the secret, under keyprov's request token.
    pub(super) async fn prove_held(
        &self,
        outputs: &[usize],
        lacking: &[usize],
        generation: u32,
    ) -> Result<(), String> {
        for &i in outputs {
            if !self.is_secret(i) || lacking.contains(&i) {
                continue;
            }
            let version = self
                .stores
                .read_version(self.key, i, generation)
                .await
                .map_err(|e| self.fail(e))?;
            if self.held_locally(&version, generation).await {
                continue;
            }
            let origin = crate::binding::origin(self.key, i, generation);
            self.prove(version, generation, &origin).await?;
        }
        Ok(())
    }

    /// Whether a file output (keyprov's own local state) holds `generation` with the very
    /// pair `version` holds: then the secret's copy is the one this host wrote or proved when
    /// it copied it, and needs no Decrypt.
    pub(super) async fn held_locally(&self, version: &StoredVersion, generation: u32) -> bool {
        for i in self.all_outputs() {
            if self.is_secret(i) {
                continue;
            }
            if let Ok(local) = self.stores.read_version(self.key, i, generation).await
                && local.meta.public_key_sha256 == version.meta.public_key_sha256
                && local.private_key_ciphertext == version.private_key_ciphertext
            {
                return true;
            }
        }
        false
    }

    /// Reads `generation` whole from the first output (other than `except`) holding an
    /// intact copy of it; failing that, puts it together from the intact files of every
    /// output (each checked against a meta.json that shares the generation's public key hash).
    pub(super) async fn read_intact(
        &self,
        generation: u32,
        except: Option<usize>,
    ) -> Result<StoredVersion, String> {
        let name = &self.key.name;
        let mut problems = Vec::new();
        let mut parts = Vec::new();
        for i in self.all_outputs() {
            if !self
                .stores
                .has_version(self.key, i, generation)
                .await
                .unwrap_or(false)
            {
                continue;
            }
            if Some(i) != except {
                match self.stores.read_version(self.key, i, generation).await {
                    Ok(version) if self.is_secret(i) => {
                        let origin = crate::binding::origin(self.key, i, generation);
                        return self.prove(version, generation, &origin).await;
                    }
                    Ok(version) => return Ok(version),
                    Err(err) => problems.push(err.to_string()),
                }
            }
            if let Ok(found) = self.stores.read_parts(self.key, i, generation).await {
                parts.push(found);
            }
        }
        if let Some(version) = assemble(name, &parts) {
            if let Some(i) = (0..self.key.outputs.len()).find(|&i| self.is_secret(i)) {
                let origin = crate::binding::origin(self.key, i, generation);
                return self.prove(version, generation, &origin).await;
            }
            return Ok(version);
        }
        Err(if problems.is_empty() {
            format!("key {name:?}: no other output holds generation {generation} to copy from")
        } else {
            format!(
                "key {name:?}: no output holds an intact copy of generation {generation} ({})",
                problems.join("; ")
            )
        })
    }

    /// Copies `generation` from an output holding it intact to `targets`, published for `link`
    /// there ([`crate::store::Stores::publish_version`]; a new key directory appears only with a link).
    pub(super) async fn copy(
        &self,
        generation: u32,
        targets: &[usize],
        link: Link,
    ) -> Result<(), String> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut version = self.read_intact(generation, None).await?;
        if self.key.include_plaintext && version.private_key.is_none() {
            let key = self
                .decrypt(&version.meta, &version.private_key_ciphertext)
                .await?;
            version.private_key = Some(key);
        }
        self.stores
            .publish_version(self.key, targets, Arc::new(version), link)
            .await
            .map_err(|(_, e)| self.fail(e))
    }

    /// Repairs output `index`: `damaged` generations are rewritten from an intact copy in
    /// another output; with none, the key fails and nothing is changed.
    pub(super) async fn repair(
        &self,
        index: usize,
        previous: Option<u32>,
        damaged: &[u32],
        reasons: &[String],
    ) -> Result<(), String> {
        let name = &self.key.name;
        let output = &self.key.outputs[index];
        let mut intact = Vec::with_capacity(damaged.len());
        for &generation in damaged {
            let mut version = self
                .read_intact(generation, Some(index))
                .await
                .map_err(|err| {
                    format!(
                        "{err}. Generation {generation} in {} is damaged ({}) and nothing was \
                         changed: restore it from a backup, or replace the pair with \
                         `keyprov rotate {name} --now`",
                        output.location(),
                        reasons.join("; ")
                    )
                })?;
            if self.key.include_plaintext && version.private_key.is_none() {
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                version.private_key = Some(key);
            }
            intact.push(version);
        }
        let mut input = RepairInput {
            include_plaintext: self.key.include_plaintext,
            plaintext: HashMap::new(),
            intact: intact.iter().collect(),
            previous,
        };
        if self.key.include_plaintext {
            let missing = self
                .stores
                .missing_plaintext(self.key, index)
                .await
                .map_err(|e| self.fail(e))?;
            for generation in missing {
                if damaged.contains(&generation) {
                    continue;
                }
                let version = self
                    .stores
                    .read_version(self.key, index, generation)
                    .await
                    .map_err(|e| self.fail(e))?;
                let key = self
                    .decrypt(&version.meta, &version.private_key_ciphertext)
                    .await?;
                input.plaintext.insert(generation, key);
            }
        }
        self.stores
            .repair(self.key, index, &input)
            .await
            .map_err(|e| self.fail(e))
    }
}
