//! What a secret's versions say, read from `DescribeSecret`: which generation each version is
//! (from its version id, the request token of that generation), which generation is current
//! (the newest that ever was), and where the staging labels differ from that. Labels are links
//! anyone with `UpdateSecretVersionStage` can move; the version ids cannot be forged for a
//! version that exists, so they are the truth and the labels are repaired to match them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::layout::{self, CURRENT, PENDING, PREVIOUS};

/// What `DescribeSecret` says about a secret, in keyprov's terms.
pub(super) struct Described {
    /// The secret's tags.
    pub(super) tags: BTreeMap<String, String>,
    /// The KMS key that encrypts the secret.
    pub(super) kms_key_id: Option<String>,
    /// VersionId -> staging labels (versions with at least one label).
    pub(super) stages: HashMap<String, Vec<String>>,
    /// VersionId -> generation, for the versions keyprov wrote (see [`layout::generations_of`]).
    pub(super) generation_ids: HashMap<String, u32>,
    /// Versions refused (forged, replayed, not keyprov's): VersionId -> the generation whose
    /// request token it is, if any. Never a generation, but their numbers are taken.
    pub(super) refused: BTreeMap<String, Option<u32>>,
    /// The generation taken as current when no label or tag says which one is (`AWSCURRENT` on
    /// a refused version, no `AWSPREVIOUS`): the newest the secret holds, proven before use.
    pub(super) assumed_current: Option<u32>,
    /// The secret's ARN: versions are immutable, so (ARN, VersionId) names one content forever
    /// (the cache of [`super::sweep`]).
    pub(super) arn: Option<String>,
}

impl Described {
    /// What the secret holds for key `name`: versions keyprov wrote are recognised by their ids.
    pub(super) fn new(
        name: &str,
        tags: BTreeMap<String, String>,
        kms_key_id: Option<String>,
        stages: HashMap<String, Vec<String>>,
    ) -> Self {
        let mut hints: BTreeSet<u32> = stages
            .values()
            .flatten()
            .filter_map(|l| layout::parse_generation_label(l))
            .collect();
        hints.extend(activated(&tags));
        let generation_ids =
            layout::generations_of(name, stages.keys().map(String::as_str), &hints);
        Described {
            tags,
            kms_key_id,
            stages,
            generation_ids,
            refused: BTreeMap::new(),
            assumed_current: None,
            arn: None,
        }
    }

    /// Every version holding `label` (one, unless a racing backend duplicated it).
    pub(super) fn holders(&self, label: &str) -> Vec<&str> {
        let mut holders: Vec<&str> = self
            .stages
            .iter()
            .filter(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(id, _)| id.as_str())
            .collect();
        holders.sort_unstable();
        holders
    }

    /// The version holding `label`.
    pub(super) fn holder(&self, label: &str) -> Option<&str> {
        self.holders(label).into_iter().next()
    }

    /// The labels of a version.
    pub(super) fn labels_of(&self, version_id: &str) -> &[String] {
        self.stages.get(version_id).map_or(&[], Vec::as_slice)
    }

    /// Takes `version_id` out of the generations: its contents were read and are not the
    /// generation its id names (a forged or replayed version put under keyprov's token).
    pub(super) fn forget(&mut self, version_id: &str) {
        if self.stages.contains_key(version_id) {
            let generation = self.generation_ids.remove(version_id);
            let refused = self.refused.entry(version_id.to_string()).or_default();
            *refused = refused.or(generation);
        }
    }

    /// When no label or tag says which generation is current and `AWSCURRENT` is on a version
    /// that is no generation (not keyprov's, or forgotten): that version is refused and the
    /// newest generation is assumed current. Returns the refused version's id.
    pub(super) fn without_evidence(&mut self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let id = self.holder(CURRENT)?.to_string();
        if self.generation_of(&id).is_some() {
            return None;
        }
        self.forget(&id);
        self.assume_current();
        Some(id)
    }

    /// Whether `version_id` is a refused version (see [`Self::forget`]).
    pub(super) fn is_refused(&self, version_id: &str) -> bool {
        self.refused.contains_key(version_id)
    }

    /// Takes the newest generation the secret holds as current when nothing says which is
    /// (see [`Self::assumed_current`]); it is proven before anything believes it.
    pub(super) fn assume_current(&mut self) -> Option<u32> {
        self.assumed_current = self.generation_ids.values().copied().max();
        self.assumed_current
    }

