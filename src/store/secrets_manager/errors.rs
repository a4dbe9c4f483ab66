//! Secrets Manager failures as messages that name the secret and say what to do. Raw response
//! bodies are never shown.

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// How a failure for lack of AWS credentials begins (`plan` reports those keys as not
/// observable rather than failed).
pub const NO_CREDENTIALS: &str = "no AWS credentials";

/// A classified failure.
pub enum Failure {
    /// The secret (or version) does not exist.
    NotFound,
    /// The secret, or a version under this request token, already exists.
    Exists,
    /// Anything else, explained.
    Other(String),
}

impl Failure {
    /// As a store error (`NotFound` and `Exists` where the caller did not expect them).
    pub fn into_error(self) -> StoreError {
        StoreError::Config(match self {
            Failure::NotFound => "the secret was not found".into(),
            Failure::Exists => "the secret or version already exists".into(),
            Failure::Other(message) => message,
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("not found"),
            Failure::Exists => f.write_str("already exists"),
            Failure::Other(message) => f.write_str(message),
        }
    }
}

/// The output of `operation` on `secret`, `None` when the secret does not exist; any other
/// failure explained.
pub fn found<T, E, R>(
    result: Result<T, SdkError<E, R>>,
    secret: &str,
    operation: &str,
) -> Result<Option<T>, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match result {
        Ok(output) => Ok(Some(output)),
        Err(err) => match explain(&err, secret, operation) {
            Failure::NotFound => Ok(None),
            other => Err(other),
        },
    }
}

/// Explains a failed `operation` on `secret`.
pub fn explain<E, R>(err: &SdkError<E, R>, secret: &str, operation: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = err.code().unwrap_or_default();
    let detail = err.message().unwrap_or_default();
    let message = match code {
        "ResourceNotFoundException" => return Failure::NotFound,
        "ResourceExistsException" => return Failure::Exists,
        "AccessDeniedException" => format!(
            "access to secret {secret} denied: allow secretsmanager:{operation} on it for \
             keyprov's identity ({detail})"
        ),
        "InvalidRequestException" if detail.to_lowercase().contains("delet") => format!(
            "secret {secret} is scheduled for deletion: restore it (aws secretsmanager \
             restore-secret --secret-id {secret}) or remove this output from the manifest \
             ({detail})"
        ),
        "EncryptionFailure" | "DecryptionFailure" => format!(
            "the KMS key of secret {secret} cannot be used ({code}): enable it, allow keyprov \
             kms:GenerateDataKey and kms:Decrypt on it, or set the output's kmsKeyId to a \
             usable key ({detail})"
        ),
        "ThrottlingException" | "LimitExceededException" => format!(
            "Secrets Manager kept throttling {operation} on {secret} after every retry: lower \
             reconcile.maxRequestsPerSecond ({detail})"
        ),
        "" => match err {
            SdkError::DispatchFailure(_) => {
                // Display only: the SDK's Debug dump of the chain can hold a whole response.
                let chain = crate::aws_sdk::error_chain(err);
                let cause = crate::aws_sdk::clip(&chain, 500);
                if crate::aws_sdk::is_credentials_error(&chain) {
                    format!(
                        "{NO_CREDENTIALS} to read or write secret {secret}: configure them as for \
                         the AWS CLI (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web \
                         identity, ECS or instance metadata); the credential chain said: {cause}"
                    )
                } else {
                    format!(
                        "cannot reach Secrets Manager for {secret} after every retry: {cause} \
                         (check the network and aws.endpointUrl / AWS_ENDPOINT_URL)"
                    )
                }
            }
            SdkError::TimeoutError(_) => format!(
                "Secrets Manager {operation} on {secret} timed out after every retry (see \
                 aws.attemptTimeout and aws.operationTimeout)"
            ),
            SdkError::ConstructionFailure(_) => format!(
                "cannot make the Secrets Manager request {operation} for {secret}: are AWS \
                 credentials and a region configured?"
            ),
            _ => format!("Secrets Manager {operation} on {secret} failed: {err}"),
        },
        _ => format!("Secrets Manager {operation} on {secret} failed: {code}: {detail}"),
    };
    Failure::Other(message)
}
