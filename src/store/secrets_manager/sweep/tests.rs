//! Unit tests of the sweep's cache and listing (pure: no AWS).
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use super::*;

const ARN: &str = "arn:aws:secretsmanager:us-east-1:1:secret:s-AbCdEf";

fn version(generation: u32) -> ObservedVersion {
    ObservedVersion {
        generation,
        spec_fingerprint: "f".into(),
        created_at: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        activates_at: UNIX_EPOCH + Duration::from_secs(1_700_000_001),
        public_key_sha256: "ab".repeat(32),
        key_pair_spec: "ECC_NIST_P256".into(),
        kms_key_arn: "arn:aws:kms:us-east-1:1:key/k".into(),
        bound: true,
    }
}

fn described(arn: &str, generations: &[u32]) -> Described {
    let stages: HashMap<String, Vec<String>> = generations
        .iter()
        .map(|g| {
            (
                layout::version_id("k", *g),
                vec![layout::generation_label(*g)],
            )
        })
        .collect();
    let mut described = Described::new("k", BTreeMap::new(), None, stages);
    described.arn = Some(arn.to_string());
    described
}

fn listing(arn: &str, generations: &[u32]) -> Listing {
    let stages = generations
        .iter()
        .map(|g| {
            (
                layout::version_id("k", *g),
                vec![layout::generation_label(*g)],
            )
        })
        .collect();
    let entry = DescribeSecretOutput::builder()
        .arn(arn)
        .name("s")
        .set_version_ids_to_stages(Some(stages))
        .build();
    Listing {
        by_arn: HashMap::from([(arn.to_string(), entry)]),
        names: HashMap::from([("s".to_string(), arn.to_string())]),
        fresh: Default::default(),
        described_at: Default::default(),
    }
}

#[test]
fn a_version_is_served_only_for_the_secret_and_key_it_was_read_from() {
    let cache = Cache::default();
    let id = layout::version_id("k", 1);
    cache.remember(Some(ARN), "k", &id, &version(1));
    assert_eq!(
        cache.cached(&described(ARN, &[1]), "k", &id),
        Some(version(1))
    );
    // The same name deleted and created again has another ARN: nothing carries over.
    let recreated = described("arn:aws:secretsmanager:us-east-1:1:secret:s-XyZxYz", &[1]);
    assert_eq!(cache.cached(&recreated, "k", &id), None);
    // Another key's reading of the same secret is not this key's.
    assert_eq!(cache.cached(&described(ARN, &[1]), "other", &id), None);
    // No ARN (a description without one): nothing is served or kept.
    let mut anonymous = described(ARN, &[1]);
    anonymous.arn = None;
    assert_eq!(cache.cached(&anonymous, "k", &id), None);
    cache.remember(None, "k", &layout::version_id("k", 2), &version(2));
    assert_eq!(
        cache.cached(&described(ARN, &[2]), "k", &layout::version_id("k", 2)),
        None
    );
}

#[test]
fn a_complete_listing_forgets_secrets_and_versions_that_are_gone() {
    let cache = Cache::default();
    for g in [1, 2] {
        cache.remember(Some(ARN), "k", &layout::version_id("k", g), &version(g));
    }
    cache.remember(
        Some("arn:gone"),
        "k",
        &layout::version_id("k", 1),
        &version(1),
    );
    cache.retain(&listing(ARN, &[2, 3]));
    let d = described(ARN, &[1, 2]);
    assert_eq!(cache.cached(&d, "k", &layout::version_id("k", 1)), None);
    assert_eq!(
        cache.cached(&d, "k", &layout::version_id("k", 2)),
        Some(version(2))
    );
    let gone = described("arn:gone", &[1]);
    assert_eq!(cache.cached(&gone, "k", &layout::version_id("k", 1)), None);
}

#[test]
fn a_previous_generation_is_forgotten_and_current_and_next_are_kept() {
    let cache = Cache::default();
    for g in [1, 2, 3] {
        cache.remember(Some(ARN), "k", &layout::version_id("k", g), &version(g));
    }
    let mut listed = listing(ARN, &[1, 2, 3]);
    let stages = HashMap::from([
        (layout::version_id("k", 1), vec!["AWSPREVIOUS".to_string()]),
        (layout::version_id("k", 2), vec![CURRENT.to_string()]),
        (
            layout::version_id("k", 3),
            vec![layout::generation_label(3)],
        ),
    ]);
    listed.by_arn.insert(
        ARN.to_string(),
        DescribeSecretOutput::builder()
            .arn(ARN)
            .name("s")
            .set_version_ids_to_stages(Some(stages))
            .build(),
    );
    cache.retain(&listed);
    let d = described(ARN, &[1, 2, 3]);
    let kept: Vec<bool> = [1, 2, 3]
        .iter()
        .map(|g| {
            cache
                .cached(&d, "k", &layout::version_id("k", *g))
                .is_some()
        })
        .collect();
    assert_eq!(kept, [false, true, true]);
}

#[test]
fn a_packed_version_is_the_same_version() {
    assert_eq!(compact::round_trip(&version(3)), Some(version(3)));
}

#[test]
fn the_cache_survives_a_restart_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::persisted(dir.path());
    let id = layout::version_id("k", 7);
    cache.remember(Some(ARN), "k", &id, &version(7));
    cache.save();
    let again = Cache::persisted(dir.path());
    assert_eq!(
        again.cached(&described(ARN, &[7]), "k", &id),
        Some(version(7))
    );
}

#[test]
fn a_cache_too_large_for_the_ledger_is_trimmed_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::persisted(dir.path());
    for i in 0..20_000 {
        let arn = format!("{ARN}-{}-{i:05}", "x".repeat(600));
        cache.remember(Some(&arn), "k", &layout::version_id("k", 1), &version(1));
    }
    cache.save();
    let again = Cache::persisted(dir.path());
    let kept = again.with(|record| record.secrets.len());
    assert!((10_000..20_000).contains(&kept), "{kept}");
    let first = described(&format!("{ARN}-{}-00000", "x".repeat(600)), &[1]);
    assert!(
        again
            .cached(&first, "k", &layout::version_id("k", 1))
            .is_some()
    );
}

#[test]
fn a_listing_finds_a_secret_by_name_or_arn() {
    let listing = listing(ARN, &[1]);
    assert!(listing.get("s").is_some());
    assert!(listing.get(ARN).is_some());
    assert!(listing.get("t").is_none());
    assert_eq!(listing.len(), 1);
}

#[test]
fn only_a_whole_version_of_the_named_generation_is_checked_in() {
    assert_eq!(checked("{}", "s", "k", 1), None);
    assert_eq!(checked("not json", "s", "k", 1), None);
    assert_eq!(checked("{}", "s", "k", 0), None);
}

#[test]
fn a_secret_described_by_the_sweep_replaces_its_listed_entry_by_name_or_arn() {
    let mut listed = listing(ARN, &[1]);
    assert_eq!(listed.arn_of("s"), Some(ARN));
    assert_eq!(listed.arn_of(ARN), Some(ARN));
    assert!(!listed.is_fresh("s"));
    // Taken out by its ARN, it is gone by its name too.
    listed.remove(ARN);
    assert!(listed.is_empty());
    assert_eq!(listed.arn_of("s"), None);
    listed.insert_fresh(DescribeSecretOutput::builder().arn(ARN).name("s").build());
    assert!(listed.is_fresh("s"));
    assert!(listed.is_fresh(ARN));
    assert_eq!(listed.len(), 1);
}
