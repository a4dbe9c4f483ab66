//! Claims of a generation through the secret itself, so that one host of a fleet calls KMS per
//! rotation: before generating generation N, a writer puts a small claim version under a
//! request token of its own (UUIDv5 of `<name>/claim/<N>/<attempt>`, never a generation's
//! token) holding only the label [`CLAIM_LABEL`], so `AWSCURRENT` and `AWSPENDING` never move.
//! Secrets Manager's token check is the arbiter: one put of a token succeeds, every other
//! with another value gets `ResourceExistsException`. The value is deterministic for the host
//! (no time in it), so a host retrying after a crash is told that it holds the claim.
//!
//! A claim is stale once it is older than the timeout by AWS's clock (the claim version's
//! `CreatedDate` against the `Date` of the response that read it): then the next attempt may
//! be claimed, so a dead claimer (or anyone forging a claim) delays a rotation by the timeout
//! at most. Claim versions are no generation: their ids are no generation's token, so every
//! reader of versions (numbering, refusal, provenance, prune, status, JWK Sets) leaves them out.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::SecretsManagerStore;
use super::errors::{Failure, explain};
use crate::manifest::{KeyPair, SecretsManagerOutput};
use crate::store::StoreError;

/// The staging label of a key's latest claim (the only label a claim version ever holds).
pub const CLAIM_LABEL: &str = "KEYPROV_CLAIM";

/// Namespace of the claims' request tokens (UUIDv5), fixed forever and not the generations'.
const CLAIM_NAMESPACE: uuid::Uuid = uuid::uuid!("3c9e2f5a-7b1d-5c40-8e6f-a2b4c6d8e0f1");

/// Most attempts at one generation: past it, a key's claims are left to a person (each stale
/// attempt took a whole timeout, so this is hours of dead claimers).
pub const MAX_ATTEMPTS: u32 = 64;

/// The request token (= VersionId) of `attempt` at claiming `generation` of key `name`.
pub fn claim_id(name: &str, generation: u32, attempt: u32) -> String {
    uuid::Uuid::new_v5(
        &CLAIM_NAMESPACE,
        format!("{name}/claim/{generation}/{attempt}").as_bytes(),
    )
    .to_string()
}

/// What a claim version holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimValue {
    keyprov_claim: Holder,
}

/// Who claimed which generation, at which attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Holder {
    host: String,
    generation: u32,
    attempt: u32,
}

/// The SecretString of `host`'s claim of `generation` at `attempt` (the same bytes on every
/// retry).
pub fn claim_value(host: &str, generation: u32, attempt: u32) -> String {
    serde_json::to_string(&ClaimValue {
        keyprov_claim: Holder {
            host: host.to_string(),
            generation,
            attempt,
        },
    })
    .expect("a claim always encodes")
}

/// How long a won claim is left before it is read back (see [`SecretsManagerStore::claim`]).
const CLAIM_SETTLE: Duration = Duration::from_millis(500);

/// What claiming a generation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This host holds the claim (now, or since before a crash): it generates.
    Won {
        /// The attempt it holds.
        attempt: u32,
    },
    /// Another host holds a fresh claim: this host does not generate now.
    Held {
        /// The holder's host id, when the claim was read.
        host: Option<String>,
        /// The attempt it holds.
        attempt: u32,
        /// How long until the claim is stale (by AWS's clock).
        stale_in: Duration,
    },
}

