//! A full disk during a rotation of a key with a file output (with jwks.json) and a secret
//! output: the secret's AWSCURRENT never moves to a generation the files could not take, and
//! once space returns one run converges both. Through the real binary, against LocalStack and
//! a real small tmpfs (ENOSPC from the kernel, not a fake).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_secretsmanager::Client;
use common::*;
use keyprov::store::secrets_manager::layout::version_id;

async fn client(endpoint: &str) -> Client {
    secrets_client(endpoint).await
}

fn install(endpoint: &str) -> Install {
    secrets_install(endpoint, "")
}

fn at(install: &Install, args: &[&str], now: &str) -> Run {
    install.keyprov_env(args, &[("KEYPROV_TEST_NOW", now)])
}

/// Generation -> staging labels of every labelled version of key `name`.
async fn labels(client: &Client, secret: &str, name: &str) -> BTreeMap<u32, BTreeSet<String>> {
    let described = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let ids: BTreeMap<String, u32> = (1..=20).map(|g| (version_id(name, g), g)).collect();
    let mut found = BTreeMap::new();
    for (id, stages) in described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
    {
        if !stages.is_empty() {
            let generation = ids.get(&id).copied().unwrap_or(0);
            found.insert(generation, stages.into_iter().collect());
        }
    }
    found
}

/// The generation holding AWSCURRENT.
fn current_of(labels: &BTreeMap<u32, BTreeSet<String>>) -> Option<u32> {
    labels
        .iter()
        .find(|(_, l)| l.contains("AWSCURRENT"))
        .map(|(g, _)| *g)
}

/// The `kid`s of a JWK Set file.
fn kids(path: &Path) -> BTreeSet<String> {
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The `kid` of generation `generation` of the key in `dir`.
fn kid(dir: &Path, generation: u32) -> String {
    let jwk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("v{generation:04}/public.jwk"))).unwrap(),
    )
    .unwrap();
    jwk["kid"].as_str().unwrap().to_string()
}

/// The public key hash the secret's AWSCURRENT version holds.
async fn secret_current_public(client: &Client, secret: &str) -> String {
    let value = client
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(value.secret_string().unwrap()).unwrap();
    json["publicKeySha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no publicKeySha256 in the secret"))
        .to_string()
}

fn file_current_public(dir: &Path) -> String {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
    meta["publicKeySha256"].as_str().unwrap().to_string()
}

/// Fills the filesystem holding `dir` with one file, page by page; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &page).is_ok() {}
    let _ = file.sync_all();
    filler
}

/// The file output of every key here (jwks.json makes a second file to write).
const FILE: &str = "    - file: {publicFormats: [jwk]}\n";

/// A secret output writing to `secret`.
fn secret_output(secret: &str) -> String {
    format!("    - secretsManager: {{secretId: \"{secret}\"}}\n")
}

/// Writes key `name` (ECC_NIST_P256, `spec_extra` lines, `outputs` in that order) and mounts a
/// 128 KiB tmpfs on its directory: only the file output runs out of space (the state
/// directory's journal and lock stay writable). Returns the directory and its mount.
fn key_on_a_small_disk(
    install: &Install,
    name: &str,
    spec_extra: &str,
    outputs: &str,
) -> (std::path::PathBuf, Mount) {
    install.manifest(
        &format!("{name}.yaml"),
        &manifest(name, "ECC_NIST_P256", spec_extra).replace("    - file: {}\n", outputs),
    );
    let dir = install.key_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mount = Mount::new(
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=128k,mode=0750",
            "keyprov-fulldisk",
        ],
        &dir,
    );
    (dir, mount)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_a_rotation_never_moves_awscurrent_before_the_files() {
    let Some(endpoint) = localstack() else { return };
    if !can_mount() {
        eprintln!("skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    }
    let client = client(&endpoint).await;
    let install = install(&endpoint);
    let secret = format!("keyprov-test/fulldisk-{}", uuid::Uuid::new_v4());
    let name = "signer";
    let (dir, _mount) = key_on_a_small_disk(
        &install,
        name,
        "  rotation: {every: 1d, keep: 2}\n",
        &format!("{FILE}{}", secret_output(&secret)),
    );
    let first = at(&install, &["run", "--once"], "2032-01-01T01:00:00Z");
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(current_of(&labels(&client, &secret, name).await), Some(1));
    let kid1 = kid(&dir, 1);
    let jwks_before = std::fs::read(dir.join("jwks.json")).unwrap();
    assert_eq!(kids(&dir.join("jwks.json")), BTreeSet::from([kid1.clone()]));

    // A day later the rotation is due; the file output's filesystem is full.
    let filler = fill(&dir);
    let later = "2032-01-02T02:00:00Z";
    let full = at(&install, &["run", "--once"], later);
    assert_eq!(
        full.code,
        1,
        "the key fails on the full disk: {}",
        full.all()
    );
    assert!(full.stderr.contains("key \"signer\""), "{}", full.stderr);
    let after = labels(&client, &secret, name).await;
    assert_eq!(
        current_of(&after),
        Some(1),
        "AWSCURRENT stays on the old generation while the files lack the new one: {after:?}"
    );
    assert_eq!(
        secret_current_public(&client, &secret).await,
        file_current_public(&dir),
        "signers reading the secret use the key the files' current holds"
    );
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(
        std::fs::read(dir.join("jwks.json")).unwrap(),
        jwks_before,
        "jwks.json is unchanged"
    );

    // A second run on the still-full disk changes nothing either.
    let again = at(&install, &["run", "--once"], later);
    assert_eq!(again.code, 1, "{}", again.all());
    assert_eq!(current_of(&labels(&client, &secret, name).await), Some(1));
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));

    // Space returns: one run converges files and secret on the same new generation.
    std::fs::remove_file(&filler).unwrap();
    let healed = at(&install, &["run", "--once"], later);
    assert_eq!(healed.code, 0, "{}", healed.all());
    let healed_labels = labels(&client, &secret, name).await;
    let current = current_of(&healed_labels).expect("AWSCURRENT somewhere");
    assert_eq!(
        current, 2,
        "the generation published before the disk filled is the one activated: {healed_labels:?}"
    );
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(
        secret_current_public(&client, &secret).await,
        file_current_public(&dir),
        "files and secret hold the same pair as current"
    );
    assert_eq!(
        kids(&dir.join("jwks.json")),
        BTreeSet::from([kid1, kid(&dir, 2)]),
        "jwks.json holds the new current and the previous key"
    );
    let verify = at(&install, &["verify"], later);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let noop = at(&install, &["run", "--once"], later);
    assert_eq!(noop.code, 0, "{}", noop.all());
    assert!(
        noop.stdout.contains("0 changed"),
        "converged: nothing left to do: {}",
        noop.all()
    );
}

