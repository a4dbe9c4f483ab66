//! The shape of a document, checked against the manifest's JSON Schema before it is
//! deserialized: every unknown field (with a "did you mean" suggestion) and every value of the
//! wrong kind, in the user's words, all at once. Offending entries are removed from the value,
//! so that the rest can still be deserialized and validated and its problems reported too.

use std::sync::OnceLock;

use serde_json::Value as Schema;
use serde_yaml::Value;

/// One problem: the dotted field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeProblem {
    /// `spec.rotation.keep`, `spec.outputs[0].file.mode`, ...
    pub field: String,
    /// In the user's words.
    pub message: String,
}

/// The manifest's JSON Schema, as JSON.
fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(super::document::Document))
            .expect("the schema serializes")
    })
}

/// Checks `document` against the manifest schema; removes what is wrong from it and returns
/// the problems.
pub fn check(document: &mut Value) -> Vec<ShapeProblem> {
    check_against(document, schema())
}

/// Checks `document` against `schema` (a JSON Schema as JSON, from schemars); removes what is
/// wrong from it and returns the problems.
pub fn check_against(document: &mut Value, schema: &Schema) -> Vec<ShapeProblem> {
    let mut problems = Vec::new();
    walk(document, schema, schema, "", &mut problems);
    problems
}

/// The schema `schema` stands for: `$ref` and single-entry `allOf` followed; of an `anyOf`
/// (an optional value: the schema or null), the schema.
fn resolve<'a>(schema: &'a Schema, root: &'a Schema) -> &'a Schema {
    if let Some(reference) = schema.get("$ref").and_then(Schema::as_str) {
        let name = reference.trim_start_matches("#/definitions/");
        return resolve(&root["definitions"][name], root);
    }
    if let Some(any) = schema.get("anyOf").and_then(Schema::as_array)
        && let Some(not_null) = any
            .iter()
            .find(|s| s.get("type") != Some(&Schema::from("null")))
    {
        return resolve(not_null, root);
    }
    match schema.get("allOf").and_then(Schema::as_array) {
        Some(all) if all.len() == 1 => resolve(&all[0], root),
        _ => schema,
    }
}

/// Whether `schema` (before [`resolve`]) also allows null.
fn nullable(schema: &Schema) -> bool {
    schema
        .get("anyOf")
        .and_then(Schema::as_array)
        .is_some_and(|any| {
            any.iter()
                .any(|s| s.get("type") == Some(&Schema::from("null")))
        })
}

