//! A pass over the keys that fell due (the daemon's due wake, [`super::reconcile_due`]): what
//! it does differently from a full pass. Its keys are observed one by one (a due key keeps a
//! direct `DescribeSecret`: a listing may lag, and listing the scope for a few keys costs more
//! than describing them); it does not prune, forget other keys' records or drop their metrics,
//! and it reports only its own keys' next events, which the daemon merges with the others'.

use futures_util::StreamExt;

use crate::manifest::KeyPair;
use crate::observed::Observed;
use crate::store::Stores;

/// Keys observed at once.
const OBSERVE_CONCURRENCY: usize = 32;

/// Observes every output of each of `keys` directly (no listing of the scope's secrets).
pub(super) async fn observe_each(stores: &Stores, keys: &[KeyPair]) -> Observed {
    futures_util::stream::iter(keys)
        .map(|key| async move { (key.name.clone(), stores.observe_key(key).await) })
        .buffer_unordered(OBSERVE_CONCURRENCY)
        .collect()
        .await
}
