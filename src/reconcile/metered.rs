//! The provider as a pass calls it: every request and clock refusal reported to the metrics
//! the pass passes in, so that providers know nothing of a registry.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Metrics;
use crate::provider::{
    AnyProvider, CLOCK_SKEW, DecryptRequest, GenerateRequest, GeneratedPair, PrivateKey, Provider,
    ProviderError,
};

/// A provider whose calls are counted in `metrics`.
pub struct Metered {
    inner: Arc<AnyProvider>,
    metrics: &'static Metrics,
}

impl Metered {
    /// `inner`, reporting to `metrics`.
    pub fn new(inner: Arc<AnyProvider>, metrics: &'static Metrics) -> Self {
        Metered { inner, metrics }
    }

    /// The provider itself (for what depends on its kind, as the AWS clock check).
    pub fn inner(&self) -> &AnyProvider {
        &self.inner
    }

    /// See [`AnyProvider::warm_up`].
    pub async fn warm_up(&self) {
        self.inner.warm_up().await;
    }
}

impl Provider for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        let started = Instant::now();
        let result = self.inner.generate(request).await;
        if let Err(ProviderError::Kms { code, .. }) = &result
            && code == CLOCK_SKEW
        {
            self.metrics.clock_warning(request.name, "aws_skew");
        }
        let operation = if request.include_plaintext {
            "GenerateDataKeyPair"
        } else {
            "GenerateDataKeyPairWithoutPlaintext"
        };
        self.metrics.provider_request(
            self.name(),
            operation,
            result.as_ref().map(|_| ()),
            started.elapsed(),
        );
        result
    }

    async fn decrypt(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        let started = Instant::now();
        let result = self.inner.decrypt(request).await;
        self.metrics.provider_request(
            self.name(),
            "Decrypt",
            result.as_ref().map(|_| ()),
            started.elapsed(),
        );
        result
    }
}
