//! The subcommands, one module each; `main.rs` only parses flags and dispatches here.

pub mod consumer;
pub mod decrypt_out;
pub mod keys;
pub mod man;
pub mod reconcile;
pub mod status;
pub mod validate;

use std::path::Path;

use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::{self, Diagnostic, KeyPair};

/// Prints diagnostics to stderr, one per line, as `error: file:line:column: field: message`.
pub fn report(diagnostics: &[Diagnostic]) {
    if crate::output::json_stdout() {
        return;
    }
    for d in diagnostics {
        if crate::output::json_logs() {
            tracing::error!(
                file = %d.file.display(),
                line = d.line,
                column = d.column,
                field = %d.field,
                "{}",
                d.message
            );
        } else {
            crate::errln!("error: {d}");
        }
    }
}

/// Loads the configuration, reporting its problems; `Err(Exit::Invalid)` when it is invalid.
/// Even an invalid configuration is reported in its own `log.format` when that much can be
/// read, so that a JSON log stays JSON.
pub fn load_config(path: &Path) -> Result<Config, Exit> {
    let config = Config::load(path).map_err(|diagnostics| {
        crate::logging::init(crate::config::log_format_hint(path), "warn");
        report(&diagnostics);
        Exit::Invalid
    })?;
    crate::binding::set_scope(&config.reconcile.scope);
    Ok(config)
}

/// Loads every manifest of the configuration and reports problems.
pub fn load_manifests(config: &Config) -> manifest::Loaded {
    let loaded = manifest::load_with(
        &config.manifests,
        &config.manifest_context(),
        crate::manifest::CacheUse::Read,
    );
    tell_manifest_problems(&loaded);
    loaded
}

/// Reports the problems of the loaded manifests, and the keys an invalid one leaves as they
/// are.
pub fn tell_manifest_problems(loaded: &manifest::Loaded) {
    report(&loaded.diagnostics);
    if !loaded.is_valid() {
        // Named, not counted: the reader must know which keys stay as they are (at most 20
        // named, so that a broken directory of thousands does not make a line of megabytes).
        const NAMED: usize = 20;
        let mut names: Vec<&str> = loaded
            .frozen
            .iter()
            .map(String::as_str)
            .take(NAMED)
            .collect();
        if loaded.frozen.len() > NAMED {
            names.push("…");
        }
        let what = if loaded.frozen.is_empty() {
            "no key is named by them".to_string()
        } else {
            format!(
                "{} left exactly as {}: {}",
                crate::output::count(loaded.frozen.len(), "key"),
                if loaded.frozen.len() == 1 {
                    "it is"
                } else {
                    "they are"
                },
                names.join(", ")
            )
        };
        tracing::warn!(frozen = loaded.frozen.len(), "invalid manifests: {what}");
    }
}

/// A manifest problem as `--json` output shows it.
pub fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "file": d.file.display().to_string(),
        "line": d.line,
        "column": d.column,
        "field": d.field,
        "message": d.message,
    })
}

/// Finds a valid key by name, or says why it cannot be used.
pub fn find_key<'a>(loaded: &'a manifest::Loaded, name: &str) -> Result<&'a KeyPair, String> {
    loaded.keys.iter().find(|k| k.name == name).ok_or_else(|| {
        if loaded.frozen.contains(name) {
            let at = loaded.invalid_at.get(name).map_or("", String::as_str);
            format!(
                "key {name:?} is defined in an invalid manifest ({at}); fix it first \
                 (keyprov validate)"
            )
        } else {
            unknown_key(loaded, name).unwrap_or_default()
        }
    })
}

/// When no manifest, valid or not, defines key `name`: a usage error (exit 64) naming the
/// keys the manifests do define, so that a typo shows next to what was meant.
pub fn unknown_key(loaded: &manifest::Loaded, name: &str) -> Option<String> {
    if loaded.keys.iter().any(|k| k.name == name) || loaded.frozen.contains(name) {
        return None;
    }
    // At most 20 named: a directory of thousands of keys must not make a line of megabytes.
    const NAMED: usize = 20;
    let mut known: Vec<&str> = loaded
        .keys
        .iter()
        .map(|k| k.name.as_str())
        .chain(loaded.frozen.iter().map(String::as_str))
        .collect();
    known.sort_unstable();
    known.dedup();
    let total = known.len();
    let listed = match total {
        0 => "the manifests define no key".to_string(),
        _ if total > NAMED => format!(
            "keys known: {}, … ({total} in all; keyprov status lists them)",
            known[..NAMED].join(", ")
        ),
        _ => format!("keys known: {}", known.join(", ")),
    };
    Some(format!("no manifest defines key {name:?}; {listed}"))
}
