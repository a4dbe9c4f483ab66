//! The daemon (`keyprov run`): reconciles at start, then whenever a manifest changes
//! (debounced), a rotation or activation falls due, `resyncEvery` passes, or the configuration
//! is reloaded (SIGHUP, or its file changed); stops cleanly on SIGTERM or SIGINT. Speaks sd_notify for systemd `Type=notify-reload`: READY, RELOADING, STOPPING, STATUS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::EventKind;
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

use crate::clock;
use crate::commands::reconcile::{LockWait, Report, reconcile};
use crate::config::Config;
use crate::exit::Exit;
use crate::provider::AnyProvider;

/// How long a reconcile in flight may take to finish once a stop is asked for.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Retry delay for failed keys, when `resyncEvery` is longer.
const RETRY_FAILED: Duration = Duration::from_secs(60);

/// What wakes the daemon.
#[derive(Debug)]
enum Wake {
    /// SIGHUP, or the configuration file changed: reload it and reconcile.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
    /// A watched manifest or the configuration file changed.
    Changed(Vec<PathBuf>),
}

/// Runs until stopped; 0 on a clean stop.
pub async fn run(mut config: Config) -> Exit {
    let (wake_tx, mut wakes) = mpsc::unbounded_channel();
    let signals = match forward_signals(wake_tx.clone()) {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!("cannot install signal handlers: {err}");
            return Exit::KeyFailed;
        }
    };
    let mut watcher = match watch(&config, wake_tx.clone()) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::error!("cannot watch the manifests: {err}");
            signals.close();
            return Exit::KeyFailed;
        }
    };
    let mut provider = Arc::new(AnyProvider::from_config(&config));
    let mut reload = false;
    let exit = loop {
        if reload {
            reload = false;
            notify(&[
                NotifyState::Reloading,
                NotifyState::MonotonicUsec(monotonic_usec()),
            ]);
            match Config::load(&config.path) {
                Ok(new) => {
                    tracing::info!(config = %new.path.display(), "configuration reloaded");
                    match watch(&new, wake_tx.clone()) {
                        Ok(new_watcher) => watcher = new_watcher,
                        Err(err) => tracing::error!("cannot watch the manifests: {err}"),
                    }
                    provider = Arc::new(AnyProvider::from_config(&new));
                    config = new;
                }
                Err(diagnostics) => {
                    for diagnostic in &diagnostics {
                        tracing::error!("{diagnostic}");
                    }
                    tracing::error!("configuration not reloaded: the previous one stays in force");
                }
            }
        }
        let Some(report) =
            reconcile_until_stopped(&config, &provider, &mut wakes, &mut reload).await
        else {
            break Exit::Ok;
        };
        let wait = next_wake(&config, &report);
        let status = summary(&report, wait);
        tracing::info!("{status}");
        // The first READY=1 ends start-up; later ones end a reload.
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        if reload {
            continue;
        }
        match tokio::time::timeout(wait, wakes.recv()).await {
            Err(_elapsed) => tracing::debug!("timer: reconciling"),
            Ok(None | Some(Wake::Stop)) => break Exit::Ok,
            Ok(Some(Wake::Reload)) => reload = true,
            Ok(Some(Wake::Changed(paths))) => {
                tracing::info!(paths = ?paths, "manifests changed: reconciling")
            }
        }
    };
    notify(&[NotifyState::Stopping]);
    tracing::info!("stopped");
    signals.close();
    drop(watcher);
    exit
}

/// Reconciles once; a stop request lets the reconcile finish within [`STOP_GRACE`] and
/// returns `None`. Other wakes during the reconcile are not lost: SIGHUP sets `reload`, a
/// manifest change makes the report's next event "now", so another pass follows at once.
async fn reconcile_until_stopped(
    config: &Config,
    provider: &Arc<AnyProvider>,
    wakes: &mut mpsc::UnboundedReceiver<Wake>,
    reload: &mut bool,
) -> Option<Report> {
    let reconciling = reconcile(config, provider.clone(), None, true, LockWait::Wait);
    tokio::pin!(reconciling);
    let mut changed_meanwhile = Vec::new();
    let report = loop {
        tokio::select! {
            report = &mut reconciling => break Some(report),
            wake = wakes.recv() => match wake {
                None | Some(Wake::Stop) => {
                    // systemd sent the signal, so it knows; STOPPING=1 follows in `run`.
                    tracing::info!("stopping: letting the reconcile in flight finish");
                    if tokio::time::timeout(STOP_GRACE, &mut reconciling).await.is_err() {
                        tracing::warn!(
                            "the reconcile in flight did not finish within {STOP_GRACE:?}; \
                             abandoning it (no version is left half-written)"
                        );
                    }
                    break None;
                }
                Some(Wake::Reload) => *reload = true,
                Some(Wake::Changed(paths)) => changed_meanwhile.extend(paths),
            },
        }
    };
    if changed_meanwhile.is_empty() {
        return report;
    }
    tracing::info!(paths = ?changed_meanwhile, "manifests changed during the reconcile");
    report.map(|mut r| {
        r.next_event = Some(clock::now());
        r
    })
}

