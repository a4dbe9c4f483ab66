//! Retries that survive a restart: a failed key's backoff, and `onRotate` hooks that have not
//! yet succeeded. One small JSON file per key that has either, `<stateDir>/retry/<name>.json`
//! (0600), written atomically under the stateDir lock; a key with nothing to retry has none.
//!
//! A hook is recorded as pending *before* the activation or publication it reports on, so a
//! crash between the two still runs it after the restart; it is removed once it succeeded. A
//! hook therefore runs at least once per event, and never again after its success was
//! recorded. A run is also recorded as started (its process group) before the hook runs, and
//! keyprov kills what a run cut off by a crash left before any hook of that key runs again
//! ([`Journal::end_leftovers`]): a hook of a key never runs twice at the same time. A hook
//! cut off by a crash, or one that finished in the instant before its success was recorded,
//! runs again (at least once, never concurrently).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::hook_process::RunningHook;
use crate::hooks::HookEvent;
use crate::manifest::KeyPair;
use crate::schedule::{format_time, parse_time};
use crate::store::dir::DirHandle;

/// Directory of the records, in the stateDir.
pub use crate::state_layout::RETRY_DIR;

/// Longest error message kept in a record.
const MAX_ERROR_CHARS: usize = 2000;

/// What is left to retry for one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryRecord {
    /// The key's last reconcile failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Hooks of events that happened (or are about to) and have not succeeded yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<PendingHook>,
}

/// A key whose reconcile failed, and when the daemon tries it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failure {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// When it failed last (RFC 3339).
    pub last_attempt: String,
    /// When the daemon tries again (RFC 3339); an edit of the key's manifest, a reload or
    /// `run --once` tries at once.
    pub next_attempt: String,
    /// [`manifest_digest`] of the key that failed.
    pub manifest_digest: String,
}

/// The hooks of one event of one generation, until they all succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PendingHook {
    /// `publish` or `activate`.
    pub event: HookEvent,
    /// The generation published or activated.
    pub generation: u32,
    /// Failed runs so far.
    pub attempts: u32,
    /// [`crate::hooks::hook_id`]s of the hooks that already succeeded (not run again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next run is due (RFC 3339).
    pub next_attempt: String,
    /// A run recorded as started and not seen to end: its leftovers are killed before any
    /// hook of the key runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningHook>,
}

/// What to do with a pending hook, given the key's current and staged generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookState {
    /// Its event happened: run it (when its retry time has come).
    Due,
    /// A newer generation replaced its generation: drop it.
    Superseded,
    /// Its event has not happened (yet): keep it.
    Waiting,
}

impl PendingHook {
    /// The state of this hook when the key's current generation is `current` and its staged
    /// one `next`.
    pub fn state(&self, current: Option<u32>, next: Option<u32>) -> HookState {
        let newest = current.max(next);
        let happened = match self.event {
            HookEvent::Activate => current == Some(self.generation),
            HookEvent::Publish => current == Some(self.generation) || next == Some(self.generation),
        };
        if happened {
            HookState::Due
        } else if newest.is_some_and(|g| g > self.generation) {
            HookState::Superseded
        } else {
            HookState::Waiting
        }
    }