    /// The generation whose request token `version_id` is.
    pub(super) fn generation_of(&self, version_id: &str) -> Option<u32> {
        self.generation_ids.get(version_id).copied()
    }

    /// The version id of `generation`, when the secret holds it.
    pub(super) fn id_of(&self, generation: u32) -> Option<&str> {
        self.generation_ids
            .iter()
            .find(|(_, g)| **g == generation)
            .map(|(id, _)| id.as_str())
    }

    /// Every generation the secret holds, ascending.
    pub(super) fn generations(&self) -> Vec<u32> {
        let mut generations: Vec<u32> = self.generation_ids.values().copied().collect();
        generations.sort_unstable();
        generations
    }

    /// The generation [`layout::ACTIVATED_TAG`] names.
    pub(super) fn activated(&self) -> Option<u32> {
        activated(&self.tags)
    }

    /// The current generation: the newest the secret holds that was ever current, by any
    /// evidence: `AWSCURRENT` on it, `AWSPREVIOUS` on it (Secrets Manager puts that label on the
    /// version `AWSCURRENT` leaves), or the activation tag naming it. keyprov is declarative: an
    /// `AWSCURRENT` moved back by hand is drift, undone; a rollback is a new generation
    /// (`keyprov rotate NAME --now`).
    pub(super) fn current(&self) -> Option<u32> {
        let activated = self.activated();
        let evidenced = self
            .generation_ids
            .iter()
            .filter(|(id, generation)| {
                Some(**generation) == activated
                    || self
                        .labels_of(id)
                        .iter()
                        .any(|l| l == CURRENT || l == PREVIOUS)
            })
            .map(|(_, generation)| *generation)
            .max();
        evidenced.or(self.assumed_current)
    }

    /// The staged generation: the one holding `AWSPENDING`, when it is above [`Self::current`].
    pub(super) fn staged(&self) -> Option<(&str, u32)> {
        let id = self.holder(PENDING)?;
        let generation = self.generation_of(id)?;
        self.current()
            .is_none_or(|current| generation > current)
            .then_some((id, generation))
    }

    /// The generation waiting to become current: the staged one (`AWSPENDING`), or else the
    /// newest above the current one that holds no link at all: its writer has put it and not
    /// yet moved a label onto it (or crashed in between). It is whole when it was read back, so
    /// it is activated or published, never taken for garbage: another host may be about to
    /// link it.
    pub(super) fn next(&self) -> Option<(&str, u32)> {
        if let Some(staged) = self.staged() {
            return Some(staged);
        }
        let current = self.current()?;
        self.generation_ids
            .iter()
            .filter(|(id, generation)| {
                **generation > current
                    && self
                        .labels_of(id)
                        .iter()
                        .all(|l| layout::parse_generation_label(l).is_some())
            })
            .max_by_key(|(_, generation)| **generation)
            .map(|(id, generation)| (id.as_str(), *generation))
    }

    /// A version as a user reads it in a message.
    pub(super) fn describe(&self, version_id: &str) -> String {
        match self.generation_of(version_id) {
            Some(generation) => format!("generation {generation}"),
            None => format!("version {version_id}, which keyprov did not write"),
        }
    }

