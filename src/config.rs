//! The daemon configuration file (`keyprov.yaml`): where manifests and state live, which
//! provider to use, and the reconcile, hook and log settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::{self, Diagnostic, absolute, display_path};
use crate::schedule::parse_duration;

/// Default configuration path when neither `--config` nor `$KEYPROV_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/keyprov/keyprov.yaml";

/// Which provider generates key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded provider: a local keyring, no AWS needed.
    #[default]
    Local,
    /// AWS KMS through aws-sdk-kms.
    Aws,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HooksDoc {
    #[serde(default)]
    allowed: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalDoc {
    keyring: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReconcileDoc {
    concurrency: Option<usize>,
    max_requests_per_second: Option<f64>,
    resync_every: Option<String>,
    debounce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LogDoc {
    #[serde(default)]
    format: LogFormat,
    level: Option<String>,
}

/// SDK retry strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
}

impl Config {
    /// Reads and validates the configuration file; every problem is returned.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let whole = |message: String| {
            vec![Diagnostic {
                file: display_path(path),
                line: 0,
                column: 0,
                field: String::new(),
                message,
            }]
        };
        let path = std::path::absolute(path)
            .map_err(|err| whole(format!("cannot resolve path: {err}")))?;
        let text = std::fs::read_to_string(&path).map_err(|err| {
            whole(format!(
                "cannot read the configuration: {err} (pass --config or set KEYPROV_CONFIG)"
            ))
        })?;
        let doc: ConfigDoc = manifest::parse_single(&path, &text).map_err(|d| vec![d])?;
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut problems = Vec::new();
        let index = manifest::PositionIndex::build(&text);
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
        let mut duration = |field: &str, text: &Option<String>, default: Duration| match text {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|message| {
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
            ),
            attempt_timeout: duration(
                "aws.attemptTimeout",
                &doc.aws.attempt_timeout,
                Duration::from_secs(10),
            ),
            operation_timeout: duration(
                "aws.operationTimeout",
                &doc.aws.operation_timeout,
                Duration::from_secs(60),
            ),
            max_attempts: doc.aws.max_attempts.unwrap_or(5),
            retry_mode: doc.aws.retry_mode.unwrap_or_default(),
        };
        let reconcile = ReconcileSettings {
            concurrency: doc.reconcile.concurrency.unwrap_or(8),
            max_requests_per_second: doc.reconcile.max_requests_per_second.unwrap_or(20.0),
            resync_every: duration(
                "reconcile.resyncEvery",
                &doc.reconcile.resync_every,
                Duration::from_secs(600),
            ),
            debounce: duration(
                "reconcile.debounce",
                &doc.reconcile.debounce,
                Duration::from_millis(300),
            ),
        };
        if reconcile.concurrency == 0 {
            field_error("reconcile.concurrency", "must be at least 1".into());
        }
        if !(reconcile.max_requests_per_second > 0.0
            && reconcile.max_requests_per_second.is_finite())
        {
            field_error(
                "reconcile.maxRequestsPerSecond",
                "must be a positive number".into(),
            );
        }
        if aws.max_attempts == 0 {
            field_error("aws.maxAttempts", "must be at least 1".into());
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
        let level = doc.log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            field_error(
                "log.level",
                format!("invalid level {level:?}, expected error, warn, info, debug or trace"),
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
            state_dir,
            provider: doc.provider,
            keyring,
            aws,
            reconcile,
            log_format: doc.log.format,
            log_level: level,
            path,
        })
    }

    /// What manifest validation needs of this configuration.
    pub fn manifest_context(&self) -> manifest::Context<'_> {
        manifest::Context {
            state_dir: &self.state_dir,
            output_roots: &self.output_roots,
            hooks_allowed: &self.hooks_allowed,
        }
    }
}
