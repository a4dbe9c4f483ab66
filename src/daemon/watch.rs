//! Watching the configuration file and the manifests with inotify (notify), without a timer:
//! the watcher thread sleeps until the kernel reports an event. Directories are watched
//! non-recursively, and so are the parents of watched files, so that replacing a file by
//! rename (as Git and editors do) and Kubernetes' `..data` symlink swaps are seen. A manifest
//! path that does not exist yet is watched through its nearest existing ancestor, and the
//! watch is rebuilt when it appears, so a manifest directory created after start is watched
//! from then on.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;

/// What the watcher reports on.
#[derive(Debug, Clone)]
pub struct WatchSet {
    /// The configuration file.
    config: PathBuf,
    /// Manifest paths as configured (absolute), files and directories.
    sources: Vec<PathBuf>,
    /// Manifest directories that exist: their entries are watched.
    dirs: Vec<PathBuf>,
    /// Manifest paths that do not exist yet.
    missing: Vec<PathBuf>,
}

impl WatchSet {
    /// The set of `config`, as the file system is now.
    pub fn of(config: &Config) -> Self {
        // Absolute, so that a bare `keyprov.yaml` has a parent to watch and event paths
        // (which notify builds from the watched path) compare equal.
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let sources: Vec<PathBuf> = config.manifests.iter().map(|p| absolute(p)).collect();
        WatchSet {
            config: absolute(&config.path),
            dirs: sources.iter().filter(|p| p.is_dir()).cloned().collect(),
            missing: sources.iter().filter(|p| !p.exists()).cloned().collect(),
            sources,
        }
    }

    /// Whether a change of `path` matters: the configuration, a manifest path, an entry of a
    /// manifest directory, or a path on the way to a missing manifest path.
    pub fn concerns(&self, path: &Path) -> bool {
        path == self.config
            || self.sources.iter().any(|s| s == path)
            || self.dirs.iter().any(|d| path.parent() == Some(d.as_path()))
            || self.leads_to_missing(path)
    }

    /// Whether `path` is the configuration file.
    pub fn is_config(&self, path: &Path) -> bool {
        path == self.config
    }

    /// Whether a change of `path` calls for a new watch: a manifest path (it may have become
    /// a directory, or stopped being one) or a path on the way to a missing one.
    pub fn needs_rewatch(&self, path: &Path) -> bool {
        self.sources.iter().any(|s| s == path) || self.leads_to_missing(path)
    }

    fn leads_to_missing(&self, path: &Path) -> bool {
        self.missing.iter().any(|m| m.starts_with(path))
    }

    /// Manifest paths that do not exist (yet).
    pub fn missing(&self) -> &[PathBuf] {
        &self.missing
    }

    /// Directories to watch (non-recursively), each once.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &PathBuf| p.parent().map(Path::to_path_buf);
        let mut watched: Vec<PathBuf> = std::iter::once(&self.config)
            .chain(self.sources.iter().filter(|s| s.exists()))
            .filter_map(parent)
            .chain(self.dirs.iter().cloned())
            .chain(
                self.missing
                    .iter()
                    .filter_map(|m| nearest_existing_ancestor(m)),
            )
            .collect();
        watched.sort();
        watched.dedup();
        watched
    }
}

fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// A running watch of one [`WatchSet`]; events stop when it is dropped.
pub struct ManifestWatcher {
    set: WatchSet,
    _watcher: RecommendedWatcher,
}

impl ManifestWatcher {
    /// Starts watching `config`'s files; concerning changes are sent, unfiltered by time, to
    /// `changes` (the daemon debounces them).
    pub fn start(
        config: &Config,
        changes: mpsc::UnboundedSender<Vec<PathBuf>>,
    ) -> notify::Result<Self> {
        // A missing path may appear between looking and watching (`mkdir -p a/b` right after
        // `a` was seen): watch again until what is missing stays the same.
        let mut attempt = 0;
        loop {
            let watcher = Self::start_once(config, changes.clone())?;
            attempt += 1;
            if WatchSet::of(config).missing == watcher.set.missing || attempt == 5 {
                for missing in watcher.set.missing() {
                    tracing::warn!(
                        path = %missing.display(),
                        "manifest path does not exist (yet): watched from the moment it appears"
                    );
                }
                return Ok(watcher);
            }
        }
    }

    fn start_once(
        config: &Config,
        changes: mpsc::UnboundedSender<Vec<PathBuf>>,
    ) -> notify::Result<Self> {
        let set = WatchSet::of(config);
        let filter = set.clone();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
                match result {
                    // Opening and reading (keyprov's own loads included) changes nothing.
                    Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                    Ok(event) => {
                        let paths: Vec<PathBuf> = event
                            .paths
                            .into_iter()
                            .filter(|p| filter.concerns(p))
                            .collect();
                        if !paths.is_empty() {
                            let _ = changes.send(paths);
                        }
                    }
                    Err(err) => tracing::warn!("watching the manifests: {err}"),
                }
            })?;
        for dir in set.watched_dirs() {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|err| {
                    notify::Error::generic(&format!("cannot watch {}: {err}", dir.display()))
                })?;
            tracing::debug!(dir = %dir.display(), "watching");
        }
        Ok(ManifestWatcher {
            set,
            _watcher: watcher,
        })
    }

    /// What is watched.
    pub fn set(&self) -> &WatchSet {
        &self.set
    }
}
