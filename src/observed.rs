//! What the stores hold for each key, as the planner sees it.

use std::collections::HashMap;
use std::time::SystemTime;

/// One stored generation, as recorded in its meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVersion {
    /// Generation number, from 1.
    pub generation: u32,
    /// Spec fingerprint of the manifest it was made for.
    pub spec_fingerprint: String,
    /// When it was generated.
    pub created_at: SystemTime,
    /// When it became (or becomes) current.
    pub activates_at: SystemTime,
    /// SHA-256 of its public key: the same generation must hold the same pair everywhere.
    pub public_key_sha256: String,
    /// Its key pair spec, as recorded (for metrics and status).
    pub key_pair_spec: String,
    /// ARN of the KMS key that encrypted its private key.
    pub kms_key_arn: String,
    /// Its encryption context binds it to its key name and generation (false for versions
    /// written before keyprov did, see [`crate::binding`]).
    pub bound: bool,
}

/// The state of one output of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedOutput {
    /// The version `current` points at (AWSCURRENT).
    pub current: Option<ObservedVersion>,
    /// The staged version `next` points at (AWSPENDING).
    pub next: Option<ObservedVersion>,
    /// The generation `previous` points at (AWSPREVIOUS).
    pub previous: Option<u32>,
    /// Every complete version present, ascending.
    pub versions: Vec<u32>,
    /// What differs from the manifest and can be repaired in place (modes, owners, files of
    /// the wrong format, leftovers); empty when all is well.
    pub drift: Vec<String>,
    /// Linked versions (current, next) whose files readers rely on are damaged: a public key
    /// that does not match its meta, a missing or altered ciphertext, unparseable files.
    pub damaged: Vec<Damage>,
    /// False when this output cannot hold old versions to prune (Secrets Manager manages
    /// its own).
    pub prunable: bool,
    /// Versions the output holds that keyprov refused (forged, replayed, not keyprov's): never
    /// used, but a generation number they carry is taken.
    pub refused: Vec<RefusedVersion>,
    /// The JWKs of the versions `next`, `current` and `previous` point at, as observation
    /// found them to check `jwks.json` (file outputs with `publicFormats: [jwk]`; `None`
    /// otherwise): a JWK Set aggregate takes an unchanged key's entries from here instead of
    /// reading its versions again.
    pub linked_jwks: Option<LinkedJwks>,
}

/// The JWKs a file output's links hold (see [`ObservedOutput::linked_jwks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkedJwks {
    /// The JWKs, next first, when observation made them (not when `jwks.json` was vouched for
    /// by its fingerprint: see `crate::store::file::jwks_of_linked`).
    pub keys: Option<Vec<serde_json::Value>>,
    /// The generations `next`, `current` and `previous` point at.
    pub links: [Option<u32>; 3],
    /// The public keys (DER) of linked versions that observation read and verified against
    /// their meta, by generation (the others are read when the JWKs are made).
    pub verified: Vec<(u32, Vec<u8>)>,
    /// What the JWKs are made from, stamped (see [`crate::fingerprints`]), when it could be: a
    /// JWK Set whose members all have one is vouched for by its own stamp.
    pub stamp: Option<crate::fingerprints::Stamp>,
}

/// A version keyprov refused (see [`ObservedOutput::refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedVersion {
    /// Its version id.
    pub version_id: String,
    /// The generation whose request token its id is, if any.
    pub generation: Option<u32>,
}

/// Observations of every desired key: outputs in manifest order, or why they could not be read.
pub type Observed = HashMap<String, Result<Vec<ObservedOutput>, String>>;

/// A linked version whose files are damaged, and what is wrong with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The generation concerned.
    pub generation: u32,
    /// One line per problem, naming the file.
    pub problems: Vec<String>,
}
