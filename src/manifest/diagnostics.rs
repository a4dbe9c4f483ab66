//! Validation problems with their position, collected so that every one is reported in one run.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a manifest or configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File as the user named it (relative to the working directory when possible).
    pub file: PathBuf,
    /// 1-based line, 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted field path, e.g. `spec.outputs[0].file.dir`; empty for file-level problems.
    pub field: String,
    /// What is wrong and, where possible, what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", shorten(&self.field, MAX_SHOWN))?;
        }
        write!(f, ": {}", shorten(&self.message, 4 * MAX_SHOWN))
    }
}

/// Longest field shown; fields and messages quote the input, which may be megabytes long.
const MAX_SHOWN: usize = 256;

/// `text` cut to at most `max` bytes (at a character boundary), marked with `…` when cut.
fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len()).into()
}

/// Shows `path` relative to the working directory when it lies below it.
pub fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        // From `/`, a path relative to it would read as relative to wherever the reader is.
        .filter(|cwd| cwd.parent().is_some())
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_and_messages_are_shortened() {
        let d = Diagnostic {
            file: PathBuf::from("m.yaml"),
            line: 3,
            column: 1,
            field: format!("spec.encryptionContext.{}", "é".repeat(1000)),
            message: "x".repeat(5000),
        };
        let shown = d.to_string();
        assert!(shown.len() < 1500, "{}", shown.len());
        assert!(shown.starts_with("m.yaml:3:1: spec.encryptionContext.éé"));
        assert!(shown.contains("… (2023 bytes): xxx"), "{shown}");
        assert!(shown.ends_with("… (5000 bytes)"));
    }
}
