//! The secrets of this installation (`keyprov:scope`), for orphan listing and pruning.

use aws_sdk_secretsmanager::operation::list_secrets::ListSecretsOutput;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};

use super::SecretsManagerStore;
use super::describe::tag_map;
use super::errors::{Failure, explain, found};
use super::layout::{MANAGED_TAG, NAME_TAG, SCOPE_TAG};
use crate::store::StoreError;

/// A secret keyprov manages, as `ListSecrets` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedSecret {
    /// Secret name.
    pub name: String,
    /// Secret ARN.
    pub arn: String,
    /// The key pair it holds (`keyprov:name`).
    pub key_name: String,
}

impl SecretsManagerStore {
    /// Remembers the ARN of `secret`, just described as keyprov's.
    pub(super) fn remember_arn(&self, secret: &str, arn: Option<&str>) {
        if let Some(arn) = arn {
            self.arns
                .lock()
                .expect("never poisoned")
                .insert(secret.to_string(), arn.to_string());
        }
    }

    /// The ARN of `secret` (a secret id as a manifest names it), when this reconcile described
    /// it as keyprov's.
    pub fn described_arn(&self, secret: &str) -> Option<String> {
        self.arns
            .lock()
            .expect("never poisoned")
            .get(secret)
            .cloned()
    }

    /// One `ListSecrets` page (100 secrets, the most AWS allows) of the secrets tagged with this store's scope,
    /// tags and `SecretVersionsToStages` included: what sweeps and orphan listing page through.
    pub(super) async fn list_scope_page(
        &self,
        token: Option<String>,
    ) -> Result<ListSecretsOutput, StoreError> {
        self.client()
            .await
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::TagKey)
                    .values(SCOPE_TAG)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::TagValue)
                    .values(&self.scope)
                    .build(),
            )
            .max_results(100)
            .set_next_token(token)
            .send()
            .await
            .map_err(|err| explain(&err, "(all)", "ListSecrets").into_error())
    }

    /// Managed secrets (`keyprov:managed=true`) of this store's scope, for orphan listing; at
    /// most 10,000.
    pub async fn list_managed(&self) -> Result<Vec<ManagedSecret>, StoreError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_scope_page(token).await?;
            for secret in page.secret_list() {
                let tags = tag_map(secret.tags());
                if tags.get(MANAGED_TAG).map(String::as_str) == Some("true")
                    && tags.get(SCOPE_TAG) == Some(&self.scope)
                {
                    found.push(ManagedSecret {
                        name: secret.name().unwrap_or_default().to_string(),
                        arn: secret.arn().unwrap_or_default().to_string(),
                        key_name: tags.get(NAME_TAG).cloned().unwrap_or_default(),
                    });
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() || found.len() >= 10_000 {
                return Ok(found);
            }
        }
    }

    /// Schedules the deletion of a managed secret with a recovery window (never forced), after
    /// checking once more that it is keyprov's secret of its key and that its current version
    /// is one keyprov wrote (under the version id of a generation of that key).
    pub async fn schedule_deletion(
        &self,
        secret: &ManagedSecret,
        recovery_window_days: i64,
    ) -> Result<(), StoreError> {
        let Some(described) = self.describe_fresh(&secret.key_name, &secret.arn).await? else {
            return Ok(());
        };
        if described.current().is_none() {
            return Err(StoreError::Unsafe {
                path: format!("secret {}", secret.name),
                message: format!(
                    "not pruned: no version of it that was current is under keyprov's version \
                     id of a generation of key {:?}, so it is not the secret keyprov wrote",
                    secret.key_name
                ),
            });
        }
        let deleted = self
            .client()
            .await
            .delete_secret()
            .secret_id(&secret.arn)
            .recovery_window_in_days(recovery_window_days)
            .send()
            .await;
        self.forget_description(&secret.name);
        self.forget_description(&secret.arn);
        deleted.map_err(|err| explain(&err, &secret.name, "DeleteSecret").into_error())?;
        // Other hosts learn it from the change beacon (a key they still hold restores it).
        self.note_write(&secret.name);
        Ok(())
    }

    /// Cancels the scheduled deletion of a secret a prune set aside, when it is still
    /// keyprov's secret of key `key` in this scope; `Ok(false)` when there is nothing to
    /// restore (gone for good, not deleted, or not ours).
    pub async fn restore_pruned(&self, key: &str, secret: &str) -> Result<bool, StoreError> {
        let described = self
            .client()
            .await
            .describe_secret()
            .secret_id(secret)
            .send()
            .await;
        let Some(output) =
            found(described, secret, "DescribeSecret").map_err(Failure::into_error)?
        else {
            return Ok(false);
        };
        let tags = tag_map(output.tags());
        let ours = tags.get(MANAGED_TAG).map(String::as_str) == Some("true")
            && tags.get(SCOPE_TAG) == Some(&self.scope)
            && tags.get(NAME_TAG).map(String::as_str) == Some(key);
        if !ours || output.deleted_date().is_none() {
            return Ok(false);
        }
        let restored = self
            .client()
            .await
            .restore_secret()
            .secret_id(secret)
            .send()
            .await;
        self.forget_description(secret);
        restored.map_err(|err| explain(&err, secret, "RestoreSecret").into_error())?;
        self.note_write(secret);
        self.managed.lock().expect("never poisoned").remove(secret);
        Ok(true)
    }
}
