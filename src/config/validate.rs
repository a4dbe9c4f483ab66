//! Validation of the raw configuration document: every field checked against its limits,
//! defaults filled in, paths made absolute, and every problem reported with its position.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::document::ConfigDoc;
use super::limits::*;
use super::{AwsSettings, Config, ProviderKind, ReconcileSettings, check_env_name};
use crate::manifest::{self, Diagnostic, absolute, display_path, scan};
use crate::schedule::parse_bounded_duration;

impl Config {
    /// Turns the text of the configuration file at `path` into a [`Config`]: every problem
    /// is returned, none hides another.
    pub(super) fn parse(path: PathBuf, text: &str) -> Result<Config, Vec<Diagnostic>> {
        if let Err(refusal) = scan::scan(text, 1) {
            return Err(vec![Diagnostic {
                file: display_path(&path),
                line: refusal.line,
                column: refusal.column,
                field: String::new(),
                message: refusal.message,
            }]);
        }
        let (doc, mut problems): (ConfigDoc, _) = manifest::parse_checked(&path, text)
            .map_err(|problems| super::duration_hint::amend(text, problems))?;
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let index = manifest::PositionIndex::build(text);
        let mut field_error = |field: &str, message: String| {
            let position = index.find(0, field);
            problems.push(Diagnostic {
                file: display_path(&path),
                line: position.line,
                column: position.column,
                field: field.to_string(),
                message,
            })
        };
        let mut duration =
            |field: &str, text: &Option<String>, default: Duration, max: Duration| match text {
                None => default,
                Some(text) => parse_bounded_duration(text, max).unwrap_or_else(|message| {
                    field_error(field, message);
                    default
                }),
            };
        let aws = AwsSettings {
            region: doc.aws.region,
            profile: doc.aws.profile,
            endpoint_url: doc.aws.endpoint_url,
            connect_timeout: duration(
                "aws.connectTimeout",
                &doc.aws.connect_timeout,
                Duration::from_secs(3),
                MAX_TIMEOUT,
            ),
            attempt_timeout: duration(
                "aws.attemptTimeout",
                &doc.aws.attempt_timeout,
                Duration::from_secs(10),
                MAX_TIMEOUT,
            ),
            operation_timeout: duration(
                "aws.operationTimeout",
                &doc.aws.operation_timeout,
                Duration::from_secs(60),
                MAX_TIMEOUT,
            ),
            max_attempts: doc.aws.max_attempts.unwrap_or(5),
            retry_mode: doc.aws.retry_mode.unwrap_or_default(),
        };
        let reconcile = ReconcileSettings {
            prune: doc.reconcile.prune.unwrap_or(false),
            scope_explicit: doc.reconcile.scope.is_some(),
            scope: doc.reconcile.scope.unwrap_or_else(|| "default".into()),
            prune_recovery_window_days: doc.reconcile.prune_recovery_window_days.unwrap_or(30),
            prune_after: duration(
                "reconcile.pruneAfter",
                &doc.reconcile.prune_after,
                DEFAULT_PRUNE_AFTER,
                MAX_PRUNE_AFTER,
            ),
            clock_tolerance: duration(
                "reconcile.clockTolerance",
                &doc.reconcile.clock_tolerance,
                crate::clock_guard::DEFAULT_TOLERANCE,
                MAX_CLOCK_TOLERANCE,
            ),
            concurrency: doc.reconcile.concurrency.unwrap_or(8),
            // The limit protects the account's KMS quota; the embedded provider has none.
            max_requests_per_second: doc.reconcile.max_requests_per_second.unwrap_or(
                match doc.provider {
                    ProviderKind::Aws => DEFAULT_AWS_REQUESTS_PER_SECOND,
                    ProviderKind::Local => *REQUESTS_PER_SECOND.end(),
                },
            ),
            resync_every: duration(
                "reconcile.resyncEvery",
                &doc.reconcile.resync_every,
                DEFAULT_RESYNC,
                MAX_RESYNC,
            ),
            full_sweep_every: duration(
                "reconcile.fullSweepEvery",
                &doc.reconcile.full_sweep_every,
                crate::store::secrets_manager::DEFAULT_FULL_SWEEP,
                MAX_RESYNC,
            ),
            debounce: duration(
                "reconcile.debounce",
                &doc.reconcile.debounce,
                Duration::from_millis(300),
                MAX_TIMEOUT,
            ),
            retry_backoff: crate::retry::Backoff {
                initial: duration(
                    "reconcile.retryBackoff",
                    &doc.reconcile.retry_backoff,
                    Duration::from_secs(30),
                    MAX_TIMEOUT,
                ),
                max: duration(
                    "reconcile.retryBackoffMax",
                    &doc.reconcile.retry_backoff_max,
                    Duration::from_secs(3600),
                    MAX_RESYNC,
                ),
            },
        };
        if reconcile.retry_backoff.max < reconcile.retry_backoff.initial {
            field_error(
                "reconcile.retryBackoffMax",
                "must not be shorter than reconcile.retryBackoff".into(),
            );
        }
        if reconcile.scope.is_empty()
            || reconcile.scope.len() > 128
            || !reconcile
                .scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        {
            field_error(
                "reconcile.scope",
                "must be 1 to 128 characters of letters, digits, - _ . /".into(),
            );
        }
        if !(7..=30).contains(&reconcile.prune_recovery_window_days) {
            field_error(
                "reconcile.pruneRecoveryWindowDays",
                "must be 7 to 30 (days Secrets Manager keeps a deleted secret restorable)".into(),
            );
        }
        if reconcile.concurrency == 0 {
            field_error("reconcile.concurrency", "must be at least 1".into());
        } else if !CONCURRENCY.contains(&reconcile.concurrency) {
            field_error(
                "reconcile.concurrency",
                format!("must be at most {}", CONCURRENCY.end()),
            );
        }
        // NaN and infinities are outside the range too.
        if !REQUESTS_PER_SECOND.contains(&reconcile.max_requests_per_second) {
            field_error(
                "reconcile.maxRequestsPerSecond",
                format!(
                    "{:?} is out of range: use {} to {}",
                    reconcile.max_requests_per_second,
                    REQUESTS_PER_SECOND.start(),
                    REQUESTS_PER_SECOND.end()
                ),
            );
        }
        if aws.max_attempts == 0 {
            field_error("aws.maxAttempts", "must be at least 1".into());
        } else if !MAX_ATTEMPTS.contains(&aws.max_attempts) {
            field_error(
                "aws.maxAttempts",
                format!("must be at most {}", MAX_ATTEMPTS.end()),
            );
        }
        if doc.state_dir.trim().is_empty() {
            field_error("stateDir", "must not be empty".into());
        }
        let mut not_empty = |field: String, value: &str| {
            if value.trim().is_empty() {
                field_error(&field, "must not be empty".into());
            }
        };
        for (i, m) in doc.manifests.iter().enumerate() {
            not_empty(format!("manifests[{i}]"), m);
        }
        for (i, r) in doc.output_roots.iter().enumerate() {
            not_empty(format!("outputRoots[{i}]"), r);
        }
        if let Some(keyring) = &doc.local.keyring {
            not_empty("local.keyring".into(), keyring);
        }
        for (i, name) in doc.hooks.env.iter().enumerate() {
            if let Err(message) = check_env_name(name) {
                field_error(&format!("hooks.env[{i}]"), message);
            }
        }
        if doc.manifests.is_empty() {
            field_error(
                "manifests",
                "name at least one manifest file or directory".into(),
            );
        }
        let hooks_allowed: Vec<PathBuf> = doc.hooks.allowed.iter().map(PathBuf::from).collect();
        for (i, program) in hooks_allowed.iter().enumerate() {
            if !program.is_absolute() {
                field_error(
                    &format!("hooks.allowed[{i}]"),
                    format!("{} must be an absolute path", program.display()),
                );
            }
        }
        let metrics_listen = match doc.metrics.listen.as_deref() {
            None => None,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    field_error(
                        "metrics.listen",
                        format!(
                            "{text:?} is not an IP address and port like \"127.0.0.1:9464\" \
                             or \"[::1]:9464\""
                        ),
                    );
                    None
                }
            },
        };
        let state_dir_path = crate::manifest::absolute(&base, Path::new(&doc.state_dir));
        let output_roots: Vec<PathBuf> = doc
            .output_roots
            .iter()
            .map(|r| crate::manifest::absolute(&base, Path::new(r)))
            .collect();
        let mut jwks = Vec::with_capacity(doc.jwks.len());
        for (i, aggregate) in doc.jwks.iter().enumerate() {
            match crate::jwks_aggregate::JwksAggregate::resolve(
                &aggregate.path,
                &state_dir_path,
                &output_roots,
                aggregate.selector.labels.clone(),
            ) {
                Ok(resolved) => jwks.push(resolved),
                Err(message) => field_error(&format!("jwks[{i}].path"), message),
            }
            if let Some(serve) = &aggregate.serve {
                let taken = doc.jwks[..i]
                    .iter()
                    .any(|other| other.serve.as_ref() == Some(serve));
                let problem = crate::jwks_served::check_serve_path(serve)
                    .err()
                    .or_else(|| taken.then(|| format!("{serve:?} is served by another jwks entry")))
                    .or_else(|| {
                        metrics_listen.is_none().then(|| {
                            format!(
                                "{serve:?} needs metrics.listen: the daemon serves JWK Sets on \
                                 the HTTP server of its metrics"
                            )
                        })
                    });
                match problem {
                    Some(message) => field_error(&format!("jwks[{i}].serve"), message),
                    None => {
                        // Only when this entry's path resolved (else the file is refused).
                        if jwks.len() == i + 1
                            && let Some(last) = jwks.last_mut()
                        {
                            last.serve = Some(serve.clone());
                        }
                    }
                }
            }
        }
        let fleet =
            crate::fleet::FleetSettings::resolve(&doc.fleet).unwrap_or_else(|(field, message)| {
                field_error(field, message);
                crate::fleet::FleetSettings::default()
            });
        let level = doc.log.level.unwrap_or_else(|| "info".into());
        let plain = crate::logging::is_plain_filter(&level);
        if !plain || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            field_error(
                "log.level",
                format!(
                    "invalid level {level:?}: expected error, warn, info, debug or trace, or \
                     comma-separated TARGET=LEVEL directives"
                ),
            );
        }
        if !problems.is_empty() {
            return Err(super::duration_hint::amend(text, problems));
        }
        let state_dir = absolute(&base, Path::new(&doc.state_dir));
        let keyring = match &doc.local.keyring {
            Some(keyring) => absolute(&base, Path::new(keyring)),
            None => state_dir.join("local-kms.keyring"),
        };
        Ok(Config {
            manifests: doc
                .manifests
                .iter()
                .map(|m| absolute(&base, Path::new(m)))
                .collect(),
            output_roots: doc
                .output_roots
                .iter()
                .map(|r| absolute(&base, Path::new(r)))
                .collect(),
            hooks_allowed,
            hooks_env: doc.hooks.env,
            state_dir,
            provider: doc.provider,
            keyring,
            aws,
            reconcile,
            log_format: doc.log.format,
            log_level: level,
            metrics_listen,
            jwks,
            fleet,
            path,
        })
    }
}
