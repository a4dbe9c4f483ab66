//! Exit codes scripts can rely on. When several apply, an error always outranks "changes
//! pending": 2 beats 1 beats 3 beats 0 (a CI gate that accepts 3 must never accept a broken
//! manifest or a failing key). `Ord` is that precedence, so `a.max(b)` combines two outcomes.

use std::cmp::Ordering;

/// What a command's exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The stateDir lock is held by another process and `--no-wait` was given (`EX_TEMPFAIL`).
    LockHeld = 75,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Precedence: 0 < 3 < 1 < 2, and the codes outside that scale (which end a command before
    /// anything else is decided) above all.
    fn rank(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::ChangesPending => 1,
            Exit::KeyFailed => 2,
            Exit::Invalid => 3,
            Exit::Usage => 4,
            Exit::LockHeld => 5,
        }
    }
}

impl Ord for Exit {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Exit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn an_error_outranks_changes_pending() {
        use Exit::*;
        let worst = |exits: &[Exit]| exits.iter().copied().fold(Ok, Exit::max).code();
        assert_eq!(worst(&[ChangesPending, KeyFailed]), 1);
        assert_eq!(worst(&[ChangesPending, Invalid]), 2);
        assert_eq!(worst(&[KeyFailed, Invalid, ChangesPending]), 2);
        assert_eq!(worst(&[Ok, ChangesPending]), 3);
        assert_eq!(worst(&[]), 0);
    }
}
