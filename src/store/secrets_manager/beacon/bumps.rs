//! The beacon's bumps as tags (pure, no I/O): tag `keyprov:bump:<seq>` holds
//! `"<at> <digest> <digest> ..."`, the short digests of the secrets writers wrote, appended to
//! the highest tag until it is full, then a new tag one higher; `"<at> list"` for a pass that
//! wrote more than a tag holds. Writers remove the lowest tags to stay within
//! [`MAX_BUMP_TAGS`]. A reader remembers the digests it saw under each tag, so what is new is
//! what it has not seen yet, wherever it was appended; it sees a gap (and lists) when a tag it
//! may not have read whole could have been removed.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefix of a bump tag's key; the rest is its sequence number.
pub const PREFIX: &str = "keyprov:bump:";
/// Most bump tags a writer leaves on the beacon: AWS allows 50 tags per resource, and the
/// beacon carries `keyprov:scope` and `keyprov:beacon` too (48 in all, 2 spare).
pub const MAX_BUMP_TAGS: usize = 46;
/// Longest tag value AWS accepts.
pub const MAX_VALUE: usize = 256;
/// Longest tag key AWS accepts.
pub const MAX_KEY: usize = 128;
/// Digests a tag holds: `at` (10 digits) and 27 × (space + 8 characters) = 253 ≤ 256.
pub const MAX_NAMED: usize = 27;
/// How the value's word for "more secrets than a tag holds were written: list" begins; the
/// digest of those secrets' digests follows, so that two such tags put under one key by two
/// writers differ (a reader that saw one still lists for the other).
pub const LIST: &str = "list-";
/// A writer's digests must land at most this far below the highest tag (read back), else it
/// appends again at the top; a reader sees no gap only while a tag it saw that is at least
/// this far below its highest is still there (see [`Bumps::since`]).
pub const MARGIN: u64 = 2;
/// Most seconds a tag may be dated after a writer's time (by AWS's clock) for the writer to
/// append to it: writers stamp by AWS's clock as each last read it (seconds apart at most).
pub const AHEAD: u64 = 60;
/// Characters of a digest: 48 bits of SHA-256 in base64url (a collision costs one description).
const DIGEST_LEN: usize = 8;
/// Highest sequence number accepted (the next must not overflow).
const MAX_SEQ: u64 = 1 << 53;

/// The short digest of a secret id (a name or an ARN) as bumps name it.
pub fn digest(secret: &str) -> String {
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    URL_SAFE_NO_PAD.encode(&sha.as_ref()[..6])
}

/// What one tag names: its digests, or "list".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// These digests (at most [`MAX_NAMED`]).
    Secrets(BTreeSet<String>),
    /// More than a tag holds: list (the digest of their digests tells two such bumps apart).
    List(String),
}

/// One bump tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// When it was last appended to (Unix seconds, by AWS's clock as the writer last read it).
    pub at: u64,
    /// What it names.
    pub named: Named,
}

impl Tag {
    /// The tag after appending `digests` at `at`: `None` when they do not fit, one of them
    /// is there already (a secret written again: a reader that saw the tag would not see it
    /// as new), or the tag is dated more than [`AHEAD`] after `at` (forged or stamped by a
    /// wrong clock: appended digests would take its date, never recent after a listing), so a
    /// new tag then.
    pub fn appended(&self, at: u64, digests: &BTreeSet<String>) -> Option<Tag> {
        let Named::Secrets(had) = &self.named else {
            return None;
        };
        if !had.is_disjoint(digests) || self.at > at.saturating_add(AHEAD) {
            return None;
        }
        let all: BTreeSet<String> = had.union(digests).cloned().collect();
        (all.len() <= MAX_NAMED).then(|| Tag {
            at: at.max(self.at),
            named: Named::Secrets(all),
        })
    }

    /// A new tag naming `digests` (or "list" when they do not fit one tag).
    pub fn new(at: u64, digests: &BTreeSet<String>) -> Tag {
        let named = if digests.len() > MAX_NAMED {
            let all: Vec<&str> = digests.iter().map(String::as_str).collect();
            Named::List(digest(&all.join(" ")))
        } else {
            Named::Secrets(digests.clone())
        };
        Tag { at, named }
    }

