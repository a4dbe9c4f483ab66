//! The one libyaml pass over a manifest document: it counts nodes and nesting against the
//! limits (as serde_yaml sees the document, aliases expanded) and, in the same visit, builds
//! the document's `serde_yaml::Value`, so that each document is parsed once.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Visitor};
use serde_yaml::{Mapping, Value};

use super::scan::{MAX_DEPTH, MAX_EXPANDED_NODES};

/// A seed that walks one document as serde_yaml (libyaml) sees it, aliases expanded, counting
/// nodes against a budget shared by the documents of a file and refusing nesting deeper than
/// [`MAX_DEPTH`]. It accepts any YAML, so an error it returns is a limit or a syntax error,
/// never a data error. yaml-rust2 and libyaml do not always agree (a `--- |` line inside a
/// block scalar, libyaml's 1024-character limit on implicit keys), so [`super::scan::scan`]
/// alone cannot vouch for what serde_yaml will see.
///
/// It yields the node as `serde_yaml::Value` would deserialize it, or `None` where that
/// deserialization would fail or differ (a duplicated key, a `!tag`, an integer beyond 64
/// bits, a scalar at the top): such a document is read again with serde_yaml's own `Value`
/// for its exact error. Either way the whole node is walked, so the limits see everything.
#[derive(Clone, Copy)]
pub struct Walk<'a> {
    budget: &'a Cell<usize>,
    depth: usize,
}

impl<'a> Walk<'a> {
    /// A walk of a new document drawing on `budget` (nodes visited so far in the file).
    pub fn new(budget: &'a Cell<usize>) -> Self {
        Walk { budget, depth: 0 }
    }

    fn child<E: de::Error>(&self) -> Result<Walk<'a>, E> {
        let visited = self.budget.get() + 1;
        if visited > MAX_EXPANDED_NODES {
            return Err(E::custom(format!(
                "more than {MAX_EXPANDED_NODES} YAML nodes once aliases are expanded; split the file"
            )));
        }
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "nested deeper than {MAX_DEPTH} levels; a manifest needs far fewer"
            )));
        }
        self.budget.set(visited);
        Ok(Walk {
            budget: self.budget,
            depth: self.depth + 1,
        })
    }

    /// Counts a scalar and yields `value`.
    fn leaf<E: de::Error>(self, value: Option<Value>) -> Result<Option<Value>, E> {
        self.child().map(|_| value)
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        self.leaf(Some(Value::Bool(b)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        self.leaf(Some(Value::Number(n.into())))
    }

    // serde_yaml's `Value` has no 128-bit numbers: it fails on them.
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
        self.leaf(None)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        self.leaf(Some(Value::Number(n.into())))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
        self.leaf(None)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        self.leaf(Some(Value::Number(n.into())))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        self.leaf(Some(Value::String(s.to_owned())))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        self.leaf(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        // A null scalar as the whole document is read as "no document" or as a null value
        // depending on its style and tag: left to serde_yaml.
        let top = self.depth == 0;
        self.leaf((!top).then_some(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        // An empty document (or a null left empty).
        self.leaf(Some(Value::Null))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self).map(|_| None)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let child = self.child()?;
        let mut items = Some(Vec::new());
        while let Some(item) = seq.next_element_seed(child)? {
            match (&mut items, item) {
                (Some(items), Some(item)) => items.push(item),
                _ => items = None,
            }
        }
        Ok(items.map(Value::Sequence))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let child = self.child()?;
        let mut mapping = Some(Mapping::new());
        while let Some(key) = map.next_key_seed(child)? {
            let value = map.next_value_seed(child)?;
            match (&mut mapping, key, value) {
                // A duplicated key fails serde_yaml's `Value`.
                (Some(mapping), Some(key), Some(value)) if !mapping.contains_key(&key) => {
                    mapping.insert(key, value);
                }
                _ => mapping = None,
            }
        }
        Ok(mapping.map(Value::Mapping))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        use serde::de::VariantAccess;
        // A tagged node (`!tag value`): the tag, then the value.
        let child = self.child()?;
        let (_, value) = data.variant_seed(child)?;
        value.newtype_variant_seed(child).map(|_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk's values of every document of `text`, or its first error.
    fn walked(text: &str) -> Result<Vec<Option<Value>>, String> {
        let budget = Cell::new(0);
        serde_yaml::Deserializer::from_str(text)
            .map(|d| Walk::new(&budget).deserialize(d).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn builds_what_serde_yaml_builds() {
        let text = "a: [1, -2, 3.5, x, 'y', true, ~, null, {b: c}]\nd: &k {e: 1}\nf: *k\n\
                    g: 18446744073709551615\nh: .inf\n---\n[1, 2]\n---\nplain\n---\n~\n";
        let want: Vec<Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let got = walked(text).unwrap();
        assert_eq!(got[0].as_ref(), Some(&want[0]));
        assert_eq!(got[1].as_ref(), Some(&want[1]));
        assert_eq!(got[2].as_ref(), Some(&want[2]));
        // A null document is left to serde_yaml.
        assert_eq!(got[3], None);
    }

    #[test]
    fn leaves_to_serde_yaml_what_its_value_refuses() {
        for text in [
            "a: 1\na: 2\n",
            "a: {b: 1, b: 1}\n",
            "a: !custom 1\n",
            "a: 340282366920938463463374607431768211455\n",
            "a: [1, !t x]\n",
        ] {
            assert_eq!(walked(text).unwrap(), [None], "{text}");
        }
        // An empty document is a null, as for serde_yaml's Option.
        assert_eq!(walked("").unwrap(), [Some(Value::Null)]);
    }

    #[test]
    fn counts_against_the_limits() {
        let deep = format!("{}x", "- ".repeat(MAX_DEPTH + 1));
        assert!(walked(&deep).unwrap_err().contains("deeper than 64"));
        // Wide rather than deep: serde_yaml's own repetition limit stops deep bombs first.
        let bomb = format!(
            "a: &a [{}x]\nb: [{}*a]\n",
            "x, ".repeat(999),
            "*a, ".repeat(299)
        );
        assert!(
            walked(&bomb)
                .unwrap_err()
                .contains("once aliases are expanded")
        );
    }
}
