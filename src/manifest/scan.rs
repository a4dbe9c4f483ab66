//! A bounded first pass over YAML text, before serde_yaml sees it: syntax, nesting depth,
//! number of documents, anchors and alias expansion. Hostile text (an alias bomb, 100,000
//! nested sequences, a million empty documents) is refused here in one linear pass, with the
//! line and column of the first offence, so that nothing after it can hang, panic or recurse.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use super::fast::Builder;
use yaml_rust2::scanner::{Marker, Scanner, Token, TokenType};

/// Deepest nesting of sequences and mappings accepted (a manifest needs about 6).
pub const MAX_DEPTH: usize = 64;
/// Most YAML documents accepted in one manifest file.
pub const MAX_DOCUMENTS: usize = 1_000;
/// Most nodes (scalars, aliases, sequences, mappings) in one file, aliases unexpanded: a key
/// takes about 40. Bounds serde_yaml's per-document event buffer and the position index.
pub const MAX_NODES: usize = 100_000;
/// Most nodes that aliases may add to a file once expanded (a billion-laughs bomb adds 10^9).
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// Why a file was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// What the scan learnt of a file that passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Documents in the file (`---` separated).
    pub documents: usize,
}

/// Checks `text` against the limits above and at most `max_documents` documents.
pub fn scan(text: &str, max_documents: usize) -> Result<Summary, Refusal> {
    scan_with(text, max_documents, None)
}

/// [`scan`], also building the documents' values when [`Builder`] vouches for the text.
pub fn scan_values(
    text: &str,
    max_documents: usize,
) -> Result<(Summary, Option<Vec<serde_yaml::Value>>), Refusal> {
    let mut builder = Builder::new(text);
    let summary = scan_with(text, max_documents, Some(&mut builder))?;
    Ok((summary, builder.finish()))
}

fn scan_with(
    text: &str,
    max_documents: usize,
    mut builder: Option<&mut Builder>,
) -> Result<Summary, Refusal> {
    let mut parser = Parser::new_from_str(text);
    // Open collections: (anchor id, nodes so far).
    let mut open: Vec<(usize, u64)> = Vec::new();
    // Anchors of the current document that are complete: id -> expanded node count.
    let mut anchors: HashMap<usize, u64> = HashMap::new();
    let mut added: u64 = 0;
    let mut documents = 0;
    let mut nodes = 0;
    loop {
        let (mut event, mark) = parser.next_token().map_err(|err| {
            if err.info().ends_with("found unknown anchor") {
                return undefined_alias(text, err.marker());
            }
            let line = err.marker().line();
            if INDENTATION_ERRORS.iter().any(|e| err.info().contains(e))
                && let Some((line, column, message)) = super::dedent::misplaced(text, line)
            {
                return Refusal {
                    line,
                    column,
                    message,
                };
            }
            // "expected key" at a `- ` line is a list item out of line, not a key.
            let hint = if err.info().contains(INDENTATION_ERRORS[1])
                && super::dedent::is_list_item(text, line)
            {
                syntax_hint(INDENTATION_ERRORS[2])
            } else {
                syntax_hint(err.info())
            };
            Refusal {
                line,
                column: err.marker().col() + 1,
                message: format!("YAML syntax error: {}{hint}", err.info()),
            }
        })?;
        if let Some(builder) = builder.as_deref_mut() {
            builder.feed(&mut event, &mark);
        }
        let refuse = |message: String| Refusal {
            line: mark.line(),
            column: mark.col() + 1,
            message,
        };
        if matches!(
            event,
            Event::Scalar(..)
                | Event::Alias(_)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
        ) {
            nodes += 1;
            if nodes > MAX_NODES {
                return Err(refuse(format!(
                    "more than {MAX_NODES} YAML nodes in one file; split it"
                )));
            }
        }
        let (size, anchor) = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > max_documents {
                    return Err(refuse(format!(
                        "more than {max_documents} YAML documents in one file; split it"
                    )));
                }
                anchors.clear();
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_DEPTH {
                    return Err(refuse(format!(
                        "nested deeper than {MAX_DEPTH} levels; a manifest needs far fewer"
                    )));
                }
                open.push((anchor, 1));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match open.pop() {
                Some((anchor, size)) => (size, anchor),
                None => continue,
            },
            Event::Scalar(_, _, anchor, _) => (1, anchor),
            Event::Alias(id) => {
                let Some(&size) = anchors.get(&id) else {
                    return Err(undefined_alias(text, &mark));
                };
                added = added.saturating_add(size);
                if added > MAX_ALIAS_NODES {
                    return Err(refuse(format!(
                        "aliases expand to more than {MAX_ALIAS_NODES} nodes; refusing a possible alias bomb"
                    )));
                }
                (size, 0)
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => continue,
        };
        if anchor != 0 {
            anchors.insert(anchor, size);
        }
        if let Some((_, parent)) = open.last_mut() {
            *parent = parent.saturating_add(size);
        }
    }
    if text.contains('&') {
        check_anchor_names(text)?;
    }
    Ok(Summary { documents })
}

