//! Prometheus metrics (prometheus-client): what each key holds and when it rotates, what each
//! reconcile did, provider requests and hooks. Served by the daemon on `metrics.listen`
//! (see [`server`]) and written once by `run --once --metrics-file F` for node-exporter's
//! textfile collector ([`write_textfile`]).
//!
//! One process-wide registry ([`global`]), reached by the reconcile pass and the commands,
//! never from below: providers report to what the pass hands them
//! ([`crate::reconcile::metered`]). Series that name a key are dropped when the key's
//! manifest goes ([`Metrics::forget_keys`]), so no stale value outlives its key.

mod failure;
mod labels;
pub mod server;

pub use failure::FailureReason;
use labels::*;

type TimeGauge = Gauge<f64, AtomicU64>;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::manifest::KeyPair;
use crate::observed::ObservedOutput;
use crate::plan;
use crate::provider::ProviderError;

/// What a key shows now: the label sets of its state series, to remove them when they change.
#[derive(Debug, Default, Clone)]
struct KeySeries {
    info: Vec<KeyInfoLabels>,
    created: Vec<KeyStateLabels>,
}

/// Every metric keyprov exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    key_info: Family<KeyInfoLabels, Gauge>,
    key_ready: Family<KeyLabel, Gauge>,
    key_created: Family<KeyStateLabels, TimeGauge>,
    rotation_due: Family<KeyLabel, TimeGauge>,
    next_activation: Family<KeyLabel, TimeGauge>,
    last_success: Family<KeyLabel, TimeGauge>,
    reconcile_duration: Histogram,
    reconciles: Family<PassLabel, Counter>,
    generations: Family<KeyReasonLabels, Counter>,
    failures: Family<KeyReasonLabels, Counter>,
    provider_requests: Family<RequestLabels, Counter>,
    provider_duration: Family<OperationLabels, Histogram>,
    hook_runs: Family<HookLabels, Counter>,
    clock_warnings: Family<KeyReasonLabels, Counter>,
    manifest_valid: Family<FileLabel, Gauge>,
    /// The state series each key has now.
    series: Mutex<BTreeMap<String, KeySeries>>,
    /// Keys with counters, so their series can go with them.
    counted: Mutex<BTreeMap<String, Vec<CountedSeries>>>,
    /// Held for writing while a key's series are replaced (removed, then set again) and for
    /// reading while a scrape encodes: a scrape never sees a key half replaced.
    replacing: RwLock<()>,
}

