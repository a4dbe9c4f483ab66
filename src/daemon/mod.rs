//! The daemon (`keyprov run`): reconciles at start, then whenever a manifest changes
//! (debounced), a rotation, activation or retry falls due, `resyncEvery` passes, or the
//! configuration is reloaded (SIGHUP, or its file changed); stops cleanly on SIGTERM or
//! SIGINT. Speaks sd_notify for systemd `Type=notify-reload`: READY, RELOADING, STOPPING,
//! STATUS, and WATCHDOG pings when `WatchdogSec=` is set.
//!
//! Between reconciles the daemon sleeps on one timer, set to the earliest of: the next
//! scheduled event, a due watchdog ping, the end of a debounce. Nothing else wakes it. A wake
//! for due events reconciles only the keys due ([`due`]); the resync, a manifest change and a
//! reload reconcile every key.

mod debounce;
mod due;
pub mod pace;
mod watch;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock;
use crate::config::Config;
use crate::exit::Exit;
use crate::provider::AnyProvider;
use crate::reconcile::{LockWait, Mode, Report, reconcile, reconcile_due};

use debounce::Debounce;
use due::Schedule;
use pace::Pace;
use watch::ManifestWatcher;
use watchdog::Watchdog;

/// How long a reconcile in flight may take to finish once a stop is asked for.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGHUP: reload the configuration and reconcile.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// Why the daemon reconciles.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pass {
    /// Start-up, or a configuration reload: every key, backoff ignored.
    Everything,
    /// The resync, a manifest change, an event tied to no key: every key; keys in backoff wait.
    Scheduled,
    /// A due wake: only these keys (their rotation, activation, publication or retry came).
    Due(std::collections::BTreeSet<String>),
}

impl Pass {
    /// The keys of a due wake; `None` for a full pass.
    fn due_keys(&self) -> Option<&std::collections::BTreeSet<String>> {
        match self {
            Pass::Due(keys) => Some(keys),
            Pass::Everything | Pass::Scheduled => None,
        }
    }
}

/// What the daemon listens to.
struct Inputs {
    signals: mpsc::UnboundedReceiver<Signal>,
    changes: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    changes_tx: mpsc::UnboundedSender<Vec<PathBuf>>,
    watcher: Option<ManifestWatcher>,
    watchdog: Option<Watchdog>,
}

impl Inputs {
    /// When the watchdog wants its next ping (far in the future without a watchdog).
    fn watchdog_deadline(&self) -> Instant {
        self.watchdog
            .as_ref()
            .map_or_else(far_future, Watchdog::deadline)
    }

    /// (Re)starts the watch of `config`'s files; on failure the previous watch stays.
    fn watch(&mut self, config: &Config) -> Result<(), String> {
        match ManifestWatcher::start(config, self.changes_tx.clone()) {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                Ok(())
            }
            Err(err) => Err(format!("cannot watch the manifests: {err}")),
        }
    }

    /// Sorts changed paths: `(config changed, watch must be rebuilt)`.
    fn classify(&self, paths: &[PathBuf]) -> (bool, bool) {
        let Some(watcher) = &self.watcher else {
            return (false, false);
        };
        let set = watcher.set();
        (
            paths.iter().any(|p| set.is_config(p)),
            paths.iter().any(|p| set.needs_rewatch(p)),
        )
    }
}

