//! Manifests: loading files and directories of YAML documents, validating them, and reporting
//! every problem with its file, line, column and field.
//!
//! serde_yaml is confined to this module (see `document.rs`), so a maintained fork can replace it
//! in one place.

mod dedent;
mod diagnostics;
pub mod document;
mod model;
pub mod paths;
mod positions;
pub mod scan;
mod shape;
pub mod source;
mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeSeed;

pub use diagnostics::{Diagnostic, display_path};
pub use model::{FileOutput, Format, Hook, KeyPair, Output, Rotation, SecretsManagerOutput};
pub use positions::{Position, PositionIndex};
pub use validate::{API_VERSION, KIND, absolute, check_name, parse_mode};

/// Manifest files larger than this are refused (a manifest is a few hundred bytes per key).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// All manifest files together may hold at most this much; later files are refused.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;

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

/// One manifest file while it is being checked.
struct ManifestFile {
    path: PathBuf,
    text: String,
    /// Valid documents: (document index, key pair).
    keys: Vec<(usize, KeyPair)>,
    /// Problems of this file; any makes every key of the file frozen.
    diagnostics: Vec<Diagnostic>,
    /// Names seen in this file, valid or not.
    names: Vec<String>,
    index: Option<PositionIndex>,
}

impl ManifestFile {
    fn position(&mut self, doc: usize, field: &str) -> Position {
        let text = &self.text;
        self.index
            .get_or_insert_with(|| PositionIndex::build(text))
            .find(doc, field)
    }

    fn report(&mut self, doc: usize, field: &str, message: String) {
        let position = self.position(doc, field);
        self.diagnostics.push(Diagnostic {
            file: display_path(&self.path),
            line: position.line,
            column: position.column,
            field: field.to_string(),
            message,
        });
    }

    fn location(&mut self, doc: usize, field: &str) -> String {
        let position = self.position(doc, field);
        format!(
            "{}:{}:{}",
            display_path(&self.path).display(),
            position.line,
            position.column
        )
    }
}

/// Loads and validates every manifest named by `sources` (files, or directories whose `*.yaml`
/// and `*.yml` files are read in name order).
pub fn load(sources: &[PathBuf], ctx: &Context) -> Loaded {
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
    let files: Vec<ManifestFile> = paths
        .into_iter()
        .map(|path| {
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
            }
            parse_file(path, text, ctx)
        })
        .collect();
    tracing::debug!(elapsed = ?started.elapsed(), files = files.len(), "manifest files parsed");
    finish(files, loaded)
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
    finish(vec![parse_file(path.to_path_buf(), text, ctx)], loaded)
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

fn parse_file(path: PathBuf, text: Result<String, String>, ctx: &Context) -> ManifestFile {
    let mut file = ManifestFile {
        path,
        text: String::new(),
        keys: Vec::new(),
        diagnostics: Vec::new(),
        names: Vec::new(),
        index: None,
    };
    let text = match text {
        Ok(text) => text,
        Err(message) => {
            file.diagnostics.push(file_diagnostic(&file.path, message));
            return file;
        }
    };
    if let Err(refusal) = scan::scan(&text, scan::MAX_DOCUMENTS) {
        file.diagnostics.push(Diagnostic {
            file: display_path(&file.path),
            line: refusal.line,
            column: refusal.column,
            field: String::new(),
            message: refusal.message,
        });
        return file;
    }
    let documents = parse_documents(&mut file, &text, ctx);
    file.text = text;
    if documents == 0 && file.diagnostics.is_empty() {
        file.diagnostics.push(file_diagnostic(
            &file.path,
            "contains no KeyPair document (the file is empty or holds only comments)".into(),
        ));
    }
    file
}

