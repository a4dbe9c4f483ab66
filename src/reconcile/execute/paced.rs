//! The provider as a key's actions call it: every request that goes out waits for a request
//! slot and the shared rate limit, and is counted; an answer the provider already holds (a
//! Decrypt made earlier in the pass) is given at once, neither paced nor counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use governor::DefaultDirectRateLimiter;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::Stats;
use crate::provider::{
    DecryptRequest, GenerateRequest, GeneratedPair, PrivateKey, Provider, ProviderError,
};

/// `inner`, paced by `requests` (in flight at once) and `limiter`, its calls counted in `stats`.
pub(super) struct Paced<P> {
    pub(super) inner: Arc<P>,
    pub(super) requests: Arc<Semaphore>,
    pub(super) limiter: Arc<DefaultDirectRateLimiter>,
    pub(super) stats: Arc<Stats>,
}

impl<P: Provider> Paced<P> {
    /// Waits for a free request slot and the rate limit; counts the call. The slot is held
    /// until the returned permit drops.
    async fn slot(&self) -> SemaphorePermit<'_> {
        let permit = self
            .requests
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.limiter.until_ready().await;
        self.stats.provider_calls.fetch_add(1, Ordering::Relaxed);
        permit
    }
}

impl<P: Provider> Provider for Paced<P> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        let _slot = self.slot().await;
        self.inner.generate(request).await
    }

    async fn decrypt(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        if let Some(key) = self.inner.remembered(request) {
            return Ok(key);
        }
        let _slot = self.slot().await;
        self.inner.decrypt(request).await
    }

    fn remembered(&self, request: &DecryptRequest<'_>) -> Option<PrivateKey> {
        self.inner.remembered(request)
    }
}