/// A counter series that names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CountedSeries {
    Generation(&'static str),
    Failure(&'static str),
    Hook(&'static str, &'static str),
    Clock(&'static str),
}

fn seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    fn new() -> Self {
        let mut metrics = Metrics {
            key_info: Family::default(),
            key_ready: Family::default(),
            key_created: Family::default(),
            rotation_due: Family::default(),
            next_activation: Family::default(),
            last_success: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            reconciles: Family::default(),
            generations: Family::default(),
            failures: Family::default(),
            provider_requests: Family::default(),
            provider_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            hook_runs: Family::default(),
            clock_warnings: Family::default(),
            manifest_valid: Family::default(),
            series: Mutex::default(),
            counted: Mutex::default(),
            replacing: RwLock::default(),
            registry: Registry::with_prefix("keyprov"),
        };
        metrics.registry.register(
            "key_info",
            "A generation a key holds, by state (next, current, previous); always 1",
            metrics.key_info.clone(),
        );
        metrics.registry.register(
            "key_ready",
            "1 when the key has a current generation and every output holds it",
            metrics.key_ready.clone(),
        );
        metrics.registry.register_with_unit(
            "key_created_timestamp",
            "When the generation in this state was created (Unix time)",
            Unit::Seconds,
            metrics.key_created.clone(),
        );
        metrics.registry.register_with_unit(
            "key_rotation_due_timestamp",
            "When the key's next rotation is due (Unix time), counted from the staged generation while one waits; absent for keys that never rotate",
            Unit::Seconds,
            metrics.rotation_due.clone(),
        );
        metrics.registry.register_with_unit(
            "key_next_activation_timestamp",
            "When the staged generation becomes current (Unix time); only while one waits",
            Unit::Seconds,
            metrics.next_activation.clone(),
        );
        metrics.registry.register_with_unit(
            "last_successful_reconcile_timestamp",
            "When a reconcile last ended with the key converged (Unix time)",
            Unit::Seconds,
            metrics.last_success.clone(),
        );
        metrics.registry.register_with_unit(
            "reconcile_duration",
            "Duration of a reconcile, from taking the stateDir lock to its report",
            Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        metrics.registry.register(
            "reconciles",
            "Reconcile passes: full (every key) or partial (the daemon's wake for due keys)",
            metrics.reconciles.clone(),
        );
        metrics.registry.register(
            "generations",
            "New generations made, by reason (new_key, spec_change, rotation, requested, unbound)",
            metrics.generations.clone(),
        );
        metrics.registry.register(
            "failures",
            "Key failures by reason",
            metrics.failures.clone(),
        );
        metrics.registry.register(
            "provider_requests",
            "Provider requests (after the SDK's own retries) by operation and result code",
            metrics.provider_requests.clone(),
        );
        metrics.registry.register_with_unit(
            "provider_request_duration",
            "Duration of provider requests, the SDK's retries included",
            Unit::Seconds,
            metrics.provider_duration.clone(),
        );
        metrics.registry.register(
            "hook_runs",
            "onRotate hook runs by event and result",
            metrics.hook_runs.clone(),
        );
        metrics.registry.register(
            "clock_warnings",
            "Times a wrong clock was detected, by reason: future_time (a version stamped ahead \
             of now), activation_capped (a staged activation beyond createdAt + publishAhead), \
             aws_skew (the local clock differs from AWS's; nothing generated or activated)",
            metrics.clock_warnings.clone(),
        );
        metrics.registry.register(
            "manifest_valid",
            "1 when the manifest file is valid, 0 when its keys are left untouched",
            metrics.manifest_valid.clone(),
        );
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: env!("KEYPROV_REVISION"),
            })
            .set(1);
        metrics.registry.register(
            "build_info",
            "The running keyprov's version and git revision; always 1",
            build_info,
        );
        metrics
    }

    /// Counts a provider request and its duration; `code` is `ok` or the error's label.
    pub fn provider_request(
        &self,
        provider: &'static str,
        operation: &'static str,
        result: Result<(), &ProviderError>,
        elapsed: Duration,
    ) {
        let code = match result {
            Ok(()) => "ok".to_string(),
            Err(err) => err.label().to_string(),
        };
        self.provider_requests
            .get_or_create(&RequestLabels {
                provider,
                operation,
                code,
            })
            .inc();
        self.provider_duration
            .get_or_create(&OperationLabels {
                provider,
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    fn remember(&self, key: &str, series: CountedSeries) {
        let mut counted = self.counted.lock().expect("metrics lock");
        let list = counted.entry(key.to_string()).or_default();
        if !list.contains(&series) {
            list.push(series);
        }
    }

    /// Counts a new generation of `key`.
    pub fn generation(&self, key: &str, reason: plan::Reason) {
        let reason = match reason {
            plan::Reason::Create => "new_key",
            plan::Reason::SpecChanged => "spec_change",
            plan::Reason::RotationDue => "rotation",
            plan::Reason::Requested => "requested",
            plan::Reason::Unbound { .. } => "unbound",
        };
        self.remember(key, CountedSeries::Generation(reason));
        self.generations
            .get_or_create(&KeyReasonLabels {
                key: key.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts a failure of `key`.
    pub fn failure(&self, key: &str, reason: FailureReason) {
        self.remember(key, CountedSeries::Failure(reason.as_str()));
        self.failures
            .get_or_create(&KeyReasonLabels {
                key: key.to_string(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a clock problem seen for `key` (see `clock_guard`).
    pub fn clock_warning(&self, key: &str, reason: &'static str) {
        self.remember(key, CountedSeries::Clock(reason));
        self.clock_warnings
            .get_or_create(&KeyReasonLabels {
                key: key.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts a hook run of `key`.
    pub fn hook_run(&self, key: &str, event: &'static str, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.remember(key, CountedSeries::Hook(event, result));
        self.hook_runs
            .get_or_create(&HookLabels {
                key: key.to_string(),
                event,
                result,
            })
            .inc();
    }

    /// Records one reconcile's duration.
    pub fn reconcile_took(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a reconcile pass: `partial` for the daemon's wake for due keys.
    pub fn reconciled(&self, partial: bool) {
        let pass = if partial { "partial" } else { "full" };
        self.reconciles.get_or_create(&PassLabel { pass }).inc();
    }

    /// Sets `manifest_valid` for exactly `files` (path, valid): files no longer read go.
    pub fn manifests(&self, files: &[(String, bool)]) {
        let _replacing = self.replacing.write().expect("metrics lock");
        self.manifest_valid.clear();
        for (file, valid) in files {
            self.manifest_valid
                .get_or_create(&FileLabel { file: file.clone() })
                .set(i64::from(*valid));
        }
    }

    /// Sets the state series of `key` from what its outputs hold (`outputs`, in manifest
    /// order), replacing those it had; `previous` gives the spec, KMS key and creation time of
    /// the previous generation when known. `converged_at` marks a successful reconcile.
    pub fn key_state(
        &self,
        key: &KeyPair,
        outputs: &[ObservedOutput],
        previous: Option<&crate::store::VersionMeta>,
        converged_at: Option<SystemTime>,
    ) {
        let _replacing = self.replacing.write().expect("metrics lock");
        self.clear_state(&key.name);
        let name = &key.name;
        let label = KeyLabel { key: name.clone() };
        let (current, next) = plan::authoritative(outputs);
        let mut series = KeySeries::default();
        let mut add = |state: &'static str,
                       generation: u32,
                       spec: &str,
                       kms_key: &str,
                       created: Option<SystemTime>| {
            let info = KeyInfoLabels {
                key: name.clone(),
                key_spec: spec.to_string(),
                kms_key: kms_key.to_string(),
                generation: generation.to_string(),
                state,
            };
            self.key_info.get_or_create(&info).set(1);
            series.info.push(info);
            if let Some(created) = created {
                let labels = KeyStateLabels {
                    key: name.clone(),
                    state,
                };
                self.key_created
                    .get_or_create(&labels)
                    .set(seconds(created));
                series.created.push(labels);
            }
        };
        if let Some(next) = next {
            add(
                "next",
                next.generation,
                &next.key_pair_spec,
                &next.kms_key_arn,
                Some(next.created_at),
            );
            self.next_activation
                .get_or_create(&label)
                .set(seconds(next.activates_at));
        }
        if let Some(current) = current {
            add(
                "current",
                current.generation,
                &current.key_pair_spec,
                &current.kms_key_arn,
                Some(current.created_at),
            );
        }
        // Counted as `status` and `plan` count it: from the staged generation when one waits.
        if let Some(due) = plan::upcoming(key, outputs).rotation {
            self.rotation_due
                .get_or_create(&label)
                .set(seconds(due.activate_at));
        }
        let previous_generation = outputs.iter().find_map(|o| o.previous);
        if let Some(generation) = previous_generation {
            let meta = previous.filter(|m| m.generation == generation);
            let created = meta.and_then(|m| crate::schedule::parse_time(&m.created_at).ok());
            add(
                "previous",
                generation,
                meta.map_or("", |m| m.key_pair_spec.as_str()),
                meta.map_or("", |m| m.kms_key_arn.as_str()),
                created,
            );
        }
        let ready = current.is_some_and(|current| {
            outputs.iter().all(|o| {
                o.current
                    .as_ref()
                    .is_some_and(|c| c.generation == current.generation)
            })
        });
        self.key_ready.get_or_create(&label).set(i64::from(ready));
        if let Some(at) = converged_at {
            self.last_success.get_or_create(&label).set(seconds(at));
        }
        self.series
            .lock()
            .expect("metrics lock")
            .insert(name.clone(), series);
    }

    /// Marks a key whose outputs could not be read: not ready, nothing else known.
    pub fn key_unreadable(&self, name: &str) {
        let _replacing = self.replacing.write().expect("metrics lock");
        self.clear_state(name);
        self.key_ready
            .get_or_create(&KeyLabel {
                key: name.to_string(),
            })
            .set(0);
        self.series
            .lock()
            .expect("metrics lock")
            .insert(name.to_string(), KeySeries::default());
    }

    /// Removes the state series of `name` (not its counters).
    fn clear_state(&self, name: &str) {
        let label = KeyLabel {
            key: name.to_string(),
        };
        if let Some(old) = self.series.lock().expect("metrics lock").remove(name) {
            for info in &old.info {
                self.key_info.remove(info);
            }
            for created in &old.created {
                self.key_created.remove(created);
            }
        }
        self.key_ready.remove(&label);
        self.rotation_due.remove(&label);
        self.next_activation.remove(&label);
    }

    /// Drops every series of keys not in `keep` (their manifest is gone), counters included.
    pub fn forget_keys(&self, keep: &BTreeSet<String>) {
        let _replacing = self.replacing.write().expect("metrics lock");
        let gone: Vec<String> = {
            let series = self.series.lock().expect("metrics lock");
            let counted = self.counted.lock().expect("metrics lock");
            series
                .keys()
                .chain(counted.keys())
                .filter(|name| !keep.contains(*name))
                .cloned()
                .collect()
        };
        for name in gone {
            self.clear_state(&name);
            self.last_success.remove(&KeyLabel { key: name.clone() });
            let counted = self
                .counted
                .lock()
                .expect("metrics lock")
                .remove(&name)
                .unwrap_or_default();
            for series in counted {
                match series {
                    CountedSeries::Generation(reason) => {
                        self.generations.remove(&KeyReasonLabels {
                            key: name.clone(),
                            reason,
                        });
                    }
                    CountedSeries::Failure(reason) => {
                        self.failures.remove(&KeyReasonLabels {
                            key: name.clone(),
                            reason,
                        });
                    }
                    CountedSeries::Clock(reason) => {
                        self.clock_warnings.remove(&KeyReasonLabels {
                            key: name.clone(),
                            reason,
                        });
                    }
                    CountedSeries::Hook(event, result) => {
                        self.hook_runs.remove(&HookLabels {
                            key: name.clone(),
                            event,
                            result,
                        });
                    }
                }
            }
        }
    }

    /// The OpenMetrics text exposition (what Prometheus asks for).
    pub fn openmetrics(&self) -> String {
        let _replacing = self.replacing.read().expect("metrics lock");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The Prometheus text format 0.0.4 (what node-exporter's textfile collector reads, and
    /// what a plain `curl` gets).
    pub fn prometheus_text(&self) -> String {
        let _replacing = self.replacing.read().expect("metrics lock");
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns on the per-key state series (set by the daemon with `metrics.listen`, and by
/// `run --once --metrics-file`): they cost an observation of changed keys after each reconcile.
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Writes the Prometheus text exposition to `path` atomically
/// ([`crate::store::dir::DirHandle::replace_file`]), readable by all (`0644`): node-exporter
/// runs as another user. The directory is the operator's, trusted as a root is.
pub fn write_textfile(path: &Path) -> Result<(), crate::store::StoreError> {
    use crate::store::{StoreError, dir::DirHandle};
    let names_no_file = || StoreError::Config(format!("{} names no file", path.display()));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(names_no_file)?;
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = DirHandle::open_root(parent, false)?.ok_or_else(|| StoreError::Corrupt {
        path: parent.display().to_string(),
        message: "does not exist".into(),
    })?;
    dir.replace_file(
        name,
        global().prometheus_text().as_bytes(),
        0o644,
        (None, None),
    )?;
    dir.sync()
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    /// Every scrape taken while a pass replaces keys' series shows every key once.
    #[test]
    fn a_scrape_never_sees_a_key_half_replaced() {
        const KEYS: usize = 50;
        let metrics = Metrics::new();
        let names: Vec<String> = (0..KEYS).map(|i| format!("key-{i:03}")).collect();
        for name in &names {
            metrics.key_unreadable(name);
        }
        let ready = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("keyprov_key_ready{"))
                .count()
        };
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..400 {
                    for name in &names {
                        metrics.key_unreadable(name);
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let mut scrapes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || scrapes == 0 {
                assert_eq!(ready(&metrics.prometheus_text()), KEYS, "scrape {scrapes}");
                scrapes += 1;
            }
        });
    }
}