/// Refuses an anchor name defined twice in one document: serde_yaml 0.9 numbers anchors by
/// the count of distinct names, so after a redefinition later aliases resolve to the wrong
/// node. Anchor names are only in yaml-rust2's tokens, hence this second, token-level pass
/// (run only on text that passed [`scan`] and holds a `&`).
fn check_anchor_names(text: &str) -> Result<(), Refusal> {
    let mut defined: HashMap<String, usize> = HashMap::new();
    for Token(mark, token) in Scanner::new(text.chars()) {
        match token {
            TokenType::DocumentStart | TokenType::DocumentEnd => defined.clear(),
            TokenType::Anchor(name) => {
                if let Some(line) = defined.get(&name) {
                    return Err(Refusal {
                        line: mark.line(),
                        column: mark.col() + 1,
                        message: format!(
                            "anchor &{name} is defined again (first on line {line}); give each anchor its own name"
                        ),
                    });
                }
                defined.insert(name, mark.line());
            }
            _ => {}
        }
    }
    Ok(())
}

/// The name of the alias at character `index`, for messages.
fn alias_name(text: &str, index: usize) -> String {
    Scanner::new(text.chars())
        .take_while(|Token(mark, _)| mark.index() <= index)
        .find_map(|Token(mark, token)| match token {
            TokenType::Alias(name) if mark.index() == index => Some(name),
            _ => None,
        })
        .unwrap_or_default()
}

fn undefined_alias(text: &str, mark: &Marker) -> Refusal {
    Refusal {
        line: mark.line(),
        column: mark.col() + 1,
        message: format!(
            "alias *{} refers to no anchor defined before it in this document (or to a node that contains the alias)",
            alias_name(text, mark.index())
        ),
    }
}

/// Most nodes serde_yaml may visit in one file, aliases expanded: [`MAX_NODES`] plus
/// [`MAX_ALIAS_NODES`].
pub const MAX_EXPANDED_NODES: usize = MAX_NODES + MAX_ALIAS_NODES as usize;

/// The parser's complaints that a misplaced indentation causes.
const INDENTATION_ERRORS: [&str; 3] = [
    "mapping values are not allowed",
    "did not find expected key",
    "did not find expected '-' indicator",
];

