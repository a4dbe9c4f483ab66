//! The AWS KMS provider: `GenerateDataKeyPair(WithoutPlaintext)` and `Decrypt` through
//! aws-sdk-kms, configured by aws-config's standard chain (environment, profile, SSO, web
//! identity, IMDS), with the configuration's region, profile, endpoint, timeouts and retries.
//!
//! The client is built on first use, so `plan`, `validate` and a converged `run` need no
//! credentials and make no call.

use std::collections::HashMap;

use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeyPairSpec;
use tokio::sync::OnceCell;

use super::{
    DecryptRequest, GenerateRequest, GeneratedPair, PrivateKey, Provider, ProviderError,
    canonical_context,
};
use crate::config::AwsSettings;

/// KMS through aws-sdk-kms.
pub struct AwsProvider {
    settings: AwsSettings,
    client: OnceCell<Client>,
}

impl AwsProvider {
    /// A provider with these settings; the client is built on the first call.
    pub fn new(settings: AwsSettings) -> Self {
        AwsProvider {
            settings,
            client: OnceCell::new(),
        }
    }

    /// Builds the client ahead of the first call, when that needs no network: building it
    /// resolves the region, and without one from the configuration or the environment the
    /// SDK would ask the instance metadata service. Building it (about 10–40 ms, mostly
    /// loading the system's trust roots) then overlaps manifest loading.
    pub async fn warm_up(&self) {
        let region_known = self.settings.region.is_some()
            || ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
            || std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v == "true");
        if region_known {
            self.client().await;
        }
    }

    /// Makes one cheap KMS request (DescribeKey of `kms_key_id`) only for the `Date` of its
    /// response, which [`crate::aws_clock`] records whatever the outcome (an access denial
    /// carries one too).
    pub async fn probe_clock(&self, kms_key_id: &str) {
        let _ = self
            .client()
            .await
            .describe_key()
            .key_id(kms_key_id)
            .send()
            .await;
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| crate::aws_sdk::kms_client(&self.settings))
            .await
    }
}

fn blob(blob: Option<Blob>, what: &str) -> Result<Vec<u8>, ProviderError> {
    blob.map(Blob::into_inner)
        .ok_or_else(|| ProviderError::Kms {
            code: "IncompleteResponse".into(),
            message: format!("KMS returned no {what}"),
            transient: false,
        })
}

