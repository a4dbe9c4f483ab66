//! A host's place in a fleet of hosts sharing secrets: who it is (`fleet.hostId`), whether it
//! may write (`fleet.role`), and the adjustments a pass makes to its plans before executing
//! them so that one host writes each rotation and the others copy it ([`settle`]).
//!
//! AWS is the shared state and there is no coordinator: each host delays a scheduled
//! generation by a stable offset of its own ([`offset`]), re-checks the secret right before
//! generating ([`recheck`]), never regenerates over a generation another manifest version made
//! after its own ([`spec_hold`]), and a consumer never generates nor writes a secret
//! ([`consumer`]). In the daemon a writer claims each generation through the key's secret
//! before making it, so one host calls KMS per generation ([`claim`]). One rate limiter paces
//! every AWS request of the process ([`limiter`]).

pub mod claim;
pub mod consumer;
pub mod limiter;
pub mod offset;
pub mod recheck;
pub mod spec_hold;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::key_events::KeyEvents;
use crate::manifest::KeyPair;
use crate::observed::Observed;
use crate::plan::KeyPlan;
use crate::store::Stores;

/// Longest `fleet.generateWindow`.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// Longest `fleet.hostId`.
const MAX_HOST_ID: usize = 253;

/// `fleet:` as written in the configuration file.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FleetDoc {
    /// This host's identity; default: /etc/machine-id, else the hostname.
    host_id: Option<String>,
    /// `writer` (default) or `consumer`.
    role: Option<Role>,
    /// Longest delay of a scheduled generation; default: 5 % of `rotation.every`, at most 10 m.
    generate_window: Option<String>,
    /// Age at which another host's claim of a generation is stale; default 5m.
    claim_timeout: Option<String>,
}

/// Whether a host may generate and write secrets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Generates, writes secrets and files (the default).
    #[default]
    Writer,
    /// Never generates nor writes a secret: copies what the secrets hold into its files.
    Consumer,
}

impl Role {
    /// The word the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Consumer => "consumer",
        }
    }
}

