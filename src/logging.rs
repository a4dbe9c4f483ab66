//! Log set-up: tracing-subscriber to stderr, text or JSON. `KEYPROV_LOG` (EnvFilter syntax)
//! overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Environment variable that overrides the log level.
pub const LOG_ENV: &str = "KEYPROV_LOG";

/// Installs the global subscriber; later calls do nothing.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var(LOG_ENV)
        .ok()
        .and_then(|env| EnvFilter::try_new(env).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
