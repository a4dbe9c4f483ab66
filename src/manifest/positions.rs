//! Line and column of every field of every YAML document in a file.
//!
//! serde_yaml reports positions for the errors it finds itself, but not for the fields it
//! deserializes; semantic checks (duplicate names, path escapes, hooks) need those too. This
//! index is built from yaml-rust2's marked events, only for files that have a problem.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::scan::MAX_DEPTH;

/// Suffix of the path under which a duplicated key's second occurrence is indexed.
pub const DUPLICATE: &str = "#duplicate";

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions by document index and dotted field path (`spec.outputs[0].file.dir`).
#[derive(Debug, Default)]
pub struct PositionIndex {
    documents: Vec<HashMap<String, Position>>,
}

impl PositionIndex {
    /// Indexes `source`; a file that does not parse yields what was indexed before the error,
    /// and nothing is indexed deeper than [`MAX_DEPTH`] levels.
    pub fn build(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        // Events one by one: yaml-rust2's `load` recurses once per nesting level.
        // Syntax errors are reported by serde_yaml with their own position.
        while let Ok((event, mark)) = parser.next_token() {
            if event == Event::StreamEnd || builder.stack.len() > MAX_DEPTH {
                break;
            }
            builder.on_event(event, mark);
        }
        PositionIndex {
            documents: builder.documents,
        }
    }

    /// Position of `path` in document `doc`, falling back to its closest indexed parent.
    pub fn find(&self, doc: usize, path: &str) -> Position {
        let Some(fields) = self.documents.get(doc) else {
            return Position::default();
        };
        if let Some(position) = fields.get(path) {
            return *position;
        }
        // The longest indexed prefix, walking from the front: keys may hold dots, and cutting
        // a 4 MiB key one dot at a time from the back would take quadratic time. Every level
        // of a real path is indexed, and there are at most MAX_DEPTH of them.
        let mut found = fields.get("").copied().unwrap_or_default();
        let cuts = path
            .match_indices(['.', '['])
            .map(|(at, _)| at)
            .skip_while(|&at| at == 0);
        for cut in cuts.take(2 * MAX_DEPTH) {
            match fields.get(&path[..cut]) {
                Some(position) => found = *position,
                None => break,
            }
        }
        found
    }
}

impl PositionIndex {
    /// The first duplicated key named `key` in document `doc`: its path and position.
    pub fn find_duplicate(&self, doc: usize, key: &str) -> Option<(String, Position)> {
        let fields = self.documents.get(doc)?;
        fields
            .iter()
            .filter_map(|(path, position)| {
                let path = path.strip_suffix(DUPLICATE)?;
                let last = path.rsplit(['.', ']']).next().unwrap_or(path);
                (last == key).then(|| (path.to_string(), *position))
            })
            .min_by_key(|(_, p)| (p.line, p.column))
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    documents: Vec<HashMap<String, Position>>,
    stack: Vec<Frame>,
}

impl Builder {
    fn position(mark: &Marker) -> Position {
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    /// The path of an alias or collection that starts now. As a mapping key (`? [a, b]`,
    /// `*alias :`) it gets a path no field has, and the value that follows stays a value.
    fn node_path(&mut self) -> String {
        if let Some(path) = self.value_path() {
            return path;
        }
        let Some(Frame::Mapping { path, key }) = self.stack.last_mut() else {
            return String::new();
        };
        *key = Some("?".into());
        format!("{path}.?")
    }

    /// The path of the node that starts now; `None` when it is a mapping key.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { key: None, .. }) => None,
            Some(Frame::Mapping { path, key }) => {
                let key = key.take().unwrap_or_default();
                Some(if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                })
            }
            Some(Frame::Sequence { path, next }) => {
                *next += 1;
                Some(format!("{path}[{}]", *next - 1))
            }
        }
    }

    /// Records where `path` starts (its first mention wins).
    fn record(&mut self, path: &str, mark: &Marker) {
        if let Some(fields) = self.documents.last_mut() {
            fields
                .entry(path.to_string())
                .or_insert(Self::position(mark));
        }
    }

    /// Records the key of field `path`; a second key of the same field (a duplicated key) is
    /// recorded as `path#duplicate`.
    fn record_key(&mut self, path: &str, mark: &Marker) {
        let Some(fields) = self.documents.last_mut() else {
            return;
        };
        if fields.contains_key(path) {
            fields
                .entry(format!("{path}{DUPLICATE}"))
                .or_insert(Self::position(mark));
        } else {
            fields.insert(path.to_string(), Self::position(mark));
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.documents.push(HashMap::new());
                self.stack.clear();
            }
            Event::Scalar(value, ..) => match self.value_path() {
                Some(path) => self.record(&path, &mark),
                None => {
                    // A mapping key: its position stands for the field.
                    let Some(Frame::Mapping { path, key }) = self.stack.last_mut() else {
                        return;
                    };
                    let parent = path.clone();
                    let field = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    *key = Some(value);
                    self.record(&parent, &mark);
                    self.record_key(&field, &mark);
                }
            },
            Event::Alias(_) => {
                let path = self.node_path();
                self.record(&path, &mark);
            }
            Event::MappingStart(..) => {
                // Block mappings start where their first key is; that key records the path.
                let path = self.node_path();
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path();
                self.record(&path, &mark);
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
apiVersion: keyprov/v1
metadata:
  name: a
spec:
  outputs:
    - file:
        dir: x
---
kind: KeyPair
metadata: {name: b}
";

    #[test]
    fn finds_fields_of_every_document() {
        let index = PositionIndex::build(SOURCE);
        assert_eq!(
            index.find(0, "metadata.name"),
            Position { line: 3, column: 3 }
        );
        assert_eq!(
            index.find(0, "spec.outputs[0].file.dir"),
            Position { line: 7, column: 9 }
        );
        assert_eq!(
            index.find(0, "spec.outputs[0]"),
            Position { line: 6, column: 7 }
        );
        assert_eq!(
            index.find(1, "metadata.name"),
            Position {
                line: 10,
                column: 12
            }
        );
    }

    #[test]
    fn deep_nesting_neither_recurses_nor_grows_paths() {
        let index = PositionIndex::build(&format!("a:\n{}x\n", "- ".repeat(100_000)));
        assert_eq!(index.find(0, "a"), Position { line: 1, column: 1 });
        assert_eq!(index.find(0, "a[0][0]"), Position { line: 2, column: 5 });
    }

    #[test]
    fn complex_and_alias_keys_keep_values_in_place() {
        let index = PositionIndex::build("a: &k x\nb:\n  ? *k\n  : 1\n  ? [p, q]\n  : 2\n  c: 3\n");
        assert_eq!(index.find(0, "b.c"), Position { line: 7, column: 3 });
        // Aliases are not resolved: a field behind one falls back to its mapping.
        assert_eq!(index.find(0, "b.x"), Position { line: 2, column: 1 });
    }

    #[test]
    fn a_dotted_key_missing_from_the_index_is_not_cut_a_dot_at_a_time() {
        let index = PositionIndex::build("a: 1\n");
        let path = format!("a.{}", ".".repeat(1 << 20));
        assert_eq!(index.find(0, &path), Position { line: 1, column: 1 });
    }

    #[test]
    fn missing_fields_fall_back_to_their_parent() {
        let index = PositionIndex::build(SOURCE);
        assert_eq!(
            index.find(0, "spec.outputs[0].file.mode"),
            Position { line: 6, column: 7 }
        );
        assert_eq!(index.find(5, "spec"), Position::default());
    }
}
