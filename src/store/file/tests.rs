//! Tests of the file store as a whole: batches, links, observation, prune, symlinks.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

#[test]
fn version_names() {
    assert_eq!(version_name(3), "v0003");
    assert_eq!(version_name(12345), "v12345");
    assert_eq!(parse_version_name("v0003"), Some(3));
    assert_eq!(parse_version_name("v12345"), Some(12345));
    assert_eq!(parse_version_name("v03"), None);
    assert_eq!(parse_version_name(".tmp-v0003-1"), None);
}

fn output(root: &Path, name: &str) -> FileOutput {
    FileOutput {
        root: root.to_path_buf(),
        dir: root.join(name),
        format: Format::Pem,
        mode: 0o640,
        public_formats: Vec::new(),
        private_formats: Vec::new(),
        owner: None,
        group: None,
    }
}

fn version(name: &str, generation: u32) -> StoredVersion {
    let der = format!("public key of {name} {generation}").into_bytes();
    StoredVersion {
        meta: VersionMeta {
            api_version: "keyprov/v1".into(),
            name: name.into(),
            generation,
            key_pair_spec: "ECC_NIST_P256".into(),
            kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/test".into(),
            encryption_context: Default::default(),
            grant_tokens: vec![],
            spec_fingerprint: "f".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            activates_at: "2026-01-01T00:00:00Z".into(),
            public_key_sha256: super::super::public_key_sha256(&der),
            private_key_ciphertext_sha256: Some(super::super::public_key_sha256(
                &[generation as u8; 16],
            )),
        },
        public_key_der: der,
        private_key_ciphertext: vec![generation as u8; 16],
        private_key: None,
    }
}

fn commit(out: &FileOutput, version: &StoredVersion, link: Link) -> Result<(), StoreError> {
    commit_versions(
        &[NewVersion {
            outputs: vec![out],
            version,
            link,
        }],
        &mut Leftovers::default(),
    )
    .pop()
    .unwrap()
}

fn no_leftovers(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(TMP_PREFIX)
    })
}

#[test]
fn a_batch_is_written_linked_and_fails_only_where_it_must() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
    // Several keys: the batch is flushed with syncfs.
    let mut outputs: Vec<FileOutput> = (0..40)
        .map(|i| output(root.path(), &format!("key-{i:02}")))
        .collect();
    outputs[7] = output(root.path(), "escape/key-07");
    let versions: Vec<StoredVersion> = (0..40)
        .map(|i| version(&format!("key-{i:02}"), 1))
        .collect();
    let batch: Vec<NewVersion<'_>> = outputs
        .iter()
        .zip(&versions)
        .map(|(output, version)| NewVersion {
            outputs: vec![output],
            version,
            link: Link::Current,
        })
        .collect();
    let results = commit_versions(&batch, &mut Leftovers::default());
    assert_eq!(results.len(), 40);
    for (i, (result, output)) in results.iter().zip(&outputs).enumerate() {
        if i == 7 {
            let err = result.as_ref().unwrap_err().to_string();
            assert!(err.contains("symlink"), "{err}");
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
            continue;
        }
        assert!(result.is_ok(), "key {i}: {result:?}");
        assert_eq!(current_generation(output).unwrap(), Some(1));
        let observed = observe(output, &format!("key-{i:02}"), false).unwrap();
        assert_eq!(observed.versions, vec![1]);
        assert!(observed.drift.is_empty(), "{:?}", observed.drift);
        let stored = read_version(output, 1).unwrap();
        assert_eq!(stored.public_key_der, versions[i].public_key_der);
        assert_eq!(stored.meta, versions[i].meta);
        let mode = fs::metadata(output.dir.join("v0001/private.enc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(no_leftovers(&output.dir));
    }
}

#[test]
fn staged_versions_become_next_then_current() {
    let root = tempfile::tempdir().unwrap();
    let out = output(root.path(), "k");
    let (v1, v2) = (version("k", 1), version("k", 2));
    let commit = |version, link| {
        commit_versions(
            &[NewVersion {
                outputs: vec![&out],
                version,
                link,
            }],
            &mut Leftovers::default(),
        )
        .pop()
        .unwrap()
    };
    commit(&v1, Link::Current).unwrap();
    commit(&v2, Link::Next).unwrap();
    let observed = observe(&out, "k", false).unwrap();
    assert_eq!(observed.current.map(|v| v.generation), Some(1));
    assert_eq!(observed.next.map(|v| v.generation), Some(2));
    link(&out, 2, Link::Current).unwrap();
    let observed = observe(&out, "k", false).unwrap();
    assert_eq!(observed.current.map(|v| v.generation), Some(2));
    assert_eq!(observed.previous, Some(1));
    assert!(observed.next.is_none());
    assert!(no_leftovers(&out.dir));
}

#[test]
fn a_next_replaced_before_use_is_gone_once_a_newer_one_is_current() {
    let root = tempfile::tempdir().unwrap();
    let out = output(root.path(), "k");
    commit(&out, &version("k", 1), Link::Current).unwrap();
    commit(&out, &version("k", 2), Link::Next).unwrap();
    commit(&out, &version("k", 3), Link::Next).unwrap();
    link(&out, 3, Link::Current).unwrap();
    let observed = observe(&out, "k", false).unwrap();
    assert_eq!(observed.current.map(|v| v.generation), Some(3));
    // v2 was never in use: it does not linger between previous and current.
    assert_eq!(observed.previous, Some(1));
    assert_eq!(observed.versions, [1, 3]);
    assert!(observed.next.is_none());
    assert!(no_leftovers(&out.dir));
}

#[test]
fn a_version_once_in_place_is_never_replaced() {
    let root = tempfile::tempdir().unwrap();
    let out = output(root.path(), "k");
    commit(&out, &version("k", 1), Link::Current).unwrap();
    let before = fs::read(out.dir.join("v0001/public.pem")).unwrap();
    let mut other = version("k", 1);
    other.public_key_der = b"another writer's key".to_vec();
    let err = commit(&out, &other, Link::Next).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(fs::read(out.dir.join("v0001/public.pem")).unwrap(), before);
    assert!(no_leftovers(&out.dir));
}

#[test]
fn observation_reports_damage_of_linked_versions() {
    let root = tempfile::tempdir().unwrap();
    let out = output(root.path(), "k");
    commit(&out, &version("k", 1), Link::Current).unwrap();
    assert!(observe(&out, "k", false).unwrap().damaged.is_empty());
    fs::write(
        out.dir.join("v0001/public.pem"),
        public_key_pem(b"another key"),
    )
    .unwrap();
    let observed = observe(&out, "k", false).unwrap();
    assert_eq!(observed.damaged.len(), 1, "{observed:?}");
    assert!(observed.damaged[0].problems[0].contains("publicKeySha256"));
    fs::write(
        out.dir.join("v0001/public.pem"),
        public_key_pem(b"public key of k 1"),
    )
    .unwrap();
    fs::write(out.dir.join("v0001/private.enc"), b"").unwrap();
    assert_eq!(observe(&out, "k", false).unwrap().damaged.len(), 1);
}

#[test]
fn prune_sets_versions_aside_and_never_follows_links() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("foreign"), "x").unwrap();
    let out = output(root.path(), "k");
    for g in 1..=3 {
        commit(&out, &version("k", g), Link::Current).unwrap();
    }
    std::os::unix::fs::symlink(outside.path(), out.dir.join("v0001/planted")).unwrap();
    prune(&out, &[1]).unwrap();
    assert!(!out.dir.join("v0001").exists());
    assert!(outside.path().join("foreign").exists());
    assert_eq!(observe(&out, "k", false).unwrap().previous, Some(2));
    assert!(no_leftovers(&out.dir));
}