/// Runs until stopped; 0 on a clean stop.
pub async fn run(mut config: Config) -> Exit {
    let (signal_tx, signals) = mpsc::unbounded_channel();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let signal_thread = match forward_signals(signal_tx) {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!("cannot install signal handlers: {err}");
            return Exit::KeyFailed;
        }
    };
    let mut inputs = Inputs {
        signals,
        changes,
        changes_tx,
        watcher: None,
        watchdog: Watchdog::from_env(slowest_step(&config)),
    };
    if let Err(err) = inputs.watch(&config) {
        tracing::error!("{err}");
        signal_thread.close();
        return Exit::KeyFailed;
    }
    let mut provider = Arc::new(AnyProvider::from_config(&config));
    let mut metrics_server = None;
    if let Err(err) = serve_metrics(&config, &mut metrics_server).await {
        tracing::error!("{err}");
        signal_thread.close();
        return Exit::KeyFailed;
    }
    log_start(&config, &inputs);
    // The sets as they are on disk until the first reconcile has run, not to be cached: the
    // next publication is not known before it.
    crate::jwks_served::refresh(&config.jwks, Some(clock::now()));
    let mut pass = Pass::Everything;
    let mut reload = false;
    let mut pace = Pace::new(&config, Instant::now());
    let mut schedule = Schedule::default();
    let exit = loop {
        if reload {
            reload = false;
            if let Some(new) = reload_config(&config, &mut inputs) {
                provider = Arc::new(AnyProvider::from_config(&new));
                if let Err(err) = serve_metrics(&new, &mut metrics_server).await {
                    tracing::error!("{err}; the metrics endpoint stays as it was");
                }
                config = new;
                pace.reconfigure(&config, Instant::now());
            }
            pass = Pass::Everything;
        }
        let Some((report, changed)) =
            reconcile_watched(&config, &provider, &pass, &mut inputs, &mut reload).await
        else {
            break Exit::Ok;
        };
        let ended = Instant::now();
        if pass.due_keys().is_none() {
            pace.full_pass_ended(ended);
        }
        let whole = retry_whole(&config, &report, changed);
        schedule.record(pass.due_keys(), &report, whole);
        let mut wait = pace.wait(until(&config, schedule.earliest()), ended);
        // Served sets are cached until the schedule's next publication, not this host's turn.
        crate::jwks_served::refresh(&config.jwks, schedule.publication());
        let status = summary(&pass, &report, wait);
        tracing::info!("{status}");
        // The first READY=1 ends start-up; later ones end a reload.
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        if reload {
            continue;
        }
        let next = loop {
            match sleep(&config, &mut inputs, Instant::now() + wait).await {
                Wake::Stop => break None,
                Wake::Reload => {
                    reload = true;
                    break Some(Pass::Everything);
                }
                Wake::Timer => {
                    let now = clock::now_unlogged();
                    match schedule.wake(now, pace.resync_due(Instant::now())) {
                        due::Wake::Full => {
                            tracing::debug!("timer: reconciling every key (resync)");
                            break Some(Pass::Scheduled);
                        }
                        due::Wake::Keys(keys) => {
                            let count = crate::output::count(keys.len(), "key");
                            tracing::debug!(keys = ?keys, "timer: reconciling {count} due");
                            break Some(Pass::Due(keys));
                        }
                        due::Wake::Nothing => {
                            wait = pace.until(until(&config, schedule.earliest()), Instant::now());
                        }
                    }
                }
                Wake::Changed(paths) => {
                    tracing::info!(paths = ?paths, "manifests changed: reconciling");
                    break Some(Pass::Scheduled);
                }
            }
        };
        let Some(next) = next else {
            break Exit::Ok;
        };
        pass = next;
    };
    notify(&[NotifyState::Stopping]);
    tracing::info!("stopped");
    signal_thread.close();
    exit
}

/// Serves `/metrics` where `metrics.listen` says: (re)binds when the address changed, stops
/// when it was removed. A failure to bind leaves `server` as it was.
async fn serve_metrics(
    config: &Config,
    server: &mut Option<crate::metrics::server::MetricsServer>,
) -> Result<(), String> {
    let current = server.as_ref().map(|s| s.address);
    match config.metrics_listen {
        None => *server = None,
        Some(listen) if current.is_some_and(|c| c == listen || listen.port() == 0) => {}
        Some(listen) => {
            let started = crate::metrics::server::start(listen).await.map_err(|err| {
                format!(
                    "metrics.listen {listen}: cannot listen: {err} (another process on the port?)"
                )
            })?;
            crate::metrics::enable();
            tracing::info!(address = %started.address, "serving metrics on http://{}/metrics", started.address);
            *server = Some(started);
        }
    }
    Ok(())
}

/// The longest a single step of a reconcile may legitimately take: one AWS operation.
fn slowest_step(config: &Config) -> Duration {
    config.aws.operation_timeout + Duration::from_secs(5)
}

