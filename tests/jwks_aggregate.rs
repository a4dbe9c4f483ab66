//! Config `jwks:` aggregates through the real binary: never frozen wholesale (a key of an
//! invalid manifest or a failing key keeps its last entries, the others move on), written
//! before any `activate` hook of a key they select runs, and a JWT signed with a key's
//! `current` verifies against them.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// A P-256 key labelled `team: pay` with `publicFormats: [jwk]`; `extra` goes into its spec.
fn pay_key(name: &str, spec: &str, extra: &str) -> String {
    manifest(name, spec, extra)
        .replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{team: pay}}\n"),
        )
        .replace("- file: {}", "- file: {publicFormats: [jwk]}")
}

fn kids_of(set: &Path) -> BTreeSet<String> {
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(set).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The kid of the version `link` (current, previous, next, or vNNNN) of key `name`.
fn kid(install: &Install, name: &str, link: &str) -> String {
    let path = install.key_dir(name).join(link).join("public.jwk");
    let jwk: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jwk["kid"].as_str().unwrap().to_string()
}

fn set_of(kids: &[&String]) -> BTreeSet<String> {
    kids.iter().map(|k| k.to_string()).collect()
}

/// A JWT signed with the private key under `current` of `name` verifies against `set`
/// (joserfc, key picked by kid; tests/scripts/jose_check.py).
fn jwt_of_current_verifies(install: &Install, name: &str, set: &Path) {
    let current = install.key_dir(name).join("current");
    let private = install.root().join(format!("{name}.key.pem"));
    let decrypt = install.keyprov(&["decrypt", name, "--out", private.to_str().unwrap()]);
    assert_eq!(decrypt.code, 0, "{}", decrypt.all());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/jose_check.py");
    python_stdout(
        [
            OsStr::new("-W"),
            OsStr::new("ignore"),
            script.as_os_str(),
            set.as_os_str(),
            current.join("public.jwk").as_os_str(),
            private.as_os_str(),
            current.join("public.pem").as_os_str(),
        ],
        &format!("a JWT of {name}'s current against {}", set.display()),
    );
    std::fs::remove_file(private).unwrap();
}

#[test]
fn healthy_keys_move_on_while_a_manifest_is_invalid_and_a_key_fails() {
    let install =
        Install::new("jwks:\n  - path: issuer/set.json\n    selector: {labels: {team: pay}}");
    let every = "  rotation: {every: 30d}\n";
    install.manifest("a.yaml", &pay_key("a", "ECC_NIST_P256", every));
    install.manifest("b.yaml", &pay_key("b", "ECC_NIST_P256", ""));
    install.manifest("c.yaml", &pay_key("c", "ECC_NIST_P256", ""));
    install.run_once(0);
    let set = install.state().join("issuer/set.json");
    let (a1, b1, c1) = (
        kid(&install, "a", "v0001"),
        kid(&install, "b", "v0001"),
        kid(&install, "c", "v0001"),
    );
    assert_eq!(kids_of(&set), set_of(&[&a1, &b1, &c1]));

    // b's manifest breaks, c fails (its current link is gone); a new key d arrives.
    install.manifest("b.yaml", &pay_key("b", "ECC_NIST_P256", "  bogus: 1\n"));
    std::fs::remove_file(install.key_dir("c").join("current")).unwrap();
    install.manifest("d.yaml", &pay_key("d", "ECC_NIST_P256", ""));
    let run = install.keyprov(&["run", "--once"]);
    assert_ne!(run.code, 0, "{}", run.all());
    let d1 = kid(&install, "d", "v0001");
    assert_eq!(kids_of(&set), set_of(&[&a1, &b1, &c1, &d1]), "new key");
    jwt_of_current_verifies(&install, "d", &set);

    // A rotation without publishAhead, then rotate --now: a's new keys are in, a1 leaves
    // only once it is no longer previous; b and c keep theirs
    // (exit 2: b's manifest is still invalid).
    let rotate = install.keyprov(&["rotate", "a"]);
    assert_eq!(rotate.code, 2, "{}", rotate.all());
    let a2 = kid(&install, "a", "v0002");
    assert_eq!(kid(&install, "a", "current"), a2);
    assert_eq!(kids_of(&set), set_of(&[&a2, &a1, &b1, &c1, &d1]), "rotate");
    jwt_of_current_verifies(&install, "a", &set);
    let rotate = install.keyprov(&["rotate", "a", "--now"]);
    assert_eq!(rotate.code, 2, "{}", rotate.all());
    let a3 = kid(&install, "a", "v0003");
    assert_eq!(kid(&install, "a", "current"), a3);
    assert_eq!(
        kids_of(&set),
        set_of(&[&a3, &a2, &b1, &c1, &d1]),
        "rotate --now"
    );
    jwt_of_current_verifies(&install, "a", &set);

    // A spec change of d (P-256 to P-384) while b is still invalid and c still fails.
    install.manifest("d.yaml", &pay_key("d", "ECC_NIST_P384", ""));
    let run = install.keyprov(&["run", "--once"]);
    assert_ne!(run.code, 0, "{}", run.all());
    let d2 = kid(&install, "d", "current");
    assert_ne!(d2, d1);
    assert_eq!(
        kids_of(&set),
        set_of(&[&a3, &a2, &b1, &c1, &d2, &d1]),
        "spec"
    );
    jwt_of_current_verifies(&install, "d", &set);

    // b's manifest is gone and every manifest is valid: b leaves (its files stay, an orphan);
    // c still fails and keeps its entry.
    std::fs::remove_file(install.manifests().join("b.yaml")).unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(kids_of(&set), set_of(&[&a3, &a2, &c1, &d2, &d1]), "b gone");
}

#[test]
fn an_activate_hook_finds_the_new_kid_in_the_set() {
    let mut install = Install::new("");
    let seen = install.root().join("seen");
    std::fs::create_dir(&seen).unwrap();
    let script = install.root().join("copy-set.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec cp {} {}/$KEYPROV_NAME-$KEYPROV_GENERATION.json\n",
            install.state().join("set.json").display(),
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    install.extra_config = format!(
        "hooks: {{allowed: [{}]}}\njwks:\n  - path: set.json\n    selector: {{labels: {{team: pay}}}}",
        script.display()
    );
    install.write_config();
    let hook = format!("  onRotate:\n    - command: [\"{}\"]\n", script.display());
    let key = |name: &str, spec: &str, rotation: &str| {
        pay_key(name, spec, &format!("  rotation: {{{rotation}}}\n{hook}"))
    };
    install.manifest("a.yaml", &key("a", "ECC_NIST_P256", "every: 30d"));
    install.manifest(
        "s.yaml",
        &key("s", "ECC_NIST_P256", "every: 30d, publishAhead: 7d"),
    );
    let saw = |name: &str, generation: u32| -> BTreeSet<String> {
        kids_of(&seen.join(format!("{name}-{generation}.json")))
    };
    let mut cases = 0;
    let mut check = |name: &str, generation: u32, case: &str| {
        let current = kid(&install, name, &format!("v{generation:04}"));
        assert_eq!(kid(&install, name, "current"), current, "{case}");
        assert!(saw(name, generation).contains(&current), "{case}");
        cases += 1;
    };

    install.run_once(0);
    check("a", 1, "new key");
    let rotate = install.keyprov(&["rotate", "a"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    check("a", 2, "rotation without publishAhead");
    let rotate = install.keyprov(&["rotate", "a", "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    check("a", 3, "rotate --now");
    install.manifest("a.yaml", &key("a", "ECC_NIST_P384", "every: 30d"));
    install.run_once(0);
    check("a", 4, "spec change");
    let rotate = install.keyprov(&["rotate", "s"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    let rotate = install.keyprov(&["rotate", "s", "--now"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    check(
        "s",
        3,
        "rotate --now: a fresh pair, the staged one never activated",
    );
    assert_eq!(cases, 5);
}

#[test]
fn an_activate_hook_waits_while_the_set_cannot_be_written() {
    let mut install = Install::new("");
    let marker = install.root().join("hook-ran");
    let script = install.root().join("mark.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec touch {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    install.extra_config = format!(
        "hooks: {{allowed: [{}]}}\njwks:\n  - path: set.json\n    selector: {{labels: {{team: pay}}}}",
        script.display()
    );
    install.write_config();
    std::fs::create_dir_all(install.state().join("set.json")).unwrap();
    let hook = format!("  onRotate:\n    - command: [\"{}\"]\n", script.display());
    install.manifest("a.yaml", &pay_key("a", "ECC_NIST_P256", &hook));
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("set.json"), "{}", run.stderr);
    assert!(!marker.exists(), "the hook ran before the set held the key");
    // Cleared: the set is written, then the journalled hook runs.
    std::fs::remove_dir(install.state().join("set.json")).unwrap();
    install.run_once(0);
    assert!(kids_of(&install.state().join("set.json")).contains(&kid(&install, "a", "current")));
    assert!(marker.exists());
}
