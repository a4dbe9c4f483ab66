//! A JSON Schema (as schemars writes it) compiled once into the tree the shape check walks:
//! `$ref`, `anyOf` and single `allOf` resolved, each object's properties, types and enum
//! values looked up in advance, so that checking a document allocates nothing unless it has
//! a problem.

use std::collections::HashMap;

use serde_json::Value as Schema;

/// A schema as found at one place of a document.
#[derive(Debug, Clone, Copy)]
pub(super) struct Node {
    /// Null is allowed here (an `anyOf` with a null branch).
    pub(super) nullable: bool,
    /// Index of what the schema resolves to in [`Tree::shapes`].
    pub(super) shape: usize,
}

/// What a resolved schema requires.
#[derive(Debug)]
pub(super) enum Shape {
    /// One of these texts (a `oneOf` of single-value enums with their own descriptions).
    Choice(Vec<String>),
    /// A value of `kind`, or null when `null_ok` (null among its types).
    Typed { null_ok: bool, kind: Kind },
}

/// The JSON type a resolved schema checks, the first of object, array, string, boolean,
/// integer and number among its types.
#[derive(Debug)]
pub(super) enum Kind {
    /// No type, or none of the above: anything goes.
    Any,
    Object(Object),
    /// Items checked against the node, if any.
    Array(Option<Node>),
    /// Allowed values (`enum`), empty for any text.
    String(Vec<String>),
    Boolean,
    /// A whole number: `unsigned` from `minimum >= 0`, `max` from `format: uint32`.
    Integer {
        unsigned: bool,
        max: u64,
    },
    Number,
}

/// An object's fields.
#[derive(Debug)]
pub(super) struct Object {
    /// Known fields, in the schema's order.
    pub(super) properties: Vec<Property>,
    /// What fields not listed are.
    pub(super) additional: Additional,
    /// Fields that must be present.
    pub(super) required: Vec<String>,
}

/// One known field.
#[derive(Debug)]
pub(super) struct Property {
    pub(super) name: String,
    pub(super) node: Node,
    /// The fields of the field's own object, for "indent it under its parent" hints.
    pub(super) fields: Option<Vec<String>>,
}

/// `additionalProperties`.
#[derive(Debug)]
pub(super) enum Additional {
    /// `false`: an unknown field is a problem.
    Refused,
    /// A schema every other field is checked against (a map's values).
    Checked(Node),
    /// Absent or `true`: not checked.
    Allowed,
}

impl Object {
    /// The known field `name`.
    pub(super) fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// The known fields' names, for messages.
    pub(super) fn known(&self) -> Vec<&str> {
        self.properties.iter().map(|p| p.name.as_str()).collect()
    }
}

/// A compiled schema.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) shapes: Vec<Shape>,
    /// The document's node.
    pub(super) root: Node,
}

impl Tree {
    /// Compiles `schema` (a JSON Schema as JSON, from schemars).
    pub(super) fn compile(schema: &Schema) -> Tree {
        let mut compiler = Compiler {
            root: schema,
            shapes: Vec::new(),
            done: HashMap::new(),
        };
        let root = compiler.node(schema);
        Tree {
            shapes: compiler.shapes,
            root,
        }
    }

    /// The shape of `node`.
    pub(super) fn shape(&self, node: Node) -> &Shape {
        &self.shapes[node.shape]
    }
}

struct Compiler<'a> {
    root: &'a Schema,
    shapes: Vec<Shape>,
    /// Resolved schemas already compiled (or being compiled: a recursive `$ref`), by address.
    done: HashMap<*const Schema, usize>,
}

impl<'a> Compiler<'a> {
    fn node(&mut self, schema: &'a Schema) -> Node {
        let resolved = resolve(schema, self.root);
        Node {
            nullable: nullable(schema),
            shape: self.shape(resolved),
        }
    }

    fn shape(&mut self, schema: &'a Schema) -> usize {
        if let Some(&index) = self.done.get(&(schema as *const Schema)) {
            return index;
        }
        let index = self.shapes.len();
        self.shapes.push(Shape::Typed {
            null_ok: true,
            kind: Kind::Any,
        });
        self.done.insert(schema, index);
        self.shapes[index] = self.compile(schema);
        index
    }

    fn compile(&mut self, schema: &'a Schema) -> Shape {
        if let Some(variants) = schema.get("oneOf").and_then(Schema::as_array) {
            let choices: Vec<String> = variants
                .iter()
                .filter_map(|v| v.get("enum")?.as_array())
                .flatten()
                .filter_map(Schema::as_str)
                .map(str::to_string)
                .collect();
            if !choices.is_empty() {
                return Shape::Choice(choices);
            }
        }
        let allowed = types(schema);
        let has = |t: &str| allowed.contains(&t);
        let kind = if has("object") {
            Kind::Object(self.object(schema))
        } else if has("array") {
            Kind::Array(schema.get("items").map(|items| self.node(items)))
        } else if has("string") {
            Kind::String(
                schema
                    .get("enum")
                    .and_then(Schema::as_array)
                    .map(|e| {
                        e.iter()
                            .filter_map(Schema::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        } else if has("boolean") {
            Kind::Boolean
        } else if has("integer") {
            Kind::Integer {
                unsigned: schema
                    .get("minimum")
                    .and_then(Schema::as_f64)
                    .is_some_and(|m| m >= 0.0),
                max: match schema.get("format").and_then(Schema::as_str) {
                    Some("uint32") => u64::from(u32::MAX),
                    _ => u64::MAX,
                },
            }
        } else if has("number") {
            Kind::Number
        } else {
            Kind::Any
        };
        Shape::Typed {
            null_ok: allowed.is_empty() || has("null"),
            kind,
        }
    }

    fn object(&mut self, schema: &'a Schema) -> Object {
        let mut properties = Vec::new();
        for (name, property) in schema
            .get("properties")
            .and_then(Schema::as_object)
            .into_iter()
            .flatten()
        {
            let fields = resolve(property, self.root)
                .get("properties")
                .and_then(Schema::as_object)
                .map(|fields| fields.keys().cloned().collect());
            properties.push(Property {
                name: name.clone(),
                node: self.node(property),
                fields,
            });
        }
        let additional = match schema.get("additionalProperties") {
            Some(Schema::Bool(false)) => Additional::Refused,
            Some(additional @ Schema::Object(_)) => Additional::Checked(self.node(additional)),
            _ => Additional::Allowed,
        };
        let required = schema
            .get("required")
            .and_then(Schema::as_array)
            .into_iter()
            .flatten()
            .filter_map(Schema::as_str)
            .map(str::to_string)
            .collect();
        Object {
            properties,
            additional,
            required,
        }
    }
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