    /// Whether this tag carries every one of `digests` (when they did not fit a tag: says
    /// "list" for exactly them; another writer's "list" put over them says nothing of them to
    /// a reader that saw it already).
    pub fn carries(&self, digests: &BTreeSet<String>) -> bool {
        match &self.named {
            Named::List(_) => Tag::new(self.at, digests).named == self.named,
            Named::Secrets(had) => digests.is_subset(had),
        }
    }

    /// The word a reader remembers for a "list" tag.
    fn list_word(nonce: &str) -> String {
        format!("{LIST}{nonce}")
    }

    /// The tag's value.
    pub fn value(&self) -> String {
        let mut value = self.at.to_string();
        match &self.named {
            Named::List(nonce) => {
                value.push(' ');
                value.push_str(&Tag::list_word(nonce));
            }
            Named::Secrets(digests) => {
                for d in digests {
                    value.push(' ');
                    value.push_str(d);
                }
            }
        }
        value
    }

    /// A tag value, when it is one keyprov writes.
    pub fn parse(value: &str) -> Option<Tag> {
        let mut words = value.split(' ');
        let at: u64 = words.next()?.parse().ok()?;
        let rest: Vec<&str> = words.collect();
        let ok = |d: &&str| {
            d.len() == DIGEST_LEN
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let list = match rest.as_slice() {
            [word] => word.strip_prefix(LIST).filter(ok),
            _ => None,
        };
        let named = if let Some(nonce) = list {
            Named::List(nonce.to_string())
        } else {
            if rest.len() > MAX_NAMED || !rest.iter().all(ok) {
                return None;
            }
            Named::Secrets(rest.iter().map(|d| d.to_string()).collect())
        };
        (value.len() <= MAX_VALUE).then_some(Tag { at, named })
    }
}

/// The key of bump tag `seq`.
pub fn key(seq: u64) -> String {
    let key = format!("{PREFIX}{seq}");
    debug_assert!(key.len() <= MAX_KEY);
    key
}

/// What a reader saw: the digests under each tag (`list-<digest>` for a tag that said list).
pub type Seen = BTreeMap<u64, BTreeSet<String>>;

/// What changed since a reader's last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Nothing.
    Nothing,
    /// These digests were written since.
    Named(BTreeSet<String>),
    /// A tag may have gone before this reader read it whole, or one says "list": list.
    Gap,
}

/// The bump tags of a beacon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bumps {
    /// By sequence number.
    pub tags: BTreeMap<u64, Tag>,
    /// Keys with the bump prefix that are not well-formed bumps (garbage, forged): a reader
    /// lists, a writer removes them.
    pub malformed: Vec<String>,
}

