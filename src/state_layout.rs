//! The names under which keyprov keeps its own records in the stateDir, in one place: what
//! checks a user's paths (manifests' output directories, JWK Sets) needs to know these names,
//! never the modules that write there.

/// Retry records and journalled hooks ([`crate::retry`]).
pub const RETRY_DIR: &str = "retry";

/// Small durable records and the manifest parse cache ([`crate::ledger`]).
pub const LEDGER_DIR: &str = "ledger";
