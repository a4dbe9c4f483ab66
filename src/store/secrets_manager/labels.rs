//! Staging labels: moving and removing them so that concurrent hosts never fail each other,
//! settling them after `AWSCURRENT` moved, repairing them to what the versions say, and
//! recording when a generation became current.

use std::time::Duration;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::types::Tag;

use super::SecretsManagerStore;
use super::errors::explain;
use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use super::versions::Described;
use crate::store::StoreError;

/// Tries of one label operation; each re-describes the secret first.
const ATTEMPTS: u32 = 6;

/// What one label operation wants to hold afterwards.
#[derive(Clone, Copy)]
enum Wanted<'a> {
    /// The label on this version, and on no other.
    On(&'a str),
    /// The label on no version.
    Nowhere,
    /// The label off this version (wherever else it is).
    Off(&'a str),
}

impl Wanted<'_> {
    fn holds(self, described: &Described, label: &str) -> bool {
        let holders = described.holders(label);
        match self {
            Wanted::On(id) => holders == [id],
            Wanted::Nowhere => holders.is_empty(),
            Wanted::Off(id) => !holders.contains(&id),
        }
    }
}

/// Whether a refused label move may be another writer's doing: the label or a version moved
/// or went meanwhile (`InvalidParameterException`, `ResourceNotFoundException`), or an
/// emulator's non-atomic move tripped over a concurrent one (LocalStack answers
/// `InternalError` then). The secret is described again before anything else is tried.
fn raced(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InvalidParameterException"
                | "ResourceNotFoundException"
                | "InternalError"
                | "InternalFailure"
                | "InternalServiceError"
        )
    )
}

/// A short, jittered pause before the next try: hosts that raced once would race again in step.
async fn pause(attempt: u32) {
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 50;
    tokio::time::sleep(Duration::from_millis(10 + 20 * u64::from(attempt) + jitter)).await;
}

impl SecretsManagerStore {
    /// After `AWSCURRENT` moved to `generation` from `old` (its version id and generation),
    /// the secret then described as `after`: `old` keeps its own label and holds `AWSPREVIOUS`
    /// (Secrets Manager moves that label, but emulators differ in what else they take off),
    /// and an `AWSPENDING` at or below `generation` goes. Nothing is done when another host has
    /// moved `AWSCURRENT` on meanwhile: that host settles. (Each label move looks again before
    /// it writes.)
    pub(super) async fn settle(
        &self,
        key: &str,
        secret: &str,
        generation: u32,
        old: Option<(String, Option<u32>)>,
        after: Described,
    ) -> Result<(), StoreError> {
        if after.holder(CURRENT) != after.id_of(generation) {
            return Ok(());
        }
        if let Some((old, old_generation)) = old
            && after.stages.contains_key(&old)
        {
            if let Some(old_generation) = old_generation
                && !after
                    .labels_of(&old)
                    .contains(&layout::generation_label(old_generation))
            {
                let label = layout::generation_label(old_generation);
                self.set_label(key, secret, &label, Some(&old)).await?;
            }
            if after.holder(PREVIOUS) != Some(old.as_str()) {
                self.set_label(key, secret, PREVIOUS, Some(&old)).await?;
            }
        }
        if let Some(pending) = after.holder(PENDING)
            && after.generation_of(pending).is_none_or(|g| g <= generation)
        {
            self.remove_label(key, secret, PENDING, pending).await?;
        }
        Ok(())
    }

    /// Tags the secret with when `generation` became current ([`layout::ACTIVATED_TAG`]).
    pub(super) async fn record_activation(
        &self,
        secret: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        let tag = Tag::builder()
            .key(layout::ACTIVATED_TAG)
            .value(layout::activated_tag(generation, crate::clock::now()))
            .build();
        self.note_write(secret);
        let tagged = self
            .client()
            .await
            .tag_resource()
            .secret_id(secret)
            .tags(tag)
            .send()
            .await;
        self.forget_description(secret);
        tagged.map_err(|err| explain(&err, secret, "TagResource").into_error())?;
        Ok(())
    }