impl Bumps {
    /// The bumps among a beacon's tags (other tags are ignored).
    pub fn from_tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Bumps {
        let mut bumps = Bumps::default();
        for (key, value) in tags {
            let Some(seq) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let seq = seq
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_SEQ).contains(s) && key == self::key(*s));
            match (seq, Tag::parse(value)) {
                (Some(seq), Some(tag)) => {
                    bumps.tags.insert(seq, tag);
                }
                _ => bumps.malformed.push(key.to_string()),
            }
        }
        bumps
    }

    /// The highest sequence number (0: none).
    pub fn top(&self) -> u64 {
        self.tags.keys().next_back().copied().unwrap_or(0)
    }

    /// What a reader that saw `seen` learns (see the module's documentation and
    /// [`MARGIN`] for why the witness rule is enough).
    pub fn since(&self, seen: &Seen) -> Since {
        if !self.malformed.is_empty() {
            return Since::Gap;
        }
        let Some(&high) = seen.keys().next_back() else {
            return if self.tags.is_empty() {
                Since::Nothing
            } else {
                Since::Gap
            };
        };
        // Writers only ever remove the lowest tags: the highest seen must be there, and so
        // must a seen tag far enough below it (or the first tag ever) that whatever was
        // removed since lay below anything a writer could still have appended to.
        let witness = seen
            .keys()
            .any(|x| self.tags.contains_key(x) && (*x == 1 || x + MARGIN < high));
        if !self.tags.contains_key(&high) || !witness {
            return Since::Gap;
        }
        let mut named = BTreeSet::new();
        for (seq, tag) in &self.tags {
            let had = seen.get(seq);
            match &tag.named {
                Named::List(nonce) if had.is_some_and(|h| h.contains(&Tag::list_word(nonce))) => {}
                Named::List(_) => return Since::Gap,
                Named::Secrets(digests) => {
                    named.extend(
                        digests
                            .iter()
                            .filter(|d| had.is_none_or(|h| !h.contains(*d)))
                            .cloned(),
                    );
                }
            }
        }
        if named.is_empty() {
            Since::Nothing
        } else {
            Since::Named(named)
        }
    }

    /// What a reader has seen once it read these tags.
    pub fn seen(&self) -> Seen {
        self.tags
            .iter()
            .map(|(seq, t)| {
                let words = match &t.named {
                    Named::List(nonce) => BTreeSet::from([Tag::list_word(nonce)]),
                    Named::Secrets(d) => d.clone(),
                };
                (*seq, words)
            })
            .collect()
    }

    /// Whether a tag saying "list" was appended to between `after` and `until` (a listing
    /// taken now may not show those writes yet).
    pub fn recent_list(&self, after: u64, until: u64) -> bool {
        self.tags
            .values()
            .any(|t| matches!(t.named, Named::List(_)) && (after..=until).contains(&t.at))
    }

    /// The digests of tags appended to between `after` and `until` (a forged time far in the
    /// future does not make a tag recent forever).
    pub fn named_since(&self, after: u64, until: u64) -> BTreeSet<String> {
        self.tags
            .values()
            .filter(|t| (after..=until).contains(&t.at))
            .filter_map(|t| match &t.named {
                Named::Secrets(d) => Some(d.iter().cloned()),
                Named::List(_) => None,
            })
            .flatten()
            .collect()
    }

    /// Where a writer puts `digests` at `at`: appended to the highest tag when they fit,
    /// else a new tag one higher; tag 1 again when the highest is the last a reader accepts
    /// (a forged tag at [`MAX_SEQ`]: the next would be malformed to every reader, so no bump
    /// would ever land again).
    pub fn placement(&self, at: u64, digests: &BTreeSet<String>) -> (u64, Tag) {
        let top = self.top();
        match self.tags.get(&top).and_then(|t| t.appended(at, digests)) {
            Some(tag) => (top, tag),
            None if top >= MAX_SEQ => (1, Tag::new(at, digests)),
            None => (top + 1, Tag::new(at, digests)),
        }
    }

    /// The tag keys a writer removes before putting tag `seq`: the malformed ones, and the
    /// lowest until at most [`MAX_BUMP_TAGS`] remain with `seq` in; every other bump tag when
    /// `seq` lies below the highest (numbering starts again: a reader sees the highest tag it
    /// saw gone, a gap, and lists once).
    pub fn to_remove(&self, seq: u64) -> Vec<String> {
        let mut keys = self.malformed.clone();
        if seq < self.top() {
            keys.extend(self.tags.keys().filter(|s| **s != seq).map(|s| key(*s)));
            return keys;
        }
        let after = self.tags.len() + usize::from(!self.tags.contains_key(&seq));
        let excess = after.saturating_sub(MAX_BUMP_TAGS);
        keys.extend(
            self.tags
                .keys()
                .filter(|s| **s != seq)
                .take(excess)
                .map(|s| key(*s)),
        );
        keys
    }

    /// Whether `digests`, landed in tag `seq` a little earlier, are still there, or that tag
    /// went as the lowest (a reader that did not read it sees a gap).
    pub fn still_carries(&self, seq: u64, digests: &BTreeSet<String>) -> bool {
        match self.tags.get(&seq) {
            Some(tag) => tag.carries(digests),
            None => self.tags.keys().next().is_some_and(|low| *low > seq),
        }
    }

    /// Whether `digests`, put in tag `seq`, are there as a reader would need them: the tag
    /// carries them and lies at most [`MARGIN`] below the highest.
    pub fn landed(&self, seq: u64, digests: &BTreeSet<String>) -> bool {
        self.tags.get(&seq).is_some_and(|t| t.carries(digests)) && seq + MARGIN >= self.top()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn bumps(tags: &[(u64, &str)]) -> Bumps {
        let owned: Vec<(String, String)> =
            tags.iter().map(|(s, v)| (key(*s), v.to_string())).collect();
        Bumps::from_tags(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn d(n: u32) -> String {
        digest(&format!("prod/secret-{n}"))
    }

    #[test]
    fn digests_are_short_and_tags_fit_aws_limits() {
        assert_eq!(d(1).len(), DIGEST_LEN);
        assert_ne!(d(1), d(2));
        let full: BTreeSet<String> = (0..MAX_NAMED as u32).map(d).collect();
        let tag = Tag::new(9_999_999_999, &full);
        assert!(tag.value().len() <= MAX_VALUE, "{}", tag.value().len());
        assert!(
            tag.value()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c))
        );
        assert_eq!(Tag::parse(&tag.value()), Some(tag.clone()));
        assert!(key(1 << 53).len() <= MAX_KEY);
        // One more does not fit: a new tag; far more: "list".
        assert_eq!(tag.appended(1, &set(&[&d(99)])), None);
        let many: BTreeSet<String> = (0..100).map(d).collect();
        assert!(matches!(Tag::new(1, &many).named, Named::List(_)));
        let list = Tag::new(1, &many);
        assert_eq!(Tag::parse(&list.value()), Some(list.clone()));
        assert!(list.carries(&many));
        let others: BTreeSet<String> = (100..200).map(d).collect();
        assert!(!list.carries(&others));
    }

    #[test]
    fn a_writer_appends_to_the_highest_tag_until_full_then_opens_the_next() {
        let mut b = Bumps::default();
        for n in 0..60 {
            let mine = set(&[&d(n)]);
            let (seq, tag) = b.placement(100 + u64::from(n), &mine);
            for k in b.to_remove(seq) {
                b.tags.remove(&k[PREFIX.len()..].parse().unwrap());
            }
            b.tags.insert(seq, tag);
            assert!(b.landed(seq, &mine));
        }
        assert_eq!(b.top(), 3);
        assert_eq!(b.tags[&1].named, Named::Secrets((0..27).map(d).collect()));
    }

    #[test]
    fn a_tag_dated_far_ahead_takes_no_more_digests() {
        let forged = bumps(&[(3, &format!("9999999999 {}", d(1)))]);
        let (seq, tag) = forged.placement(1_800_000_000, &set(&[&d(2)]));
        assert_eq!((seq, tag.at), (4, 1_800_000_000), "a new tag, dated now");
        // A few seconds ahead (another writer's reading of AWS's clock): appended.
        let near = bumps(&[(3, &format!("1800000030 {}", d(1)))]);
        assert_eq!(near.placement(1_800_000_000, &set(&[&d(2)])).0, 3);
    }

    #[test]
    fn a_full_tag_at_the_highest_sequence_number_starts_the_numbering_again() {
        let full: Vec<String> = (0..MAX_NAMED as u32).map(|n| d(1000 + n)).collect();
        let forged = format!("5 {}", full.join(" "));
        let b = bumps(&[(7, &format!("10 {}", d(1))), (MAX_SEQ, &forged)]);
        assert!(b.malformed.is_empty());
        let seen = b.seen();
        let mine = set(&[&d(2)]);
        let (seq, tag) = b.placement(20, &mine);
        assert_eq!(seq, 1);
        let mut after = b.clone();
        for k in b.to_remove(seq) {
            after.tags.remove(&k[PREFIX.len()..].parse().unwrap());
        }
        after.tags.insert(seq, tag);
        assert_eq!(after.tags.keys().collect::<Vec<_>>(), vec![&1]);
        assert!(after.landed(seq, &mine));
        assert!(after.still_carries(seq, &mine));
        // A reader that saw the forged tag sees a gap (one listing), then follows tag 1.
        assert_eq!(after.since(&seen), Since::Gap);
        let (seq, tag) = after.placement(30, &set(&[&d(3)]));
        assert_eq!(seq, 1);
        let mut next = after.clone();
        next.tags.insert(seq, tag);
        assert_eq!(next.since(&after.seen()), Since::Named(set(&[&d(3)])));
    }

    #[test]
    fn a_secret_written_again_is_new_to_a_reader_that_saw_its_first_write() {
        let first = bumps(&[(1, &format!("10 {} {}", d(1), d(2)))]);
        let seen = first.seen();
        let (seq, tag) = first.placement(20, &set(&[&d(1)]));
        assert_eq!(seq, 2);
        let mut again = first.clone();
        again.tags.insert(seq, tag);
        assert_eq!(again.since(&seen), Since::Named(set(&[&d(1)])));
    }

    #[test]
    fn writers_keep_at_most_the_bump_tag_budget() {
        let many: BTreeSet<String> = (0..100).map(d).collect();
        let mut b = Bumps::default();
        for _ in 0..100 {
            let (seq, tag) = b.placement(1, &many);
            for k in b.to_remove(seq) {
                b.tags.remove(&k[PREFIX.len()..].parse().unwrap());
            }
            b.tags.insert(seq, tag);
            assert!(b.tags.len() <= MAX_BUMP_TAGS);
        }
        assert_eq!(b.top(), 100);
        assert_eq!(
            b.tags.keys().next(),
            Some(&(100 - MAX_BUMP_TAGS as u64 + 1))
        );
    }

    #[test]
    fn a_reader_learns_what_was_appended_or_added_since_its_last_look() {
        let before = bumps(&[(1, &format!("10 {}", d(1))), (2, &format!("20 {}", d(2)))]);
        let seen = before.seen();
        assert_eq!(before.since(&seen), Since::Nothing);
        // Appended to tag 2, and a tag 3 opened.
        let after = bumps(&[
            (1, &format!("10 {}", d(1))),
            (2, &format!("30 {} {}", d(2), d(3))),
            (3, &format!("40 {}", d(4))),
        ]);
        assert_eq!(after.since(&seen), Since::Named(set(&[&d(3), &d(4)])));
        // A new tag saying "list": list.
        let list = bumps(&[
            (1, &format!("10 {}", d(1))),
            (2, &format!("20 {}", d(2))),
            (3, "50 list-AAAAAAAA"),
        ]);
        assert_eq!(list.since(&seen), Since::Gap);
        // A recent "list" tag is found by its time.
        assert!(list.recent_list(45, 100));
        assert!(!list.recent_list(55, 100));
    }

    #[test]
    fn a_gap_when_tags_a_reader_may_not_have_read_whole_were_removed() {
        let tags: Vec<(u64, String)> = (10..=50)
            .map(|s| (s, format!("1 {}", d(s as u32))))
            .collect();
        let refs: Vec<(u64, &str)> = tags.iter().map(|(s, v)| (*s, v.as_str())).collect();
        let seen = bumps(&refs).seen();
        // 20 more tags, the lowest removed: a seen tag far below the highest remains.
        let later: Vec<(u64, String)> = (30..=70)
            .map(|s| (s, format!("1 {}", d(s as u32))))
            .collect();
        let refs: Vec<(u64, &str)> = later.iter().map(|(s, v)| (*s, v.as_str())).collect();
        assert!(matches!(bumps(&refs).since(&seen), Since::Named(n) if n.len() == 20));
        // 40 more: only the top seen tags remain, which writers may still have appended to.
        let far: Vec<(u64, String)> = (49..=90)
            .map(|s| (s, format!("1 {}", d(s as u32))))
            .collect();
        let refs: Vec<(u64, &str)> = far.iter().map(|(s, v)| (*s, v.as_str())).collect();
        assert_eq!(bumps(&refs).since(&seen), Since::Gap);
        // The highest seen removed (rolled back, forged): a gap.
        let rolled: Vec<(u64, &str)> = tags[..tags.len() - 1]
            .iter()
            .map(|(s, v)| (*s, v.as_str()))
            .collect();
        assert_eq!(bumps(&rolled).since(&seen), Since::Gap);
        // While the first tag ever is there nothing was removed.
        let young = bumps(&[(1, "1"), (2, "1")]);
        let seen = young.seen();
        assert_eq!(
            bumps(&[(1, "1"), (2, &format!("2 {}", d(1)))]).since(&seen),
            Since::Named(set(&[&d(1)]))
        );
        // A reader that saw no tag, and tags appeared: a gap; none still: nothing.
        assert_eq!(young.since(&Seen::new()), Since::Gap);
        assert_eq!(Bumps::default().since(&Seen::new()), Since::Nothing);
    }

    #[test]
    fn malformed_bump_tags_are_garbage_and_other_tags_are_ignored() {
        for (key, value) in [
            ("keyprov:bump:x", "1"),
            ("keyprov:bump:01", "1"),
            ("keyprov:bump:0", "1"),
            ("keyprov:bump:9007199254740993", "1"),
            ("keyprov:bump:3", "not a time"),
            ("keyprov:bump:3", "1 short"),
            ("keyprov:bump:3", "1 bad!char"),
            ("keyprov:bump:3", "1 list-AAAAAAAA list-AAAAAAAA"),
            ("keyprov:bump:3", "1 list"),
        ] {
            let b = Bumps::from_tags([(key, value), ("keyprov:scope", "s")]);
            assert_eq!(b.malformed, vec![key.to_string()], "{key}={value}");
            assert_eq!(b.since(&Seen::new()), Since::Gap);
            assert_eq!(b.to_remove(1), vec![key.to_string()]);
        }
        let b = Bumps::from_tags([("keyprov:scope", "s"), ("team", "x")]);
        assert_eq!(b, Bumps::default());
    }

    #[test]
    fn an_append_replaced_later_is_not_still_carried_one_removed_as_the_lowest_is() {
        let mine = set(&[&d(1)]);
        let b = bumps(&[(5, &format!("1 {}", d(1))), (6, "1")]);
        assert!(b.still_carries(5, &mine));
        assert!(!bumps(&[(5, &format!("1 {}", d(2))), (6, "1")]).still_carries(5, &mine));
        assert!(bumps(&[(6, "1"), (7, "1")]).still_carries(5, &mine));
        // Gone while lower tags remain: not a removal writers make.
        assert!(!bumps(&[(4, "1"), (6, "1")]).still_carries(5, &mine));
    }

    #[test]
    fn a_late_or_overwritten_append_is_not_landed() {
        let mine = set(&[&d(1)]);
        // Lost to a concurrent overwrite of the same tag.
        assert!(!bumps(&[(5, &format!("1 {}", d(2)))]).landed(5, &mine));
        // Landed, but more than MARGIN below the highest: append again at the top.
        let b = bumps(&[(5, &format!("1 {}", d(1))), (6, "1"), (7, "1"), (8, "1")]);
        assert!(!b.landed(5, &mine));
        assert!(!b.landed(5, &set(&[])));
        let b = bumps(&[(5, &format!("1 {}", d(1))), (6, "1"), (7, "1")]);
        assert!(b.landed(5, &mine));
    }

    /// What [`simulate`] found.
    #[derive(Debug)]
    struct Simulated {
        bumps: usize,
        /// Digests missed (each once: then known, as after the next full listing).
        missed: usize,
        gaps: usize,
        named: usize,
    }

    /// `writers` writers and 3 readers (one reading often, two rarely) interleaved at random,
    /// one request a step, writers removing the lowest tags as they go. A miss: a reader whose
    /// sweep found no gap does not know a digest whose bump was done before that sweep. The
    /// one timing assumption of the protocol is kept: a writer looks again only once every
    /// writer that described the beacon before its read-back has put its tag.
    fn simulate(writers: usize, seed: u64, ticks: u64) -> Simulated {
        #[derive(Clone)]
        enum W {
            Idle,
            Described(Bumps, u64),
            Tagged(u64),
            Confirming(u64, u64),
        }
        let mut rng = seed | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut tags = Bumps::default();
        let mut state: Vec<(W, BTreeSet<String>)> = vec![(W::Idle, BTreeSet::new()); writers];
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut readers: Vec<(Seen, BTreeSet<String>, u64)> = [2, 40, 400]
            .into_iter()
            .map(|rarely| (Seen::new(), BTreeSet::new(), rarely))
            .collect();
        let mut fresh = 0u32;
        let mut out = Simulated {
            bumps: 0,
            missed: 0,
            gaps: 0,
            named: 0,
        };
        for tick in 0..ticks {
            let actor = next(writers as u64 + 3) as usize;
            if actor >= writers {
                let (seen, known, rarely) = &mut readers[actor - writers];
                if next(*rarely) != 0 {
                    continue;
                }
                match tags.since(seen) {
                    Since::Gap => {
                        out.gaps += 1;
                        known.extend(started.iter().cloned());
                    }
                    Since::Named(n) => {
                        out.named += 1;
                        known.extend(n);
                    }
                    Since::Nothing => {}
                }
                *seen = tags.seen();
                let missed: Vec<String> = done.difference(known).cloned().collect();
                out.missed += missed.len();
                // Noticed at its next full listing.
                known.extend(missed);
                continue;
            }
            let mine = state[actor].1.clone();
            state[actor].0 = match state[actor].0.clone() {
                W::Idle => {
                    let n = if next(10) == 0 {
                        1 + next(40)
                    } else {
                        1 + next(3)
                    };
                    let digests: BTreeSet<String> = (0..n)
                        .map(|_| {
                            fresh += 1;
                            d(fresh)
                        })
                        .collect();
                    started.extend(digests.iter().cloned());
                    state[actor].1 = digests;
                    W::Described(tags.clone(), tick)
                }
                W::Described(snapshot, _) => {
                    let (seq, tag) = snapshot.placement(tick, &mine);
                    for key in snapshot.to_remove(seq) {
                        tags.tags.remove(&key[PREFIX.len()..].parse().unwrap());
                    }
                    tags.tags.insert(seq, tag);
                    W::Tagged(seq)
                }
                W::Tagged(seq) if tags.landed(seq, &mine) => W::Confirming(seq, tick),
                W::Tagged(_) => W::Described(tags.clone(), tick),
                W::Confirming(seq, at) => {
                    let waiting = state
                        .iter()
                        .any(|(w, _)| matches!(w, W::Described(_, t) if *t < at));
                    if waiting {
                        W::Confirming(seq, at)
                    } else if tags.still_carries(seq, &mine) {
                        out.bumps += 1;
                        done.extend(mine.iter().cloned());
                        W::Idle
                    } else {
                        W::Described(tags.clone(), tick)
                    }
                }
            };
            assert!(tags.tags.len() <= MAX_BUMP_TAGS);
        }
        assert!(tags.top() > 2 * MAX_BUMP_TAGS as u64, "{}", tags.top());
        out
    }

    #[test]
    fn readers_never_miss_a_done_bump_without_a_gap_with_up_to_two_writers_at_once() {
        for seed in [0x9e37_79b9_7f4a_7c15, 7] {
            for writers in [1, 2] {
                let out = simulate(writers, seed, 40_000);
                assert_eq!(out.missed, 0, "{writers} writers, seed {seed}: {out:?}");
                assert!(out.gaps > 10 && out.named > 200, "{out:?}");
            }
        }
    }

    #[test]
    fn with_more_writers_at_once_a_chain_of_stale_overwrites_rarely_loses_a_bump() {
        // Tags have no compare-and-set: a writer whose value another writer replaced after it
        // looked again loses its bump (its change is noticed at the next full listing). In
        // this model every step is one request and every writer is always bumping: far more
        // contention than a fleet's (a wave is about 0.3 bumps a second).
        let out = simulate(4, 0x9e37_79b9_7f4a_7c15, 60_000);
        assert!(out.missed * 100 < out.bumps, "{out:?}");
        eprintln!("{out:?}");
    }
}
