//! Reading the versions a sweep has not seen yet: 20 secrets a call after a listing, one by
//! one after the change beacon named a few.

use super::{BATCH, Listing, checked};
use crate::manifest::{KeyPair, Output};
use crate::store::secrets_manager::SecretsManagerStore;
use crate::store::secrets_manager::errors::explain;
use crate::store::secrets_manager::layout::CURRENT;
use crate::store::secrets_manager::versions::Described;

impl SecretsManagerStore {
    /// Reads the `AWSCURRENT` versions of `keys`' listed secrets that this host has not seen,
    /// 20 secrets a call with `batch` (`BatchGetSecretValue`, whose quota is 100/s), else one
    /// by one (`GetSecretValue`, 10,000/s: a few secrets the beacon named); a failure only
    /// leaves them to be read directly.
    pub(super) async fn read_unseen(&self, keys: &[KeyPair], listing: &Listing, batch: bool) {
        let mut unseen: Vec<(String, String, Described)> = Vec::new();
        for key in keys {
            for output in &key.outputs {
                let Output::SecretsManager(secret) = output else {
                    continue;
                };
                let Some(entry) = listing.get(&secret.secret_id) else {
                    continue;
                };
                let Ok(described) = self.accept(&key.name, &secret.secret_id, entry) else {
                    continue;
                };
                let Some(id) = described.holder(CURRENT).map(str::to_string) else {
                    continue;
                };
                if described.generation_of(&id).is_some()
                    && self.sweep.cached(&described, &key.name, &id).is_none()
                {
                    unseen.push((key.name.clone(), id, described));
                }
            }
        }
        if !batch {
            for (key, id, described) in &unseen {
                let Some(arn) = described.arn.as_deref() else {
                    continue;
                };
                let read = self
                    .client()
                    .await
                    .get_secret_value()
                    .secret_id(arn)
                    .version_id(id)
                    .send()
                    .await;
                let Ok(value) = read else {
                    continue;
                };
                let generation = described.generation_of(id).unwrap_or_default();
                let secret = value.name().unwrap_or_default();
                let text = value.secret_string().unwrap_or_default();
                if let Some(version) = checked(text, secret, key, generation) {
                    self.sweep.remember(Some(arn), key, id, &version);
                    self.sweep.keep_value(arn, id, text);
                }
            }
            return;
        }
        for chunk in unseen.chunks(BATCH) {
            let arns: Vec<String> = chunk.iter().filter_map(|(_, _, d)| d.arn.clone()).collect();
            let read = self
                .client()
                .await
                .batch_get_secret_value()
                .set_secret_id_list(Some(arns))
                .send()
                .await;
            let values = match read {
                Ok(values) => values,
                Err(err) => {
                    let why = explain(&err, "(several)", "BatchGetSecretValue").into_error();
                    tracing::debug!("sweep: {why}; reading those secrets one by one");
                    return;
                }
            };
            for value in values.secret_values() {
                let Some((key, id, described)) = chunk
                    .iter()
                    .find(|(_, _, d)| d.arn.as_deref() == value.arn() && value.arn().is_some())
                else {
                    continue;
                };
                if value.version_id() != Some(id.as_str()) {
                    continue;
                }
                let generation = described.generation_of(id).unwrap_or_default();
                let secret = value.name().unwrap_or_default();
                if let Some(version) = checked(
                    value.secret_string().unwrap_or_default(),
                    secret,
                    key,
                    generation,
                ) {
                    self.sweep
                        .remember(described.arn.as_deref(), key, id, &version);
                }
            }
        }
    }
}
