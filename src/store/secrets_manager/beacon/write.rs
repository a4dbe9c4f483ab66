//! The writer's side of the beacon: one bump per pass, the digests of what it wrote put in a
//! tag and read back (see the parent module for the protocol and why it is safe).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_secretsmanager::types::Tag;

use super::bumps::{self, Bumps};
use super::{BEACON_TAG, Described, MAX_TRIES, WARNED_WRITE, aws_now, name};
use crate::daemon::pace;
use crate::store::secrets_manager::SecretsManagerStore;
use crate::store::secrets_manager::errors::{Failure, explain};
use crate::store::secrets_manager::layout::SCOPE_TAG;

/// How long after its read-back a writer looks again whether a concurrent writer's tag of the
/// same key replaced its digests.
const CONFIRM_AFTER: Duration = Duration::from_secs(1);

impl SecretsManagerStore {
    /// Puts one bump naming every secret this store wrote since the last bump (a writer's pass
    /// calls it once, at its end), creating the beacon when it is missing; malformed bump tags
    /// are removed. A failure is one WARN per process, never a failed pass: other hosts then
    /// notice the change at their next full listing.
    pub async fn bump_beacon(&self) {
        if self
            .beacon
            .settings
            .as_ref()
            .and_then(|s| s.by.as_ref())
            .is_none()
        {
            return;
        }
        let secrets = std::mem::take(&mut *self.beacon.wrote.lock().expect("never poisoned"));
        let repair = self.beacon.rewrite.swap(false, Ordering::Relaxed);
        if secrets.is_empty() && !repair {
            return;
        }
        let digests: BTreeSet<String> = secrets.iter().map(|s| bumps::digest(s)).collect();
        let name = name(&self.scope);
        match self.bump(&name, &digests).await {
            Ok(Some(seq)) => tracing::debug!(
                "sweep: bumped beacon {name}: tag {seq} names {} secrets",
                secrets.len()
            ),
            Ok(None) => tracing::debug!("sweep: removed malformed bump tags of beacon {name}"),
            Err(err) if !WARNED_WRITE.swap(true, Ordering::Relaxed) => tracing::warn!(
                "cannot bump the change beacon {name} ({err}): other hosts notice this host's \
                 writes at their next full listing (reconcile.fullSweepEvery)"
            ),
            Err(err) => tracing::debug!("sweep: cannot bump beacon {name}: {err}"),
        }
    }

    /// Describes the beacon, removes what must go, puts `digests` in their tag, and describes
    /// it again, and once more [`CONFIRM_AFTER`] later; puts them again on top when they did
    /// not land (another writer overwrote the same tag, or many tags came above it). The tag
    /// they landed in (`None`: only a repair).
    async fn bump(&self, name: &str, digests: &BTreeSet<String>) -> Result<Option<u64>, Failure> {
        let mut put: Option<u64> = None;
        let mut confirming = false;
        let mut tries = 0;
        loop {
            let retry = |tries: &mut usize| {
                *tries += 1;
                if *tries >= MAX_TRIES {
                    Err(Failure::Other(format!(
                        "other writers got in the way {MAX_TRIES} times in a row"
                    )))
                } else {
                    Ok(())
                }
            };
            let Some(Described { bumps, deleted, .. }) = self.describe_beacon(name).await? else {
                if digests.is_empty() {
                    return Ok(None);
                }
                confirming = false;
                match self.create_beacon(name, digests).await {
                    Ok(()) => put = Some(1),
                    Err(Failure::Exists) => retry(&mut tries)?,
                    Err(other) => return Err(other),
                }
                continue;
            };
            if deleted {
                // Scheduled for deletion: no tag lands (and no bump would for up to 30 days,
                // every host falling back to its full listings) until it is restored.
                self.restore_beacon(name).await?;
                retry(&mut tries)?;
                continue;
            }
            if let Some(seq) = put.take() {
                if confirming && bumps.still_carries(seq, digests) {
                    return Ok(Some(seq));
                }
                if !confirming && bumps.landed(seq, digests) {
                    // A writer that described the beacon before this tag and tags the same
                    // key after this read-back replaces the value without these digests: look
                    // once more a little later (what a writer takes between its description
                    // and its tag is a request or two).
                    confirming = true;
                    put = Some(seq);
                    tokio::time::sleep(CONFIRM_AFTER).await;
                    continue;
                }
                confirming = false;
                retry(&mut tries)?;
                let pause = 20 + (pace::random() * 100.0 * tries as f64) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            if digests.is_empty() {
                self.untag_beacon(name, &bumps.malformed).await?;
                return Ok(None);
            }
            match self.put_bump(name, &bumps, digests).await {
                Ok(seq) => put = Some(seq),
                // Deleted meanwhile: created again on the next round.
                Err(Failure::NotFound) => retry(&mut tries)?,
                Err(other) => return Err(other),
            }
        }
    }

    /// Removes the lowest (and malformed) bump tags as needed, then puts `digests` in the
    /// highest tag or the next one; the tag's sequence number.
    async fn put_bump(
        &self,
        name: &str,
        bumps: &Bumps,
        digests: &BTreeSet<String>,
    ) -> Result<u64, Failure> {
        let (seq, tag) = bumps.placement(aws_now(), digests);
        self.untag_beacon(name, &bumps.to_remove(seq)).await?;
        self.client()
            .await
            .tag_resource()
            .secret_id(name)
            .tags(
                Tag::builder()
                    .key(bumps::key(seq))
                    .value(tag.value())
                    .build(),
            )
            .send()
            .await
            .map_err(|err| explain(&err, name, "TagResource"))?;
        Ok(seq)
    }

    /// Cancels the scheduled deletion of the beacon (`RestoreSecret`), with a WARN: someone
    /// deleted it.
    async fn restore_beacon(&self, name: &str) -> Result<(), Failure> {
        self.client()
            .await
            .restore_secret()
            .secret_id(name)
            .send()
            .await
            .map_err(|err| explain(&err, name, "RestoreSecret"))?;
        tracing::warn!(
            "the change beacon {name} was scheduled for deletion (it took no bump then): restored"
        );
        Ok(())
    }

    async fn untag_beacon(&self, name: &str, keys: &[String]) -> Result<(), Failure> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client()
            .await
            .untag_resource()
            .secret_id(name)
            .set_tag_keys(Some(keys.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "UntagResource"))
    }

    /// Creates the beacon without a value (so without any version), its first bump tag naming
    /// `digests`.
    async fn create_beacon(&self, name: &str, digests: &BTreeSet<String>) -> Result<(), Failure> {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let first = bumps::Tag::new(aws_now(), digests);
        self.client()
            .await
            .create_secret()
            .name(name)
            .description(format!(
                "keyprov change beacon of scope {}: its keyprov:bump tags name (by digest) the \
                 secrets writers changed, so that other hosts look at those only; holds no key \
                 and no value",
                self.scope
            ))
            .tags(tag(SCOPE_TAG, &self.scope))
            .tags(tag(BEACON_TAG, "true"))
            .tags(tag(&bumps::key(1), &first.value()))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "CreateSecret"))
    }
}
