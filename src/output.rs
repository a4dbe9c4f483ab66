//! What the CLI prints on stdout and stderr: writes that never panic. A reader that goes away
//! (`keyprov verify | head -1`: EPIPE) silences the rest of that stream; the command still
//! finishes and exits with its own code. keyprov ignores SIGPIPE (as every Rust program does)
//! and keeps it ignored: the daemon must not die because its log reader did.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

static JSON_LOGS: AtomicBool = AtomicBool::new(false);
static JSON_STDOUT: AtomicBool = AtomicBool::new(false);

/// `--json`: the command's result, problems included, is one JSON document on stdout, so
/// [`error`], [`note`] and manifest diagnostics are not printed on stderr as well.
pub fn set_json_stdout(json: bool) {
    JSON_STDOUT.store(json, Ordering::Relaxed);
}

/// Whether the result goes to stdout as JSON ([`set_json_stdout`]).
pub fn json_stdout() -> bool {
    JSON_STDOUT.load(Ordering::Relaxed)
}

/// Makes [`error`] and [`note`] log events (JSON with `log.format: json`) instead of lines.
pub fn set_json_logs(json: bool) {
    JSON_LOGS.store(json, Ordering::Relaxed);
}

/// Reports a problem on stderr: `error: MESSAGE`, or an error event with `log.format: json`,
/// so that everything on stderr is in one format.
pub fn error(message: impl std::fmt::Display) {
    if json_stdout() {
        return;
    }
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::error!("{message}");
    } else {
        err(format!("error: {message}\n").as_bytes());
    }
}

/// Says something worth knowing on stderr: `note: MESSAGE`, or a warning event in JSON.
pub fn note(message: impl std::fmt::Display) {
    if json_stdout() {
        return;
    }
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::warn!("{message}");
    } else {
        err(format!("note: {message}\n").as_bytes());
    }
}

/// Warns on stderr of something that works but likely not as meant: `warning: MESSAGE`, or a
/// warning event in JSON.
pub fn warning(message: impl std::fmt::Display) {
    if json_stdout() {
        return;
    }
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::warn!("{message}");
    } else {
        err(format!("warning: {message}\n").as_bytes());
    }
}

/// Whether stderr speaks JSON ([`set_json_logs`]).
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// `N word` or `N words`: "1 key", "0 keys", "3 keys".
pub fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Prints a line on stdout, like `println!`, through [`out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::out(format_args!("{}\n", format_args!($($arg)*)).to_string().as_bytes())
    };
}

/// Prints a line on stderr, like `eprintln!`, through [`err`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::err(format_args!("{}\n", format_args!($($arg)*)).to_string().as_bytes())
    };
}

/// Writes `bytes` to stdout. A closed pipe silences stdout from then on; another error (a
/// full disk behind a redirection) is reported once on stderr and makes [`stdout_failed`] true.
pub fn out(bytes: &[u8]) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            err(format!("error: cannot write to stdout: {error}\n").as_bytes());
        }
    }
}

/// Writes `bytes` to stderr; errors silence stderr (there is nowhere left to report them).
pub fn err(bytes: &[u8]) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if std::io::stderr().lock().write_all(bytes).is_err() {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// True when something meant for stdout was lost to an error other than a closed pipe.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}
