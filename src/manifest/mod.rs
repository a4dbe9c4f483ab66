//! Manifests: loading files and directories of YAML documents, validating them, and reporting
//! every problem with its file, line, column and field.
//!
//! serde_yaml is confined to this module (see `document.rs`), so a maintained fork can replace it
//! in one place.

mod across;
mod cache;
mod dedent;
mod diagnostics;
pub mod document;
mod fast;
mod file;
mod model;
mod parallel;
pub mod paths;
mod positions;
pub mod scan;
mod schema_tree;
mod shape;
pub mod source;
mod validate;
mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use across::check_across_files;
use file::{ManifestFile, duplicate_key_diagnostic, parse_file, serde_diagnostic};

pub use cache::CacheUse;
pub use diagnostics::{Diagnostic, display_path};
pub use model::{FileOutput, Format, Hook, KeyPair, Output, Rotation, SecretsManagerOutput};
pub use positions::{Position, PositionIndex};
pub use validate::{API_VERSION, KIND, absolute, check_name, parse_mode};

/// Manifest files larger than this are refused (a manifest is a few hundred bytes per key).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// All manifest files together may hold at most this much; later files are refused.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// Manifest text read before it is parsed (in parallel).
const BATCH_BYTES: usize = 16 << 20;

/// What validation needs to know of the daemon's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Absolute state directory: default and relative output directories live below it.
    pub state_dir: &'a Path,
    /// Absolute extra roots where file outputs may live.
    pub output_roots: &'a [PathBuf],
    /// Absolute programs that onRotate may run.
    pub hooks_allowed: &'a [PathBuf],
    /// Whether hook programs are checked against `hooks_allowed` (not when validating
    /// without a configuration).
    pub check_hooks_allowed: bool,
}

/// The outcome of loading every manifest.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid key pairs that may be reconciled, sorted by name.
    pub keys: Vec<KeyPair>,
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Names that must be left exactly as they are: those of invalid files and duplicated names.
    pub frozen: BTreeSet<String>,
    /// Where each frozen name's problem is: `file:line` of the first problem of its file.
    pub invalid_at: BTreeMap<String, String>,
    /// Number of manifest files read.
    pub files: usize,
    /// Every manifest file read, and whether it is valid (for metrics).
    pub file_validity: Vec<(PathBuf, bool)>,
}

