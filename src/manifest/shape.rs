//! The shape of a document, checked against the manifest's JSON Schema before it is
//! deserialized: every unknown field (with a "did you mean" suggestion) and every value of the
//! wrong kind, in the user's words, all at once. Offending entries are removed from the value,
//! so that the rest can still be deserialized and validated and its problems reported too.

use std::sync::OnceLock;

use serde_json::Value as Schema;
use serde_yaml::Value;

use super::schema_tree::{Additional, Kind, Node, Object, Shape, Tree};

/// One problem: the dotted field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeProblem {
    /// `spec.rotation.keep`, `spec.outputs[0].file.mode`, ...
    pub field: String,
    /// In the user's words.
    pub message: String,
}

/// The manifest's JSON Schema, compiled.
fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let schema = serde_json::to_value(schemars::schema_for!(super::document::Document))
            .expect("the schema serializes");
        Tree::compile(&schema)
    })
}

/// Checks `document` against the manifest schema; removes what is wrong from it and returns
/// the problems.
pub fn check(document: &mut Value) -> Vec<ShapeProblem> {
    check_tree(document, tree())
}

/// Checks `document` against `schema` (a JSON Schema as JSON, from schemars); removes what is
/// wrong from it and returns the problems.
pub fn check_against(document: &mut Value, schema: &Schema) -> Vec<ShapeProblem> {
    check_tree(document, &Tree::compile(schema))
}

fn check_tree(document: &mut Value, tree: &Tree) -> Vec<ShapeProblem> {
    let mut problems = Vec::new();
    let mut walker = Walker {
        tree,
        problems: &mut problems,
    };
    walker.walk(document, tree.root, Path::Root);
    problems
}

