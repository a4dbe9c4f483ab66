//! The daemon configuration file (`keyprov.yaml`): where manifests and state live, which
//! provider to use, and the reconcile, hook and log settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::{self, Diagnostic, absolute, display_path, scan, source};
use crate::schedule::parse_bounded_duration;

/// Default configuration path when neither `--config` nor `$KEYPROV_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/keyprov/keyprov.yaml";
/// Configuration files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Accepted `reconcile.concurrency`.
pub const CONCURRENCY: std::ops::RangeInclusive<usize> = 1..=1024;
/// Accepted `reconcile.maxRequestsPerSecond`.
pub const REQUESTS_PER_SECOND: std::ops::RangeInclusive<f64> = 0.01..=100_000.0;
/// `reconcile.maxRequestsPerSecond` with `provider: aws` when unset (none with `local`).
pub const DEFAULT_AWS_REQUESTS_PER_SECOND: f64 = 20.0;
/// Accepted `aws.maxAttempts`.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
/// Longest `aws.connectTimeout`, `aws.attemptTimeout`, `aws.operationTimeout` and
/// `reconcile.debounce`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// `reconcile.resyncEvery` when unset: what another host changed reaches this one within it.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(120);
/// Longest `reconcile.resyncEvery`.
pub const MAX_RESYNC: Duration = Duration::from_secs(30 * 86_400);
/// Longest `reconcile.pruneAfter`.
pub const MAX_PRUNE_AFTER: Duration = Duration::from_secs(366 * 86_400);
/// `reconcile.pruneAfter` when unset: an orphan is pruned after a day seen orphaned.
pub const DEFAULT_PRUNE_AFTER: Duration = Duration::from_secs(86_400);
/// Longest `reconcile.clockTolerance`.
pub const MAX_CLOCK_TOLERANCE: Duration = Duration::from_secs(86_400);
/// Environment variables hooks may never be given through `hooks.env`: keyprov's own.
pub const RESERVED_ENV_PREFIX: &str = "KEYPROV_";

/// Which provider generates key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded provider: a local keyring, no AWS needed.
    #[default]
    Local,
    /// AWS KMS through aws-sdk-kms.
    Aws,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigDoc {
    manifests: Vec<String>,
    state_dir: String,
    #[serde(default)]
    output_roots: Vec<String>,
    #[serde(default)]
    hooks: HooksDoc,
    #[serde(default)]
    provider: ProviderKind,
    #[serde(default)]
    local: LocalDoc,
    #[serde(default)]
    aws: AwsDoc,
    #[serde(default)]
    reconcile: ReconcileDoc,
    #[serde(default)]
    log: LogDoc,
    #[serde(default)]
    metrics: MetricsDoc,
    #[serde(default)]
    jwks: Vec<JwksDoc>,
    #[serde(default)]
    fleet: crate::fleet::FleetDoc,
}

