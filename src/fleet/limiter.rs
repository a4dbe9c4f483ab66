//! One rate limiter per process: every AWS request (KMS and Secrets Manager) of every pass
//! waits for the same token bucket, so `reconcile.maxRequestsPerSecond` bounds a daemon, not
//! only each of its passes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::store::secrets_manager::Limiter;

/// The process's limiter for `per_second`: the same one pass after pass (a reloaded
/// configuration with another rate gets the bucket of that rate).
pub fn shared(per_second: f64) -> Arc<Limiter> {
    static SHARED: Mutex<BTreeMap<u64, Arc<Limiter>>> = Mutex::new(BTreeMap::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared
        .entry(per_second.to_bits())
        .or_insert_with(|| Arc::new(crate::reconcile::execute::rate_limiter(per_second)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_share_one_bucket_until_the_rate_changes() {
        let first = shared(3.25);
        let again = shared(3.25);
        assert!(Arc::ptr_eq(&first, &again), "one limiter per process");
        while first.check().is_ok() {}
        assert!(
            again.check().is_err(),
            "the second pass finds the bucket used"
        );
        let other = shared(4.25);
        assert!(!Arc::ptr_eq(&first, &other), "a new rate, a new limiter");
    }
}
