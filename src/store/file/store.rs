//! [`Store`] for `file` outputs: the free functions of [`file`], with new versions of all keys
//! written in batches by one writer ([`GroupCommit`]).

use std::sync::Arc;

use crate::group_commit::GroupCommit;
use crate::manifest::{FileOutput, KeyPair};
use crate::observed::ObservedOutput;
use crate::plan::Link;
use crate::store::{RepairInput, Store, StoreError, StoredVersion, VersionParts, file};

/// The file store of one reconcile; its writer runs until [`FileStore::finish`].
pub struct FileStore {
    group_commit: GroupCommit,
}

impl FileStore {
    /// Starts the batch writer (on the runtime's blocking pool).
    pub fn start() -> Self {
        FileStore {
            group_commit: GroupCommit::start(),
        }
    }

    /// Waits until every version handed to the writer is written.
    pub async fn finish(self) {
        self.group_commit.finish().await;
    }

    /// [`Store::observe`], callable from plain threads (a fleet's file outputs are observed
    /// on all cores at once).
    pub fn observe_now(key: &KeyPair, output: &FileOutput) -> Result<ObservedOutput, StoreError> {
        file::observe(output, &key.name, key.include_plaintext)
    }

    /// [`FileStore::observe_now`] for one of many keys observed in one pass, their parent
    /// directories opened once in `parents`, derived public files checked by their stat in
    /// `fingerprints` when given.
    pub fn observe_in(
        key: &KeyPair,
        output: &FileOutput,
        parents: &file::Parents,
        fingerprints: Option<&crate::fingerprints::Fingerprints>,
    ) -> Result<ObservedOutput, StoreError> {
        file::observe_in(
            output,
            &key.name,
            key.include_plaintext,
            Some(parents),
            fingerprints,
        )
    }
}

impl Store for FileStore {
    type Output = FileOutput;

    async fn observe(
        &self,
        key: &KeyPair,
        output: &FileOutput,
    ) -> Result<ObservedOutput, StoreError> {
        Self::observe_now(key, output)
    }

    async fn has_version(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        generation: u32,
    ) -> Result<bool, StoreError> {
        file::has_version(output, generation)
    }

    async fn read_version(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        generation: u32,
    ) -> Result<StoredVersion, StoreError> {
        file::read_version(output, generation)
    }

    async fn read_parts(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        generation: u32,
    ) -> Result<VersionParts, StoreError> {
        file::read_parts(output, generation)
    }

    async fn write_version(
        &self,
        _: &KeyPair,
        outputs: &[&FileOutput],
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), StoreError> {
        if outputs.is_empty() {
            return Ok(());
        }
        let outputs = outputs.iter().map(|o| (*o).clone()).collect();
        self.group_commit
            .committer()
            .commit(outputs, version, link)
            .await
    }

    async fn link(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        generation: u32,
        link: Link,
    ) -> Result<(), StoreError> {
        file::link(output, generation, link)
    }

    async fn missing_plaintext(
        &self,
        _: &KeyPair,
        output: &FileOutput,
    ) -> Result<Vec<u32>, StoreError> {
        file::missing_plaintext(output)
    }

    async fn repair(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        input: &RepairInput<'_>,
    ) -> Result<(), StoreError> {
        file::repair(output, input)
    }

    async fn prune(
        &self,
        _: &KeyPair,
        output: &FileOutput,
        generations: &[u32],
    ) -> Result<(), StoreError> {
        file::prune(output, generations)
    }
}
