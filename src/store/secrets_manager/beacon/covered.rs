//! Descriptions that cover bumps: a secret this host described after a writer bumped it needs
//! no description when a later sweep reads that bump.
//!
//! In a rotation wave a follower describes a key's secret directly at its turn (the copy) and
//! never reads the beacon then; its next sweep finds the writer's bump naming that secret and,
//! before this, described it again, to learn what it had already copied. Now every
//! `DescribeSecret` of a pass is kept with the time it was sent (Unix seconds by AWS's clock:
//! the `Date` of a response less than a minute old, whole seconds, moved to that moment by the
//! monotonic clock, which is never later than the true time) and patched into the remembered listing when the pass
//! ends. A sweep leaves out of the secrets the beacon names those whose remembered entry was
//! described at least [`MARGIN`] after the latest bump tag naming them was appended to.
//!
//! Why that is safe: a writer bumps at the end of its pass, after every write it names, and
//! stamps the tag by AWS's clock as it last read it (at most a second or two behind: `Date`
//! has whole seconds). A description sent [`MARGIN`] after the stamp was therefore sent after
//! the write, and `DescribeSecret` is consistent: it shows the write. A description this host
//! made before writing the secret itself is dropped with the write (the pass's description
//! is). Without a fresh reading of AWS's clock nothing is kept (the local clock may be
//! anywhere). A forged tag dated early only spares a description of what this host described
//! later anyway; but a writer's tag re-dated early (its digests kept, so the writer's read-back
//! does not put them again) hides the write it names from a host that described the secret
//! after the earlier date, as a removed tag does: until the next full listing
//! (`tests/redteam_beacon.rs`). One dated late costs a description, as before.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;

use super::bumps::{Bumps, Named, digest};
use super::{Header, SHARDS, Shard, header_ledger, listed, shard_ledger, trim};
use crate::store::secrets_manager::SecretsManagerStore;
use crate::store::secrets_manager::describe::tag_map;
use crate::store::secrets_manager::layout::SCOPE_TAG;
use crate::store::secrets_manager::sweep::{Listing, shard_of};

/// How long after a bump's stamp a description must have been sent to show what it names:
/// the two clock readings' error (whole seconds of `Date`, and latency) with room to spare.
pub const MARGIN: u64 = 5;

/// Most descriptions one pass keeps (more are left to the sweep, as before).
const MAX_KEPT: usize = 10_000;

/// The `DescribeSecret` answers of one pass, by secret id: when each was sent and what it said.
pub(in crate::store::secrets_manager) type Kept = HashMap<String, (u64, DescribeSecretOutput)>;

