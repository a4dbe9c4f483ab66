//! `DescribeSecret`, and the check that the secret is keyprov's own for the key.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;

use super::SecretsManagerStore;
use super::errors::{Failure, explain};
use super::layout::{self, MANAGED_TAG, NAME_TAG, SCOPE_TAG};
use super::refusal::Refusal;
use super::versions::Described;
use crate::store::StoreError;

impl SecretsManagerStore {
    /// Describes the secret; `None` when it does not exist. Fails when it is not keyprov's
    /// secret of `key` or is scheduled for deletion.
    pub(super) async fn describe(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Described>, StoreError> {
        let found = self
            .client()
            .await
            .describe_secret()
            .secret_id(secret)
            .send()
            .await;
        let output = match found {
            Ok(output) => output,
            Err(err) => {
                let failure = explain(&err, secret, "DescribeSecret");
                return match failure {
                    Failure::NotFound => Ok(None),
                    other => Err(other.into_error()),
                };
            }
        };
        self.accept(key, secret, &output).map(Some)
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

    /// Describes a secret that must exist.
    pub(super) async fn describe_existing(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Described, StoreError> {
        self.describe(key, secret).await?.ok_or_else(|| {
            StoreError::Config(format!(
                "secret {secret} does not exist (deleted meanwhile?)"
            ))
        })
    }
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
