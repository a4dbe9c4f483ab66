//! The provider as a pass calls it: every request and clock refusal reported to the metrics
//! the pass passes in, so that providers know nothing of a registry; and a ciphertext decrypted
//! once per pass (the proof of a secret's new version before the pass decides, and the copy's
//! proof of the same version after, ask KMS once).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::provider::{
    AnyProvider, CLOCK_SKEW, DecryptRequest, GenerateRequest, GeneratedPair, PrivateKey, Provider,
    ProviderError,
};

/// Most Decrypt answers a pass keeps.
const DECRYPTED: usize = 1024;

/// What a Decrypt answer depends on: the ciphertext, the KMS key it must be under and the
/// encryption context.
type Asked = (Vec<u8>, String, BTreeMap<String, String>);

/// A provider whose calls are counted in `metrics`.
pub struct Metered {
    inner: Arc<AnyProvider>,
    metrics: &'static Metrics,
    /// The successful Decrypt answers of this pass (KMS answers the same request the same).
    decrypted: Mutex<HashMap<Asked, PrivateKey>>,
}

impl Metered {
    /// `inner`, reporting to `metrics`.
    pub fn new(inner: Arc<AnyProvider>, metrics: &'static Metrics) -> Self {
        Metered {
            inner,
            metrics,
            decrypted: Mutex::new(HashMap::new()),
        }
    }

    /// The provider itself (for what depends on its kind, as the AWS clock check).
    pub fn inner(&self) -> &AnyProvider {
        &self.inner
    }

    /// The answer this pass already had to `asked`.
    fn answer(&self, asked: &Asked) -> Option<PrivateKey> {
        let known = self.decrypted.lock().expect("never poisoned");
        known.get(asked).cloned()
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
        let asked = asked(request);
        if let Some(key) = self.answer(&asked) {
            return Ok(key);
        }
        let started = Instant::now();
        let result = self.inner.decrypt(request).await;
        self.metrics.provider_request(
            self.name(),
            "Decrypt",
            result.as_ref().map(|_| ()),
            started.elapsed(),
        );
        if let Ok(key) = &result {
            let mut known = self.decrypted.lock().expect("never poisoned");
            if known.len() < DECRYPTED {
                known.insert(asked, key.clone());
            }
        }
        result
    }

    /// A Decrypt this pass already made: counted in no metric (no request was made).
    fn remembered(&self, request: &DecryptRequest<'_>) -> Option<PrivateKey> {
        self.answer(&asked(request))
    }
}

/// What `request` asks, as the cache of answers knows it.
fn asked(request: &DecryptRequest<'_>) -> Asked {
    (
        request.ciphertext.to_vec(),
        request.kms_key_arn.to_string(),
        request.encryption_context.clone(),
    )
}