/// The JSON types `schema` allows.
fn types(schema: &Schema) -> Vec<&str> {
    match schema.get("type") {
        Some(Schema::String(t)) => vec![t.as_str()],
        Some(Schema::Array(ts)) => ts.iter().filter_map(Schema::as_str).collect(),
        _ => Vec::new(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks `value` at `path` against `schema`; returns false when `value` is of the wrong
/// kind (its parent removes it).
fn walk(
    value: &mut Value,
    schema: &Schema,
    root: &Schema,
    path: &str,
    problems: &mut Vec<ShapeProblem>,
) -> bool {
    if value.is_null() && nullable(schema) {
        return true;
    }
    let schema = resolve(schema, root);
    // An enum whose values carry their own descriptions: `oneOf` single-value enums.
    if let Some(variants) = schema.get("oneOf").and_then(Schema::as_array) {
        let choices: Vec<&str> = variants
            .iter()
            .filter_map(|v| v.get("enum")?.as_array())
            .flatten()
            .filter_map(Schema::as_str)
            .collect();
        if !choices.is_empty() {
            if value.as_str().is_some_and(|v| choices.contains(&v)) {
                return true;
            }
            problems.push(ShapeProblem {
                field: path.to_string(),
                message: format!(
                    "unknown value {}, expected one of {}",
                    match value.as_str() {
                        Some(text) => format!("{text:?}"),
                        None => describe(value),
                    },
                    choices.join(", ")
                ),
            });
            return false;
        }
    }
    let allowed = types(schema);
    if allowed.is_empty() || (value.is_null() && allowed.contains(&"null")) {
        return true;
    }
    let mut problem = |message: String| {
        problems.push(ShapeProblem {
            field: path.to_string(),
            message,
        })
    };
    if allowed.contains(&"object") {
        let Value::Mapping(mapping) = value else {
            problem(format!(
                "must be a mapping (`key: value` lines), not {}",
                describe(value)
            ));
            return false;
        };
        check_mapping(mapping, schema, root, path, problems);
        return true;
    }
    if allowed.contains(&"array") {
        let Value::Sequence(items) = value else {
            problem(format!(
                "must be a list (`- item` lines or `[a, b]`), not {}",
                describe(value)
            ));
            return false;
        };
        let item_schema = schema.get("items").unwrap_or(&Schema::Null);
        let mut index = 0;
        items.retain_mut(|item| {
            let kept = walk(
                item,
                item_schema,
                root,
                &format!("{path}[{index}]"),
                problems,
            );
            index += 1;
            kept
        });
        return true;
    }
    if allowed.contains(&"string") {
        return match value {
            Value::String(text) => {
                let choices: Vec<&str> = schema
                    .get("enum")
                    .and_then(Schema::as_array)
                    .map(|e| e.iter().filter_map(Schema::as_str).collect())
                    .unwrap_or_default();
                if choices.is_empty() || choices.contains(&text.as_str()) || !check_enums(path) {
                    return true;
                }
                problem(format!(
                    "unknown value {text:?}, expected one of {}",
                    choices.join(", ")
                ));
                false
            }
            Value::Number(_) | Value::Bool(_) => {
                let text = serde_yaml::to_string(value).unwrap_or_default();
                let text = text.trim();
                // A bare number where a duration is wanted lacks its unit: quoting it would
                // still be invalid.
                let unit = match path.rsplit('.').next() {
                    Some("every" | "publishAhead") => Some("d"),
                    Some("timeout") => Some("s"),
                    _ => None,
                };
                problem(match unit {
                    Some(unit) if value.is_number() => format!(
                        "must be a duration with its unit, not {}; write \"{text}{unit}\" \
                         (units: s, m, h, d)",
                        describe(value)
                    ),
                    _ => format!(
                        "must be a text, not {}; quote it: \"{text}\"",
                        describe(value)
                    ),
                });
                false
            }
            _ => {
                problem(format!("must be a text, not {}", describe(value)));
                false
            }
        };
    }
    if allowed.contains(&"boolean") {
        if value.is_bool() {
            return true;
        }
        problem(format!("must be true or false, not {}", describe(value)));
        return false;
    }
    if allowed.contains(&"integer") {
        let unsigned = schema
            .get("minimum")
            .and_then(Schema::as_f64)
            .is_some_and(|m| m >= 0.0);
        let max = match schema.get("format").and_then(Schema::as_str) {
            Some("uint32") => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        let fits = if unsigned {
            value.as_u64().is_some_and(|n| n <= max)
        } else {
            value.as_i64().is_some()
        };
        if fits {
            return true;
        }
        problem(if unsigned && max == u64::from(u32::MAX) {
            format!(
                "must be a whole number >= 0 (at most {max}), not {}",
                describe(value)
            )
        } else if unsigned {
            format!("must be a whole number >= 0, not {}", describe(value))
        } else {
            format!("must be a whole number, not {}", describe(value))
        });
        return false;
    }
    if allowed.contains(&"number") {
        if value.is_number() {
            return true;
        }
        problem(format!("must be a number, not {}", describe(value)));
        return false;
    }
    true
}

/// Whether a string's allowed values are checked here: everywhere but the manifest fields
/// whose values validation checks itself, with its own messages.
fn check_enums(path: &str) -> bool {
    !path.starts_with("spec.") && !matches!(path, "apiVersion" | "kind")
}

fn check_mapping(
    mapping: &mut serde_yaml::Mapping,
    schema: &Schema,
    root: &Schema,
    path: &str,
    problems: &mut Vec<ShapeProblem>,
) {
    let properties = schema.get("properties").and_then(Schema::as_object);
    let additional = schema.get("additionalProperties");
    let known: Vec<&str> = properties
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    // Keys left empty whose own fields include an unknown sibling: `file:` followed by
    // `dir:` at the same indentation instead of under it.
    let empty_parents: Vec<(String, Vec<String>)> = mapping
        .iter()
        .filter(|(_, v)| v.is_null())
        .filter_map(|(k, _)| {
            let name = k.as_str()?;
            let property = resolve(properties?.get(name)?, root);
            let fields = property.get("properties")?.as_object()?;
            Some((name.to_string(), fields.keys().cloned().collect()))
        })
        .collect();
    let mut remove = Vec::new();
    for (key, entry) in mapping.iter_mut() {
        let Some(name) = key.as_str() else {
            problems.push(ShapeProblem {
                field: path.to_string(),
                message: format!("has a key that is not a text: {}", describe(key)),
            });
            remove.push(key.clone());
            continue;
        };
        let field = join(path, name);
        let entry_schema = match (properties.and_then(|p| p.get(name)), additional) {
            (Some(property), _) => property,
            (None, Some(Schema::Bool(false))) => {
                let parent = empty_parents
                    .iter()
                    .find(|(_, fields)| fields.iter().any(|f| f == name));
                let message = match parent {
                    Some((parent, _)) => format!(
                        "unknown field `{name}` here: it is a field of `{parent}`, which is \
                         empty; indent `{name}` under `{parent}`"
                    ),
                    None => unknown_field(name, &known),
                };
                problems.push(ShapeProblem { field, message });
                remove.push(key.clone());
                continue;
            }
            (None, Some(additional @ Schema::Object(_))) => additional,
            (None, _) => continue,
        };
        if !walk(entry, entry_schema, root, &field, problems) {
            remove.push(key.clone());
        }
    }
    for key in remove {
        mapping.remove(&key);
    }
    for required in schema
        .get("required")
        .and_then(Schema::as_array)
        .into_iter()
        .flatten()
        .filter_map(Schema::as_str)
    {
        let reported = problems.iter().any(|p| p.field == join(path, required));
        if !mapping.contains_key(required) && !reported {
            problems.push(ShapeProblem {
                field: join(path, required),
                message: "is required".into(),
            });
        }
    }
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
