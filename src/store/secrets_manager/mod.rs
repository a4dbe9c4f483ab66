//! [`Store`] for `secretsManager` outputs: one secret per key pair, one secret version per
//! generation (see [`layout`] and DESIGN.md "Secrets Manager layout").
//!
//! Every version is written with the request token of its generation, so a retry or another
//! host writing the same generation never makes a second version: the loser of a race gets
//! [`StoreError::Taken`] and adopts the winner's pair. The version ids are the generations
//! (module `versions`); links are staging labels: `AWSCURRENT`, `AWSPREVIOUS`, `AWSPENDING`
//! (a staged generation), and `keyprov-vNNNN` on every kept version, so Secrets Manager never
//! deprecates it; pruning removes the labels. Labels are drift, repaired to what the versions
//! say (module `labels`), and every label move tolerates other hosts moving the same labels.

mod beacon;
pub use beacon::{BeaconSettings, DEFAULT_FULL_SWEEP};
pub mod claim;
mod describe;
mod errors;
pub use errors::NO_CREDENTIALS;
mod labels;
pub mod layout;
mod managed;
pub use managed::ManagedSecret;
mod observe;
mod refusal;
pub use refusal::Refusal;
mod repair;
mod sweep;
pub use sweep::{Listing, settled};
mod versions;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::types::Tag;
use tokio::sync::OnceCell;

use self::layout::{MANAGED_TAG, NAME_TAG, SCOPE_TAG};
use super::{RepairInput, Store, StoreError, StoredVersion, VersionParts};
use crate::config::AwsSettings;
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::observed::ObservedOutput;
use crate::plan::Link;

/// Paces every AWS request of a reconcile (shared with the KMS provider).
pub type Limiter = governor::DefaultDirectRateLimiter;

/// Secrets Manager through aws-sdk-secretsmanager; the client is built on first use, so a
/// run without secrets never builds it.
pub struct SecretsManagerStore {
    settings: AwsSettings,
    scope: String,
    limiter: Arc<Limiter>,
    client: OnceCell<Client>,
    /// Secrets this reconcile has seen to be keyprov's (so a write need not describe again).
    managed: Mutex<HashMap<String, bool>>,
    /// What `DescribeSecret` answered for each secret id in this reconcile, until this host
    /// writes that secret (see [`describe`]).
    descriptions: Mutex<
        HashMap<String, aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput>,
    >,
    /// Secret id -> ARN of each secret this reconcile described as keyprov's (see
    /// [`crate::prune_ledger::record_managed`]).
    arns: Mutex<HashMap<String, String>>,
    /// Per secret, versions under one of keyprov's version ids whose contents are not that
    /// generation of that key (forged or replayed): never a generation, whatever their id.
    foreign: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// Versions this process wrote and read back whole: (key, secret, generation, public key
    /// SHA-256), so that [`crate::secret_proof`] need not prove them again.
    written: Mutex<Vec<crate::secret_proof::Written>>,
    /// Versions refused during this process and not yet recorded (see [`Self::take_refused`]).
    refused: Mutex<Vec<Refusal>>,
    /// What this host read of each version (see [`sweep`]).
    sweep: sweep::Cache,
    /// The scope's change beacon (see [`beacon`]).
    beacon: beacon::Beacon,
}

impl SecretsManagerStore {
    /// The versions written (and read back whole) since the last call.
    pub fn take_written(&self) -> Vec<crate::secret_proof::Written> {
        std::mem::take(&mut *self.written.lock().expect("never poisoned"))
    }

    /// A store with these settings, its requests paced by `limiter`; the secrets it creates
    /// carry `scope` (config `reconcile.scope`).
    pub fn new(settings: AwsSettings, scope: String, limiter: Arc<Limiter>) -> Self {
        SecretsManagerStore {
            settings,
            scope,
            limiter,
            client: OnceCell::new(),
            managed: Mutex::new(HashMap::new()),
            descriptions: Mutex::new(HashMap::new()),
            arns: Mutex::new(HashMap::new()),
            foreign: Mutex::new(HashMap::new()),
            written: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            sweep: sweep::Cache::default(),
            beacon: beacon::Beacon::default(),
        }
    }