/// How long to sleep after a reconcile: until the next rotation or activation, a retry of
/// failed keys, or `resyncEvery`, whichever comes first.
fn next_wake(config: &Config, report: &Report) -> Duration {
    let mut wait = config.reconcile.resync_every;
    if !report.failed.is_empty() {
        wait = wait.min(RETRY_FAILED);
    }
    if let Some(at) = report.next_event {
        let until = at.duration_since(clock::now()).unwrap_or_default();
        wait = wait.min(until);
    }
    wait
}

fn summary(report: &Report, wait: Duration) -> String {
    let next = SystemTime::now() + wait;
    format!(
        "{report}; next reconcile at {}",
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

/// Turns SIGHUP, SIGTERM and SIGINT into wakes, on a thread of their own.
fn forward_signals(
    wakes: mpsc::UnboundedSender<Wake>,
) -> std::io::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("keyprov-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let wake = if signal == SIGHUP {
                    Wake::Reload
                } else {
                    Wake::Stop
                };
                if wakes.send(wake).is_err() {
                    break;
                }
            }
        })?;
    Ok(handle)
}

/// What the watcher reports on: the configuration file, manifest files, and the entries of
/// manifest directories (the directories' parents are watched, so replacing a file by rename,
/// as Git and editors do, and Kubernetes' `..data` symlink swaps are seen too).
#[derive(Debug, Clone)]
struct WatchSet {
    /// The configuration file first, then manifest files.
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl WatchSet {
    fn of(config: &Config) -> Self {
        // Absolute, so that a bare `keyprov.yaml` has a parent to watch and event paths
        // (which notify builds from the watched path) compare equal.
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut files = vec![absolute(&config.path)];
        let mut dirs = Vec::new();
        for source in &config.manifests {
            if source.is_dir() {
                dirs.push(absolute(source));
            } else {
                files.push(absolute(source));
            }
        }
        WatchSet { files, dirs }
    }

    fn concerns(&self, path: &Path) -> bool {
        self.files.iter().any(|f| f == path)
            || self
                .dirs
                .iter()
                .any(|d| d == path || path.parent() == Some(d.as_path()))
    }

    /// Directories to watch (non-recursively), each once.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut watched: Vec<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .chain(self.dirs.iter().cloned())
            .collect();
        watched.sort();
        watched.dedup();
        watched
    }
}

/// Starts a debounced watcher for `config` that sends [`Wake::Changed`].
fn watch(
    config: &Config,
    wakes: mpsc::UnboundedSender<Wake>,
) -> notify::Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
    let set = WatchSet::of(config);
    let filter = set.clone();
    let mut debouncer = new_debouncer(
        config.reconcile.debounce.max(Duration::from_millis(10)),
        None,
        move |result: DebounceEventResult| match result {
            Ok(events) => {
                // Opening and reading (keyprov's own loads included) changes nothing.
                let mut paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                    .flat_map(|e| e.event.paths)
                    .filter(|p| filter.concerns(p))
                    .collect();
                paths.sort();
                paths.dedup();
                let wake = if paths.contains(&filter.files[0]) {
                    Wake::Reload
                } else if !paths.is_empty() {
                    Wake::Changed(paths)
                } else {
                    return;
                };
                let _ = wakes.send(wake);
            }
            Err(errors) => {
                for err in errors {
                    tracing::warn!("watching the manifests: {err}");
                }
            }
        },
    )?;
    for dir in set.watched_dirs() {
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|err| {
                notify::Error::generic(&format!("cannot watch {}: {err}", dir.display()))
            })?;
        tracing::debug!(dir = %dir.display(), "watching");
    }
    Ok(debouncer)
}