/// A short SHA-256 of a host id (16 hex digits): what keyprov writes where other hosts read it
/// (a claim's holder), so the id itself (by default /etc/machine-id)
/// is never written nor logged.
pub fn host_digest(host_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, host_id.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The validated `fleet` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSettings {
    /// `fleet.hostId` as configured; `None`: [`default_host_id`].
    pub host_id: Option<String>,
    /// `fleet.role`.
    pub role: Role,
    /// `fleet.generateWindow`; `None`: [`offset::default_window`] of each key.
    pub generate_window: Option<Duration>,
    /// `fleet.claimTimeout`; `None`: [`claim::DEFAULT_TIMEOUT`].
    pub claim_timeout: Option<Duration>,
}

impl FleetSettings {
    /// Validates `doc`; an error names the field and what is wrong.
    pub(crate) fn resolve(doc: &FleetDoc) -> Result<Self, (&'static str, String)> {
        if let Some(id) = &doc.host_id
            && (id.trim().is_empty()
                || id.len() > MAX_HOST_ID
                || id.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err((
                "fleet.hostId",
                format!(
                    "{id:?} must be 1 to {MAX_HOST_ID} characters without spaces or control \
                     characters (default: /etc/machine-id, else the hostname)"
                ),
            ));
        }
        let generate_window = match doc.generate_window.as_deref() {
            None => None,
            Some(text) => {
                let window = humantime::parse_duration(text.trim()).map_err(|err| {
                    (
                        "fleet.generateWindow",
                        format!("invalid duration {text:?}: {err} (examples: 10m, 30s, 0s)"),
                    )
                })?;
                if window > MAX_WINDOW {
                    return Err((
                        "fleet.generateWindow",
                        format!("{text:?} is longer than the maximum of 1day"),
                    ));
                }
                Some(window)
            }
        };
        let claim_timeout = match doc.claim_timeout.as_deref() {
            None => None,
            Some(text) => Some(
                humantime::parse_duration(text.trim())
                    .ok()
                    .filter(|t| (Duration::from_secs(1)..=MAX_WINDOW).contains(t))
                    .ok_or_else(|| {
                        (
                            "fleet.claimTimeout",
                            format!(
                                "{text:?} must be a duration from 1s to 1day (examples: 5m, 30s)"
                            ),
                        )
                    })?,
            ),
        };
        Ok(FleetSettings {
            host_id: doc.host_id.clone(),
            role: doc.role.unwrap_or_default(),
            generate_window,
            claim_timeout,
        })
    }

    /// `fleet.claimTimeout`, else [`claim::DEFAULT_TIMEOUT`].
    pub fn claim_timeout(&self) -> Duration {
        self.claim_timeout.unwrap_or(claim::DEFAULT_TIMEOUT)
    }

    /// This host's identity: `fleet.hostId`, else [`default_host_id`].
    pub fn host_id(&self) -> String {
        self.host_id.clone().unwrap_or_else(default_host_id)
    }
}

/// What `status` says of this host's role.
#[derive(Debug, serde::Serialize)]
pub struct RoleStatus {
    /// `writer` or `consumer`.
    role: Role,
}

impl Settled {
    /// The keys' next events once settled: [`Settled::key_events`] in the daemon, else
    /// `reckoned` (what the pass reckoned by itself).
    pub fn key_events(&self, reckoned: KeyEvents) -> KeyEvents {
        self.key_events.clone().unwrap_or(reckoned)
    }
}

impl RoleStatus {
    /// The role of `settings`.
    pub fn of(settings: &FleetSettings) -> Self {
        RoleStatus {
            role: settings.role,
        }
    }

    /// A line under the table for a consumer (a writer is the default and says nothing).
    pub fn print(&self) {
        if self.role == Role::Consumer {
            crate::outln!(
                "This host is a consumer (fleet.role: consumer): it copies what the secrets \
                 hold into its files and never generates a key nor writes a secret."
            );
        }
    }
}

/// /etc/machine-id, else the hostname (the kernel's, else /etc/hostname), else `"localhost"`
/// (read once per process).
pub fn default_host_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .or_else(|| {
                ["/proc/sys/kernel/hostname", "/etc/hostname"]
                    .iter()
                    .filter_map(|path| std::fs::read_to_string(path).ok())
                    .map(|h| h.trim().to_string())
                    .find(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

/// What [`settle`] adds to the pass.
#[derive(Debug, Default)]
pub struct Settled {
    /// In the daemon: when each key wants another pass, this host's turn at a rotation
    /// included (replaces the pass's own reckoning, which knows no turns).
    pub key_events: Option<KeyEvents>,
    /// Keys held by the no-flip-flop rule ([`spec_hold`]): neither changed nor proven nor
    /// failed on this host.
    pub held: BTreeSet<String>,
}

/// Adjusts the plans of a pass before they are executed: a spec change that another manifest
/// version already superseded is held ([`spec_hold`]); a consumer's generations and secret
/// writes go; in the daemon (`daemon`; `run --once` and `rotate` generate at once) a scheduled
/// generation waits for this host's offset and is re-checked against the secret just before it
/// is made (copied instead when another host made it), and every generation is claimed through
/// the key's secret first ([`claim`]: a key another host holds waits for a later pass).
pub async fn settle(
    config: &crate::config::Config,
    daemon: bool,
    stores: &Stores,
    keys: &[KeyPair],
    observed: &mut Observed,
    plans: &mut Vec<KeyPlan>,
    now: SystemTime,
) -> Settled {
    let marks = spec_hold::Marks::load(&config.state_dir);
    let mut settled = Settled {
        held: spec_hold::held(&marks, keys, observed),
        ..Settled::default()
    };
    spec_hold::hold(plans, &settled.held);
    if config.fleet.role == Role::Consumer {
        consumer::restrict(keys, observed, plans);
    }
    let consumer = config.fleet.role == Role::Consumer;
    if daemon {
        let mut events = KeyEvents::default();
        let mut claimed = claim::Claimed::default();
        if !consumer {
            events = offset::hold_back(&config.fleet, keys, observed, plans, now);
            recheck::adopt_made_elsewhere(stores, keys, observed, plans, now).await;
            claimed =
                claim::claim_generations(&config.fleet, stores, keys, observed, plans, now).await;
            plans.retain(|p| !p.actions.is_empty());
        }
        events.extend(&offset::next_events(
            &config.fleet,
            consumer,
            keys,
            observed,
            plans,
            &claimed.lost,
            now,
        ));
        events.extend(&claimed.retry);
        settled.key_events = Some(events);
    }
    spec_hold::remember(&config.state_dir, marks, keys, observed, plans);
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(fleet: &str) -> Result<Config, String> {
        let text = format!("manifests: [m]\nstateDir: s\n{fleet}\n");
        Config::from_bytes(Path::new("/etc/keyprov/keyprov.yaml"), text.as_bytes()).map_err(
            |problems| {
                problems
                    .iter()
                    .map(|d| format!("{}:{}: {}: {}", d.line, d.column, d.field, d.message))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        )
    }

    #[test]
    fn the_fleet_section_has_defaults_and_names_what_is_wrong() {
        let default = load("").unwrap().fleet;
        assert_eq!(default, FleetSettings::default());
        assert_eq!(default.role, Role::Writer);
        assert!(!default.host_id().is_empty());
        let set = load("fleet: {hostId: web-17, role: consumer, generateWindow: 90s}")
            .unwrap()
            .fleet;
        assert_eq!(set.host_id(), "web-17");
        assert_eq!(set.role, Role::Consumer);
        assert_eq!(set.generate_window, Some(Duration::from_secs(90)));
        assert_eq!(default.claim_timeout(), claim::DEFAULT_TIMEOUT);
        let claims = load("fleet: {claimTimeout: 45s}").unwrap().fleet;
        assert_eq!(claims.claim_timeout(), Duration::from_secs(45));
        assert_eq!(
            load("fleet: {generateWindow: 0s}")
                .unwrap()
                .fleet
                .generate_window,
            Some(Duration::ZERO),
            "0s: no offsets"
        );
        let cases = [
            (
                "fleet: {hostId: \"a b\"}",
                "3:9: fleet.hostId: \"a b\" must be",
            ),
            (
                "fleet: {generateWindow: soon}",
                "fleet.generateWindow: invalid duration",
            ),
            (
                "fleet: {generateWindow: 2d}",
                "fleet.generateWindow: \"2d\" is longer",
            ),
            (
                "fleet: {claimTimeout: 0s}",
                "fleet.claimTimeout: \"0s\" must be a duration from 1s",
            ),
            (
                "fleet: {role: reader}",
                "fleet.role: unknown value \"reader\"",
            ),
            ("fleet: {hosts: 3}", "hosts"),
        ];
        for (text, want) in cases {
            let got = load(text).unwrap_err();
            assert!(got.contains(want), "{text}: {got}");
        }
    }
}
