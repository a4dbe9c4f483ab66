//! Where an indentation error really is. A parser notices a block whose first line is dedented
//! (`outputs:` then `   - a` then `    - b`) only at the line after it, which is fine: it blames
//! the good line and hints at the wrong fix. This moves the blame to the first line when the
//! indentation of the rest of the file says that one is the odd one out.

/// A non-blank, non-comment line as indentation sees it.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// 1-based line number.
    number: usize,
    /// Leading spaces.
    indent: usize,
    /// Column (0-based) of the key or value after any `- ` indicators.
    key_col: usize,
    /// Starts with a `- ` list indicator.
    dash: bool,
    /// Ends with `:`: the lines after it, indented more, are its value.
    opens: bool,
}

fn lines(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .filter_map(|(index, raw)| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let rest = &raw[indent..];
            if rest.trim().is_empty() || rest.starts_with('#') {
                return None;
            }
            let mut key_col = indent;
            let mut after = rest;
            while let Some(item) = after.strip_prefix('-').filter(|r| r.starts_with(' ')) {
                let trimmed = item.trim_start_matches(' ');
                key_col += 1 + item.len() - trimmed.len();
                after = trimmed;
            }
            // A trailing comment does not change whether a line opens a block.
            let body = after.split(" #").next().unwrap_or(after).trim_end();
            Some(Line {
                number: index + 1,
                indent,
                key_col,
                dash: rest.starts_with("- ") || rest == "-",
                opens: body.ends_with(':'),
            })
        })
        .collect()
}

/// The usual step from a line that opens a block to its first child in this file, leaving the
/// pair at `skip` (the child line under suspicion) out.
fn usual_step(lines: &[Line], skip: usize) -> Option<usize> {
    let mut counts = std::collections::BTreeMap::new();
    for pair in lines.windows(2) {
        let (parent, child) = (pair[0], pair[1]);
        if parent.opens && child.indent > parent.key_col && child.number != skip {
            *counts
                .entry(child.indent - parent.key_col)
                .or_insert(0usize) += 1;
        }
    }
    // The most frequent step; on a tie the smaller, as most YAML is written in 2s.
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(step, _)| step)
}

/// When a syntax error reported at `line` is really the first line of its block being
/// indented less than its siblings: that line's `(line, column, message)`.
pub fn misplaced(text: &str, line: usize) -> Option<(usize, usize, String)> {
    let lines = lines(text);
    let at = lines.iter().position(|l| l.number == line)?;
    let reported = lines[at];
    // Back over the children of the suspect to the suspect itself.
    let before = lines[..at]
        .iter()
        .rposition(|l| l.indent <= reported.indent)?;
    let suspect = lines[before];
    let parent = lines[..before].last()?;
    if suspect.indent == reported.indent
        || suspect.dash != reported.dash
        || !parent.opens
        || suspect.indent <= parent.key_col
    {
        return None;
    }
    let step = usual_step(&lines, suspect.number)?;
    if reported.indent - parent.key_col != step || suspect.indent - parent.key_col == step {
        return None;
    }
    let what = if suspect.dash { "list item" } else { "key" };
    let spaces = |n: usize| if n == 1 { "space" } else { "spaces" };
    Some((
        suspect.number,
        suspect.indent + 1,
        format!(
            "YAML syntax error: this {what} is indented {} {} but the next {what} of its block \
             (line {}) {}: indent it {} {} like that one",
            suspect.indent,
            spaces(suspect.indent),
            reported.number,
            reported.indent,
            reported.indent,
            spaces(reported.indent)
        ),
    ))
}

/// Whether `line` of `text` starts with a `- ` list indicator (its hint is about the `-`).
pub fn is_list_item(text: &str, line: usize) -> bool {
    lines(text)
        .iter()
        .any(|l| l.number == line && l.dash && l.key_col > l.indent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: a\nspec:\n";

    fn blame(body: &str, reported: usize) -> Option<(usize, usize)> {
        misplaced(&format!("{HEAD}{body}"), reported).map(|(l, c, _)| (l, c))
    }

    #[test]
    fn a_dedented_first_list_item_is_blamed_not_the_item_after_it() {
        let body = "  kmsKeyId: k\n  outputs:\n   - file: {}\n    - file: {}\n";
        assert_eq!(blame(body, 9), Some((8, 4)));
        let (_, _, message) = misplaced(&format!("{HEAD}{body}"), 9).unwrap();
        assert_eq!(
            message,
            "YAML syntax error: this list item is indented 3 spaces but the next list item of \
             its block (line 9) 4: indent it 4 spaces like that one"
        );
    }

    #[test]
    fn children_of_the_dedented_item_are_skipped() {
        let body = "  outputs:\n   - file:\n       dir: a\n    - file: {}\n";
        assert_eq!(blame(body, 9), Some((7, 4)));
    }

    #[test]
    fn a_dedented_first_key_is_blamed() {
        assert_eq!(blame(" keyPairSpec: P\n  kmsKeyId: k\n", 7), Some((6, 2)));
        let body = "  outputs:\n    - secretsManager:\n       name: x\n        kmsKeyId: y\n";
        assert_eq!(blame(body, 9), Some((8, 8)));
    }

    #[test]
    fn an_over_indented_line_keeps_the_blame() {
        assert_eq!(blame("  keyPairSpec: P\n   kmsKeyId: k\n", 7), None);
        assert_eq!(blame("  outputs:\n  - file: {}\n   - file: {}\n", 8), None);
    }

    #[test]
    fn list_items_are_told_apart_from_keys() {
        let text = "a:\n  - b: 1\n  c: 2\n";
        assert!(is_list_item(text, 2));
        assert!(!is_list_item(text, 3));
        assert!(!is_list_item("-x: 1\n", 1));
    }
}