/// A staged generation (publishAhead) activates while the file output cannot change, with the
/// secret listed before the file output: the file's link fails, and AWSCURRENT, which moves
/// last whatever the order of the outputs, stays on the old generation. (A full disk does not
/// fail this step: the files and jwks.json already hold the generation, only a symlink moves;
/// a read-only remount of the same tmpfs does.)
#[tokio::test(flavor = "multi_thread")]
async fn a_file_output_failing_a_staged_activation_never_moves_awscurrent_first() {
    let Some(endpoint) = localstack() else { return };
    if !can_mount() {
        eprintln!("skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    }
    let client = client(&endpoint).await;
    let install = install(&endpoint);
    let secret = format!("keyprov-test/fulldisk-staged-{}", uuid::Uuid::new_v4());
    let name = "staged";
    let (dir, _mount) = key_on_a_small_disk(
        &install,
        name,
        "  rotation: {every: 1d, publishAhead: 6h, keep: 2}\n",
        &format!("{}{FILE}", secret_output(&secret)),
    );
    for now in ["2032-01-01T01:00:00Z", "2032-01-01T20:00:00Z"] {
        let run = at(&install, &["run", "--once"], now);
        assert_eq!(run.code, 0, "{now}: {}", run.all());
    }
    let published = labels(&client, &secret, name).await;
    assert_eq!(current_of(&published), Some(1), "{published:?}");
    assert!(
        published.get(&2).is_some_and(|l| l.contains("AWSPENDING")),
        "generation 2 is published ahead: {published:?}"
    );
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    let jwks_before = std::fs::read(dir.join("jwks.json")).unwrap();

    let remount = |mode: &str| {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    };
    remount("ro");
    let due = "2032-01-02T02:00:00Z";
    let full = at(&install, &["run", "--once"], due);
    assert_eq!(
        full.code,
        1,
        "the activation fails on the read-only file output: {}",
        full.all()
    );
    let after = labels(&client, &secret, name).await;
    assert_eq!(
        current_of(&after),
        Some(1),
        "AWSCURRENT stays while the file output could not activate: {after:?}"
    );
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(std::fs::read(dir.join("jwks.json")).unwrap(), jwks_before);
    assert_eq!(
        secret_current_public(&client, &secret).await,
        file_current_public(&dir)
    );

    remount("rw");
    let healed = at(&install, &["run", "--once"], due);
    assert_eq!(healed.code, 0, "{}", healed.all());
    assert_eq!(current_of(&labels(&client, &secret, name).await), Some(2));
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(
        secret_current_public(&client, &secret).await,
        file_current_public(&dir)
    );
    let verify = at(&install, &["verify"], due);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

/// A new key on a full disk: the first version of its new secret is current at once (Secrets
/// Manager makes the first version current whatever the labels ask; a new key has no verifier
/// yet), the key fails, and the run after space returns copies that same generation into the
/// files.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_key_on_a_full_disk_converges_on_the_secrets_first_version() {
    let Some(endpoint) = localstack() else { return };
    if !can_mount() {
        eprintln!("skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    }
    let client = client(&endpoint).await;
    let install = install(&endpoint);
    let secret = format!("keyprov-test/fulldisk-new-{}", uuid::Uuid::new_v4());
    let name = "fresh";
    let (dir, _mount) = key_on_a_small_disk(
        &install,
        name,
        "",
        &format!("{FILE}{}", secret_output(&secret)),
    );
    let filler = fill(&dir);
    let now = "2032-01-01T01:00:00Z";
    let full = at(&install, &["run", "--once"], now);
    assert_eq!(full.code, 1, "{}", full.all());
    assert_eq!(link(&dir, "current"), None, "no current in the files");
    let first = secret_current_public(&client, &secret).await;

    std::fs::remove_file(&filler).unwrap();
    let healed = at(&install, &["run", "--once"], now);
    assert_eq!(healed.code, 0, "{}", healed.all());
    let healed_labels = labels(&client, &secret, name).await;
    assert_eq!(
        healed_labels.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "no new generation: {healed_labels:?}"
    );
    assert_eq!(current_of(&healed_labels), Some(1));
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(
        file_current_public(&dir),
        first,
        "the secret's pair, copied"
    );
    let verify = at(&install, &["verify"], now);
    assert_eq!(verify.code, 0, "{}", verify.all());
}
