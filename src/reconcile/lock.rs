//! The lock phase: the stateDir lock, held for the whole pass (another keyprov is waited for,
//! or reported with `--no-wait`).

use super::{LockWait, Report};
use crate::config::Config;

/// Takes the stateDir lock; without it, the report that ends the pass at once.
pub(super) async fn lock(
    config: &Config,
    wait: LockWait,
) -> Result<crate::lock::StateLock, Report> {
    let state_dir = config.state_dir.clone();
    let wait_for_it = wait == LockWait::Wait;
    let locked =
        tokio::task::spawn_blocking(move || crate::lock::acquire(&state_dir, wait_for_it)).await;
    let report = match locked {
        Ok(Ok(lock)) => {
            crate::progress::beat();
            return Ok(lock);
        }
        Ok(Err(err @ crate::lock::LockError::Held { .. })) => Report {
            lock_held: Some(err.to_string()),
            ..Report::default()
        },
        Ok(Err(err)) => {
            tracing::error!("{err}");
            Report {
                failed: vec![("stateDir".into(), err.to_string())],
                failed_outside_keys: true,
                ..Report::default()
            }
        }
        Err(err) => {
            tracing::error!("cannot take the stateDir lock: {err}");
            Report {
                failed: vec![("stateDir".into(), format!("cannot take the lock: {err}"))],
                failed_outside_keys: true,
                ..Report::default()
            }
        }
    };
    Err(report)
}