#[test]
fn a_key_directory_that_is_a_symlink_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("k")).unwrap();
    let out = output(root.path(), "k");
    assert!(observe(&out, "k", false).is_err());
    assert!(commit(&out, &version("k", 1), Link::Current).is_err());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn dir_modes_follow_file_modes() {
    assert_eq!(dir_mode(0o640), 0o750);
    assert_eq!(dir_mode(0o600), 0o700);
    assert_eq!(dir_mode(0o644), 0o755);
    assert_eq!(dir_mode(0o400), 0o700);
}

/// Keys observed in one pass share their parent's handle, and see what each one alone sees:
/// a converged key, a key directory that is a symlink (refused), a missing one, a parent
/// planted as a symlink (refused, for every key under it, each time it is asked).
#[test]
fn observing_through_shared_parents_sees_what_each_key_alone_sees() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("keys")).unwrap();
    let out = |name: &str| output(root.path(), &format!("keys/{name}"));
    commit(&out("a"), &version("a", 1), Link::Current).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("keys/b")).unwrap();
    fs::create_dir_all(root.path().join("planted")).unwrap();
    std::os::unix::fs::symlink(root.path().join("keys"), root.path().join("planted/p")).unwrap();
    let parents = Parents::default();
    for _ in 0..2 {
        let shared = observe_in(&out("a"), "a", false, Some(&parents), None).unwrap();
        let alone = observe(&out("a"), "a", false).unwrap();
        assert_eq!(format!("{shared:?}"), format!("{alone:?}"));
        assert_eq!(shared.current.map(|c| c.generation), Some(1));
        assert!(shared.drift.is_empty(), "{:?}", shared.drift);
        let refused = observe_in(&out("b"), "b", false, Some(&parents), None).unwrap_err();
        let alone = observe(&out("b"), "b", false).unwrap_err();
        assert_eq!(refused.to_string(), alone.to_string());
        assert!(refused.to_string().contains("symlink"), "{refused}");
        let missing = observe_in(&out("c"), "c", false, Some(&parents), None).unwrap();
        assert!(missing.versions.is_empty() && missing.current.is_none());
        let through = output(root.path(), "planted/p/a");
        let refused = observe_in(&through, "a", false, Some(&parents), None).unwrap_err();
        let alone = observe(&through, "a", false).unwrap_err();
        assert_eq!(refused.to_string(), alone.to_string());
        assert!(refused.to_string().contains("symlink"), "{refused}");
    }
    // The parent held by the pass is never re-resolved: swapped for a symlink to elsewhere
    // meanwhile, the pass still reads the directory it checked, never the one planted.
    fs::rename(root.path().join("keys"), root.path().join("moved")).unwrap();
    fs::create_dir_all(outside.path().join("a")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("keys")).unwrap();
    let held = observe_in(&out("a"), "a", false, Some(&parents), None).unwrap();
    assert_eq!(held.current.map(|c| c.generation), Some(1));
    assert!(
        observe(&out("a"), "a", false).is_err(),
        "a new pass refuses the symlink"
    );
}
