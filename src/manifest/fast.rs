//! The cheap reading of a plain manifest: the document values built from the events of the
//! bounded scan itself, so a file that needs nothing else is parsed once. It vouches only for
//! text that libyaml (serde_yaml) reads the same way: ASCII, no tab, CR or directive, no
//! anchor, alias or tag, no block scalar, every scalar exactly as written in the text, plain
//! scalars only of kinds whose serde_yaml reading is certain, no duplicated key, shallow. For
//! anything else it gives up and the file takes the full libyaml path, as does a file whose
//! cheap reading has any problem (its diagnostics come from the full path).

use serde_yaml::{Mapping, Value};
use yaml_rust2::parser::Event;
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting vouched for (a manifest needs about 6; the limits are far deeper).
const MAX_DEPTH: usize = 16;
/// Longest scalar vouched for (libyaml limits implicit keys to 1024 characters).
const MAX_SCALAR: usize = 1000;
/// Most entries of one mapping vouched for (duplicated keys are looked for one by one).
const MAX_ENTRIES: usize = 64;

/// A collection being built: a sequence's items, or a mapping's entries (in order) and the key
/// waiting for its value. A mapping becomes serde_yaml's `Mapping` once complete, at its exact
/// size.
enum Open {
    Sequence(Vec<Value>),
    Mapping(Vec<(Value, Value)>, Option<Value>),
}

/// Builds the values of a file's documents from its scan events.
pub struct Builder<'t> {
    text: &'t str,
    open: Vec<Open>,
    documents: Vec<Value>,
    started: usize,
    failed: bool,
}

impl<'t> Builder<'t> {
    /// A builder for `text`, given up at once when the text is outside what it vouches for.
    pub fn new(text: &'t str) -> Self {
        let plain = text.is_ascii()
            && !text.contains(['\t', '\r'])
            && !text.starts_with('%')
            && !text.contains("\n%");
        Builder {
            text,
            open: Vec::new(),
            documents: Vec::new(),
            started: 0,
            failed: !plain,
        }
    }

    /// Takes in one scan event (a scalar's text is moved out of it).
    pub fn feed(&mut self, event: &mut Event, mark: &Marker) {
        if self.failed {
            return;
        }
        if !self.step(event, mark) {
            self.failed = true;
            self.open.clear();
            self.documents.clear();
        }
    }

    /// Every document's value, or `None` when the builder gave up.
    pub fn finish(self) -> Option<Vec<Value>> {
        (!self.failed
            && self.started > 0
            && self.documents.len() == self.started
            && self.open.is_empty())
        .then_some(self.documents)
    }