/// What a parser's complaint usually means in a manifest, in the user's words.
fn syntax_hint(info: &str) -> &'static str {
    const HINTS: [(&str, &str); 6] = [
        (
            "mapping values are not allowed",
            " (a `key: value` where none can be: this line is probably indented more than the \
             keys above it, or a value holds `: ` and needs quotes)",
        ),
        (
            "did not find expected key",
            " (a line is indented differently from the keys it belongs with: align it)",
        ),
        (
            "did not find expected '-' indicator",
            " (a list item is indented differently from the items before it: align the `-`)",
        ),
        (
            "could not find expected ':'",
            " (a key without `: ` after it, or a value spread over lines that needs quotes)",
        ),
        (
            "found character that cannot start any plain scalar",
            " (a tab or a character such as `@` or a backquote starts a value: indent with \
             spaces, quote the value)",
        ),
        (
            "found a tab character",
            " (YAML indents with spaces only: replace the tabs)",
        ),
    ];
    HINTS
        .iter()
        .find(|(cause, _)| info.contains(cause))
        .map_or("", |(_, hint)| hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Refusal {
        scan(text, MAX_DOCUMENTS).expect_err(text)
    }

    #[test]
    fn accepts_ordinary_manifests_with_anchors() {
        let text = "a: &x {b: 1}\nc: *x\nd: [*x, *x]\n---\ne: &x 1\nf: *x\n";
        assert_eq!(scan(text, MAX_DOCUMENTS), Ok(Summary { documents: 2 }));
        assert_eq!(scan("", MAX_DOCUMENTS), Ok(Summary { documents: 0 }));
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let refusal = refused(&text);
        assert!(refusal.message.contains("alias bomb"), "{refusal:?}");
        assert_eq!(refusal.line, 5);
    }

    #[test]
    fn refuses_deep_nesting() {
        let refusal = refused(&"- ".repeat(100_000));
        assert!(refusal.message.contains("deeper than 64"), "{refusal:?}");
        // yaml-rust2 limits flow nesting itself.
        let refusal = refused(&"[".repeat(100_000));
        assert!(refusal.message.contains("recursion limit"), "{refusal:?}");
        scan(&format!("{}x", "- ".repeat(MAX_DEPTH)), 1).unwrap();
    }

    #[test]
    fn refuses_undefined_recursive_and_redefined_anchors() {
        let refusal = refused("spec: *nope\n");
        assert_eq!((refusal.line, refusal.column), (1, 7));
        assert!(
            refusal.message.contains("alias *nope refers to no anchor"),
            "{refusal:?}"
        );
        let refusal = refused("a: &x [1, *x]\n");
        assert!(
            refusal.message.contains("alias *x refers to no anchor"),
            "{refusal:?}"
        );
        let refusal = refused("a: &x 1\n---\nb: *x\n");
        assert!(refusal.message.contains("alias *x"), "{refusal:?}");
        assert_eq!(refusal.line, 3);
        let refusal = refused("a: &x 1\nb: &y 2\nc: &x 3\n");
        assert!(
            refusal
                .message
                .contains("anchor &x is defined again (first on line 1)"),
            "{refusal:?}"
        );
        // Names are found after multi-byte characters too.
        let refusal = refused("é: &x 1\nü: &x 2\n");
        assert!(refusal.message.contains("anchor &x"), "{refusal:?}");
    }

    #[test]
    fn refuses_too_many_documents() {
        let refusal = refused(&"---\n".repeat(MAX_DOCUMENTS + 1));
        assert!(
            refusal.message.contains("more than 1000 YAML"),
            "{refusal:?}"
        );
        assert_eq!(refusal.line, MAX_DOCUMENTS + 1);
        assert!(scan("a: 1\n---\nb: 2\n", 1).is_err());
    }

    #[test]
    fn refuses_too_many_nodes() {
        let text = format!("a: [{}x]\n", "x, ".repeat(MAX_NODES));
        let refusal = refused(&text);
        assert!(
            refusal.message.contains("more than 100000 YAML nodes"),
            "{refusal:?}"
        );
        scan(&format!("a: [{}x]\n", "x, ".repeat(MAX_NODES - 4)), 1).unwrap();
    }

    #[test]
    fn syntax_errors_stop_the_scan() {
        for text in ["a: b: c\n", "key: v\n bad: 1\n", "x: - a\n", "[1, 2\n"] {
            let refusal = refused(text);
            assert!(
                refusal.message.contains("syntax error"),
                "{text}: {refusal:?}"
            );
            assert!(refusal.line >= 1, "{text}: {refusal:?}");
        }
    }
}
