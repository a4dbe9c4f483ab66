//! Exit codes scripts can rely on; within 0-3, when several apply, the highest wins.

/// What a command's exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Converged, or nothing to do.
    Ok = 0,
    /// At least one key failed; the others were still reconciled.
    KeyFailed = 1,
    /// Invalid configuration or at least one invalid manifest.
    Invalid = 2,
    /// `plan` only: changes are pending.
    ChangesPending = 3,
    /// A usage error: unknown flag, missing argument (`EX_USAGE`).
    Usage = 64,
    /// The stateDir lock is held by another keyprov and `--no-wait` was given (`EX_TEMPFAIL`).
    LockHeld = 75,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}
