//! Why a key failed, as a fixed set of short names (`keyprov_failures_total{reason}`).

use crate::provider::ProviderError;

/// Why a key failed, as `keyprov_failures_total{reason}` says it: a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// KMS throttled the request (retries exhausted).
    KmsThrottled,
    /// KMS (or the credentials) refused access.
    KmsAccessDenied,
    /// The KMS key cannot be used: disabled, pending deletion, not found, wrong kind.
    KmsKeyState,
    /// KMS could not be reached or failed (5xx, transport, timeout).
    KmsUnavailable,
    /// A private key ciphertext did not decrypt (wrong context or key, altered).
    InvalidCiphertext,
    /// An output could not be read or written (file store, Secrets Manager).
    OutputWriteFailed,
    /// An `onRotate` hook failed or timed out.
    HookFailed,
    /// The key's manifest is invalid: the key is left as it is.
    ManifestInvalid,
    /// This host's clock and AWS's disagree: nothing generated or activated.
    ClockSkew,
    /// Anything else (e.g. a spec the provider cannot make).
    Other,
}

impl FailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::KmsThrottled => "kms_throttled",
            FailureReason::KmsAccessDenied => "kms_access_denied",
            FailureReason::KmsKeyState => "kms_key_state",
            FailureReason::KmsUnavailable => "kms_unavailable",
            FailureReason::InvalidCiphertext => "invalid_ciphertext",
            FailureReason::OutputWriteFailed => "output_write_failed",
            FailureReason::HookFailed => "hook_failed",
            FailureReason::ManifestInvalid => "manifest_invalid",
            FailureReason::ClockSkew => "clock_skew",
            FailureReason::Other => "other",
        }
    }

    /// The reason of a provider failure.
    pub fn of_provider(err: &ProviderError) -> Self {
        match err {
            ProviderError::DecryptMismatch { .. } => FailureReason::InvalidCiphertext,
            ProviderError::Kms {
                code, transient, ..
            } => match code.as_str() {
                "ThrottlingException" | "LimitExceededException" | "RequestLimitExceeded" => {
                    FailureReason::KmsThrottled
                }
                "AccessDeniedException" | "UnrecognizedClientException" | "credentials" => {
                    FailureReason::KmsAccessDenied
                }
                "DisabledException"
                | "KMSInvalidStateException"
                | "NotFoundException"
                | "InvalidKeyUsageException"
                | "KeyUnavailableException" => FailureReason::KmsKeyState,
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    FailureReason::InvalidCiphertext
                }
                "ClockSkew" => FailureReason::ClockSkew,
                _ if *transient => FailureReason::KmsUnavailable,
                "KMSInternalException" | "DependencyTimeoutException" => {
                    FailureReason::KmsUnavailable
                }
                _ => FailureReason::Other,
            },
            ProviderError::Keyring { .. } => FailureReason::KmsKeyState,
            ProviderError::Unsupported { .. } | ProviderError::Crypto(_) => FailureReason::Other,
        }
    }
}
