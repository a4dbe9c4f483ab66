//! AWS KMS provider (aws-sdk-kms).