impl SecretsManagerStore {
    /// Claims `generation` of `key` in the secret of `output` for `host`; a claim older than
    /// `timeout` is stale and the next attempt is claimed over it. Fails only when Secrets
    /// Manager does (a missing secret included: then there is nothing to claim through).
    pub async fn claim(
        &self,
        key: &KeyPair,
        output: &SecretsManagerOutput,
        generation: u32,
        host: &str,
        timeout: Duration,
    ) -> Result<Claim, StoreError> {
        let (name, secret) = (key.name.as_str(), output.secret_id.as_str());
        let mut attempt = match self.latest_claim(name, secret).await? {
            Some((holder, age)) if holder.generation > generation && age < timeout => {
                // A later generation is claimed: this one was made; the re-check adopts it.
                // Stale, it holds nothing back (a claim forged for a far generation, a
                // generation that was never made): this generation is claimed afresh.
                return Ok(Claim::Held {
                    host: Some(holder.host),
                    attempt: holder.attempt,
                    stale_in: timeout - age,
                });
            }
            Some((holder, age)) if holder.generation == generation && age < timeout => {
                if holder.host == host {
                    return Ok(Claim::Won {
                        attempt: holder.attempt,
                    });
                }
                return Ok(Claim::Held {
                    host: Some(holder.host),
                    attempt: holder.attempt,
                    stale_in: timeout - age,
                });
            }
            Some((holder, age)) if holder.generation == generation => {
                tracing::info!(key = %name, secret, generation, holder = %holder.host,
                    attempt = holder.attempt, age = %humantime::format_duration(age),
                    "the claim of this generation is stale: claiming it again");
                holder.attempt + 1
            }
            _ => 0,
        };
        loop {
            if attempt >= MAX_ATTEMPTS {
                return Err(StoreError::Conflict {
                    path: format!("secret {secret}:"),
                    message: format!(
                        "generation {generation} of key {name:?} was claimed {MAX_ATTEMPTS} \
                         times and never made: remove the versions labelled {CLAIM_LABEL} from \
                         the secret"
                    ),
                });
            }
            let put = self
                .client()
                .await
                .put_secret_value()
                .secret_id(secret)
                .client_request_token(claim_id(name, generation, attempt))
                .secret_string(claim_value(host, generation, attempt))
                .version_stages(CLAIM_LABEL)
                .send()
                .await;
            self.forget_description(secret);
            match put.map_err(|err| explain(&err, secret, "PutSecretValue")) {
                Ok(_) => {
                    // Secrets Manager refuses a second value under a taken token. A backend
                    // whose check is not atomic (LocalStack under load) can take two at once,
                    // the later replacing the earlier: the claim is read back a moment later,
                    // and the host it names holds it.
                    tokio::time::sleep(CLAIM_SETTLE).await;
                    return Ok(
                        match self.claim_at(name, secret, generation, attempt).await? {
                            Some((holder, age)) if holder.host != host => Claim::Held {
                                host: Some(holder.host),
                                attempt,
                                stale_in: timeout.saturating_sub(age),
                            },
                            _ => Claim::Won { attempt },
                        },
                    );
                }
                // This attempt's token is taken: by another host just now (a fresh claim in
                // it), else by a claim gone stale or by a value that is no claim (planted
                // ahead): then it holds nothing back and the next attempt is tried.
                Err(Failure::Exists) => {
                    match self.claim_at(name, secret, generation, attempt).await? {
                        Some((holder, age)) if age < timeout => {
                            return Ok(Claim::Held {
                                host: Some(holder.host),
                                attempt,
                                stale_in: timeout - age,
                            });
                        }
                        _ => attempt += 1,
                    }
                }
                Err(other) => return Err(other.into_error()),
            }
        }
    }

    /// The claim under the token of `attempt` at `generation` and its age by AWS's clock;
    /// `None` when that version holds no claim of it (or is gone).
    async fn claim_at(
        &self,
        name: &str,
        secret: &str,
        generation: u32,
        attempt: u32,
    ) -> Result<Option<(Holder, Duration)>, StoreError> {
        let found = self
            .read_claim(name, secret, Some(claim_id(name, generation, attempt)))
            .await?;
        Ok(found.filter(|(h, _)| h.generation == generation && h.attempt == attempt))
    }