fn log_start(config: &Config, inputs: &Inputs) {
    let watched: Vec<String> = inputs
        .watcher
        .as_ref()
        .map(|w| w.set().watched_dirs())
        .unwrap_or_default()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    // Counted without reporting: the first reconcile, right after, reports the problems.
    let keys = crate::manifest::load_with(
        &config.manifests,
        &config.manifest_context(),
        crate::manifest::CacheUse::Read,
    )
    .keys
    .len();
    // Words, not Rust's Debug (`Local`, `None`, `Some(30s)`).
    let provider_name = match config.provider {
        crate::config::ProviderKind::Local => "local",
        crate::config::ProviderKind::Aws => "aws",
    };
    let watchdog = inputs.watchdog.as_ref().map_or_else(
        || "off".to_string(),
        |w| format!("every {}", humantime::format_duration(w.period())),
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.path.display(),
        provider = provider_name,
        state_dir = %config.state_dir.display(),
        watched = %watched.join(", "),
        keys,
        watchdog = %watchdog,
        "keyprov {} starting: {}, provider {provider_name}, watchdog {watchdog}",
        env!("CARGO_PKG_VERSION"),
        crate::output::count(keys, "key"),
    );
}

/// Re-reads the configuration: the new one (applied to logging and the watch), or `None`
/// when it is invalid and the running one stays in force.
fn reload_config(config: &Config, inputs: &mut Inputs) -> Option<Config> {
    notify(&[
        NotifyState::Reloading,
        NotifyState::MonotonicUsec(monotonic_usec()),
    ]);
    match Config::load(&config.path) {
        Ok(new) => {
            crate::logging::set_level(&new.log_level);
            tracing::info!(config = %new.path.display(), "configuration reloaded");
            if let Err(err) = inputs.watch(&new) {
                tracing::error!("{err}");
            }
            if let Some(watchdog) = &mut inputs.watchdog {
                watchdog.set_slowest_step(slowest_step(&new));
            }
            Some(new)
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                tracing::error!("{diagnostic}");
            }
            tracing::error!("configuration not reloaded: the previous one stays in force");
            None
        }
    }
}

/// What ended a sleep.
#[derive(Debug)]
enum Wake {
    Stop,
    Reload,
    Timer,
    Changed(Vec<PathBuf>),
}

/// Sleeps until `until`, a signal, or debounced manifest changes; pings the watchdog on the
/// way. Signals come first: a flood of file events never delays a stop or a reload.
async fn sleep(config: &Config, inputs: &mut Inputs, until: Instant) -> Wake {
    let mut debounce = Debounce::new(config.reconcile.debounce);
    loop {
        let wake_at = [
            Some(until),
            Some(inputs.watchdog_deadline()),
            debounce.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(until);
        tokio::select! {
            biased;
            signal = inputs.signals.recv() => match signal {
                Some(Signal::Reload) => return Wake::Reload,
                Some(Signal::Stop) | None => return Wake::Stop,
            },
            Some(paths) = inputs.changes.recv() => {
                let (_, rewatch) = inputs.classify(&paths);
                if rewatch && let Err(err) = inputs.watch(config) {
                    tracing::error!("{err}");
                }
                debounce.add(paths, Instant::now());
            }
            () = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if let Some(watchdog) = &mut inputs.watchdog {
                    watchdog.ping_if_due();
                }
                if let Some(paths) = debounce.take_if_due(now) {
                    if inputs.classify(&paths).0 {
                        tracing::info!("the configuration file changed: reloading");
                        return Wake::Reload;
                    }
                    return Wake::Changed(paths);
                }
                if now >= until {
                    return Wake::Timer;
                }
            }
        }
    }
}

