//! The beacon's value: a bounded log of recent changes (pure, no I/O). Each bump of a writer's
//! pass is one entry, numbered in sequence, naming every secret that pass wrote; a reader that
//! knows the sequence number it last saw learns which secrets changed since, or that it is too
//! far behind (a gap: it lists the scope instead).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What a beacon value says it is (anything else is read as "list").
pub const FORMAT: &str = "keyprov-beacon/2";
/// Largest value written: a secret value holds at most 64 KiB; the oldest bumps go first.
pub const MAX_BYTES: usize = 60 * 1024;
/// Most bumps a value read may hold (a hostile value is bounded anyway by 64 KiB).
const MAX_BUMPS: usize = 4096;
/// Longest secret id kept (Secrets Manager names are at most 512 characters, ARNs a bit more).
const MAX_SECRET_LEN: usize = 2048;
/// Highest sequence number a value read may hold: far beyond any real log, and the next bump
/// must not overflow (a forged `u64::MAX` panicked a debug build, wrapped a release one).
const MAX_SEQ: u64 = 1 << 53;
/// Namespace of the request tokens of beacon versions.
const TOKEN_NAMESPACE: uuid::Uuid = uuid::uuid!("0d6c3f0e-7a51-5b2e-8e44-5f1c2b7d9a10");

/// One writer's pass: the secrets it wrote, after it wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bump {
    /// Its place in the log.
    pub seq: u64,
    /// When it was written (Unix seconds, by AWS's clock as the writer last read it).
    pub at: u64,
    /// The secrets written (as the writer's manifests name them: a name or an ARN).
    pub secrets: Vec<String>,
}

/// A beacon value: the latest bumps of one epoch (a log started afresh gets a new epoch, so a
/// sequence number never names two different bumps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Log {
    /// Always [`FORMAT`].
    pub format: String,
    /// Random id of this log.
    pub epoch: String,
    /// The latest bump's number (0: none yet).
    pub seq: u64,
    /// Who bumped last: a short SHA-256 of its `fleet.hostId`.
    pub by: String,
    /// The latest bumps, oldest first, consecutive, the last one numbered `seq` (fewer when
    /// the oldest did not fit).
    pub bumps: Vec<Bump>,
}

/// What changed since a reader's last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Nothing: the reader is up to date.
    Nothing,
    /// These secrets were written (deduplicated).
    Named(BTreeSet<String>),
    /// The log no longer reaches back to the reader's last look (or is another log): list.
    Gap,
}

impl Log {
    /// An empty log with a new epoch.
    pub fn fresh(by: &str) -> Log {
        Log {
            format: FORMAT.into(),
            epoch: uuid::Uuid::new_v4().to_string(),
            seq: 0,
            by: by.into(),
            bumps: Vec::new(),
        }
    }

    /// The value read from a beacon, when it is a well-formed log (old-format beacons and
    /// anything else: `None`, read as "list").
    pub fn parse(text: &str) -> Option<Log> {
        let log: Log = serde_json::from_str(text).ok()?;
        let consecutive = log.bumps.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let ends_at_seq = log.bumps.last().is_none_or(|b| b.seq == log.seq);
        let bounded = log.bumps.len() <= MAX_BUMPS
            && log.seq <= MAX_SEQ
            && log.epoch.len() <= 64
            && !log.epoch.is_empty()
            && log
                .bumps
                .iter()
                .flat_map(|b| &b.secrets)
                .all(|s| !s.is_empty() && s.len() <= MAX_SECRET_LEN);
        (log.format == FORMAT && consecutive && ends_at_seq && bounded).then_some(log)
    }

