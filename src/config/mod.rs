//! The daemon configuration file (`keyprov.yaml`): where manifests and state live, which
//! provider to use, and the reconcile, hook and log settings.

mod document;
mod duration_hint;
mod limits;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::{self, Diagnostic, display_path, source};

pub use document::schema;
pub use limits::*;

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
    /// Longest time between two complete listings of the scope's secrets while the change
    /// beacon says nothing changed (less up to 10 % of jitter).
    pub full_sweep_every: Duration,
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
            .map(|p| crate::manifest::absolute(Path::new("/"), &p))
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
