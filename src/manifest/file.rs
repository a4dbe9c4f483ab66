//! One manifest file: its YAML documents deserialized and validated one by one, every problem
//! a positioned diagnostic, the key pairs kept (the checks across files are in `across.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeSeed;

use super::cache::Cache;
use super::walk::Walk;
use super::{
    Context, Diagnostic, KeyPair, Position, PositionIndex, display_path, document, file_diagnostic,
    scan, shape, validate,
};

/// One manifest file while it is being checked.
pub(super) struct ManifestFile {
    pub(super) path: PathBuf,
    pub(super) text: String,
    /// Valid documents: (document index, key pair).
    pub(super) keys: Vec<(usize, KeyPair)>,
    /// Problems of this file; any makes every key of the file frozen.
    pub(super) diagnostics: Vec<Diagnostic>,
    /// Names seen in this file, valid or not.
    pub(super) names: Vec<String>,
    pub(super) index: Option<PositionIndex>,
}

impl ManifestFile {
    fn position(&mut self, doc: usize, field: &str) -> Position {
        let text = &self.text;
        self.index
            .get_or_insert_with(|| PositionIndex::build(text))
            .find(doc, field)
    }

    pub(super) fn report(&mut self, doc: usize, field: &str, message: String) {
        let position = self.position(doc, field);
        self.diagnostics.push(Diagnostic {
            file: display_path(&self.path),
            line: position.line,
            column: position.column,
            field: field.to_string(),
            message,
        });
    }

    pub(super) fn location(&mut self, doc: usize, field: &str) -> String {
        let position = self.position(doc, field);
        format!(
            "{}:{}:{}",
            display_path(&self.path).display(),
            position.line,
            position.column
        )
    }
}

/// Parses and validates one manifest file read as `text` (or the reason it could not be
/// read), its documents taken from `cache` when an entry holds them.
pub(super) fn parse_file(
    path: PathBuf,
    text: Result<String, String>,
    ctx: &Context,
    cache: &Cache,
) -> ManifestFile {
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
    let key = cache.key(&text);
    // A hit is kept on the same terms as the cheap reading below (which built what the entry
    // holds): documents and no problem at all; otherwise the file is read as if uncached.
    if let Some(values) = key.as_deref().and_then(|key| cache.get(key)) {
        let mut cached = ManifestFile {
            path: file.path.clone(),
            text: String::new(),
            keys: Vec::new(),
            diagnostics: Vec::new(),
            names: Vec::new(),
            index: None,
        };
        if parse_documents(&mut cached, &text, ctx, Some(values)) > 0
            && cached.diagnostics.is_empty()
        {
            cached.text = text;
            return cached;
        }
    }
    let built = match scan::scan_values(&text, scan::MAX_DOCUMENTS) {
        Ok((_, built)) => built,
        Err(refusal) => {
            file.diagnostics.push(Diagnostic {
                file: display_path(&file.path),
                line: refusal.line,
                column: refusal.column,
                field: String::new(),
                message: refusal.message,
            });
            return file;
        }
    };
    // The cheap reading (values from the scan, see `fast.rs`) is kept only when the file has
    // no problem at all; otherwise the file is read again in full, for today's diagnostics.
    if let Some(values) = built {
        let mut cheap = ManifestFile {
            path: file.path.clone(),
            text: String::new(),
            keys: Vec::new(),
            diagnostics: Vec::new(),
            names: Vec::new(),
            index: None,
        };
        // Encoded before the values are consumed; written only once they proved valid.
        let entry = key.as_deref().and_then(|key| cache.entry(key, &values));
        if parse_documents(&mut cheap, &text, ctx, Some(values)) > 0 && cheap.diagnostics.is_empty()
        {
            if let (Some(key), Some(entry)) = (key.as_deref(), entry) {
                cache.put(key, entry);
            }
            cheap.text = text;
            return cheap;
        }
    }
    let documents = parse_documents(&mut file, &text, ctx, None);
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
/// One libyaml pass walks each document as serde_yaml sees it (any YAML, limits checked, the
/// value built, see [`Walk`]) and stops at the first error: a syntax error, or a limit.
/// serde_yaml reports a document's syntax error only after its data errors, and after an
/// unknown anchor the next document starts in the middle of the broken one, where serde_yaml
/// panics; so only the documents before the first error are checked, where every error is a
/// data error of its document and the next one can still be read. The rare document whose
/// value the walk could not vouch for (a duplicated key, a tag) is read again by serde_yaml's
/// own `Value`, for its exact error.
///
/// `built`: the documents' values already read by the scan (see `fast.rs`), then libyaml is
/// not run.
fn parse_documents(
    file: &mut ManifestFile,
    text: &str,
    ctx: &Context,
    built: Option<Vec<serde_yaml::Value>>,
) -> usize {
    let budget = std::cell::Cell::new(0);
    let mut walked: Vec<Option<Option<serde_yaml::Value>>> = Vec::new();
    let mut broken = None;
    let libyaml = match built {
        Some(values) => {
            walked = values.into_iter().map(|v| Some(Some(v))).collect();
            None
        }
        None => Some(serde_yaml::Deserializer::from_str(text)),
    };
    // The scan bounds the documents; `take` bounds this loop even if libyaml disagreed with it
    // (after an error libyaml repeats it forever).
    for deserializer in libyaml.into_iter().flatten().take(scan::MAX_DOCUMENTS + 1) {
        match guarded(|| Walk::new(&budget).deserialize(deserializer)) {
            // An empty document (null) is no document, as for serde_yaml's `Option`.
            Ok(Ok(value)) => walked.push(value.map(|v| (!v.is_null()).then_some(v))),
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
    // Read in step with `walked`, only when some document needs serde_yaml's own reading.
    let mut again = walked
        .iter()
        .any(Option::is_none)
        .then(|| serde_yaml::Deserializer::from_str(text));
    let mut documents = 0;
    for (doc, value) in walked.into_iter().enumerate() {
        let deserializer = again.as_mut().and_then(Iterator::next);
        let parsed = match (value, deserializer) {
            (Some(value), _) => Ok(Ok(value)),
            (None, Some(deserializer)) => {
                guarded(|| Option::<serde_yaml::Value>::deserialize(deserializer))
            }
            (None, None) => Err("the YAML parser failed on this document (internal error)".into()),
        };
        let parsed = match parsed {
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

/// A duplicated key (`spec:` twice, a later edit appending a second block), reported at the
/// duplicate's own line.
pub(super) fn duplicate_key_diagnostic(
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

/// Splits serde_yaml's `path: message at line L column C` into a positioned diagnostic.
pub(super) fn serde_diagnostic(path: &Path, err: &serde_yaml::Error) -> Diagnostic {
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
        parse_documents(&mut file, text, &ctx, None);
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
