//! `keyprov validate` and `keyprov schema`: offline checks, no credentials needed.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::{self, document::Document};

/// Validates the configuration's manifests, or `paths` when given (checked against the
/// configuration when it can be read, else against the defaults).
pub fn validate(config_path: &Path, paths: &[PathBuf], json: bool) -> Exit {
    crate::output::set_json_stdout(json);
    let config = if paths.is_empty() || config_path.exists() {
        match super::load_config(config_path) {
            Ok(config) => Some(config),
            Err(exit) => return exit,
        }
    } else {
        None
    };
    // Problems go to stderr in the configured log format (JSON with `log.format: json`).
    crate::logging::init(
        config.as_ref().map(|c| c.log_format).unwrap_or_default(),
        "warn",
    );
    let default_state = PathBuf::from("/var/lib/keyprov");
    // Without a configuration, what depends on it is not checked: any absolute output
    // directory is accepted (outputRoots unknown), any hook program (hooks.allowed unknown).
    let anywhere = [PathBuf::from("/")];
    let ctx = config
        .as_ref()
        .map(Config::manifest_context)
        .unwrap_or(manifest::Context {
            state_dir: &default_state,
            output_roots: &anywhere,
            hooks_allowed: &[],
            check_hooks_allowed: false,
        });
    if config.is_none() {
        crate::output::note(format!(
            "no configuration at {} (--config or KEYPROV_CONFIG): checked everything but \
             hooks.allowed and outputRoots; relative output directories were resolved under {}",
            config_path.display(),
            default_state.display()
        ));
    }
    let sources: Vec<PathBuf> = if paths.is_empty() {
        config
            .as_ref()
            .map(|c| c.manifests.clone())
            .unwrap_or_default()
    } else {
        paths
            .iter()
            .map(|p| {
                std::path::absolute(p)
                    .map(|p| crate::manifest::absolute(Path::new("/"), &p))
                    .unwrap_or_else(|_| p.clone())
            })
            .collect()
    };
    // A path given here that does not exist is the caller's typo, not the configuration's:
    // the loader's message would send the user to `manifests` in a file they never named.
    let (sources, missing): (Vec<PathBuf>, Vec<PathBuf>) = sources.into_iter().partition(|p| {
        paths.is_empty()
            || !std::fs::metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    });
    // The parse cache of the configuration's stateDir is read (never written), when there
    // is a configuration.
    let cache = if config.is_some() {
        manifest::CacheUse::Read
    } else {
        manifest::CacheUse::Off
    };
    let mut loaded = manifest::load_with(&sources, &ctx, cache);
    loaded
        .diagnostics
        .splice(0..0, missing.iter().map(|p| missing_argument(p)));
    if let Some(problem) = config
        .as_ref()
        .and_then(|c| crate::prune_ledger::scope_problem(c, &loaded.keys))
    {
        loaded.diagnostics.push(problem);
    }
    let warnings = config
        .as_ref()
        .map(|c| super::consumer::warnings(c, &loaded.keys))
        .unwrap_or_default();
    // The process ends after this report: freeing 10,000 key pairs one by one would cost more
    // than a twentieth of the whole validation.
    let keys = loaded.keys.len();
    std::mem::forget(std::mem::take(&mut loaded.keys));
    if json {
        let document = serde_json::json!({
            "valid": loaded.is_valid(),
            "keys": keys,
            "files": loaded.files,
            "configuration": config.as_ref().map(|c| c.path.display().to_string()),
            "problems": loaded.diagnostics.iter().map(super::diagnostic_json).collect::<Vec<_>>(),
            "warnings": warnings,
        });
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&document).expect("validation serializes")
        );
        return if loaded.is_valid() {
            Exit::Ok
        } else {
            Exit::Invalid
        };
    }
    super::report(&loaded.diagnostics);
    for warning in &warnings {
        crate::output::warning(warning);
    }
    if loaded.is_valid() {
        crate::outln!(
            "{} in {} valid",
            crate::output::count(keys, "key pair"),
            match loaded.files {
                1 => "1 file is".to_string(),
                n => format!("{n} files are"),
            }
        );
        Exit::Ok
    } else {
        crate::outln!(
            "{} found; keys of invalid files are left exactly as they are by run",
            crate::output::count(loaded.diagnostics.len(), "problem")
        );
        Exit::Invalid
    }
}

/// Prints the JSON Schema of a manifest document.
pub fn schema() -> Exit {
    let schema = schemars::schema_for!(Document);
    crate::outln!(
        "{}",
        serde_json::to_string_pretty(&schema).expect("schema serializes")
    );
    Exit::Ok
}

/// The problem of a path given to `validate` that does not exist.
fn missing_argument(path: &Path) -> manifest::Diagnostic {
    manifest::Diagnostic {
        file: manifest::display_path(path),
        line: 0,
        column: 0,
        field: String::new(),
        message: "does not exist: fix this path given to `keyprov validate`".to_string(),
    }
}
