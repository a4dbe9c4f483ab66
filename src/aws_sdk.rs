//! The AWS SDK configuration shared by the KMS provider and the Secrets Manager store: the
//! standard credential and region chain plus the config's `aws` overrides, and clients that log
//! each retried attempt.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_kms::config::{ConfigBag, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;

use crate::config::{AwsSettings, RetryMode};

/// Loads the SDK configuration: the standard chain plus this configuration's overrides.
pub async fn sdk_config(settings: &AwsSettings) -> aws_config::SdkConfig {
    let retry = match settings.retry_mode {
        RetryMode::Standard => RetryConfig::standard(),
        RetryMode::Adaptive => RetryConfig::adaptive(),
    }
    .with_max_attempts(settings.max_attempts);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_attempt_timeout(settings.attempt_timeout)
        .operation_timeout(settings.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// The KMS client of these settings, logging its retries ([`RetryLog`]) and recording the
/// `Date` of every response ([`crate::aws_clock`]).
pub async fn kms_client(settings: &AwsSettings) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::config::Builder::from(&sdk_config(settings).await)
        .interceptor(RetryLog)
        .interceptor(crate::aws_clock::DateHeader)
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// The Secrets Manager client of these settings, logging its retries ([`RetryLog`]) and
/// recording the `Date` of every response ([`crate::aws_clock`]).
pub async fn secrets_manager_client(settings: &AwsSettings) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::config::Builder::from(&sdk_config(settings).await)
        .interceptor(RetryLog)
        .interceptor(crate::aws_clock::DateHeader)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// An error and its sources, joined with ": " (a source already in the text is not repeated),
/// on one line (the credential chain lists its providers one per line: joined with "; ").
/// Display only: never a Debug dump, which can hold request or response bodies.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether an AWS call failed for lack of credentials, from its [`error_chain`]: none found,
/// or every provider of the chain failed (an instance metadata service that refuses, a profile
/// that cannot be read), which the SDK reports as a dispatch failure like a network error.
pub fn is_credentials_error(chain: &str) -> bool {
    [
        "no credentials found",
        "CredentialsNotLoaded",
        "loading credentials",
    ]
    .iter()
    .any(|needle| chain.contains(needle))
}

/// `text` cut to at most `max` characters at a word boundary, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max).collect();
    let cut = head.rfind(char::is_whitespace).unwrap_or(head.len());
    format!("{}…", head[..cut].trim_end())
}

/// Longest cause a retry line quotes.
const RETRY_CAUSE_CHARS: usize = 300;

/// Logs one WARN line per retried attempt of an AWS call: which call, which attempt failed,
/// why, and the number of the attempt that follows. The SDK says so itself only at debug
/// level, together with two other lines per call, every call.
#[derive(Debug)]
pub struct RetryLog;

/// Why the last attempt of a call failed, kept in the call's config bag until the next attempt.
#[derive(Debug, Clone)]
struct LastFailure(String);

impl aws_smithy_types::config_bag::Storable for LastFailure {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_sdk_kms::config::Intercept for RetryLog {
    fn name(&self) -> &'static str {
        "keyprov::RetryLog"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Err(err)) = context.output_or_error() {
            let mut cause = error_chain(err);
            if let Some(response) = context.response() {
                cause = format!("HTTP {}: {cause}", response.status().as_u16());
            }
            cfg.interceptor_state().store_put(LastFailure(cause));
        }
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if attempt > 1 {
            let call = cfg.load::<Metadata>().map_or_else(
                || "an AWS call".to_string(),
                |m| format!("{} {}", m.service(), m.name()),
            );
            let cause = cfg
                .load::<LastFailure>()
                .map_or_else(|| "an error".to_string(), |f| f.0.clone());
            tracing::warn!(
                "{call}: attempt #{} failed with {}; retrying (attempt #{attempt})",
                attempt - 1,
                clip(&cause, RETRY_CAUSE_CHARS)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clipped_message_ends_between_words() {
        assert_eq!(
            clip("kind: Connection refused", 100),
            "kind: Connection refused"
        );
        assert_eq!(clip("kind: Connection refused", 10), "kind:…");
        assert_eq!(clip("Connectionrefused", 5), "Conne…");
        assert_eq!(
            clip("ĉĉĉ ĉĉĉ", 5),
            "ĉĉĉ…",
            "counted in characters, cut on one"
        );
    }

    #[test]
    fn credential_failures_are_recognised() {
        assert!(is_credentials_error(
            "dispatch failure: other: the credential provider was not enabled: no credentials \
             found in chain. Attempted: Environment: ..."
        ));
        assert!(is_credentials_error(
            "dispatch failure: other: an error occurred while loading credentials: failed to \
             load IMDS session token"
        ));
        assert!(!is_credentials_error(
            "dispatch failure: io error: error trying to connect: Connection refused"
        ));
    }
}
