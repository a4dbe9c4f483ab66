//! Log set-up: tracing-subscriber to stderr, text or JSON. `KEYPROV_LOG` (EnvFilter syntax)
//! overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Environment variable that overrides the log level.
pub const LOG_ENV: &str = "KEYPROV_LOG";

/// Crates that log every file-system event at trace level: capped at `info` unless the filter
/// names them. The daemon watches the config's directory; a log file written there would
/// otherwise make an event per line, logged as a line, without end.
const FILE_WATCHERS: [&str; 1] = ["notify"];

/// The credential chain warns, with a Debug dump of the SDK's error (headers and body of the
/// response included), when a provider of the chain fails: capped at `error` unless the filter
/// names it. The failing call's own error says it is about credentials, in words.
const CREDENTIAL_CHAIN: &str = "aws_config::meta::credentials::chain";

/// Levels a filter directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// True when `spec` is a plain filter: at most 1 KiB of comma-separated `LEVEL` or
/// `TARGET=LEVEL` directives (targets: letters, digits, `_`, `-`, `:`). EnvFilter's span and
/// field matchers (`[span{field=value}]`) compile regexes, which some inputs make take seconds,
/// and it panics on some non-ASCII input (both found by fuzzing): they are not accepted.
pub fn is_plain_filter(spec: &str) -> bool {
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let target = |t: &str| {
        let t = t.trim();
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
    };
    spec.len() <= 1024
        && spec
            .split(',')
            .all(|directive| match directive.split_once('=') {
                Some((t, l)) => target(t) && level(l),
                None => level(directive) || target(directive),
            })
}

/// The filter for `spec` (EnvFilter syntax, plain directives only: [`is_plain_filter`]), with
/// [`FILE_WATCHERS`] capped; `None` if invalid.
fn filter(spec: &str) -> Option<EnvFilter> {
    if !is_plain_filter(spec) {
        return None;
    }
    let mut filter = EnvFilter::try_new(spec).ok()?;
    for target in FILE_WATCHERS.iter().filter(|t| !spec.contains(*t)) {
        filter = filter.add_directive(format!("{target}=info").parse().ok()?);
    }
    if !spec.contains(CREDENTIAL_CHAIN) {
        filter = filter.add_directive(format!("{CREDENTIAL_CHAIN}=error").parse().ok()?);
    }
    Some(filter)
}

/// Checks `KEYPROV_LOG` when it is set: `Err` with what is wrong (an invalid filter would
/// otherwise be ignored without a word).
pub fn check_env() -> Result<(), String> {
    match std::env::var(LOG_ENV) {
        Ok(spec) if !spec.trim().is_empty() && filter(&spec).is_none() => Err(format!(
            "{LOG_ENV}={spec:?} is not a valid log filter: use a level (error, warn, info, \
             debug, trace, off) or comma-separated TARGET=LEVEL directives"
        )),
        _ => Ok(()),
    }
}

/// Swaps the filter of the installed subscriber (see [`set_level`]).
type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOADER: std::sync::OnceLock<Reloader> = std::sync::OnceLock::new();

/// The filter for the configured `level`, unless `KEYPROV_LOG` overrides it.
fn effective_filter(level: &str) -> EnvFilter {
    std::env::var(LOG_ENV)
        .ok()
        .and_then(|env| filter(&env))
        .or_else(|| filter(level))
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Installs the global subscriber; later calls do nothing.
pub fn init(format: LogFormat, level: &str) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder
                .with_env_filter(effective_filter(level))
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(ansi)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| {
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as Reloader
            })
        }};
    }
    let installed = match format {
        LogFormat::Text => install!(tracing_subscriber::fmt()),
        LogFormat::Json => install!(tracing_subscriber::fmt().json().flatten_event(true)),
    };
    if let Ok(reloader) = installed {
        let _ = RELOADER.set(reloader);
        crate::output::set_json_logs(format == LogFormat::Json);
    }
}

/// Applies a reloaded configuration's `log.level` (the format stays as started);
/// `KEYPROV_LOG`, when set, still wins.
pub fn set_level(level: &str) {
    if let Some(reload) = RELOADER.get()
        && let Err(err) = reload(effective_filter(level))
    {
        tracing::warn!("cannot apply log.level {level:?}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_watchers_are_capped_unless_named() {
        let text = |spec: &str| filter(spec).unwrap().to_string();
        assert!(text("trace").contains("notify=info"), "{}", text("trace"));
        assert!(!text("notify=trace").contains("notify=info"));
        assert!(filter("=garbage=").is_none());
        assert!(filter("info,\u{1F511}=trace").is_none());
        assert!(filter("info,keyprov=debug,aws_smithy_runtime=warn").is_some());
        assert!(
            filter("[span{field=x}]=trace").is_none(),
            "no span or field matchers"
        );
    }
}