/// Runs `pass`, pinging the watchdog while the reconcile makes progress. A stop request
/// lets the reconcile finish within [`STOP_GRACE`] and returns `None`. Other wakes during the
/// reconcile are not lost: SIGHUP sets `reload`, a manifest change comes back as `true`, so a
/// full pass follows at once.
async fn reconcile_watched(
    config: &Config,
    provider: &Arc<AnyProvider>,
    pass: &Pass,
    inputs: &mut Inputs,
    reload: &mut bool,
) -> Option<(Report, bool)> {
    crate::progress::beat();
    let mode = Mode::Daemon {
        honor_backoff: *pass != Pass::Everything,
    };
    let reconciling = async {
        match pass.due_keys() {
            Some(keys) => reconcile_due(config, provider.clone(), keys, LockWait::Wait).await,
            None => reconcile(config, provider.clone(), mode, LockWait::Wait).await,
        }
    };
    tokio::pin!(reconciling);
    let mut changed_meanwhile = Vec::new();
    let mut stopping: Option<Instant> = None;
    let report = loop {
        let grace_end = stopping.map_or_else(far_future, |at| at + STOP_GRACE);
        let ping_at = inputs.watchdog_deadline();
        tokio::select! {
            biased;
            report = &mut reconciling => break Some(report),
            signal = inputs.signals.recv(), if stopping.is_none() => match signal {
                Some(Signal::Reload) => *reload = true,
                Some(Signal::Stop) | None => {
                    // systemd sent the signal, so it knows; STOPPING=1 follows in `run`.
                    tracing::info!("stopping: letting the reconcile in flight finish");
                    stopping = Some(Instant::now());
                }
            },
            Some(paths) = inputs.changes.recv() => changed_meanwhile.extend(paths),
            () = tokio::time::sleep_until(ping_at) => {
                if let Some(watchdog) = &mut inputs.watchdog {
                    watchdog.ping_if_progressing();
                }
            }
            () = tokio::time::sleep_until(grace_end) => {
                tracing::warn!(
                    "the reconcile in flight did not finish within {STOP_GRACE:?}; \
                     abandoning it (no version is left half-written)"
                );
                break None;
            }
        }
    };
    if stopping.is_some() {
        return None;
    }
    if changed_meanwhile.is_empty() {
        return report.map(|r| (r, false));
    }
    let (config_changed, rewatch) = inputs.classify(&changed_meanwhile);
    if config_changed {
        *reload = true;
    }
    if rewatch && let Err(err) = inputs.watch(config) {
        tracing::error!("{err}");
    }
    tracing::info!(paths = ?changed_meanwhile, "manifests changed during the reconcile");
    report.map(|r| (r, true))
}

/// A deadline that never comes (tokio's timer wheel holds about two years).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// When the daemon wants a full pass after `report`, for reasons tied to no key: at once when
/// manifests `changed` during it; after `reconcile.retryBackoff` after a failure outside any
/// key (an unusable stateDir, a JWK Set, orphans) or a stateDir lock held elsewhere.
fn retry_whole(config: &Config, report: &Report, changed: bool) -> Option<SystemTime> {
    let now = clock::now_unlogged();
    if changed {
        Some(now)
    } else if report.failed_outside_keys || report.lock_held.is_some() {
        Some(now + config.reconcile.retry_backoff.initial)
    } else {
        None
    }
}

/// How long until `at` (the schedule's next event), at most `resyncEvery` ([`Pace`] decides
/// the rest).
fn until(config: &Config, at: Option<SystemTime>) -> Duration {
    let wait = config.reconcile.resync_every;
    at.map_or(wait, |at| {
        wait.min(at.duration_since(clock::now_unlogged()).unwrap_or_default())
    })
}

/// The pass's status line: full or over due keys, what it did, when the next comes.
fn summary(pass: &Pass, report: &Report, wait: Duration) -> String {
    let next = SystemTime::now() + wait;
    let kind = match pass {
        Pass::Due(_) => "partial pass (due keys)",
        Pass::Everything | Pass::Scheduled => "full pass",
    };
    format!(
        "{kind}: {report}; next reconcile at {}",
        humantime::format_rfc3339_seconds(next)
    )
}

/// Sends a state to systemd when run under it (`NOTIFY_SOCKET`); a failure is logged only.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {err}");
    }
}

/// CLOCK_MONOTONIC in microseconds, as `Type=notify-reload` wants with RELOADING=1.
fn monotonic_usec() -> i128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000)
        .unwrap_or_default()
}

/// Turns SIGHUP, SIGTERM and SIGINT into [`Signal`]s, on a thread of their own (blocked in
/// the kernel until a signal comes).
fn forward_signals(
    signals_tx: mpsc::UnboundedSender<Signal>,
) -> std::io::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("keyprov-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let signal = if signal == SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Stop
                };
                if signals_tx.send(signal).is_err() {
                    break;
                }
            }
        })?;
    Ok(handle)
}
