//! `DescribeSecret`, and the check that the secret is keyprov's own for the key.
//!
//! One reconcile describes a secret once: the answer is kept by secret id and every later step
//! of the pass (the copy, its links and prunes, a refusal's label moves) reads it again,
//! re-checked as keyprov's and with the versions refused since left out, without a request.
//! A step whose work that description shows done sends nothing. Whatever this host writes to a
//! secret drops its description, and every write decides on a fresh one (label moves
//! re-describe before each try: labels other hosts moved matter to their compare-and-set), as
//! does the re-check before a generation ([`SecretsManagerStore::has_version_now`]).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;

use super::SecretsManagerStore;
use super::errors::{Failure, found};
use super::layout::{self, MANAGED_TAG, NAME_TAG, SCOPE_TAG};
use super::refusal::Refusal;
use super::versions::Described;
use crate::store::StoreError;

impl SecretsManagerStore {
    /// Describes the secret, from this reconcile's description of it when there is one (see
    /// the module's doc); `None` when it does not exist. Fails when it is not keyprov's secret
    /// of `key` or is scheduled for deletion.
    pub(super) async fn describe(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Described>, StoreError> {
        match self.known(key, secret) {
            Some(known) => known.map(Some),
            None => self.describe_fresh(key, secret).await,
        }
    }

    /// This reconcile's description of the secret, without a request; `None` when there is
    /// none (never described, or written since).
    pub(super) fn known(&self, key: &str, secret: &str) -> Option<Result<Described, StoreError>> {
        let output = self
            .descriptions
            .lock()
            .expect("never poisoned")
            .get(secret)
            .cloned()?;
        Some(self.accept(key, secret, &output))
    }

    /// Keeps `output` as this reconcile's description of `secret` (a `DescribeSecret` answer,
    /// never a listing's entry, which may lag).
    pub(super) fn remember_description(&self, secret: &str, output: &DescribeSecretOutput) {
        self.descriptions
            .lock()
            .expect("never poisoned")
            .insert(secret.to_string(), output.clone());
    }

    /// Drops this reconcile's description of `secret`: this host wrote it (called once the
    /// write returned, whatever it answered).
    pub(super) fn forget_description(&self, secret: &str) {
        self.descriptions
            .lock()
            .expect("never poisoned")
            .remove(secret);
        self.drop_described(secret);
    }

    /// Describes the secret with a request (and keeps the answer, see [`Self::describe`]).
    pub(super) async fn describe_fresh(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Described>, StoreError> {
        let sent = std::time::Instant::now();
        let answer = self
            .client()
            .await
            .describe_secret()
            .secret_id(secret)
            .send()
            .await;
        let Some(output) = found(answer, secret, "DescribeSecret").map_err(Failure::into_error)?
        else {
            return Ok(None);
        };
        let described = self.accept(key, secret, &output)?;
        self.remember_description(secret, &output);
        self.keep_described(secret, super::beacon::covered::sent_at(sent), &output);
        Ok(Some(described))
    }

    /// What `DescribeSecret` (or a `ListSecrets` entry, see [`super::sweep`]) said of `secret`,
    /// once it is known to be keyprov's secret of `key`.
    pub(super) fn accept(
        &self,
        key: &str,
        secret: &str,
        output: &DescribeSecretOutput,
    ) -> Result<Described, StoreError> {
        let mut described = check_ours(&self.scope, key, secret, output)?;
        described.arn = output.arn().map(str::to_string);
        self.remember_arn(secret, output.arn());
        if let Some(foreign) = self.foreign.lock().expect("never poisoned").get(secret) {
            for id in foreign {
                described.forget(id);
            }
        }
        if let Some(id) = described.without_evidence() {
            self.remember_foreign(
                key,
                secret,
                &id,
                None,
                format!(
                    "{} is on it and it is none of key {key:?}'s generations",
                    layout::CURRENT
                ),
            );
        }
        self.managed
            .lock()
            .expect("never poisoned")
            .insert(secret.to_string(), true);
        Ok(described)
    }

    /// Remembers that `version_id` of `secret` (the request token of `generation`, if any)
    /// holds contents that are not a generation of `key` (`why`): from now on it is no
    /// generation (see [`Described::forget`]), and it is recorded as refused (see
    /// [`Self::take_refused`]).
    pub(super) fn remember_foreign(
        &self,
        key: &str,
        secret: &str,
        version_id: &str,
        generation: Option<u32>,
        why: String,
    ) {
        let new = self
            .foreign
            .lock()
            .expect("never poisoned")
            .entry(secret.to_string())
            .or_default()
            .insert(version_id.to_string());
        if new {
            self.refused.lock().expect("never poisoned").push(Refusal {
                key: key.to_string(),
                secret: secret.to_string(),
                version_id: version_id.to_string(),
                generation,
                why,
            });
        }
    }

    /// Describes a secret that must exist ([`Self::describe`]).
    pub(super) async fn describe_existing(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Described, StoreError> {
        self.describe(key, secret)
            .await?
            .ok_or_else(|| gone(secret))
    }

    /// Describes a secret that must exist, with a request ([`Self::describe_fresh`]).
    pub(super) async fn describe_existing_fresh(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Described, StoreError> {
        self.describe_fresh(key, secret)
            .await?
            .ok_or_else(|| gone(secret))
    }
}

/// A secret that should exist and does not.
fn gone(secret: &str) -> StoreError {
    StoreError::Config(format!(
        "secret {secret} does not exist (deleted meanwhile?)"
    ))
}

/// Tags as a map.
pub(super) fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Refuses a secret keyprov did not create for `key`, or one scheduled for deletion.
fn check_ours(
    scope: &str,
    key: &str,
    secret: &str,
    output: &DescribeSecretOutput,
) -> Result<Described, StoreError> {
    let tags = tag_map(output.tags());
    if tags.get(MANAGED_TAG).map(String::as_str) != Some("true") {
        return Err(StoreError::Unsafe {
            path: format!("secret {secret}"),
            message: format!(
                "exists but was not created by keyprov (no tag {MANAGED_TAG}=true): keyprov never \
                 writes it. Point the output at another secretId, or delete that secret if it \
                 is not in use"
            ),
        });
    }
    if let Some(other) = tags.get(SCOPE_TAG).filter(|s| !s.is_empty() && *s != scope) {
        return Err(StoreError::Unsafe {
            path: format!("secret {secret}"),
            message: format!(
                "belongs to keyprov scope {other:?}, not this installation's {scope:?} \
                 (reconcile.scope): keyprov never writes another installation's secret"
            ),
        });
    }
    match tags.get(NAME_TAG) {
        Some(owner) if owner != key => {
            return Err(StoreError::Unsafe {
                path: format!("secret {secret}"),
                message: format!(
                    "holds key pair {owner:?}, not {key:?}: two keys cannot share a secret"
                ),
            });
        }
        _ => {}
    }
    if output.deleted_date().is_some() {
        return Err(StoreError::Config(format!(
            "secret {secret} is scheduled for deletion: restore it (aws secretsmanager \
             restore-secret --secret-id {secret}) or remove this output from the manifest"
        )));
    }
    let stages: HashMap<String, Vec<String>> = output
        .version_ids_to_stages()
        .map(|map| {
            map.iter()
                .filter(|(_, labels)| !labels.is_empty())
                .take(layout::MAX_VERSIONS)
                .map(|(id, labels)| (id.clone(), labels.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Described::new(
        key,
        tags,
        output.kms_key_id().map(str::to_string),
        stages,
    ))
}

/// Whether the secret's KMS key is the one the manifest names (the API may answer with the
/// key's ARN where the manifest has its id or alias).
pub(super) fn same_kms_key(actual: Option<&str>, wanted: &str) -> bool {
    actual.is_some_and(|actual| {
        actual == wanted
            || actual.ends_with(&format!("/{wanted}"))
            || actual.ends_with(&format!(":{wanted}"))
    })
}