/// `jwks[]`: one JWK Set merging the keys of several manifests, for one issuer.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JwksDoc {
    /// Where the set is written: relative to stateDir, or absolute inside stateDir or an
    /// outputRoot.
    path: String,
    /// Which keys: those whose labels include all of these (no labels: every key).
    #[serde(default)]
    selector: SelectorDoc,
    /// URL path at which the daemon serves the set over HTTP (on `metrics.listen`).
    serve: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorDoc {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricsDoc {
    /// `host:port` of the Prometheus endpoint (`/metrics`); absent: no endpoint.
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HooksDoc {
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalDoc {
    keyring: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AwsDoc {
    region: Option<String>,
    profile: Option<String>,
    endpoint_url: Option<String>,
    connect_timeout: Option<String>,
    attempt_timeout: Option<String>,
    operation_timeout: Option<String>,
    max_attempts: Option<u32>,
    retry_mode: Option<RetryMode>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReconcileDoc {
    prune: Option<bool>,
    scope: Option<String>,
    prune_recovery_window_days: Option<i64>,
    prune_after: Option<String>,
    clock_tolerance: Option<String>,
    concurrency: Option<usize>,
    max_requests_per_second: Option<f64>,
    resync_every: Option<String>,
    debounce: Option<String>,
    retry_backoff: Option<String>,
    retry_backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LogDoc {
    #[serde(default)]
    format: LogFormat,
    level: Option<String>,
}

/// The JSON Schema of the configuration file (its fields, for the manual's test).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ConfigDoc)).expect("the schema serializes")
}

/// The `log.format` a configuration file asks for, read as leniently as possible (for
/// reporting the problems of an invalid one); text when it cannot be read.
pub fn log_format_hint(path: &Path) -> LogFormat {
    // The same bounded, non-blocking read and scan as a load: a FIFO, a huge file or an alias
    // bomb is text.
    let Ok(text) = source::read_text(path, MAX_FILE_BYTES) else {
        return LogFormat::Text;
    };
    if manifest::scan::scan(&text, 1).is_err() {
        return LogFormat::Text;
    }
    let format = serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| v.get("log")?.get("format")?.as_str().map(str::to_string));
    match format.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// SDK retry strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    /// Exponential backoff with jitter.
    #[default]
    Standard,
    /// Standard plus client-side rate adaptation on throttling.
    Adaptive,
}

/// AWS settings: region, profile, endpoint, timeouts and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    /// Region; else the SDK's chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Named profile; else the SDK's chain.
    pub profile: Option<String>,
    /// Endpoint override; `AWS_ENDPOINT_URL(_KMS)` also work.
    pub endpoint_url: Option<String>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time limit of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Time limit of one operation, retries included.
    pub operation_timeout: Duration,
    /// Attempts per operation, the first included.
    pub max_attempts: u32,
    /// Retry strategy.
    pub retry_mode: RetryMode,
}

/// How reconciliation paces itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSettings {
    /// Keys reconciled at the same time.
    pub concurrency: usize,
    /// Provider requests per second, shared by all keys.
    pub max_requests_per_second: f64,
    /// Full reconcile interval of the daemon.
    pub resync_every: Duration,
    /// Quiet time after a manifest change before reloading.
    pub debounce: Duration,
    /// How the daemon retries a failed key or hook: first delay, doubling up to a cap.
    pub retry_backoff: crate::retry::Backoff,
    /// Remove orphans (outputs keyprov made for keys no manifest defines any more): files
    /// moved aside, secrets scheduled for deletion. Never in a run with an invalid manifest.
    pub prune: bool,
    /// Recovery window of a pruned secret, 7 to 30 days.
    pub prune_recovery_window_days: i64,
    /// How long an orphan must be seen orphaned, run after run, before it is pruned (a
    /// redeploy that empties the manifests for a moment prunes nothing).
    pub prune_after: Duration,
    /// How far a recorded time may lie ahead of now, or the local clock differ from AWS's,
    /// before keyprov distrusts it (see `clock_guard`).
    pub clock_tolerance: Duration,
    /// `reconcile.scope` was written in the configuration (not the default): required with
    /// `prune: true` and any secret output.
    pub scope_explicit: bool,
    /// Which keyprov installation the secrets belong to (tag `keyprov:scope`): orphan secrets
    /// are looked for only among secrets of this scope, so installations sharing an AWS
    /// account never prune each other's. Every host of one fleet uses the same scope.
    pub scope: String,
}

/// The validated configuration, every path absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration file.
    pub path: PathBuf,
    /// Manifest files and directories.
    pub manifests: Vec<PathBuf>,
    /// State directory: default key directories and the local keyring live here.
    pub state_dir: PathBuf,
    /// Extra roots where file outputs may live.
    pub output_roots: Vec<PathBuf>,
    /// Programs onRotate may run.
    pub hooks_allowed: Vec<PathBuf>,
    /// Names of extra environment variables hooks may see (`hooks.env`): valid names, none
    /// starting with `KEYPROV_`.
    pub hooks_env: Vec<String>,
    /// Provider.
    pub provider: ProviderKind,
    /// Keyring of the local provider.
    pub keyring: PathBuf,
    /// AWS settings.
    pub aws: AwsSettings,
    /// Pacing.
    pub reconcile: ReconcileSettings,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// JWK Sets merging the keys of several manifests (`jwks`).
    pub jwks: Vec<crate::jwks_aggregate::JwksAggregate>,
    /// Where the daemon serves `/metrics` (`metrics.listen`); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// This host's place in a fleet sharing secrets (`fleet`).
    pub fleet: crate::fleet::FleetSettings,
}

impl Config {
    /// Reads and validates the configuration file; every problem is returned. Only a regular
    /// file of at most [`MAX_FILE_BYTES`] is read (a FIFO is refused, not waited on).
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let path = std::path::absolute(path)
            .map_err(|err| whole(path, format!("cannot resolve path: {err}")))?;
        let text = source::read_text(&path, MAX_FILE_BYTES).map_err(|err| {
            whole(
                &path,
                format!(
                    "cannot read the configuration: {err} (pass --config or set KEYPROV_CONFIG)"
                ),
            )
        })?;
        Self::parse(path, &text)
    }

    /// Validates configuration file contents as if read from `path` (made absolute): the
    /// entry point of the fuzz target and of tests that need no files.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Config, Vec<Diagnostic>> {
        let path = std::path::absolute(path)
            .map_err(|err| whole(path, format!("cannot resolve path: {err}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(whole(
                &path,
                format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20),
            ));
        }
        let text = source::decode(bytes.to_vec()).map_err(|err| whole(&path, err))?;
        Self::parse(path, &text)
    }

    fn parse(path: PathBuf, text: &str) -> Result<Config, Vec<Diagnostic>> {
        if let Err(refusal) = scan::scan(text, 1) {
            return Err(vec![Diagnostic {
                file: display_path(&path),
                line: refusal.line,
                column: refusal.column,
                field: String::new(),
                message: refusal.message,
            }]);
        }
        let (doc, mut problems): (ConfigDoc, _) = manifest::parse_checked(&path, text)?;
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
            return Err(problems);
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

    /// What manifest validation needs of this configuration.
    pub fn manifest_context(&self) -> manifest::Context<'_> {
        manifest::Context {
            state_dir: &self.state_dir,
            output_roots: &self.output_roots,
            hooks_allowed: &self.hooks_allowed,
            check_hooks_allowed: true,
        }
    }
}