    /// Whether the secret of `output` holds `generation` now: described with a request, not
    /// from this reconcile's description (the last look before generating, see
    /// [`crate::fleet::recheck`]; the steps after it reuse the answer).
    pub async fn has_version_now(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<bool, StoreError> {
        let described = self.describe_fresh(&key.name, &output.secret_id).await?;
        Ok(holds_generation(described.as_ref(), &key.name, generation))
    }

    /// The client, once the rate limit allows another request.
    async fn client(&self) -> &Client {
        let client = self
            .client
            .get_or_init(|| crate::aws_sdk::secrets_manager_client(&self.settings))
            .await;
        self.limiter.until_ready().await;
        client
    }
}

/// Whether a secret described as `described` holds `generation` of key `name`.
fn holds_generation(described: Option<&versions::Described>, name: &str, generation: u32) -> bool {
    let id = layout::version_id(name, generation);
    described.is_some_and(|d| d.stages.contains_key(&id) || d.generations().contains(&generation))
}

/// The tags a key's secret must carry: the manifest's labels, the output's own tags (which win
/// over a label of the same name), and keyprov's (which win over both).
fn wanted(scope: &str, key: &KeyPair, output: &SecretsManagerOutput) -> BTreeMap<String, String> {
    let mut tags = key.labels.clone();
    tags.extend(output.tags.clone());
    tags.insert(SCOPE_TAG.into(), scope.into());
    tags.insert(MANAGED_TAG.into(), "true".into());
    tags.insert(NAME_TAG.into(), key.name.clone());
    tags
}

fn wanted_tags(scope: &str, key: &KeyPair, output: &SecretsManagerOutput) -> Vec<Tag> {
    wanted(scope, key, output)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Store for SecretsManagerStore {
    type Output = SecretsManagerOutput;

    async fn observe(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
    ) -> Result<ObservedOutput, StoreError> {
        self.observe_secret(key, output).await
    }

    async fn has_version(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<bool, StoreError> {
        let described = self.describe(&key.name, &output.secret_id).await?;
        Ok(holds_generation(described.as_ref(), &key.name, generation))
    }

    async fn read_version(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<StoredVersion, StoreError> {
        let (parts, _) = self.read(key, &output.secret_id, generation).await?;
        layout::whole(parts, &key.name, &output.secret_id)
    }

    async fn read_parts(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
    ) -> Result<VersionParts, StoreError> {
        Ok(self.read(key, &output.secret_id, generation).await?.0)
    }

    async fn write_version(
        &self,
        key: &KeyPair,
        outputs: &[&SecretsManagerOutput],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), StoreError> {
        self.write_versions(key, outputs, version, Some(link))
            .await
            .map(|_| ())
    }

    async fn link(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
        link: Link,
    ) -> Result<(), StoreError> {
        // The label moves note their own writes (a link already in place writes nothing).
        self.link_generation(key, output, generation, link).await
    }

    async fn missing_plaintext(
        &self,
        _: &KeyPair,
        _: &SecretsManagerOutput,
    ) -> Result<Vec<u32>, StoreError> {
        // Secret versions are immutable: an includePlaintext change reaches a secret with its
        // next generation.
        Ok(Vec::new())
    }

    async fn repair(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        input: &RepairInput<'_>,
    ) -> Result<(), StoreError> {
        self.note_write(&output.secret_id);
        self.repair_secret(key, output, input).await
    }

    async fn prune(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generations: &[u32],
    ) -> Result<(), StoreError> {
        // The label removals note their own writes (a version already pruned writes nothing).
        self.prune_versions(key, output, generations).await
    }
}
