//! Group commit: keys reconciled concurrently hand their new versions to one writer thread,
//! which writes and flushes them in batches ([`file::commit_versions`]). Provisioning a fleet
//! then costs a few flushes per batch instead of several per key, and the writes never hold up
//! the provider requests of other keys.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::manifest::FileOutput;
use crate::plan::Link;
use crate::store::{StoreError, StoredVersion, file};

/// Most versions written in one batch; more wait for the next.
const MAX_BATCH: usize = 256;

/// One key's request: its version, the file outputs it goes to, the link it then gets.
struct Job {
    outputs: Vec<FileOutput>,
    version: Arc<StoredVersion>,
    link: Link,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The writer thread and the way to it.
pub struct GroupCommit {
    sender: mpsc::UnboundedSender<Job>,
    writer: tokio::task::JoinHandle<()>,
}

/// A cloneable way to submit versions to a [`GroupCommit`].
#[derive(Clone)]
pub struct Committer {
    sender: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the writer on the runtime's blocking pool.
    pub fn start() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let writer = tokio::task::spawn_blocking(move || write_batches(receiver));
        GroupCommit { sender, writer }
    }

    /// A handle for one task.
    pub fn committer(&self) -> Committer {
        Committer {
            sender: self.sender.clone(),
        }
    }

    /// Waits for the writer to finish what was submitted (every [`Committer`] must be gone).
    pub async fn finish(self) {
        drop(self.sender);
        if let Err(err) = self.writer.await {
            tracing::error!("the version writer panicked: {err}");
        }
    }
}

impl Committer {
    /// Writes `version` to every output durably, then links it; returns when that is done.
    pub async fn commit(
        &self,
        outputs: Vec<FileOutput>,
        version: Arc<StoredVersion>,
        link: Link,
    ) -> Result<(), StoreError> {
        let stopped = || StoreError::Config("the version writer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job {
                outputs,
                version,
                link,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer: takes whatever has queued up since the last batch (at least one job), writes it
/// as one batch, answers each job; returns when every sender is gone. Leftovers of interrupted
/// runs are looked for once per directory for all batches (see [`file::Leftovers`]).
fn write_batches(mut receiver: mpsc::UnboundedReceiver<Job>) {
    let mut leftovers = file::Leftovers::default();
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch: Vec<file::NewVersion<'_>> = jobs
            .iter()
            .map(|job| file::NewVersion {
                outputs: job.outputs.iter().collect(),
                version: &job.version,
                link: job.link,
            })
            .collect();
        tracing::debug!(versions = batch.len(), "writing a batch");
        let results = file::commit_versions(&batch, &mut leftovers);
        drop(batch);
        for (job, result) in jobs.into_iter().zip(results) {
            // A dropped receiver means the task is gone; its result has no one to go to.
            let _ = job.reply.send(result);
        }
    }
}