/// One whole-file diagnostic of the configuration at `path`.
fn whole(path: &Path, message: String) -> Vec<Diagnostic> {
    vec![Diagnostic {
        file: display_path(path),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }]
}

/// Checks a `hooks.env` entry: a portable variable name, not one of keyprov's own.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if name.starts_with(RESERVED_ENV_PREFIX) {
        return Err(format!(
            "{name:?}: {RESERVED_ENV_PREFIX}* variables are keyprov's own and never passed to hooks"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "manifests: [manifests.d]\nstateDir: state\n";

    fn load(text: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::from_bytes(Path::new("/etc/keyprov/keyprov.yaml"), text.as_bytes())
    }

    /// The one diagnostic of `text`, as `line:column: field: message`.
    fn refused(text: &str) -> String {
        let problems = load(text).expect_err(text);
        assert_eq!(problems.len(), 1, "{text}: {problems:?}");
        let d = &problems[0];
        format!("{}:{}: {}: {}", d.line, d.column, d.field, d.message)
    }

    #[test]
    fn accepts_a_bom_and_the_bounds() {
        let config = load(&format!(
            "\u{feff}{BASE}reconcile: {{concurrency: 1024, maxRequestsPerSecond: 0.01}}\nhooks: {{env: [PATH, http_proxy, _X1]}}\naws: {{maxAttempts: 100, operationTimeout: 1h}}\n"
        ))
        .unwrap();
        assert_eq!(config.state_dir, Path::new("/etc/keyprov/state"));
        assert_eq!(config.hooks_env, ["PATH", "http_proxy", "_X1"]);
        assert_eq!(config.reconcile.concurrency, 1024);
        assert!(load(BASE).unwrap().hooks_env.is_empty());
    }

    #[test]
    fn refuses_what_would_hang_or_overflow() {
        let cases = [
            (
                "stateDir: \"\"\nmanifests: [m]\n",
                "1:1: stateDir: must not be empty",
            ),
            (
                "stateDir: s\nmanifests: [\"\"]\n",
                "2:13: manifests[0]: must not be empty",
            ),
            (
                "reconcile: {maxRequestsPerSecond: 1e-300}\n",
                "3:13: reconcile.maxRequestsPerSecond: 1e-300 is out of range: use 0.01 to 100000",
            ),
            (
                "reconcile: {maxRequestsPerSecond: .nan}\n",
                "3:13: reconcile.maxRequestsPerSecond: NaN is out of range",
            ),
            (
                "reconcile: {maxRequestsPerSecond: .inf}\n",
                "3:13: reconcile.maxRequestsPerSecond: inf is out of range",
            ),
            (
                "reconcile: {concurrency: 100000}\n",
                "3:13: reconcile.concurrency: must be at most 1024",
            ),
            (
                "aws: {maxAttempts: 101}\n",
                "3:7: aws.maxAttempts: must be at most 100",
            ),
            (
                "reconcile: {resyncEvery: 20000y}\n",
                "3:13: reconcile.resyncEvery: duration \"20000y\" is longer than the maximum of 30days",
            ),
            (
                "aws: {attemptTimeout: 2h}\n",
                "3:7: aws.attemptTimeout: duration \"2h\" is longer than the maximum of 1h",
            ),
            (
                "hooks: {env: [KEYPROV_CONFIG]}\n",
                "3:15: hooks.env[0]: \"KEYPROV_CONFIG\": KEYPROV_* variables are keyprov's own",
            ),
            (
                "hooks: {env: [A, 1X]}\n",
                "3:18: hooks.env[1]: \"1X\" is not an environment variable name",
            ),
            (
                "hooks: {env: [\"A=B\"]}\n",
                "3:15: hooks.env[0]: \"A=B\" is not",
            ),
            ("a: &x 1\nb: *y\n", "4:4: : alias *y refers to no anchor"),
            // A fuzz finding: tracing-subscriber panicked on it.
            (
                "log: {level: \"a, de2\u{a5}22\u{a5}2\u{a5} \u{a5} \u{a5}\u{a5}22\u{a5}2\u{a5} \u{a5} \u{a5}[\u{a5}\"}\n",
                "3:7: log.level: invalid level",
            ),
            (
                "---\na: 1\n---\nb: 2\n",
                "3:1: : more than 1 YAML documents",
            ),
        ];
        for (extra, want) in cases {
            let text = if extra.starts_with("stateDir") {
                extra.to_string()
            } else {
                format!("{BASE}{extra}")
            };
            let got = refused(&text);
            assert!(got.starts_with(want), "{extra}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn refuses_a_fifo_without_waiting() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("keyprov.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let problems = Config::load(&fifo).unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("is a FIFO; expected a regular file"),
            "{problems:?}"
        );
    }
}