/// Deserializes and validates every document of `text` into `file`; returns how many documents
/// were not empty.
///
/// Two passes. The first walks each document as serde_yaml sees it (any YAML, limits
/// checked, see [`scan::Walk`]) and stops at the first error: a syntax error, or a limit.
/// serde_yaml reports a document's syntax error only after its data errors, and after an
/// unknown anchor the next document starts in the middle of the broken one, where serde_yaml
/// panics; so only the documents before the first error are deserialized, in the second pass,
/// where every error is a data error of its document and the next one can still be read.
fn parse_documents(file: &mut ManifestFile, text: &str, ctx: &Context) -> usize {
    let budget = std::cell::Cell::new(0);
    let mut sound = 0;
    let mut broken = None;
    // The scan bounds the documents; `take` bounds this loop even if libyaml disagreed with it
    // (after an error libyaml repeats it forever).
    for deserializer in serde_yaml::Deserializer::from_str(text).take(scan::MAX_DOCUMENTS + 1) {
        match guarded(|| scan::Walk::new(&budget).deserialize(deserializer)) {
            Ok(Ok(())) => sound += 1,
            Ok(Err(err)) => {
                broken = Some(serde_diagnostic(&file.path, &err));
                break;
            }
            Err(message) => {
                broken = Some(file_diagnostic(&file.path, message));
                break;
            }
        }
    }
    let mut documents = 0;
    let stream = serde_yaml::Deserializer::from_str(text).take(sound);
    for (doc, deserializer) in stream.enumerate() {
        let parsed = match guarded(|| Option::<serde_yaml::Value>::deserialize(deserializer)) {
            Ok(parsed) => parsed,
            Err(message) => {
                file.diagnostics.push(file_diagnostic(
                    &file.path,
                    format!("document {}: {message}", doc + 1),
                ));
                break;
            }
        };
        let mut value = match parsed {
            Ok(None) => continue,
            Ok(Some(value)) => value,
            Err(err) => {
                documents += 1;
                text.clone_into(&mut file.text);
                let index = file.index.get_or_insert_with(|| PositionIndex::build(text));
                let diagnostic = duplicate_key_diagnostic(&file.path, index, doc, &err)
                    .unwrap_or_else(|| serde_diagnostic(&file.path, &err));
                file.diagnostics.push(diagnostic);
                continue;
            }
        };
        documents += 1;
        if let Some(name) = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(serde_yaml::Value::as_str)
        {
            file.names.push(name.to_string());
        }
        let shape = shape::check(&mut value);
        if !shape.is_empty() {
            text.clone_into(&mut file.text);
        }
        for problem in &shape {
            file.report(doc, &problem.field, problem.message.clone());
        }
        // What is left after the shape's problems were taken out is still validated, so one
        // problem never hides another.
        let document = match guarded(|| serde_yaml::from_value::<document::Document>(value)) {
            Ok(Ok(document)) => document,
            Ok(Err(err)) => {
                if shape.is_empty() {
                    text.clone_into(&mut file.text);
                    file.report(doc, "", err.to_string());
                }
                continue;
            }
            Err(message) => {
                file.diagnostics.push(file_diagnostic(
                    &file.path,
                    format!("document {}: {message}", doc + 1),
                ));
                continue;
            }
        };
        match validate::validate(document, &file.path, ctx) {
            Ok(key) if shape.is_empty() => file.keys.push((doc, key)),
            Ok(_) => {}
            Err(problems) => {
                text.clone_into(&mut file.text);
                // A field whose shape was wrong (or one of its parts) is reported once.
                for problem in problems {
                    if !shape.iter().any(|s| s.field.starts_with(&problem.field)) {
                        file.report(doc, &problem.field, problem.message);
                    }
                }
            }
        }
    }
    if let Some(diagnostic) = broken {
        documents += 1;
        file.diagnostics.push(diagnostic);
    }
    documents
}

/// Runs `parse`, turning a panic into a message: serde_yaml 0.9 has reachable panics, and a
/// hostile file must not take the daemon down (the fuzz targets still see the panic).
fn guarded<T>(parse: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .map_err(|_| "the YAML parser failed on this document (internal error)".to_string())
}