fn context_map(
    context: &std::collections::BTreeMap<String, String>,
) -> Option<HashMap<String, String>> {
    (!context.is_empty()).then(|| {
        context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

fn grants(tokens: &[String]) -> Option<Vec<String>> {
    (!tokens.is_empty()).then(|| tokens.to_vec())
}

/// Turns a KMS failure into a message naming the KMS key and what to do. Raw responses are
/// never shown: a response body may hold key material.
pub fn explain<E, R>(err: &SdkError<E, R>, kms_key: &str, operation: &str) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = err.code().unwrap_or_default().to_string();
    let detail = err.message().unwrap_or_default().to_string();
    let (message, transient) = match code.as_str() {
        "NotFoundException" => (
            format!(
                "KMS key {kms_key} was not found: check kmsKeyId, that the alias exists, and the region ({detail})"
            ),
            false,
        ),
        "DisabledException" => (
            format!(
                "KMS key {kms_key} is disabled: enable it (aws kms enable-key) or point kmsKeyId at an enabled key ({detail})"
            ),
            false,
        ),
        "KMSInvalidStateException" => (
            format!(
                "KMS key {kms_key} cannot be used in its current state, e.g. pending deletion: cancel the deletion (aws kms cancel-key-deletion) or use another key ({detail})"
            ),
            false,
        ),
        "InvalidKeyUsageException" => (
            format!(
                "KMS key {kms_key} cannot protect data key pairs: kmsKeyId must name a symmetric encryption key (KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT), not an asymmetric or HMAC key ({detail})"
            ),
            false,
        ),
        "UnsupportedOperationException" => (
            format!(
                "KMS does not support {operation} here for key {kms_key}: SM2 is only available in China Regions, and keys in custom key stores cannot generate data key pairs ({detail})"
            ),
            false,
        ),
        "ValidationException" => (
            format!(
                "KMS rejected {operation} for key {kms_key}: {detail} (is the keyPairSpec supported by this KMS endpoint?)"
            ),
            false,
        ),
        "AccessDeniedException" => (
            format!(
                "access to KMS key {kms_key} denied: allow kms:{operation} for the daemon's identity in the key policy or IAM ({detail})"
            ),
            false,
        ),
        "ThrottlingException" | "LimitExceededException" => (
            format!(
                "KMS kept throttling {operation} for key {kms_key} after every retry: lower reconcile.maxRequestsPerSecond ({detail})"
            ),
            true,
        ),
        "DependencyTimeoutException" | "KeyUnavailableException" | "KMSInternalException" => (
            format!(
                "KMS was unavailable ({code}) for key {kms_key} after every retry; the key is retried on the next reconcile ({detail})"
            ),
            true,
        ),
        _ => match err {
            SdkError::DispatchFailure(_)
                if crate::aws_sdk::is_credentials_error(&error_chain(err)) =>
            {
                (
                    format!(
                        "no AWS credentials to call KMS for key {kms_key}: configure them as for \
                         the AWS CLI (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
                         web identity, ECS or instance metadata). Where the chain looked: {}",
                        error_chain(err)
                            .split_once("Attempted:")
                            .map_or_else(|| error_chain(err), |(_, tried)| tried.to_string())
                            .split('\n')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    false,
                )
            }
            SdkError::DispatchFailure(failure) => (
                format!(
                    "cannot reach KMS for key {kms_key} after every retry: {} (check the network, aws.endpointUrl / AWS_ENDPOINT_URL and aws.connectTimeout)",
                    failure
                        .as_connector_error()
                        .map_or_else(|| "dispatch failure".to_string(), |e| error_chain(e))
                ),
                true,
            ),
            SdkError::TimeoutError(_) => (
                format!(
                    "KMS {operation} for key {kms_key} timed out after every retry (see aws.attemptTimeout and aws.operationTimeout)"
                ),
                true,
            ),
            SdkError::ResponseError(_) => (
                format!(
                    "KMS {operation} for key {kms_key}: the response could not be read (transport error or not a KMS endpoint)"
                ),
                true,
            ),
            SdkError::ConstructionFailure(_) => (
                format!(
                    "KMS {operation} for key {kms_key} could not be sent: {} (are credentials and region configured?)",
                    error_chain(err)
                ),
                false,
            ),
            _ if !code.is_empty() => (
                format!("KMS {operation} failed for key {kms_key}: {code}: {detail}"),
                false,
            ),
            _ => (
                format!(
                    "KMS {operation} failed for key {kms_key}: {}",
                    error_chain(err)
                ),
                true,
            ),
        },
    };
    let code = if code.is_empty() {
        "transport".to_string()
    } else {
        code
    };
    ProviderError::Kms {
        code,
        message,
        transient,
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        let client = self.client().await;
        // The two operations take the same request and return the same fields, but the SDK
        // gives each its own builder and output type.
        macro_rules! send {
            ($builder:expr, $operation:literal) => {
                $builder
                    .key_id(request.kms_key_id)
                    .key_pair_spec(DataKeyPairSpec::from(request.spec.as_str()))
                    .set_encryption_context(context_map(request.encryption_context))
                    .set_grant_tokens(grants(request.grant_tokens))
                    .send()
                    .await
                    .map_err(|err| explain(&err, request.kms_key_id, $operation))?
            };
        }
        let (public, ciphertext, plaintext, key_id) = if request.include_plaintext {
            let output = send!(client.generate_data_key_pair(), "GenerateDataKeyPair");
            let plaintext = blob(output.private_key_plaintext, "PrivateKeyPlaintext")?;
            (
                output.public_key,
                output.private_key_ciphertext_blob,
                Some(PrivateKey::from_der(plaintext)),
                output.key_id,
            )
        } else {
            let output = send!(
                client.generate_data_key_pair_without_plaintext(),
                "GenerateDataKeyPairWithoutPlaintext"
            );
            (
                output.public_key,
                output.private_key_ciphertext_blob,
                None,
                output.key_id,
            )
        };
        Ok(GeneratedPair {
            public_key_der: blob(public, "PublicKey")?,
            private_key_ciphertext: blob(ciphertext, "PrivateKeyCiphertextBlob")?,
            private_key: plaintext,
            kms_key_arn: key_id.unwrap_or_else(|| request.kms_key_id.to_string()),
        })
    }

    async fn decrypt(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        let client = self.client().await;
        let mut output = client
            .decrypt()
            .ciphertext_blob(Blob::new(request.ciphertext))
            .key_id(request.kms_key_arn)
            .set_encryption_context(context_map(request.encryption_context))
            .set_grant_tokens(grants(request.grant_tokens))
            .send()
            .await
            .map_err(|err| match err.code() {
                Some(code @ ("InvalidCiphertextException" | "IncorrectKeyException")) => {
                    ProviderError::DecryptMismatch {
                        name: request.name.to_string(),
                        context: canonical_context(request.encryption_context),
                        kms_key: request.kms_key_arn.to_string(),
                        other_key: code == "IncorrectKeyException",
                    }
                }
                _ => explain(&err, request.kms_key_arn, "Decrypt"),
            })?;
        Ok(PrivateKey::from_der(blob(
            output.plaintext.take(),
            "Plaintext",
        )?))
    }
}
