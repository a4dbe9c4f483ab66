//! Every host's file outputs agree with the secret on `previous` too: a host that joins after
//! a rotation (or whose previous version was deleted by hand) copies the secret's previous
//! generation, proven like current, so tokens signed a moment before the rotation still
//! verify there. Against LocalStack (KMS and Secrets Manager), through the real binary.

mod common;

use std::collections::BTreeSet;

use common::trust::*;
use common::*;

/// The `kid`s of the key's jwks.json on this host.
fn kids(install: &Install, name: &str) -> BTreeSet<String> {
    let text = std::fs::read(install.key_dir(name).join("jwks.json")).unwrap();
    let set: serde_json::Value = serde_json::from_slice(&text).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn public_of(install: &Install, name: &str, link_name: &str) -> Vec<u8> {
    std::fs::read(install.key_dir(name).join(link_name).join("public.pem")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_joining_after_rotations_trusts_the_previous_key_as_the_others_do() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let (name, secret) = ("joiner", unique("joiner"));
    let a = aws_install(&endpoint);
    a.manifest("k.yaml", &key(name, &aws.ours, &secret, ""));
    a.run_once(0);
    for _ in 0..2 {
        let run = a.keyprov(&["rotate", name, "--now"]);
        assert_eq!(run.code, 0, "{}", run.all());
    }
    let dir_a = a.key_dir(name);
    assert_eq!(link(&dir_a, "current").as_deref(), Some("v0003"));
    assert_eq!(link(&dir_a, "previous").as_deref(), Some("v0002"));
    assert_eq!(kids(&a, name).len(), 2, "A trusts current and previous");

    // Host B: its own stateDir, the same manifest and secret.
    let b = aws_install(&endpoint);
    b.manifest("k.yaml", &key(name, &aws.ours, &secret, ""));
    let run = b.run_once(0);
    let dir_b = b.key_dir(name);
    assert_eq!(link(&dir_b, "current").as_deref(), Some("v0003"));
    assert_eq!(
        link(&dir_b, "previous").as_deref(),
        Some("v0002"),
        "{}",
        run.all()
    );
    assert_eq!(kids(&b, name), kids(&a, name));
    eprintln!("joining host: {}", run.stdout.trim());
    assert_eq!(
        public_of(&b, name, "previous"),
        public_of(&a, name, "previous")
    );
    assert_eq!(
        public_of(&b, name, "current"),
        public_of(&a, name, "current")
    );
    assert!(b.keyprov(&["verify"]).code == 0, "B verifies");
    let again = b.run_once(0);
    assert!(again.stdout.contains("0 changed"), "{}", again.all());

    // A's previous deleted by hand: copied back from the secret (or B's twin).
    std::fs::remove_file(dir_a.join("previous")).unwrap();
    std::fs::remove_dir_all(dir_a.join("v0002")).unwrap();
    let restored = a.run_once(0);
    eprintln!("previous restored: {}", restored.stdout.trim());
    assert_eq!(link(&dir_a, "previous").as_deref(), Some("v0002"));
    assert_eq!(kids(&a, name), kids(&b, name));
    assert_eq!(
        public_of(&a, name, "previous"),
        public_of(&b, name, "previous")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_previous_is_copied_nowhere_and_fails_the_key_naming_it() {
    let Some(endpoint) = localstack() else { return };
    let aws = aws(&endpoint).await;
    let (name, secret) = ("forged-previous", unique("forged-previous"));
    let a = aws_install(&endpoint);
    a.manifest("k.yaml", &key(name, &aws.ours, &secret, ""));
    a.run_once(0);
    // Someone who can write the secret puts generation 2 made under another KMS key, then
    // generation 3 made as keyprov would (its KMS key, its bound context): AWSCURRENT is on 3,
    // and Secrets Manager moved AWSPREVIOUS onto the forged 2.
    let template = secret_json(&aws.sm, &secret, None).await;
    let pair = kms_pair(&aws, &aws.theirs, &bound(name, 2)).await;
    let forged = holding(template.clone(), 2, &pair, &aws.theirs, &bound(name, 2));
    put_as(&aws.sm, &secret, name, 2, &forged).await;
    let genuine = kms_pair(&aws, &aws.ours, &bound(name, 3)).await;
    let genuine_json = holding(template, 3, &genuine, &aws.ours, &bound(name, 3));
    put_as(&aws.sm, &secret, name, 3, &genuine_json).await;
    let v2 = keyprov::store::secrets_manager::layout::version_id(name, 2);

    let b = aws_install(&endpoint);
    b.manifest("k.yaml", &key(name, &aws.ours, &secret, ""));
    let run = b.run_once(1);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(&format!("key \"{name}\""))
                && l.contains(&format!("secret {secret} version {v2} (generation 2)"))
                && l.contains("is not believed")),
        "{}",
        run.all()
    );
    let dir_b = b.key_dir(name);
    assert_eq!(link(&dir_b, "current").as_deref(), Some("v0003"));
    assert_eq!(link(&dir_b, "previous"), None);
    assert_eq!(versions(&dir_b), vec!["v0003".to_string()]);
    assert!(
        !exposed(&b, name, &pair.0),
        "the forged key is trusted nowhere"
    );
    assert_eq!(kids(&b, name).len(), 1);
}