/// Splits serde_yaml's `path: message at line L column C` into a positioned diagnostic.
/// A duplicated key (`spec:` twice, a later edit appending a second block), reported at the
/// duplicate's own line.
fn duplicate_key_diagnostic(
    path: &Path,
    index: &PositionIndex,
    doc: usize,
    err: &serde_yaml::Error,
) -> Option<Diagnostic> {
    let message = err.to_string();
    let key = message
        .split("duplicate entry with key ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_matches('"')
        .to_string();
    let (field, position) = index.find_duplicate(doc, &key)?;
    let nested = field.contains(['.', '[']);
    Some(Diagnostic {
        file: display_path(path),
        line: position.line,
        column: position.column,
        field,
        // A top-level key twice is most often a second manifest pasted below the first.
        message: if nested {
            format!(
                "duplicate key `{key}`: it is already set above; a YAML mapping holds each key \
                 once (merge the two blocks)"
            )
        } else {
            format!(
                "duplicate key `{key}`: it is already set above; if a second manifest starts \
                 here, separate the two with a line `---` before it"
            )
        },
    })
}

fn serde_diagnostic(path: &Path, err: &serde_yaml::Error) -> Diagnostic {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = err.to_string();
    let suffix = format!(" at line {line} column {column}");
    if let Some(at) = message.find(&suffix) {
        message.replace_range(at..at + suffix.len(), "");
    }
    let (field, message) = match message.split_once(": ") {
        Some((field, rest))
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_')) =>
        {
            (field.to_string(), rest.to_string())
        }
        _ => (String::new(), message),
    };
    Diagnostic {
        file: display_path(path),
        line,
        column,
        field,
        message,
    }
}

/// Checks what no single file can: unique names, distinct output directories and secrets.
/// A clash is reported on the later file, which is thereby invalid; the name (or both names)
/// concerned are frozen.
fn check_across_files(files: &mut [ManifestFile], frozen: &mut BTreeSet<String>) {
    let mut names: HashMap<String, (usize, usize)> = HashMap::new();
    // Directories taken, and every ancestor of one (mapped to the directory below it).
    let mut dirs: HashMap<PathBuf, (usize, usize, usize, String)> = HashMap::new();
    let mut ancestors: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut secrets: HashMap<String, (usize, usize, usize, String)> = HashMap::new();
    for f in 0..files.len() {
        for k in 0..files[f].keys.len() {
            let (doc, name) = (files[f].keys[k].0, files[f].keys[k].1.name.clone());
            if let Some(&(of, od)) = names.get(&name) {
                // Reported where it was added: in the file changed last (the other, earlier
                // definition is named in the message).
                let modified = |i: usize| {
                    std::fs::metadata(&files[i].path)
                        .and_then(|m| m.modified())
                        .ok()
                };
                let (at, at_doc, other, other_doc) = if of != f && modified(of) > modified(f) {
                    (of, od, f, doc)
                } else {
                    (f, doc, of, od)
                };
                let other = files[other].location(other_doc, "metadata.name");
                files[at].report(
                    at_doc,
                    "metadata.name",
                    format!("duplicate name {name:?}, also defined at {other}"),
                );
                frozen.insert(name);
                continue;
            }
            names.insert(name.clone(), (f, doc));
            let outputs = files[f].keys[k].1.outputs.clone();
            for (o, output) in outputs.iter().enumerate() {
                let field = format!("spec.outputs[{o}]");
                match output {
                    Output::File(file) => {
                        // An ancestor (or the directory itself) already taken, or a taken
                        // directory below this one: both would mix two keys' versions.
                        let clash = file
                            .dir
                            .ancestors()
                            .find_map(|a| dirs.get_key_value(a))
                            .or_else(|| {
                                ancestors
                                    .get(&file.dir)
                                    .and_then(|below| dirs.get_key_value(below))
                            })
                            .map(|(dir, owner)| (dir.clone(), owner.clone()));
                        if let Some((dir, (of, od, oo, other_name))) = clash {
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            let how = if dir == file.dir {
                                "the same directory as"
                            } else {
                                "a directory nested with that of"
                            };
                            files[f].report(
                                doc,
                                &format!("{field}.file.dir"),
                                format!("{} is {how} key {other_name:?} ({other}); every key needs its own directory", file.dir.display()),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            for ancestor in file.dir.ancestors().skip(1) {
                                if ancestors.contains_key(ancestor) {
                                    // Its own ancestors are in already.
                                    break;
                                }
                                ancestors.insert(ancestor.to_path_buf(), file.dir.clone());
                            }
                            dirs.insert(file.dir.clone(), (f, doc, o, name.clone()));
                        }
                    }
                    Output::SecretsManager(secret) => {
                        if let Some((of, od, oo, other_name)) =
                            secrets.get(&secret.secret_id).cloned()
                        {
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            files[f].report(
                                doc,
                                &format!("{field}.secretsManager.secretId"),
                                format!("secret {:?} is also the output of key {other_name:?} ({other})", secret.secret_id),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            secrets.insert(secret.secret_id.clone(), (f, doc, o, name.clone()));
                        }
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unscanned(text: &str) -> ManifestFile {
        let state = PathBuf::from("/nonexistent-keyprov/state");
        let ctx = Context {
            state_dir: &state,
            output_roots: &[],
            hooks_allowed: &[],
            check_hooks_allowed: true,
        };
        let mut file = ManifestFile {
            path: PathBuf::from("/x.yaml"),
            text: String::new(),
            keys: Vec::new(),
            diagnostics: Vec::new(),
            names: Vec::new(),
            index: None,
        };
        parse_documents(&mut file, text, &ctx);
        file
    }

    /// Even without the scan, libyaml's endlessly repeated errors and serde_yaml's panics
    /// after an unknown anchor end the file with one diagnostic.
    #[test]
    fn the_document_loop_stops_at_any_error_but_a_data_error() {
        for text in [
            "a: b: c\n",
            "key: v\n bad: 1\n",
            "x: - a\n",
            "%YAML 1.1\n%YAML 1.1\n---\na: 1\n",
            "bogus: 1\nspec: *nope\n",
            "spec: *nope\n",
        ] {
            let file = unscanned(text);
            assert!(
                !file.diagnostics.is_empty() && file.diagnostics.len() <= 2,
                "{text:?}: {:?}",
                file.diagnostics
            );
        }
        // Data errors do not stop the loop: every document reports all of its problems.
        let file = unscanned("kind: 1\n---\nkind: 2\n---\nkind: 3\n");
        let lines: std::collections::BTreeSet<usize> =
            file.diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [1, 3, 5].into(), "{:?}", file.diagnostics);
        assert_eq!(
            file.diagnostics.len(),
            12,
            "kind, apiVersion, metadata, spec of each"
        );
    }
}