    /// Where the staging labels differ from what the versions say, one line each (repaired by
    /// [`super::SecretsManagerStore::repair_labels`]). `AWSPREVIOUS` is the planner's business
    /// (it says which generation it must be) unless it sits on a version keyprov did not write.
    pub(super) fn label_drift(&self, key: &str, secret: &str) -> Vec<String> {
        let mut drift = Vec::new();
        let current = self.current();
        if let Some(current) = current {
            let holders = self.holders(CURRENT);
            let id = self.id_of(current).unwrap_or_default();
            if holders != [id] {
                let on = match holders.as_slice() {
                    [] => "on no version".to_string(),
                    holders => format!(
                        "on {}",
                        holders
                            .iter()
                            .map(|h| self.describe(h))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                };
                drift.push(format!(
                    "secret {secret}: {CURRENT} is {on}, but generation {current} is the newest \
                     that was current: moved outside keyprov, it is moved back (to roll back, \
                     make a new generation: keyprov rotate {key} --now)"
                ));
            }
        }
        for generation in self.generations() {
            let id = self.id_of(generation).unwrap_or_default();
            let own = layout::generation_label(generation);
            if !self.labels_of(id).contains(&own) {
                drift.push(format!(
                    "secret {secret}: the version of generation {generation} lacks its label {own}"
                ));
            }
        }
        let mut strays: Vec<String> = self
            .stages
            .iter()
            .flat_map(|(id, labels)| labels.iter().map(move |l| (id, l)))
            .filter(|(id, label)| {
                !self.is_refused(id)
                    && layout::parse_generation_label(label)
                        .is_some_and(|g| self.generation_of(id) != Some(g))
            })
            .map(|(id, label)| {
                format!(
                    "secret {secret}: label {label} is on {}, not on its own generation's version",
                    self.describe(id)
                )
            })
            .collect();
        strays.sort();
        drift.extend(strays);
        if let Some(id) = self.holder(PENDING)
            && self.staged().is_none()
        {
            drift.push(format!(
                "secret {secret}: {PENDING} is on {}, which is not a staged generation",
                self.describe(id)
            ));
        }
        for label in [PENDING, PREVIOUS] {
            if self.holders(label).len() > 1 {
                drift.push(format!(
                    "secret {secret}: {label} is on {} versions",
                    self.holders(label).len()
                ));
            }
        }
        if let Some(id) = self.holder(PREVIOUS)
            && self.generation_of(id).is_none()
        {
            drift.push(format!(
                "secret {secret}: {PREVIOUS} is on {}",
                self.describe(id)
            ));
        }
        drift
    }
}

/// The generation the activation tag names.
fn activated(tags: &BTreeMap<String, String>) -> Option<u32> {
    tags.get(layout::ACTIVATED_TAG)
        .and_then(|v| layout::parse_activated_tag(v))
        .map(|(generation, _)| generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::secrets_manager::layout::{generation_label, version_id};

    /// A secret of key `k` whose versions of `generations` hold `labels` (generation -> labels
    /// besides its own), plus `foreign` versions.
    fn secret(
        generations: &[(u32, &[&str])],
        foreign: &[(&str, &[&str])],
        activated: Option<u32>,
    ) -> Described {
        let mut stages: HashMap<String, Vec<String>> = HashMap::new();
        for (generation, labels) in generations {
            stages.insert(
                version_id("k", *generation),
                labels.iter().map(|l| l.to_string()).collect(),
            );
        }
        for (id, labels) in foreign {
            stages.insert(
                id.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
            );
        }
        let mut tags = BTreeMap::new();
        if let Some(g) = activated {
            tags.insert(
                layout::ACTIVATED_TAG.to_string(),
                layout::activated_tag(g, std::time::SystemTime::UNIX_EPOCH),
            );
        }
        Described::new("k", tags, None, stages)
    }

    #[test]
    fn a_converged_secret_has_no_drift() {
        let d = secret(
            &[
                (1, &["keyprov-v0001"]),
                (2, &["keyprov-v0002", "AWSPREVIOUS"]),
                (3, &["keyprov-v0003", "AWSCURRENT"]),
                (4, &["keyprov-v0004", "AWSPENDING"]),
            ],
            &[],
            Some(3),
        );
        assert_eq!(d.generations(), vec![1, 2, 3, 4]);
        assert_eq!(d.current(), Some(3));
        assert_eq!(d.staged().map(|(_, g)| g), Some(4));
        assert_eq!(d.label_drift("k", "s"), Vec::<String>::new());
    }

    #[test]
    fn awscurrent_moved_back_by_hand_is_drift_and_the_newest_current_stays() {
        // Secrets Manager put AWSPREVIOUS on the version AWSCURRENT left.
        let d = secret(
            &[
                (1, &["keyprov-v0001"]),
                (2, &["keyprov-v0002", "AWSCURRENT"]),
                (3, &["keyprov-v0003", "AWSPREVIOUS"]),
            ],
            &[],
            Some(3),
        );
        assert_eq!(d.current(), Some(3));
        let drift = d.label_drift("k", "s");
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(
            drift[0].contains("AWSCURRENT is on generation 2, but generation 3"),
            "{drift:?}"
        );
        // Both labels moved by hand: the activation tag still tells.
        let d = secret(
            &[
                (1, &["keyprov-v0001", "AWSPREVIOUS"]),
                (2, &["keyprov-v0002", "AWSCURRENT"]),
                (3, &["keyprov-v0003"]),
            ],
            &[],
            Some(3),
        );
        assert_eq!(d.current(), Some(3));
    }

    #[test]
    fn generation_labels_moved_or_removed_by_hand_do_not_move_generations() {
        // keyprov-v0002 moved from the previous onto generation 1; keyprov-v0003 removed.
        let d = secret(
            &[
                (1, &["keyprov-v0001", "keyprov-v0002"]),
                (2, &["AWSPREVIOUS"]),
                (3, &["AWSCURRENT"]),
            ],
            &[],
            Some(3),
        );
        assert_eq!(d.generations(), vec![1, 2, 3]);
        assert_eq!(d.current(), Some(3));
        assert_eq!(d.generation_of(d.holder(PREVIOUS).unwrap()), Some(2));
        let drift = d.label_drift("k", "s").join("\n");
        for expected in [
            "generation 2 lacks its label keyprov-v0002",
            "generation 3 lacks its label keyprov-v0003",
            "label keyprov-v0002 is on generation 1",
        ] {
            assert!(drift.contains(expected), "{expected}: {drift}");
        }
    }

    #[test]
    fn a_version_put_and_not_yet_linked_is_the_next_generation_not_garbage() {
        let d = secret(
            &[
                (1, &["keyprov-v0001", "AWSPREVIOUS"]),
                (2, &["keyprov-v0002", "AWSCURRENT"]),
                (3, &["keyprov-v0003"]),
            ],
            &[],
            Some(2),
        );
        assert_eq!(d.current(), Some(2));
        assert_eq!(d.next().map(|(_, g)| g), Some(3));
        assert_eq!(d.label_drift("k", "s"), Vec::<String>::new());
    }

    #[test]
    fn a_foreign_version_is_no_generation_and_its_labels_are_drift() {
        let d = secret(
            &[(1, &["keyprov-v0001", "AWSPREVIOUS"])],
            &[(
                "0d3c1e8a-0000-4000-8000-000000000000",
                &["AWSCURRENT", "AWSPENDING"],
            )],
            None,
        );
        assert_eq!(d.generations(), vec![1]);
        assert_eq!(
            d.current(),
            Some(1),
            "AWSPREVIOUS tells generation 1 was current"
        );
        assert_eq!(d.staged(), None);
        let drift = d.label_drift("k", "s").join("\n");
        assert!(
            drift.contains("AWSCURRENT is on version 0d3c1e8a"),
            "{drift}"
        );
        assert!(drift.contains("which keyprov did not write"), "{drift}");
        assert!(drift.contains("AWSPENDING is on version"), "{drift}");
        // Without any evidence of a current generation, nothing is claimed.
        let d = secret(
            &[(1, &["keyprov-v0001"])],
            &[("0d3c1e8a-0000-4000-8000-000000000000", &["AWSCURRENT"])],
            None,
        );
        assert_eq!(d.current(), None);
        assert_eq!(generation_label(1), "keyprov-v0001");
    }

    #[test]
    fn a_refused_version_keeps_its_number_and_its_own_label_and_is_no_generation() {
        let mut d = secret(
            &[
                (1, &["keyprov-v0001", "AWSPREVIOUS"]),
                (2, &["keyprov-v0002", "AWSCURRENT"]),
            ],
            &[],
            Some(1),
        );
        let forged = version_id("k", 2);
        d.forget(&forged);
        // Forgetting again (AWSCURRENT on it, no other evidence) keeps the number it had.
        d.forget(&forged);
        assert_eq!(d.refused.get(&forged), Some(&Some(2)));
        assert_eq!(d.generations(), vec![1]);
        assert_eq!(d.current(), Some(1));
        let drift = d.label_drift("k", "s").join("\n");
        assert!(drift.contains("AWSCURRENT is on version"), "{drift}");
        assert!(!drift.contains("label keyprov-v0002"), "{drift}");
    }

    #[test]
    fn awscurrent_on_no_generation_without_evidence_is_refused_and_the_newest_is_assumed() {
        let foreign = "0d3c1e8a-0000-4000-8000-000000000000";
        let mut d = secret(
            &[(1, &["keyprov-v0001"]), (2, &["keyprov-v0002"])],
            &[(foreign, &["AWSCURRENT"])],
            None,
        );
        assert_eq!(d.current(), None);
        assert_eq!(d.without_evidence().as_deref(), Some(foreign));
        assert!(d.is_refused(foreign));
        assert_eq!(d.current(), Some(2));
        // With evidence, nothing is assumed.
        let mut d = secret(
            &[(1, &["keyprov-v0001", "AWSPREVIOUS"])],
            &[(foreign, &["AWSCURRENT"])],
            None,
        );
        assert_eq!(d.without_evidence(), None);
        assert_eq!(d.current(), Some(1));
    }
}