/// Unix seconds by AWS's clock at the moment `sent` (a request was sent then), a lower bound
/// of the true time: the latest reading of AWS's clock (taken once the answer came, so a pass's
/// first request has one) moved by the monotonic clock to that moment. `None` without a
/// reading of the last minute.
pub(in crate::store::secrets_manager) fn sent_at(sent: Instant) -> Option<u64> {
    let reading = crate::aws_clock::fresh_reading()?;
    let at = if reading.at >= sent {
        reading.aws.checked_sub(reading.at - sent)?
    } else {
        reading.aws + (sent - reading.at)
    };
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

/// Whether `listing`'s entry of `secret` was described [`MARGIN`] after the latest bump tag
/// that names it (by its id, name or ARN) was appended to.
pub(super) fn covered(listing: &Listing, bumps: &Bumps, secret: &str) -> bool {
    let Some(described) = listing.described_at(secret) else {
        return false;
    };
    let digests: Vec<String> = [
        Some(secret),
        listing.name_of(secret),
        listing.arn_of(secret),
    ]
    .into_iter()
    .flatten()
    .map(digest)
    .collect();
    let latest = bumps
        .tags
        .values()
        .filter(|t| match &t.named {
            Named::Secrets(named) => digests.iter().any(|d| named.contains(d)),
            Named::List(_) => false,
        })
        .map(|t| t.at)
        .max();
    latest.is_some_and(|at| described >= at.saturating_add(MARGIN))
}

impl SecretsManagerStore {
    /// Keeps a `DescribeSecret` answer of `secret` sent at `at` (see [`sent_at`]) for the
    /// remembered listing, when it is this scope's.
    pub(in crate::store::secrets_manager) fn keep_described(
        &self,
        secret: &str,
        at: Option<u64>,
        output: &DescribeSecretOutput,
    ) {
        let Some(at) = at else { return };
        if !self.sweep.enabled() || tag_map(output.tags()).get(SCOPE_TAG) != Some(&self.scope) {
            return;
        }
        let mut kept = self.beacon.described.lock().expect("never poisoned");
        if kept.len() < MAX_KEPT || kept.contains_key(secret) {
            kept.insert(secret.to_string(), (at, output.clone()));
        }
    }

    /// Drops the kept description of `secret`: this host wrote it.
    pub(in crate::store::secrets_manager) fn drop_described(&self, secret: &str) {
        self.beacon
            .described
            .lock()
            .expect("never poisoned")
            .remove(secret);
    }

    /// Takes this pass's kept descriptions.
    pub(super) fn take_described(&self) -> Kept {
        std::mem::take(&mut *self.beacon.described.lock().expect("never poisoned"))
    }
}

/// Puts `kept` into the shards of a remembered listing: an entry is replaced by a description
/// sent later than the one it holds (a listed entry holds none).
pub(super) fn patch(shards: &mut [Shard], kept: &Kept) -> Vec<usize> {
    let mut touched = Vec::new();
    for (at, output) in kept.values() {
        let Some(arn) = output.arn() else { continue };
        if output.deleted_date().is_some() {
            continue;
        }
        let index = shard_of(arn);
        let Some(shard) = shards.get_mut(index) else {
            continue;
        };
        if shard
            .secrets
            .get(arn)
            .and_then(|l| l.described_at)
            .is_some_and(|had| had >= *at)
        {
            continue;
        }
        shard
            .secrets
            .insert(arn.to_string(), listed(output, Some(*at)));
        if !touched.contains(&index) {
            touched.push(index);
        }
    }
    for &index in &touched {
        trim(&mut shards[index]);
    }
    touched
}

/// Puts `kept` into the listing remembered under `dir` (a pass that did not sweep): only the
/// shards it touches are read and written, and only while they belong to the listing the
/// header names (otherwise the next sweep lists anyway).
pub(super) fn patch_saved(dir: &Path, scope: &str, kept: &Kept) {
    if kept.is_empty() {
        return;
    }
    let header: Header = header_ledger(dir).load();
    if header.format != super::HEADER_FORMAT || header.scope != scope || header.stamp.is_empty() {
        return;
    }
    let mut wanted: Vec<usize> = kept
        .values()
        .filter_map(|(_, o)| o.arn().map(shard_of))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
    for &index in &wanted {
        let shard: Shard = shard_ledger(dir, index).load();
        if shard.stamp != header.stamp {
            return;
        }
        shards[index] = shard;
    }
    for index in patch(&mut shards, kept) {
        if let Err(err) = shard_ledger(dir, index).save(&shards[index]) {
            tracing::warn!("{err}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bumps::key;
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:1:secret:s-AbCdEf";

    fn bumps(tags: &[(u64, u64, &[&str])]) -> Bumps {
        let values: Vec<(String, String)> = tags
            .iter()
            .map(|(seq, at, named)| {
                let digests: Vec<String> = named.iter().map(|n| digest(n)).collect();
                (key(*seq), format!("{at} {}", digests.join(" ")))
            })
            .collect();
        Bumps::from_tags(values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn listing(described_at: Option<u64>) -> Listing {
        let mut listing = Listing::default();
        listing.insert(DescribeSecretOutput::builder().arn(ARN).name("s").build());
        if let Some(at) = described_at {
            listing.set_described_at(ARN, at);
        }
        listing
    }

    #[test]
    fn a_description_sent_margin_after_the_latest_bump_naming_it_covers_it() {
        let t = 1_800_000_000;
        let one = bumps(&[(1, t, &["s"])]);
        assert!(covered(&listing(Some(t + MARGIN)), &one, "s"));
        assert!(
            !covered(&listing(Some(t + MARGIN - 1)), &one, "s"),
            "too close"
        );
        assert!(!covered(&listing(None), &one, "s"), "listed, not described");
        // Named by its ARN in a later tag: the latest stamp counts.
        let two = bumps(&[(1, t, &["s"]), (2, t + 60, &[ARN])]);
        assert!(!covered(&listing(Some(t + 30)), &two, "s"));
        assert!(covered(&listing(Some(t + 65)), &two, ARN));
        // A tag naming another secret says nothing of this one.
        assert!(!covered(
            &listing(Some(t + 99)),
            &bumps(&[(1, t, &["x"])]),
            "s"
        ));
    }

    #[test]
    fn a_later_description_replaces_an_entry_and_an_earlier_one_does_not() {
        let output = |version: &str| {
            DescribeSecretOutput::builder()
                .arn(ARN)
                .name("s")
                .version_ids_to_stages(version, vec!["AWSCURRENT".to_string()])
                .build()
        };
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
        let index = shard_of(ARN);
        let kept = |at: u64, version: &str| Kept::from([("s".to_string(), (at, output(version)))]);
        assert_eq!(patch(&mut shards, &kept(100, "v2")), [index]);
        assert_eq!(shards[index].secrets[ARN].described_at, Some(100));
        assert!(patch(&mut shards, &kept(90, "v1")).is_empty(), "older");
        assert!(shards[index].secrets[ARN].stages.contains_key("v2"));
        assert_eq!(patch(&mut shards, &kept(110, "v3")), [index]);
        assert!(shards[index].secrets[ARN].stages.contains_key("v3"));
    }
}
