//! Versions of a secret that keyprov refused (forged, replayed, or not keyprov's at all): they
//! are never a generation again, and the labels readers follow are moved off them onto the
//! generation that proves.

use super::SecretsManagerStore;
use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::store::StoreError;

/// A version refused during this process, to be recorded (see [`crate::secret_refusal`]).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Key name.
    pub key: String,
    /// Secret id.
    pub secret: String,
    /// The refused version's id.
    pub version_id: String,
    /// The generation whose request token that id is, if any (its number stays taken).
    pub generation: Option<u32>,
    /// Why it was refused.
    pub why: String,
}

impl SecretsManagerStore {
    /// The versions refused since the last call.
    pub fn take_refused(&self) -> Vec<Refusal> {
        std::mem::take(&mut *self.refused.lock().expect("never poisoned"))
    }

    /// Treats `version_id` of `secret` as refused from now on (one refused in an earlier run).
    pub fn refuse_known(&self, secret: &str, version_id: &str) {
        self.foreign
            .lock()
            .expect("never poisoned")
            .entry(secret.to_string())
            .or_default()
            .insert(version_id.to_string());
    }

    /// Refuses the version of `generation` in the secret of `output`: it failed its proof
    /// (`why`).
    pub fn refuse(&self, key: &KeyPair, output: &SecretsManagerOutput, generation: u32, why: &str) {
        self.remember_foreign(
            &key.name,
            &output.secret_id,
            &layout::version_id(&key.name, generation),
            Some(generation),
            why.to_string(),
        );
    }

    /// The generations the secret holds (refused versions left out), newest first.
    pub async fn held_generations(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<Vec<u32>, StoreError> {
        let described = self.describe_existing(&key.name, &output.secret_id).await?;
        let mut generations = described.generations();
        generations.reverse();
        Ok(generations)
    }

    /// Moves `AWSCURRENT` onto `generation` (a proven one), `AWSPREVIOUS` onto the newest
    /// generation below it (or off every version), and `AWSPENDING` off refused versions:
    /// readers of the secret stop getting a refused version at once.
    pub async fn restore_current(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<(), StoreError> {
        let (name, secret) = (key.name.as_str(), output.secret_id.as_str());
        let described = self.describe_existing(name, secret).await?;
        let id = described
            .id_of(generation)
            .ok_or_else(|| StoreError::Conflict {
                path: format!("secret {secret}:"),
                message: format!("generation {generation} vanished meanwhile"),
            })?
            .to_string();
        let previous = described
            .generations()
            .into_iter()
            .filter(|g| *g < generation)
            .max()
            .and_then(|g| described.id_of(g).map(str::to_string));
        self.set_label(name, secret, CURRENT, Some(&id)).await?;
        self.set_label(name, secret, PREVIOUS, previous.as_deref())
            .await?;
        self.unstage_refused(key, output).await
    }

    /// Takes `AWSPENDING` off refused versions: a refused version is never activated.
    pub async fn unstage_refused(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<(), StoreError> {
        let (name, secret) = (key.name.as_str(), output.secret_id.as_str());
        let described = self.describe_existing(name, secret).await?;
        for holder in described.holders(PENDING) {
            if described.is_refused(holder) {
                self.remove_label(name, secret, PENDING, holder).await?;
            }
        }
        Ok(())
    }
}