    fn step(&mut self, event: &mut Event, mark: &Marker) -> bool {
        match event {
            Event::DocumentStart => {
                self.started += 1;
                self.open.is_empty() && self.documents.len() + 1 == self.started
            }
            Event::DocumentEnd => self.open.is_empty() && self.documents.len() == self.started,
            Event::StreamStart | Event::StreamEnd | Event::Nothing => true,
            Event::Alias(_) => false,
            Event::SequenceStart(anchor, tag) => {
                *anchor == 0
                    && tag.is_none()
                    && !self.open.is_empty()
                    && self.open_child(Open::Sequence(Vec::new()))
            }
            Event::MappingStart(anchor, tag) => {
                *anchor == 0 && tag.is_none() && self.open_child(Open::Mapping(Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => match self.open.pop() {
                Some(Open::Sequence(items)) => self.add(Value::Sequence(items)),
                Some(Open::Mapping(entries, None)) => {
                    self.add(Value::Mapping(entries.into_iter().collect::<Mapping>()))
                }
                _ => false,
            },
            Event::Scalar(text, style, anchor, tag) => {
                if *anchor != 0 || tag.is_some() || self.open.is_empty() {
                    return false;
                }
                match self.scalar(std::mem::take(text), *style, mark.index()) {
                    Some(value) => self.add(value),
                    None => false,
                }
            }
        }
    }

    /// Opens a collection, never as a mapping's key.
    fn open_child(&mut self, open: Open) -> bool {
        let as_key = matches!(self.open.last(), Some(Open::Mapping(_, None)));
        if as_key || self.open.len() >= MAX_DEPTH {
            return false;
        }
        self.open.push(open);
        true
    }

    /// Adds a finished node to its parent (or as a document).
    fn add(&mut self, value: Value) -> bool {
        match self.open.last_mut() {
            None => {
                if !value.is_mapping() || self.documents.len() + 1 != self.started {
                    return false;
                }
                self.documents.push(value);
                true
            }
            Some(Open::Sequence(items)) => {
                items.push(value);
                true
            }
            Some(Open::Mapping(entries, pending)) => match pending.take() {
                Some(key) => {
                    if entries.len() >= MAX_ENTRIES || entries.iter().any(|(k, _)| *k == key) {
                        return false;
                    }
                    entries.push((key, value));
                    true
                }
                None => {
                    *pending = Some(value);
                    value_is_key(pending)
                }
            },
        }
    }

    /// The scalar `value` found at character `at`, as serde_yaml's `Value` reads it, when
    /// that is certain.
    fn scalar(&self, value: String, style: TScalarStyle, at: usize) -> Option<Value> {
        if value.len() > MAX_SCALAR || value.contains('\n') {
            return None;
        }
        // ASCII text: character index = byte index.
        let source = self.text.get(at..)?;
        match style {
            TScalarStyle::SingleQuoted => {
                let written = source.strip_prefix('\'')?.strip_prefix(value.as_str())?;
                (!value.contains('\'') && written.starts_with('\'')).then_some(Value::String(value))
            }
            TScalarStyle::DoubleQuoted => {
                let written = source.strip_prefix('"')?.strip_prefix(value.as_str())?;
                (!value.contains(['"', '\\']) && written.starts_with('"'))
                    .then_some(Value::String(value))
            }
            TScalarStyle::Plain => {
                if value.is_empty() || !source.starts_with(value.as_str()) {
                    return None;
                }
                plain(value)
            }
            TScalarStyle::Literal | TScalarStyle::Folded => None,
        }
    }
}

/// A key is vouched for only as a string.
fn value_is_key(pending: &Option<Value>) -> bool {
    matches!(pending, Some(Value::String(_)))
}

/// A plain scalar as serde_yaml resolves it, for the kinds where that is certain: words
/// starting with a letter (not null, a boolean, or an infinity or NaN spelling), `true` and
/// `false`, decimal integers without a leading zero, and digits followed by one duration unit.
fn plain(value: String) -> Option<Value> {
    let bytes = value.as_bytes();
    let first = bytes[0];
    if first.is_ascii_alphabetic() {
        return match value.as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => {
                let special = [
                    "null", "true", "false", "yes", "no", "on", "off", "y", "n", "inf", "infinity",
                    "nan",
                ]
                .iter()
                .any(|word| value.eq_ignore_ascii_case(word));
                (!special).then_some(Value::String(value))
            }
        };
    }
    if !first.is_ascii_digit() {
        return None;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        if (first == b'0' && bytes.len() > 1) || bytes.len() > 18 {
            return None;
        }
        return value.parse::<u64>().ok().map(|n| Value::Number(n.into()));
    }
    let (digits, unit) = bytes.split_at(bytes.len() - 1);
    (digits.iter().all(u8::is_ascii_digit) && matches!(unit, [b's' | b'm' | b'h' | b'd' | b'w']))
        .then_some(Value::String(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(text: &str) -> Option<Vec<Value>> {
        super::super::scan::scan_values(text, 10).unwrap().1
    }

    fn by_serde_yaml(text: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    /// A document of one mapping with `n` entries.
    fn many_entries(n: usize) -> String {
        (0..n).map(|i| format!("k{i}: {i}\n")).collect()
    }

    #[test]
    fn builds_what_serde_yaml_builds() {
        for text in [
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: a-b\n  labels: {team: x}\n",
            "spec:\n  rotation: {every: 90d, keep: 1}\n  outputs:\n    - file: {format: pem, mode: \"0640\"}\n",
            "a: 'x y'\nb: [1, 2, 30]\nc: true\nd: false\n---\ne: f # comment\n",
            "? k\n: v\n",
            &many_entries(MAX_ENTRIES),
        ] {
            assert_eq!(
                built(text).as_deref(),
                Some(&by_serde_yaml(text)[..]),
                "{text:?}"
            );
        }
    }

    #[test]
    fn gives_up_where_serde_yaml_may_differ() {
        for text in [
            "a: 0640\n",
            "a: 1.5\n",
            "a: ~\n",
            "a:\n",
            "a: yes\n",
            "a: Null\n",
            "a: .inf\n",
            "a: -1\n",
            "a: 0x10\n",
            "a: &x 1\nb: *x\n",
            "a: !tag v\n",
            "a: |\n  x\n",
            "a: b\n  c\n",
            "a: \"x\\ty\"\n",
            "a: 1\na: 2\n",
            "{a: 1}: 2\n",
            "[a]\n",
            "x\n",
            "\ta: 1\n",
            "a: \u{e9}\n",
            "%YAML 1.2\n---\na: 1\n",
            "",
            "---\n",
            &many_entries(MAX_ENTRIES + 1),
            "a: {b: 1, c: 2, b: 3}\n",
        ] {
            assert_eq!(built(text), None, "{text:?}");
        }
    }
}