    /// When it may run next: at once for a hook that never failed.
    pub fn next_attempt(&self) -> SystemTime {
        parse_time(&self.next_attempt).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl Failure {
    /// When the daemon tries the key again.
    pub fn next_attempt(&self) -> SystemTime {
        parse_time(&self.next_attempt).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl RetryRecord {
    /// True when nothing is left to retry.
    pub fn is_empty(&self) -> bool {
        self.failure.is_none() && self.hooks.is_empty()
    }

    /// Records that `key` failed at `now` with `error`; the next attempt follows `backoff`.
    pub fn fail(&mut self, key: &KeyPair, error: &str, now: SystemTime, backoff: &Backoff) {
        let attempts = self.failure.as_ref().map_or(0, |f| f.attempts) + 1;
        self.failure = Some(Failure {
            attempts,
            last_error: truncate(error),
            last_attempt: format_time(now),
            next_attempt: format_time(now + backoff.jittered(attempts)),
            manifest_digest: manifest_digest(key),
        });
    }

    /// Records the intent to run the hooks of `event` for `generation`; pending hooks of
    /// older generations of the same event are dropped (superseded).
    pub fn add_hook(&mut self, event: HookEvent, generation: u32, now: SystemTime) {
        self.hooks
            .retain(|h| !(h.event == event && h.generation < generation));
        if self
            .hooks
            .iter()
            .any(|h| h.event == event && h.generation == generation)
        {
            return;
        }
        self.hooks.push(PendingHook {
            event,
            generation,
            attempts: 0,
            done: Vec::new(),
            last_error: None,
            next_attempt: format_time(now),
            running: None,
        });
        self.hooks.sort_by_key(|h| (h.generation, h.event));
    }
}

fn truncate(error: &str) -> String {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &error[..at]),
        None => error.to_string(),
    }
}

/// A fingerprint of a key's manifest: a failed key whose manifest changed is tried at once.
pub fn manifest_digest(key: &KeyPair) -> String {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{key:?}").as_bytes());
    hex::encode(&digest.as_ref()[..12])
}

/// Exponential backoff: `initial`, doubling per attempt, capped at `max`, less up to a
/// quarter of random jitter (so keys and hosts that failed together do not retry together,
/// and each delay is still longer than the one before until the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after `attempts` failures in a row, `jitter` in `0.0..=1.0`.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(40);
        let base = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        base.saturating_sub(base.mul_f64(jitter.clamp(0.0, 1.0) / 4.0))
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn jittered(&self, attempts: u32) -> Duration {
        self.delay(attempts, jitter())
    }
}

/// A random number in `0.0..1.0`.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The records of one stateDir.
#[derive(Debug, Clone)]
pub struct RetryStore {
    state_dir: PathBuf,
}

impl RetryStore {
    /// The records under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        RetryStore {
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Every record, by key name. A record that cannot be read is reported and skipped (the
    /// key is then tried at once, and its hooks are lost only if the file was unreadable).
    pub fn load_all(&self) -> BTreeMap<String, RetryRecord> {
        let mut records = BTreeMap::new();
        let dir = match self.open_dir(false) {
            Ok(Some(dir)) => dir,
            Ok(None) => return records,
            Err(err) => {
                tracing::error!("cannot read the retry records: {err}");
                return records;
            }
        };
        let names = match dir.names() {
            Ok(names) => names,
            Err(err) => {
                tracing::error!("cannot read the retry records: {err}");
                return records;
            }
        };
        for name in names {
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if key.starts_with('.') {
                continue;
            }
            let file = format!("{key}.json");
            let parsed = dir
                .read_file(&file)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => {
                    records.insert(key.to_string(), record);
                }
                Err(err) => tracing::error!(
                    path = %dir.child_path(&file).display(),
                    "ignoring an unreadable retry record: {err}"
                ),
            }
        }
        records
    }

    /// Writes `record` for key `name` (removes the file when the record is empty), durably.
    pub fn save(&self, name: &str, record: &RetryRecord) -> Result<(), String> {
        let file = format!("{name}.json");
        let Some(dir) = self.open_dir(!record.is_empty())? else {
            return Ok(());
        };
        if record.is_empty() {
            if dir.stat(&file).is_some() {
                dir.remove_file(&file).map_err(|e| e.to_string())?;
                dir.sync().map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        let temp = format!(".tmp-{name}.json");
        if dir.stat(&temp).is_some() {
            dir.remove_file(&temp).map_err(|e| e.to_string())?;
        }
        let written = dir
            .create_file(&temp, &bytes, 0o600, (None, None))
            .map_err(|e| e.to_string())?;
        written
            .sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", dir.child_path(&temp).display()))?;
        dir.rename(&temp, &file).map_err(|e| e.to_string())?;
        dir.sync().map_err(|e| e.to_string())
    }

    fn open_dir(&self, create: bool) -> Result<Option<DirHandle>, String> {
        let Some(root) =
            DirHandle::open_root(&self.state_dir, create).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        if create {
            root.create_dir(RETRY_DIR, 0o700, (None, None))
                .map_err(|e| e.to_string())?;
        }
        root.open_dir(RETRY_DIR).map_err(|e| e.to_string())
    }
}

/// The records of one reconcile, shared by the key tasks (each touches only its own key's).
#[derive(Debug)]
pub struct Journal {
    store: RetryStore,
    records: Mutex<BTreeMap<String, RetryRecord>>,
}

impl Journal {
    /// The records of `store` as they are on disk.
    pub fn load(store: RetryStore) -> Self {
        let records = Mutex::new(store.load_all());
        Journal { store, records }
    }

    /// A copy of every record.
    pub fn snapshot(&self) -> BTreeMap<String, RetryRecord> {
        self.records.lock().expect("not poisoned").clone()
    }

    /// The record of key `name` (empty when there is none).
    pub fn get(&self, name: &str) -> RetryRecord {
        self.records
            .lock()
            .expect("not poisoned")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes the record of key `name` with `change` and writes it (durably) when it changed.
    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut RetryRecord),
    ) -> Result<(), String> {
        let record = {
            let mut records = self.records.lock().expect("not poisoned");
            let record = records.entry(name.to_string()).or_default();
            let before = record.clone();
            change(record);
            if *record == before {
                return Ok(());
            }
            let changed = record.clone();
            if changed.is_empty() {
                records.remove(name);
            }
            changed
        };
        let (store, name) = (self.store.clone(), name.to_string());
        tokio::task::spawn_blocking(move || store.save(&name, &record))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot record retry state: {e}"))
    }
}

impl Journal {
    /// A [`crate::hooks::Recorder`] for the hooks of `event` of `generation` of key `name`:
    /// records each run as started (and the hooks that already succeeded as done), durably.
    pub fn recorder(
        self: &std::sync::Arc<Self>,
        name: &str,
        event: HookEvent,
        generation: u32,
    ) -> Box<crate::hooks::Recorder<'static>> {
        let (journal, name) = (self.clone(), name.to_string());
        Box::new(move |running, done| {
            let (journal, name) = (journal.clone(), name.clone());
            Box::pin(async move {
                journal
                    .update(&name, |record| {
                        if let Some(entry) = record
                            .hooks
                            .iter_mut()
                            .find(|h| h.event == event && h.generation == generation)
                        {
                            entry.running = Some(running);
                            for id in done {
                                if !entry.done.contains(&id) {
                                    entry.done.push(id);
                                }
                            }
                        }
                    })
                    .await
            })
        })
    }