    /// The value to write.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a log serializes")
    }

    /// The log after one more bump naming `secrets` (written at `at`): the oldest bumps are
    /// dropped until it fits [`MAX_BYTES`]; a bump that alone does not fit is left out too
    /// (readers behind it then see a gap and list).
    pub fn next(&self, by: &str, at: u64, secrets: &BTreeSet<String>) -> Log {
        let mut log = self.clone();
        log.seq += 1;
        log.by = by.into();
        log.bumps.push(Bump {
            seq: log.seq,
            at,
            secrets: secrets
                .iter()
                .filter(|s| !s.is_empty() && s.len() <= MAX_SECRET_LEN)
                .cloned()
                .collect(),
        });
        let mut size = log.to_text().len();
        let mut drop = 0;
        while size > MAX_BYTES && drop < log.bumps.len() {
            // The comma between two bumps goes with the dropped one.
            size -= serde_json::to_string(&log.bumps[drop]).map_or(0, |b| b.len()) + 1;
            drop += 1;
        }
        log.bumps.drain(..drop);
        while log.to_text().len() > MAX_BYTES && !log.bumps.is_empty() {
            log.bumps.remove(0);
        }
        log
    }

    /// The request token of this log's latest version: UUIDv5(beacon name, epoch, seq). A
    /// value under any other version id was not written by keyprov's protocol.
    pub fn token(&self, beacon: &str) -> String {
        let text = format!("{beacon}/{}/{}", self.epoch, self.seq);
        uuid::Uuid::new_v5(&TOKEN_NAMESPACE, text.as_bytes()).to_string()
    }

    /// What changed since a reader saw `epoch` at `seq` (`None`: it never saw a log, so only
    /// a log that reaches back to its first bump says everything).
    pub fn since(&self, seen: Option<(&str, u64)>) -> Since {
        let (epoch, seq) = seen.unwrap_or((self.epoch.as_str(), 0));
        if epoch != self.epoch || seq > self.seq {
            return Since::Gap;
        }
        if seq == self.seq {
            return Since::Nothing;
        }
        match self.bumps.first() {
            Some(first) if first.seq <= seq + 1 => Since::Named(
                self.bumps
                    .iter()
                    .filter(|b| b.seq > seq)
                    .flat_map(|b| b.secrets.iter().cloned())
                    .collect(),
            ),
            _ => Since::Gap,
        }
    }

    /// The secrets written at `after` or later (by the bumps' own times).
    pub fn written_since(&self, after: u64) -> BTreeSet<String> {
        self.bumps
            .iter()
            .filter(|b| b.at >= after)
            .flat_map(|b| b.secrets.iter().cloned())
            .collect()
    }

    /// Whether this log (read back after writing `written`) carries that bump: same epoch and
    /// the bump is there as written, or so many bumps came on top of it that it was dropped.
    pub fn carries(&self, written: &Log) -> bool {
        let Some(mine) = written.bumps.last() else {
            return self.epoch == written.epoch && self.seq >= written.seq;
        };
        self.epoch == written.epoch
            && (self.bumps.iter().any(|b| b == mine)
                || self.bumps.first().is_some_and(|b| b.seq > mine.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_reader_learns_what_changed_since_its_last_look() {
        let log = Log::fresh("h")
            .next("h", 1, &names(&["a", "b"]))
            .next("h", 2, &names(&["b", "c"]))
            .next("h", 3, &names(&["d"]));
        let epoch = log.epoch.as_str();
        assert_eq!(log.since(Some((epoch, 3))), Since::Nothing);
        assert_eq!(log.since(Some((epoch, 2))), Since::Named(names(&["d"])));
        assert_eq!(
            log.since(Some((epoch, 1))),
            Since::Named(names(&["b", "c", "d"]))
        );
        // A reader that never saw a log takes it all when it reaches back to the start.
        assert_eq!(log.since(None), Since::Named(names(&["a", "b", "c", "d"])));
        // Another epoch, or a sequence number from the future (a rollback, a forgery): list.
        assert_eq!(log.since(Some(("other", 1))), Since::Gap);
        assert_eq!(log.since(Some((epoch, 4))), Since::Gap);
    }

    #[test]
    fn the_log_stays_within_a_secret_value_and_a_reader_too_far_behind_sees_a_gap() {
        let mut log = Log::fresh("h");
        let long = |i: u64| format!("prod/payments/service-{i:05}/signing-key-with-a-long-name");
        for i in 0..2_000 {
            log = log.next("h", i, &names(&[&long(i)]));
            assert!(log.to_text().len() <= MAX_BYTES);
        }
        assert_eq!(log.seq, 2_000);
        assert_eq!(Log::parse(&log.to_text()).as_ref(), Some(&log));
        let first = log.bumps.first().unwrap().seq;
        // About 80-byte names: some 600 bumps kept, far more than a 2-min sweep falls behind
        // in a rotation wave (1,000 keys × 3 bumps an hour: 100 a sweep).
        assert!(log.bumps.len() > 500, "{}", log.bumps.len());
        assert_eq!(log.since(Some((&log.epoch, first - 2))), Since::Gap);
        assert!(matches!(
            log.since(Some((&log.epoch, first - 1))),
            Since::Named(n) if n.len() == log.bumps.len()
        ));
    }

    #[test]
    fn a_bump_too_large_for_the_value_leaves_a_gap_instead_of_a_partial_entry() {
        let log = Log::fresh("h").next("h", 1, &names(&["a"]));
        let many: BTreeSet<String> = (0..5_000).map(|i| format!("secret-{i:06}")).collect();
        let next = log.next("h", 2, &many);
        assert_eq!(next.seq, 2);
        assert!(next.bumps.is_empty());
        assert!(next.to_text().len() <= MAX_BYTES);
        assert_eq!(next.since(Some((&next.epoch, 1))), Since::Gap);
        assert_eq!(next.since(Some((&next.epoch, 2))), Since::Nothing);
    }

    #[test]
    fn old_format_and_garbage_beacons_are_not_logs() {
        for text in [
            r#"{"changedAt":"2026-01-01T00:00:00Z","by":"abcd"}"#,
            "not json",
            "",
            r#"{"format":"keyprov-beacon/3","epoch":"e","seq":0,"by":"h","bumps":[]}"#,
            // Not consecutive, not ending at seq, an empty epoch, an empty name.
            r#"{"format":"keyprov-beacon/2","epoch":"e","seq":3,"by":"h","bumps":[{"seq":1,"at":0,"secrets":[]},{"seq":3,"at":0,"secrets":[]}]}"#,
            r#"{"format":"keyprov-beacon/2","epoch":"e","seq":5,"by":"h","bumps":[{"seq":4,"at":0,"secrets":[]}]}"#,
            r#"{"format":"keyprov-beacon/2","epoch":"","seq":0,"by":"h","bumps":[]}"#,
            r#"{"format":"keyprov-beacon/2","epoch":"e","seq":1,"by":"h","bumps":[{"seq":1,"at":0,"secrets":[""]}]}"#,
            // A sequence number whose next bump would overflow.
            r#"{"format":"keyprov-beacon/2","epoch":"e","seq":18446744073709551615,"by":"h","bumps":[]}"#,
        ] {
            assert_eq!(Log::parse(text), None, "{text}");
        }
        let log = Log::fresh("h").next("h", 7, &names(&["a"]));
        assert_eq!(Log::parse(&log.to_text()), Some(log));
    }

    #[test]
    fn tokens_name_one_version_per_epoch_and_sequence_number() {
        let a = Log::fresh("h").next("h", 1, &names(&["a"]));
        let b = a.next("h", 2, &names(&["b"]));
        assert_eq!(
            a.token("keyprov/beacon/s"),
            a.clone().token("keyprov/beacon/s")
        );
        assert_ne!(a.token("keyprov/beacon/s"), b.token("keyprov/beacon/s"));
        assert_ne!(a.token("keyprov/beacon/s"), a.token("keyprov/beacon/t"));
        let other = Log::fresh("h").next("h", 1, &names(&["a"]));
        assert_ne!(a.token("keyprov/beacon/s"), other.token("keyprov/beacon/s"));
    }

    #[test]
    fn a_write_is_carried_when_it_is_in_the_log_read_back() {
        let base = Log::fresh("h").next("h", 1, &names(&["a"]));
        let mine = base.next("me", 2, &names(&["m"]));
        let theirs = base.next("them", 2, &names(&["t"]));
        assert!(mine.carries(&mine));
        // Another writer won this sequence number: not carried, retry on top of theirs.
        assert!(!theirs.carries(&mine));
        // Someone bumped on top of mine: carried.
        assert!(mine.next("them", 3, &names(&["t"])).carries(&mine));
        // A log started afresh meanwhile does not carry it.
        assert!(!Log::fresh("x").next("x", 1, &names(&["m"])).carries(&mine));
    }

    #[test]
    fn recent_bumps_are_found_by_their_time() {
        let log = Log::fresh("h")
            .next("h", 100, &names(&["old"]))
            .next("h", 200, &names(&["new"]));
        assert_eq!(log.written_since(150), names(&["new"]));
        assert_eq!(log.written_since(0), names(&["old", "new"]));
    }
}