    /// The claim holding [`CLAIM_LABEL`] and its age by AWS's clock; `None` when no version
    /// holds it or the one that does is no claim of `name` (its value or its id is not what a
    /// claim of its attempt would be: ignored, so garbage cannot block a rotation at all).
    async fn latest_claim(
        &self,
        name: &str,
        secret: &str,
    ) -> Result<Option<(Holder, Duration)>, StoreError> {
        self.read_claim(name, secret, None).await
    }

    /// Reads the claim version `version_id` (else the one holding [`CLAIM_LABEL`]) and what
    /// it holds (see [`parse`]); `None` when there is no such version.
    async fn read_claim(
        &self,
        name: &str,
        secret: &str,
        version_id: Option<String>,
    ) -> Result<Option<(Holder, Duration)>, StoreError> {
        let request = self.client().await.get_secret_value().secret_id(secret);
        let request = match version_id {
            Some(id) => request.version_id(id),
            None => request.version_stage(CLAIM_LABEL),
        };
        match request.send().await {
            Ok(value) => Ok(parse(name, &value)),
            Err(err) => match explain(&err, secret, "GetSecretValue") {
                Failure::NotFound => Ok(None),
                other => Err(other.into_error()),
            },
        }
    }
}

/// The claim `value` holds and its age by AWS's clock; `None` when it is no claim of `name`
/// (its value or its id is not what a claim of its attempt would be).
fn parse(
    name: &str,
    value: &aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput,
) -> Option<(Holder, Duration)> {
    let holder = value
        .secret_string()
        .and_then(|text| serde_json::from_str::<ClaimValue>(text).ok())
        .map(|v| v.keyprov_claim)
        .filter(|h| value.version_id() == Some(&claim_id(name, h.generation, h.attempt)))?;
    let created = value
        .created_date()
        .and_then(|d| SystemTime::try_from(*d).ok());
    Some((holder, age(created, aws_now())))
}

/// AWS's time now, as its latest response said (the local clock without a fresh reading).
fn aws_now() -> SystemTime {
    match crate::aws_clock::fresh_reading() {
        Some(reading) => reading.aws + reading.at.elapsed(),
        None => crate::clock::now(),
    }
}

/// How old a claim created at `created` is at `now`: zero when it is dated ahead; unknown
/// (`None`) is taken as new, so a claim is never stale without evidence.
fn age(created: Option<SystemTime>, now: SystemTime) -> Duration {
    created
        .and_then(|c| now.duration_since(c).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_tokens_are_stable_distinct_and_never_a_generation() {
        assert_eq!(claim_id("k", 2, 0), claim_id("k", 2, 0));
        assert_ne!(claim_id("k", 2, 0), claim_id("k", 2, 1));
        assert_ne!(claim_id("k", 2, 0), claim_id("k", 3, 0));
        assert_ne!(claim_id("k", 2, 0), claim_id("j", 2, 0));
        for generation in 1..200 {
            let id = super::super::layout::version_id("k", generation);
            for attempt in 0..4 {
                assert_ne!(claim_id("k", generation, attempt), id);
            }
        }
        let found =
            super::super::layout::generations_of("k", [claim_id("k", 2, 0).as_str()], &[2].into());
        assert!(found.is_empty(), "a claim is no generation: {found:?}");
    }

    #[test]
    fn a_claim_value_is_deterministic_and_round_trips() {
        let text = claim_value("web-1", 7, 2);
        assert_eq!(text, claim_value("web-1", 7, 2));
        assert_eq!(
            text,
            r#"{"keyprovClaim":{"host":"web-1","generation":7,"attempt":2}}"#
        );
        let back: ClaimValue = serde_json::from_str(&text).unwrap();
        assert_eq!(back.keyprov_claim.attempt, 2);
    }

    #[test]
    fn a_claim_is_as_old_as_aws_says_and_never_stale_without_evidence() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            age(Some(t), t + Duration::from_secs(90)),
            Duration::from_secs(90)
        );
        assert_eq!(age(Some(t + Duration::from_secs(5)), t), Duration::ZERO);
        assert_eq!(age(None, t), Duration::ZERO);
    }
}
