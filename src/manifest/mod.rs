//! Manifests: loading files and directories of YAML documents, validating them, and reporting
//! every problem with its file, line, column and field.
//!
//! serde_yaml is confined to this module (see `document.rs`), so a maintained fork can replace it
//! in one place.

mod diagnostics;
pub mod document;
mod model;
pub mod paths;
mod positions;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use diagnostics::{Diagnostic, display_path};
pub use model::{FileOutput, Format, Hook, KeyPair, Output, Rotation, SecretsManagerOutput};
pub use positions::{Position, PositionIndex};
pub use validate::{API_VERSION, KIND, absolute, check_name, parse_mode};

/// Manifest files larger than this are refused (a manifest is a few hundred bytes per key).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// What validation needs to know of the daemon's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Absolute state directory: default and relative output directories live below it.
    pub state_dir: &'a Path,
    /// Absolute extra roots where file outputs may live.
    pub output_roots: &'a [PathBuf],
    /// Absolute programs that onRotate may run.
    pub hooks_allowed: &'a [PathBuf],
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
    /// Number of manifest files read.
    pub files: usize,
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
    let mut files: Vec<ManifestFile> = paths
        .into_iter()
        .map(|path| parse_file(path, ctx))
        .collect();
    tracing::debug!(elapsed = ?started.elapsed(), files = files.len(), "manifest files parsed");
    check_across_files(&mut files, &mut loaded.frozen);
    tracing::debug!(elapsed = ?started.elapsed(), "names and outputs checked across files");
    for file in files {
        if file.diagnostics.is_empty() {
            loaded
                .keys
                .extend(file.keys.into_iter().map(|(_, key)| key));
        } else {
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
    let meta = fs::metadata(source).map_err(|err| format!("cannot read manifest source: {err}"))?;
    if !meta.is_dir() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(source).map_err(|err| format!("cannot list directory: {err}"))? {
        let path = entry
            .map_err(|err| format!("cannot list directory: {err}"))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_text(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read: {err}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "file is larger than {} MiB; split it into several manifests",
            MAX_FILE_BYTES >> 20
        ));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!(
            "binary content (NUL byte at offset {at}); a manifest is UTF-8 YAML text"
        ));
    }
    String::from_utf8(bytes).map_err(|err| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); a manifest is UTF-8 YAML text",
            err.utf8_error().valid_up_to()
        )
    })
}

fn parse_file(path: PathBuf, ctx: &Context) -> ManifestFile {
    let mut file = ManifestFile {
        path,
        text: String::new(),
        keys: Vec::new(),
        diagnostics: Vec::new(),
        names: Vec::new(),
        index: None,
    };
    match read_text(&file.path) {
        Ok(text) => file.text = text,
        Err(message) => {
            file.diagnostics.push(file_diagnostic(&file.path, message));
            return file;
        }
    }
    let text = std::mem::take(&mut file.text);
    let mut documents = 0;
    for (doc, deserializer) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        match Option::<document::Document>::deserialize(deserializer) {
            Ok(None) => {}
            Ok(Some(document)) => {
                documents += 1;
                file.names.push(document.metadata.name.clone());
                match validate::validate(document, &file.path, ctx) {
                    Ok(key) => file.keys.push((doc, key)),
                    Err(problems) => {
                        file.text.clone_from(&text);
                        for problem in problems {
                            file.report(doc, &problem.field, problem.message);
                        }
                    }
                }
            }
            Err(err) => {
                documents += 1;
                let syntax = is_syntax_error(&err);
                file.diagnostics.push(serde_diagnostic(&file.path, &err));
                if syntax {
                    // The rest of the stream cannot be trusted after a syntax error.
                    break;
                }
            }
        }
    }
    file.text = text;
    if documents == 0 && file.diagnostics.is_empty() {
        file.diagnostics.push(file_diagnostic(
            &file.path,
            "contains no KeyPair document (the file is empty or holds only comments)".into(),
        ));
    }
    file
}

fn is_syntax_error(err: &serde_yaml::Error) -> bool {
    let text = err.to_string();
    // serde_yaml prefixes data errors with their field path ("spec.x: ..."); libyaml's
    // scanner and parser errors name what they were parsing.
    text.contains("while scanning")
        || text.contains("while parsing")
        || text.starts_with("did not find")
        || text.contains("found character")
}

/// Splits serde_yaml's `path: message at line L column C` into a positioned diagnostic.
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
                let other = files[of].location(od, "metadata.name");
                files[f].report(
                    doc,
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