    /// Kills what the runs of key `name`'s hooks that were recorded as started and never seen
    /// to end left running, and forgets them. An error when a group would not die: then no
    /// hook of the key may run.
    pub async fn end_leftovers(&self, name: &str) -> Result<(), String> {
        let runs: Vec<RunningHook> = self
            .get(name)
            .hooks
            .into_iter()
            .filter_map(|h| h.running)
            .collect();
        if runs.is_empty() {
            return Ok(());
        }
        for run in runs {
            let hook = run.hook.clone();
            let killed = crate::hook_process::end_leftovers(run).await?;
            if killed > 0 {
                tracing::warn!(key = %name, hook = %hook, killed,
                    "killed the processes an onRotate run cut off by a crash left running");
            }
        }
        self.update(name, |record| {
            for hook in &mut record.hooks {
                hook.running = None;
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below() {
        let backoff = Backoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        let no_jitter: Vec<u64> = (1..=9).map(|n| backoff.delay(n, 0.0).as_secs()).collect();
        assert_eq!(no_jitter, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff.delay(1, 1.0), Duration::from_millis(22_500));
        assert_eq!(backoff.delay(u32::MAX, 0.5), Duration::from_secs(3150));
        // Growing even with the worst jitter draw: 0.75 × 2d > d.
        for n in 1..7 {
            assert!(backoff.delay(n + 1, 1.0) > backoff.delay(n, 0.0));
        }
    }

    #[test]
    fn a_hook_is_due_once_its_event_happened_and_superseded_by_a_newer_generation() {
        let hook = |event| PendingHook {
            event,
            generation: 5,
            attempts: 0,
            done: vec![],
            last_error: None,
            next_attempt: String::new(),
            running: None,
        };
        let activate = hook(HookEvent::Activate);
        assert_eq!(activate.state(Some(5), None), HookState::Due);
        assert_eq!(activate.state(Some(4), Some(5)), HookState::Waiting);
        assert_eq!(
            activate.state(Some(4), None),
            HookState::Waiting,
            "crashed before it"
        );
        assert_eq!(activate.state(Some(6), None), HookState::Superseded);
        let publish = hook(HookEvent::Publish);
        assert_eq!(publish.state(Some(4), Some(5)), HookState::Due);
        assert_eq!(publish.state(Some(5), None), HookState::Due);
        assert_eq!(publish.state(Some(5), Some(6)), HookState::Due);
        assert_eq!(publish.state(Some(6), Some(7)), HookState::Superseded);
        assert_eq!(publish.state(None, None), HookState::Waiting);
    }

    #[test]
    fn a_newer_generation_replaces_pending_hooks_of_the_same_event() {
        let now = SystemTime::UNIX_EPOCH;
        let mut record = RetryRecord::default();
        record.add_hook(HookEvent::Publish, 3, now);
        record.add_hook(HookEvent::Activate, 2, now);
        record.add_hook(HookEvent::Activate, 3, now);
        record.add_hook(HookEvent::Activate, 3, now);
        let kept: Vec<(HookEvent, u32)> = record
            .hooks
            .iter()
            .map(|h| (h.event, h.generation))
            .collect();
        assert_eq!(kept, [(HookEvent::Publish, 3), (HookEvent::Activate, 3)]);
    }

    #[test]
    fn records_survive_a_round_trip_and_an_empty_one_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RetryStore::new(dir.path());
        let mut record = RetryRecord::default();
        record.add_hook(HookEvent::Activate, 1, SystemTime::UNIX_EPOCH);
        store.save("web", &record).unwrap();
        let path = dir.path().join("retry/web.json");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.load_all().get("web"), Some(&record));
        store.save("web", &RetryRecord::default()).unwrap();
        assert!(!path.exists());
        assert!(store.load_all().is_empty());
    }
}
