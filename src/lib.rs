//! keyprov: a declarative key-provisioning daemon. Manifests say which asymmetric key pairs
//! must exist; keyprov generates them with AWS KMS `GenerateDataKeyPair` (or an embedded local
//! provider) and keeps them, rotated, in files and AWS Secrets Manager.
//!
//! Data flow: [`manifest::load`] -> [`observe`] -> [`plan::plan`] (pure) -> [`execute`].

pub mod aws_clock;
pub mod aws_sdk;
pub mod binding;
pub mod clock;
pub mod clock_guard;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod exit;
pub mod fingerprints;
pub mod fleet;
pub mod group_commit;
pub mod hook_process;
pub mod hooks;
pub mod jwks_aggregate;
pub mod jwks_members;
pub mod jwks_served;
pub mod key_events;
pub mod key_material;
pub mod ledger;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod observed;
pub mod orphans;
pub mod output;
pub mod parallel;
pub mod plan;
pub mod private_formats;
pub mod progress;
pub mod provider;
pub mod prune_ledger;
pub mod prune_restore;
pub mod public_formats;
pub mod reconcile;
pub mod retry;
pub mod schedule;
pub mod secret_proof;
pub mod secret_refusal;
pub mod spec;
pub mod spec_change;
pub mod state_layout;
pub mod store;
