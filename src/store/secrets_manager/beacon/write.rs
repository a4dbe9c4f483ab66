//! The writer's side of the beacon: one bump per pass, appended by compare-and-set (see the
//! parent module for the protocol and why it is safe).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_secretsmanager::types::Tag;

use super::log::Log;
use super::{BEACON_TAG, HEADER_FORMAT, MAX_TRIES, WARNED_WRITE, aws_now, name, random, usable};
use crate::store::secrets_manager::SecretsManagerStore;
use crate::store::secrets_manager::errors::{Failure, explain};
use crate::store::secrets_manager::layout::SCOPE_TAG;

impl SecretsManagerStore {
    /// Appends one bump naming every secret this store wrote since the last bump (a writer's
    /// pass calls it once, at its end), creating the beacon when it is missing; a beacon that
    /// holds no log gets a fresh one. A failure is one WARN per process, never a failed pass:
    /// other hosts then notice the change at their next full listing.
    pub async fn bump_beacon(&self) {
        let Some(by) = self.beacon.settings.as_ref().and_then(|s| s.by.clone()) else {
            return;
        };
        let secrets = std::mem::take(&mut *self.beacon.wrote.lock().expect("never poisoned"));
        let rewrite = self.beacon.rewrite.swap(false, Ordering::Relaxed);
        if secrets.is_empty() && !rewrite {
            return;
        }
        let name = name(&self.scope);
        match self.append(&name, &by, &secrets).await {
            Ok((arn, log, fresh)) => {
                tracing::debug!(
                    "sweep: bumped beacon {name} to {} ({} secrets)",
                    log.seq,
                    secrets.len()
                );
                if fresh {
                    self.adopt_fresh_log(arn, &log);
                }
            }
            Err(err) if !WARNED_WRITE.swap(true, Ordering::Relaxed) => tracing::warn!(
                "cannot bump the change beacon {name} ({err}): other hosts notice this host's \
                 writes at their next full listing (reconcile.fullSweepEvery)"
            ),
            Err(err) => tracing::debug!("sweep: cannot bump beacon {name}: {err}"),
        }
    }

    /// This pass listed because the beacon held no log, then wrote a fresh one: the listing
    /// taken this pass stands for the log from its start (the next sweep describes what this
    /// pass's own bump names), so the change costs one listing, not two.
    fn adopt_fresh_log(&self, arn: String, log: &Log) {
        let mut pending = self.beacon.pending.lock().expect("never poisoned");
        if let Some((_, header)) = pending.as_mut()
            && header.format == 0
            && log.bumps.first().is_some_and(|b| b.seq == 1)
        {
            header.format = HEADER_FORMAT;
            header.arn = Some(arn);
            header.epoch = log.epoch.clone();
            header.seq = 0;
        }
    }

    /// Compare-and-set: reads the log, puts it with one more bump under the token of the next
    /// sequence number, reads it back; again on top of the winner when another writer won.
    async fn append(
        &self,
        name: &str,
        by: &str,
        secrets: &BTreeSet<String>,
    ) -> Result<(String, Log, bool), Failure> {
        for attempt in 0..MAX_TRIES {
            if attempt > 0 {
                let pause = 20 + (random() * 100.0 * attempt as f64) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let current = self.get_beacon(name).await?;
            let base = current
                .as_ref()
                .and_then(|(_, id, text)| usable(name, id, text));
            let fresh = base.is_none();
            let next = base
                .unwrap_or_else(|| Log::fresh(by))
                .next(by, aws_now(), secrets);
            let token = next.token(name);
            let put = match current {
                Some(_) => self.put_beacon(name, &next.to_text(), &token).await,
                None => self.create_beacon(name, &next.to_text(), &token).await,
            };
            match put {
                Ok(()) => {}
                // Another writer took this sequence number (or created or deleted the beacon).
                Err(Failure::Exists | Failure::NotFound) => continue,
                Err(other) => return Err(other),
            }
            if let Some((arn, id, text)) = self.get_beacon(name).await?
                && usable(name, &id, &text).is_some_and(|log| log.carries(&next))
            {
                return Ok((arn, next, fresh));
            }
        }
        Err(Failure::Other(format!(
            "other writers won {MAX_TRIES} times in a row"
        )))
    }

    async fn put_beacon(&self, name: &str, body: &str, token: &str) -> Result<(), Failure> {
        self.client()
            .await
            .put_secret_value()
            .secret_id(name)
            .client_request_token(token)
            .secret_string(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "PutSecretValue"))
    }

    async fn create_beacon(&self, name: &str, body: &str, token: &str) -> Result<(), Failure> {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        self.client()
            .await
            .create_secret()
            .name(name)
            .description(format!(
                "keyprov change beacon of scope {}: a log of the secrets writers changed, so \
                 that other hosts look at those only; holds no key",
                self.scope
            ))
            .client_request_token(token)
            .secret_string(body)
            .tags(tag(SCOPE_TAG, &self.scope))
            .tags(tag(BEACON_TAG, "true"))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| explain(&err, name, "CreateSecret"))
    }
}