    /// Moves `label` onto `version_id` (from whichever version holds it), or removes it from
    /// every version with `None`.
    pub(super) async fn set_label(
        &self,
        key: &str,
        secret: &str,
        label: &str,
        version_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let wanted = version_id.map_or(Wanted::Nowhere, Wanted::On);
        self.label_operation(key, secret, label, wanted).await
    }

    /// Takes `label` off `version_id` (a pruned version, or a label where it does not belong).
    pub(super) async fn remove_label(
        &self,
        key: &str,
        secret: &str,
        label: &str,
        version_id: &str,
    ) -> Result<(), StoreError> {
        self.label_operation(key, secret, label, Wanted::Off(version_id))
            .await
    }

    /// One label operation, idempotent against concurrent hosts: nothing is sent when this
    /// reconcile's description of the secret already shows what this host wants (another host
    /// did it); otherwise it re-describes the secret before each try and succeeds as soon as
    /// the secret holds what this host wanted, whoever did it. A try refused because another
    /// host moved the label or the version meanwhile (`InvalidParameterException`,
    /// `ResourceNotFoundException`) is tried again; any other failure, or [`ATTEMPTS`]
    /// refusals, fails naming the secret, label and version.
    async fn label_operation(
        &self,
        key: &str,
        secret: &str,
        label: &str,
        wanted: Wanted<'_>,
    ) -> Result<(), StoreError> {
        if let Some(known) = self.known(key, secret)
            && wanted.holds(&known?, label)
        {
            return Ok(());
        }
        let mut refusals = Vec::new();
        for attempt in 0..ATTEMPTS {
            let described = self.describe_existing_fresh(key, secret).await?;
            if wanted.holds(&described, label) {
                return Ok(());
            }
            let holders = described.holders(label);
            if label == CURRENT && holders.is_empty() {
                // AWSCURRENT is always on some version; on none, another writer's move is
                // half-way through (an emulator whose moves are not atomic): look again.
                refusals.push(format!("{CURRENT} was on no version"));
                pause(attempt).await;
                continue;
            }
            let (move_to, remove_from) = match wanted {
                Wanted::On(id) if holders.contains(&id) => {
                    (None, holders.iter().find(|h| **h != id).copied())
                }
                Wanted::On(id) => (Some(id), holders.first().copied()),
                Wanted::Nowhere => (None, holders.first().copied()),
                Wanted::Off(id) => (None, Some(id)),
            };
            // Named in the beacon only when a label really moves: a follower linking what the
            // writer already linked changes nothing and bumps nothing.
            self.note_write(secret);
            let moved = self
                .client()
                .await
                .update_secret_version_stage()
                .secret_id(secret)
                .version_stage(label)
                .set_move_to_version_id(move_to.map(str::to_string))
                .set_remove_from_version_id(remove_from.map(str::to_string))
                .send()
                .await;
            self.forget_description(secret);
            match moved {
                // One holder moved: done, unless a racing backend left the label on several.
                Ok(_) if holders.len() <= 1 => return Ok(()),
                Ok(_) => {}
                Err(err) if raced(err.code()) => {
                    let why = format!(
                        "{}: {}",
                        err.code().unwrap_or_default(),
                        err.message().unwrap_or_default()
                    );
                    tracing::debug!(secret, label, attempt, "label move raced: {why}");
                    refusals.push(why);
                    pause(attempt).await;
                }
                Err(err) => {
                    return Err(explain(&err, secret, "UpdateSecretVersionStage").into_error());
                }
            }
        }
        let described = self.describe_existing_fresh(key, secret).await?;
        if wanted.holds(&described, label) {
            return Ok(());
        }
        let target = match wanted {
            Wanted::On(id) => format!("move {label} onto {}", described.describe(id)),
            Wanted::Nowhere => format!("remove {label}"),
            Wanted::Off(id) => format!("take {label} off {}", described.describe(id)),
        };
        Err(StoreError::Conflict {
            path: format!("secret {secret}:"),
            message: format!(
                "could not {target}: refused {ATTEMPTS} times while other writers moved labels \
                 ({}); the next reconcile tries again",
                refusals.last().map_or("", String::as_str)
            ),
        })
    }