/// Where a value is, rendered as a dotted field path only when a problem is reported.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Field(parent, key) => join(&parent.render(), key),
            Path::Item(parent, index) => format!("{}[{index}]", parent.render()),
        }
    }

    /// The last field name, as `rsplit('.')` of the rendered path gives it.
    fn last_field(&self) -> String {
        let path = self.render();
        path.rsplit('.').next().unwrap_or_default().to_string()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

struct Walker<'t, 'p> {
    tree: &'t Tree,
    problems: &'p mut Vec<ShapeProblem>,
}

impl Walker<'_, '_> {
    fn problem(&mut self, path: Path, message: String) {
        self.problems.push(ShapeProblem {
            field: path.render(),
            message,
        });
    }

    /// Checks `value` at `path` against `node`; returns false when `value` is of the wrong
    /// kind (its parent removes it).
    fn walk(&mut self, value: &mut Value, node: Node, path: Path) -> bool {
        if value.is_null() && node.nullable {
            return true;
        }
        let (null_ok, kind) = match self.tree.shape(node) {
            Shape::Choice(choices) => {
                if value
                    .as_str()
                    .is_some_and(|v| choices.iter().any(|c| c == v))
                {
                    return true;
                }
                let message = format!(
                    "unknown value {}, expected one of {}",
                    match value.as_str() {
                        Some(text) => format!("{text:?}"),
                        None => describe(value),
                    },
                    choices.join(", ")
                );
                self.problem(path, message);
                return false;
            }
            Shape::Typed { null_ok, kind } => (*null_ok, kind),
        };
        if value.is_null() && null_ok {
            return true;
        }
        match kind {
            Kind::Any => true,
            Kind::Object(object) => {
                let Value::Mapping(mapping) = value else {
                    let message = format!(
                        "must be a mapping (`key: value` lines), not {}",
                        describe(value)
                    );
                    self.problem(path, message);
                    return false;
                };
                self.check_mapping(mapping, object, path);
                true
            }
            Kind::Array(items) => {
                let Value::Sequence(sequence) = value else {
                    let message = format!(
                        "must be a list (`- item` lines or `[a, b]`), not {}",
                        describe(value)
                    );
                    self.problem(path, message);
                    return false;
                };
                if let Some(items) = *items {
                    let mut index = 0;
                    sequence.retain_mut(|item| {
                        let kept = self.walk(item, items, Path::Item(&path, index));
                        index += 1;
                        kept
                    });
                }
                true
            }
            Kind::String(choices) => match value {
                Value::String(text) => {
                    if choices.is_empty()
                        || choices.iter().any(|c| c == text)
                        || !check_enums(&path.render())
                    {
                        return true;
                    }
                    let message = format!(
                        "unknown value {text:?}, expected one of {}",
                        choices.join(", ")
                    );
                    self.problem(path, message);
                    false
                }
                Value::Number(_) | Value::Bool(_) => {
                    let text = serde_yaml::to_string(value).unwrap_or_default();
                    let text = text.trim();
                    // A bare number where a duration is wanted lacks its unit: quoting it
                    // would still be invalid.
                    let unit = match path.last_field().as_str() {
                        "every" | "publishAhead" => Some("d"),
                        "timeout" => Some("s"),
                        _ => None,
                    };
                    let message = match unit {
                        Some(unit) if value.is_number() => format!(
                            "must be a duration with its unit, not {}; write \"{text}{unit}\" \
                             (units: s, m, h, d)",
                            describe(value)
                        ),
                        _ => format!(
                            "must be a text, not {}; quote it: \"{text}\"",
                            describe(value)
                        ),
                    };
                    self.problem(path, message);
                    false
                }
                _ => {
                    self.problem(path, format!("must be a text, not {}", describe(value)));
                    false
                }
            },
            Kind::Boolean => {
                if value.is_bool() {
                    return true;
                }
                self.problem(
                    path,
                    format!("must be true or false, not {}", describe(value)),
                );
                false
            }
            &Kind::Integer { unsigned, max } => {
                let fits = if unsigned {
                    value.as_u64().is_some_and(|n| n <= max)
                } else {
                    value.as_i64().is_some()
                };
                if fits {
                    return true;
                }
                let message = if unsigned && max == u64::from(u32::MAX) {
                    format!(
                        "must be a whole number >= 0 (at most {max}), not {}",
                        describe(value)
                    )
                } else if unsigned {
                    format!("must be a whole number >= 0, not {}", describe(value))
                } else {
                    format!("must be a whole number, not {}", describe(value))
                };
                self.problem(path, message);
                false
            }
            Kind::Number => {
                if value.is_number() {
                    return true;
                }
                self.problem(path, format!("must be a number, not {}", describe(value)));
                false
            }
        }
    }

    fn check_mapping(&mut self, mapping: &mut serde_yaml::Mapping, object: &Object, path: Path) {
        // Keys left empty whose own fields include an unknown sibling: `file:` followed by
        // `dir:` at the same indentation instead of under it. Looked for only when there is
        // an unknown field.
        let refused = matches!(object.additional, Additional::Refused);
        let unknown = refused
            && mapping
                .keys()
                .any(|k| k.as_str().is_some_and(|n| object.property(n).is_none()));
        let empty_parents: Vec<(&str, &[String])> = if unknown {
            mapping
                .iter()
                .filter(|(_, v)| v.is_null())
                .filter_map(|(k, _)| {
                    let property = object.property(k.as_str()?)?;
                    Some((property.name.as_str(), property.fields.as_deref()?))
                })
                .collect()
        } else {
            Vec::new()
        };
        let empty_parents: Vec<(String, Vec<String>)> = empty_parents
            .into_iter()
            .map(|(name, fields)| (name.to_string(), fields.to_vec()))
            .collect();
        let mut remove = Vec::new();
        for (key, entry) in mapping.iter_mut() {
            let Some(name) = key.as_str() else {
                self.problem(
                    path,
                    format!("has a key that is not a text: {}", describe(key)),
                );
                remove.push(key.clone());
                continue;
            };
            let field = Path::Field(&path, name);
            let node = match (object.property(name), &object.additional) {
                (Some(property), _) => property.node,
                (None, Additional::Refused) => {
                    let parent = empty_parents
                        .iter()
                        .find(|(_, fields)| fields.iter().any(|f| f == name));
                    let message = match parent {
                        Some((parent, _)) => format!(
                            "unknown field `{name}` here: it is a field of `{parent}`, which is \
                             empty; indent `{name}` under `{parent}`"
                        ),
                        None => unknown_field(name, &object.known()),
                    };
                    self.problem(field, message);
                    remove.push(key.clone());
                    continue;
                }
                (None, Additional::Checked(node)) => *node,
                (None, Additional::Allowed) => continue,
            };
            if !self.walk(entry, node, field) {
                remove.push(key.clone());
            }
        }
        for key in remove {
            mapping.remove(&key);
        }
        for required in &object.required {
            if !mapping.contains_key(required.as_str()) {
                let field = join(&path.render(), required);
                if !self.problems.iter().any(|p| p.field == field) {
                    self.problems.push(ShapeProblem {
                        field,
                        message: "is required".into(),
                    });
                }
            }
        }
    }
}

/// Whether a string's allowed values are checked here: everywhere but the manifest fields
/// whose values validation checks itself, with its own messages.
fn check_enums(path: &str) -> bool {
    !path.starts_with("spec.") && !matches!(path, "apiVersion" | "kind")
}

/// "unknown field `x`; did you mean `y`? (fields: ...)".
fn unknown_field(name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        // A suggestion only for a name that could be a typo (bounded work for a hostile key).
        .filter(|_| name.len() <= 64)
        .map(|k| {
            (
                strsim::levenshtein(&name.to_lowercase(), &k.to_lowercase()),
                *k,
            )
        })
        .min();
    let suggestion = match closest {
        Some((distance, k)) if distance <= (k.len() / 3).max(2) => {
            format!("; did you mean `{k}`?")
        }
        _ => String::new(),
    };
    format!(
        "unknown field `{name}`{suggestion} (fields here: {})",
        known.join(", ")
    )
}

/// What a value is, for messages: `the number -1`, `the text "x"`, `a list`, ...
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a text".into(),
        Value::String(s) => format!("the text {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<(String, String)> {
        let mut value: Value = serde_yaml::from_str(yaml).unwrap();
        check(&mut value)
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    #[test]
    fn every_problem_of_a_document_at_once_in_the_users_words() {
        let found = problems(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: a, labels: {team: 5}}\n\
             spec:\n  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/k\n  rotaton: {every: 1d}\n\
             \x20 rotation: {keep: -1, every: 5}\n  includePlaintext: yes-please\n\
             \x20 outputs: [{file: {mode: 640}}]\n",
        );
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels.team",
                "spec.rotaton",
                "spec.rotation.keep",
                "spec.rotation.every",
                "spec.includePlaintext",
                "spec.outputs[0].file.mode",
            ],
            "{found:#?}"
        );
        let message = |field: &str| &found.iter().find(|(f, _)| f == field).unwrap().1;
        assert!(message("spec.rotaton").contains("did you mean `rotation`?"));
        assert!(message("spec.rotation.keep").contains("must be a whole number >= 0"));
        assert!(message("spec.rotation.every").contains("write \"5d\" (units: s, m, h, d)"));
        assert!(message("spec.includePlaintext").contains("must be true or false"));
        assert!(message("spec.outputs[0].file.mode").contains("quote it: \"640\""));
    }

    #[test]
    fn a_field_indented_like_its_parent_is_pointed_at_it() {
        let found = problems(
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: a}\nspec:\n  \
             keyPairSpec: RSA_2048\n  kmsKeyId: k\n  outputs:\n  - file:\n    dir: x\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "spec.outputs[0].dir");
        assert!(
            found[0].1.contains("indent `dir` under `file`"),
            "{found:?}"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let found = problems("apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {}\n");
        assert_eq!(
            found,
            [
                ("metadata.name".to_string(), "is required".to_string()),
                ("spec".to_string(), "is required".to_string())
            ]
        );
    }
}