impl Loaded {
    /// True when no manifest had a problem.
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// Loads and validates every manifest named by `sources` (files, or directories whose `*.yaml`
/// and `*.yml` files are read in name order).
pub fn load(sources: &[PathBuf], ctx: &Context) -> Loaded {
    load_with(sources, ctx, CacheUse::Off)
}

/// [`load`], using the parse cache under `ctx.state_dir` as `cache` says (see `cache.rs`):
/// the keys and diagnostics are the same with or without it.
pub fn load_with(sources: &[PathBuf], ctx: &Context, cache: CacheUse) -> Loaded {
    let cache = cache::Cache::new(ctx.state_dir, cache);
    let mut loaded = Loaded::default();
    let mut paths = Vec::new();
    for source in sources {
        match list_manifest_files(source) {
            Ok(found) => paths.extend(found),
            Err(message) => loaded.diagnostics.push(file_diagnostic(source, message)),
        }
    }
    loaded.files = paths.len();
    let started = std::time::Instant::now();
    let mut budget = MAX_TOTAL_BYTES;
    // Read in order (the budget counts the files before), parsed on every core a batch at a
    // time, so that at most a batch of texts is held at once.
    let mut files: Vec<ManifestFile> = Vec::with_capacity(paths.len());
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut paths = paths.into_iter().peekable();
    while let Some(path) = paths.next() {
        let text = source::read_text(&path, MAX_FILE_BYTES.min(budget)).map_err(|message| {
            if budget < MAX_FILE_BYTES && message.starts_with("file is larger") {
                format!(
                    "not read: the manifests before it hold nearly {} MiB, the most read in all",
                    MAX_TOTAL_BYTES >> 20
                )
            } else {
                message
            }
        });
        if let Ok(text) = &text {
            budget -= text.len() as u64;
            batch_bytes += text.len();
        }
        batch.push((path, text));
        if batch_bytes >= BATCH_BYTES || paths.peek().is_none() {
            files.extend(parallel::map_in_order(
                std::mem::take(&mut batch),
                |(path, text)| parse_file(path, text, ctx, &cache),
            ));
            batch_bytes = 0;
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), files = files.len(), "manifest files parsed");
    let loaded = finish(files, loaded);
    cache.finish(loaded.is_valid());
    loaded
}

/// Loads and validates one manifest file given as bytes, as if read from `path`: the entry
/// point of the fuzz targets and of tests that need no files.
pub fn load_bytes(path: &Path, bytes: &[u8], ctx: &Context) -> Loaded {
    let text = if bytes.len() as u64 > MAX_FILE_BYTES {
        Err(format!(
            "file is larger than {} MiB; split it into several files",
            MAX_FILE_BYTES >> 20
        ))
    } else {
        source::decode(bytes.to_vec())
    };
    let loaded = Loaded {
        files: 1,
        ..Loaded::default()
    };
    let cache = cache::Cache::new(ctx.state_dir, CacheUse::Off);
    finish(
        vec![parse_file(path.to_path_buf(), text, ctx, &cache)],
        loaded,
    )
}

/// Checks across parsed files, then gathers keys and diagnostics.
fn finish(mut files: Vec<ManifestFile>, mut loaded: Loaded) -> Loaded {
    check_across_files(&mut files, &mut loaded.frozen);
    for file in files {
        loaded
            .file_validity
            .push((file.path.clone(), file.diagnostics.is_empty()));
        if file.diagnostics.is_empty() {
            loaded
                .keys
                .extend(file.keys.into_iter().map(|(_, key)| key));
        } else {
            let first = &file.diagnostics[0];
            let at = format!("{}:{}", first.file.display(), first.line);
            for name in &file.names {
                loaded
                    .invalid_at
                    .entry(name.clone())
                    .or_insert_with(|| at.clone());
            }
            loaded.frozen.extend(file.names);
            loaded.diagnostics.extend(file.diagnostics);
        }
    }
    loaded.keys.retain(|key| !loaded.frozen.contains(&key.name));
    loaded.keys.sort_by(|a, b| a.name.cmp(&b.name));
    loaded
}

fn file_diagnostic(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: display_path(path),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}

fn list_manifest_files(source: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = fs::metadata(source).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            "does not exist: this path is listed under `manifests` in the configuration; \
             create it or fix the path"
                .to_string()
        }
        _ => format!("cannot read this manifest path: {err}"),
    })?;
    if !meta.is_dir() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(source).map_err(|err| format!("cannot list directory: {err}"))? {
        let path = entry
            .map_err(|err| format!("cannot list directory: {err}"))?
            .path();
        // Lossy: a name that is not UTF-8 is still read (and reported by its lossy name).
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // Anything else that is not a directory (a FIFO, a dangling symlink) is reported by
        // the reader rather than silently skipped.
        if is_yaml && !name.starts_with('.') && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses a single YAML document of type `T` (the daemon configuration), with serde_yaml's
/// positioned error on failure.
pub fn parse_single<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Diagnostic> {
    serde_yaml::from_str(text).map_err(|err| serde_diagnostic(path, &err))
}

/// Parses a single-document file (the configuration) into `T`, first checking its shape
/// against `T`'s JSON Schema so that every unknown field and value of the wrong kind is
/// reported at once. `Ok` holds `T` (from what is left) and those problems; `Err` every
/// problem when `T` cannot be had.
pub fn parse_checked<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    path: &Path,
    text: &str,
) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            let index = PositionIndex::build(text);
            let diagnostic = duplicate_key_diagnostic(path, &index, 0, &err)
                .unwrap_or_else(|| serde_diagnostic(path, &err));
            return Err(vec![diagnostic]);
        }
    };
    let schema = serde_json::to_value(schemars::schema_for!(T)).expect("the schema serializes");
    let problems = shape::check_against(&mut value, &schema);
    let index = PositionIndex::build(text);
    let diagnostics: Vec<Diagnostic> = problems
        .into_iter()
        .map(|problem| {
            let position = index.find(0, &problem.field);
            Diagnostic {
                file: display_path(path),
                line: position.line,
                column: position.column,
                field: problem.field,
                message: problem.message,
            }
        })
        .collect();
    match serde_yaml::from_value::<T>(value) {
        Ok(parsed) => Ok((parsed, diagnostics)),
        Err(err) if diagnostics.is_empty() => Err(vec![serde_diagnostic(path, &err)]),
        Err(_) => Err(diagnostics),
    }
}