    /// Repairs the staging labels to what the versions say (see [`Described::label_drift`]):
    /// every version keyprov wrote holds its own `keyprov-vNNNN` label (first, so that no later
    /// move leaves a kept version without a label, which Secrets Manager would deprecate), no
    /// such label sits elsewhere, `AWSCURRENT` is on the newest generation that was current,
    /// `AWSPENDING` only on a staged generation, and `AWSPREVIOUS` on `previous`.
    pub(super) async fn repair_labels(
        &self,
        key: &str,
        secret: &str,
        previous: Option<u32>,
    ) -> Result<(), StoreError> {
        let described = self.describe_existing(key, secret).await?;
        for generation in described.generations() {
            let own = layout::generation_label(generation);
            if let Some(id) = described.id_of(generation)
                && !described.labels_of(id).contains(&own)
            {
                self.set_label(key, secret, &own, Some(id)).await?;
            }
        }
        let described = self.describe_existing(key, secret).await?;
        // AWSCURRENT on a version that is none of this key's generations (a forged or replayed
        // version put under another's request token): moved back below, and the key fails so
        // that someone looks at who can write this secret.
        let foreign_current: Vec<String> = described
            .holders(CURRENT)
            .iter()
            .filter(|id| described.generation_of(id).is_none())
            .map(|id| id.to_string())
            .collect();
        let mut strays: Vec<(String, String)> = described
            .stages
            .iter()
            .flat_map(|(id, labels)| labels.iter().map(move |l| (id.clone(), l.clone())))
            .filter(|(id, label)| {
                // A refused version keeps its own generation label: its number stays taken.
                !described.is_refused(id)
                    && layout::parse_generation_label(label)
                        .is_some_and(|g| described.generation_of(id) != Some(g))
            })
            .collect();
        strays.sort();
        for (id, label) in &strays {
            self.remove_label(key, secret, label, id).await?;
        }
        if let Some(current) = described.current()
            && let Some(id) = described.id_of(current)
            && described.holders(CURRENT) != [id]
        {
            let from = described
                .holders(CURRENT)
                .iter()
                .map(|h| described.describe(h))
                .collect::<Vec<_>>();
            tracing::warn!(
                key,
                secret,
                "{CURRENT} was moved outside keyprov (it was on {}); generation {current} is \
                 the newest that was current, so keyprov moves {CURRENT} back to it. keyprov is \
                 declarative: to roll back, make a new generation with `keyprov rotate {key} --now`",
                if from.is_empty() {
                    "no version".to_string()
                } else {
                    from.join(" and ")
                }
            );
            self.set_label(key, secret, CURRENT, Some(id)).await?;
            if described.activated() != Some(current) {
                self.record_activation(secret, current).await?;
            }
        }
        if let Some(pending) = described.holder(PENDING)
            && described.staged().is_none()
        {
            self.remove_label(key, secret, PENDING, pending).await?;
        }
        let previous = previous.and_then(|g| described.id_of(g));
        self.set_label(key, secret, PREVIOUS, previous).await?;
        if foreign_current.is_empty() {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            path: format!("secret {secret}"),
            message: format!(
                "{CURRENT} was on version {}, which is not one of key {key:?}'s generations \
                 (its version id and contents disagree: a forged or replayed version); {CURRENT} \
                 is back on {}. Nothing was copied from it. Check who can write this secret \
                 (secretsmanager:PutSecretValue, UpdateSecretVersionStage)",
                foreign_current.join(" and "),
                described
                    .current()
                    .map(|g| format!("generation {g}"))
                    .unwrap_or_else(|| "no version".into())
            ),
        })
    }
}
